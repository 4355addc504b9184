//! Which objects to look at closely, and the close look: a full read checked against the stored
//! checksum, and the replication status.
//!
//! Selection is by a seeded hash of the key, not by listing order: an object is in the sample
//! when its rank is among the `count` smallest (or below `fraction` of the hash range). That makes
//! the sample the same whatever order the parallel listing sees keys in, mergeable from partial
//! samples, reproducible from the seed, and bounded in memory by the sample size.

use std::collections::BinaryHeap;

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{ChecksumMode, ObjectAttributes, ReplicationStatus};
use aws_smithy_checksums::ChecksumAlgorithm;
use backplan_plugin_sdk::PluginResult;
use md5::Digest as _;
use serde::Serialize;

use crate::aws;
use crate::config::{MAX_SAMPLE, Sample};

/// The seeded rank of a key: FNV-1a over the bytes, then a splitmix64 finaliser.
pub(crate) fn rank(seed: u64, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A listed object that made it into a sample.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Picked {
    pub rank: u64,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// Keeps the objects of one sample while the listing streams past: at most [`MAX_SAMPLE`],
/// even for a share of a huge bucket, so that a sample never holds the whole listing in memory.
#[derive(Debug, Clone)]
pub(crate) struct Selector {
    sample: Sample,
    seed: u64,
    /// The most objects kept: the count, or [`MAX_SAMPLE`] for a share.
    cap: u64,
    /// Max-heap on rank: the top is the first to go when a smaller rank arrives.
    picked: BinaryHeap<Picked>,
}

impl Selector {
    pub(crate) fn new(sample: Sample, seed: u64) -> Self {
        Self::capped(sample, seed, MAX_SAMPLE)
    }

    /// A selector that keeps at most `cap` objects.
    fn capped(sample: Sample, seed: u64, cap: u64) -> Self {
        let cap = match sample {
            Sample::Count(n) => n.min(cap),
            Sample::Fraction(_) => cap,
        };
        Self {
            sample,
            seed,
            cap,
            picked: BinaryHeap::new(),
        }
    }

    /// An empty selector of the same sample, for another listing task.
    pub(crate) fn fresh(&self) -> Self {
        Self {
            picked: BinaryHeap::new(),
            ..self.clone()
        }
    }

    /// Offers one listed object; allocates only when it is kept.
    pub(crate) fn offer(&mut self, key: &str, size: u64, etag: Option<&str>) {
        let rank = rank(self.seed, key);
        if !self.wants(rank) {
            return;
        }
        self.keep(Picked {
            rank,
            key: key.to_owned(),
            size,
            etag: etag.map(str::to_owned),
        });
    }

    fn wants(&self, rank: u64) -> bool {
        let in_share = match self.sample {
            Sample::Count(_) => true,
            Sample::Fraction(f) => f >= 1.0 || (rank as f64) < f * (u64::MAX as f64),
        };
        in_share
            && self.cap > 0
            && ((self.picked.len() as u64) < self.cap
                || self.picked.peek().is_some_and(|top| rank < top.rank))
    }

    fn keep(&mut self, picked: Picked) {
        self.picked.push(picked);
        if self.picked.len() as u64 > self.cap {
            self.picked.pop();
        }
    }

    /// Adds another task's selection.
    pub(crate) fn merge(&mut self, other: Selector) {
        for picked in other.picked {
            if self.wants(picked.rank) {
                self.keep(picked);
            }
        }
    }

    /// The selection, smallest rank first.
    pub(crate) fn into_sorted(self) -> Vec<Picked> {
        self.picked.into_sorted_vec()
    }
}

/// How a sampled object's content was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub(crate) enum Verdict {
    /// The content matches the stored checksum.
    Verified { algorithm: String },
    /// The content does not match.
    Mismatch {
        algorithm: String,
        stored: String,
        computed: String,
    },
    /// No checksum the content can be checked against (no additional checksum and an ETag that
    /// is not an MD5, as with SSE-KMS; or a multipart object whose part sizes are unknown).
    Unverifiable { reason: String },
    /// The object was listed but is gone now (deleted meanwhile).
    Gone,
}

/// What one sampled read found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Read {
    pub key: String,
    pub bytes: u64,
    #[serde(flatten)]
    pub verdict: Verdict,
    #[serde(skip)]
    pub replication: Option<Replication>,
}

/// An object's replication status and age, from GetObject or HeadObject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replication {
    pub status: ReplicationStatus,
    /// Seconds since the epoch.
    pub last_modified: Option<i64>,
}

/// What a stored checksum was computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// One of S3's additional checksums.
    Stored(ChecksumAlgorithm),
    /// The ETag: the MD5 of the content (single part), in hex.
    EtagMd5,
}

impl Algorithm {
    fn encode(self, raw: &[u8]) -> String {
        match self {
            Algorithm::Stored(_) => aws_smithy_types::base64::encode(raw),
            Algorithm::EtagMd5 => raw.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// The checksum a read is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expectation {
    algorithm: Algorithm,
    /// As S3 shows it, without the `-N` suffix.
    value: String,
    /// `Some(N)`: a multipart checksum (of the N part checksums), from the `-N` suffix.
    parts: Option<u32>,
}

impl Expectation {
    /// `crc32`, `crc32-composite`, `etag-md5`, `etag-md5-multipart`.
    fn name(&self) -> String {
        let base = match self.algorithm {
            Algorithm::Stored(a) => a.as_str(),
            Algorithm::EtagMd5 => "etag-md5",
        };
        match (self.parts, self.algorithm) {
            (None, _) => base.to_owned(),
            (Some(_), Algorithm::Stored(_)) => format!("{base}-composite"),
            (Some(_), Algorithm::EtagMd5) => format!("{base}-multipart"),
        }
    }

    fn shown(&self, value: &str) -> String {
        match self.parts {
            Some(n) => format!("{value}-{n}"),
            None => value.to_owned(),
        }
    }
}

/// Splits `value-N` into the value and N.
fn split_parts(value: &str) -> Option<(&str, Option<u32>)> {
    match value.split_once('-') {
        None => Some((value, None)),
        Some((v, n)) => n.parse().ok().map(|n| (v, Some(n))),
    }
}

/// The strongest checksum S3 returned (full-object before composite), else the ETag when it is
/// an MD5 (of the content, or of the part MD5s for a multipart upload; not with SSE-KMS).
fn expectation(
    out: &aws_sdk_s3::operation::get_object::GetObjectOutput,
) -> Result<Expectation, String> {
    let stored = [
        (ChecksumAlgorithm::Sha256, out.checksum_sha256()),
        (ChecksumAlgorithm::Sha1, out.checksum_sha1()),
        (ChecksumAlgorithm::Crc64Nvme, out.checksum_crc64_nvme()),
        (ChecksumAlgorithm::Crc32c, out.checksum_crc32_c()),
        (ChecksumAlgorithm::Crc32, out.checksum_crc32()),
    ];
    let mut composite = None;
    for (algorithm, value) in stored {
        let Some((value, parts)) = value.and_then(split_parts) else {
            continue;
        };
        let expectation = Expectation {
            algorithm: Algorithm::Stored(algorithm),
            value: value.to_owned(),
            parts,
        };
        if parts.is_none() {
            return Ok(expectation);
        }
        composite.get_or_insert(expectation);
    }
    if let Some(composite) = composite {
        return Ok(composite);
    }
    let etag = out.e_tag().map(|e| e.trim_matches('"')).unwrap_or("");
    match split_parts(etag) {
        Some((md5, parts)) if md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Expectation {
                algorithm: Algorithm::EtagMd5,
                value: md5.to_ascii_lowercase(),
                parts,
            })
        }
        _ => Err("no stored checksum, and the ETag is not an MD5".to_owned()),
    }
}

enum Hasher {
    Md5(md5::Md5),
    Smithy(Box<dyn aws_smithy_checksums::http::HttpChecksum>),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::EtagMd5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Stored(a) => Hasher::Smithy(a.into_impl()),
        }
    }
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Smithy(h) => h.update(bytes),
        }
    }
    fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Smithy(h) => h.finalize().to_vec(),
        }
    }
}

/// Hashes a stream whole, or part by part and then the concatenated part digests (how S3 builds
/// a composite checksum and a multipart ETag).
struct Digest {
    algorithm: Algorithm,
    current: Hasher,
    /// Sizes of the parts still to come after the current one, and what is left of the current.
    parts: Option<(std::vec::IntoIter<u64>, u64)>,
    digests: Vec<u8>,
}

impl Digest {
    fn new(algorithm: Algorithm, sizes: Option<Vec<u64>>) -> Self {
        let parts = sizes.map(|sizes| {
            let mut sizes = sizes.into_iter();
            let first = sizes.next().unwrap_or(0);
            (sizes, first)
        });
        Self {
            algorithm,
            current: Hasher::new(algorithm),
            parts,
            digests: Vec::new(),
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        let Some((rest, left)) = self.parts.as_mut() else {
            self.current.update(bytes);
            return;
        };
        while !bytes.is_empty() {
            if *left == 0 {
                // The last part takes whatever remains.
                let Some(next) = rest.next() else {
                    self.current.update(bytes);
                    return;
                };
                let done = std::mem::replace(&mut self.current, Hasher::new(self.algorithm));
                self.digests.extend(done.finish());
                *left = next;
                continue;
            }
            let n = bytes
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            self.current.update(&bytes[..n]);
            *left -= n as u64;
            bytes = &bytes[n..];
        }
    }

    /// The digest as S3 shows it (without a `-N` suffix).
    fn finish(mut self) -> String {
        let last = self.current.finish();
        if self.parts.is_none() {
            return self.algorithm.encode(&last);
        }
        self.digests.extend(last);
        let mut outer = Hasher::new(self.algorithm);
        outer.update(&self.digests);
        self.algorithm.encode(&outer.finish())
    }
}

/// The part sizes of a multipart object (GetObjectAttributes), or why they are unknown.
async fn part_sizes(
    client: &Client,
    bucket: &str,
    key: &str,
    parts: u32,
) -> PluginResult<Result<Vec<u64>, String>> {
    let mut sizes = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut request = client
            .get_object_attributes()
            .bucket(bucket)
            .key(key)
            .object_attributes(ObjectAttributes::ObjectParts)
            .max_parts(1000);
        if let Some(marker) = &marker {
            request = request.part_number_marker(marker);
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => {
                let err = aws::error(bucket, &format!("GetObjectAttributes {key}"), e);
                if err.is_retryable() {
                    return Err(err);
                }
                return Ok(Err(format!("its part sizes are unknown: {}", err.message)));
            }
        };
        let Some(listed) = out.object_parts() else {
            break;
        };
        sizes.extend(
            listed
                .parts()
                .iter()
                .map(|p| p.size().unwrap_or(0).max(0) as u64),
        );
        match listed.next_part_number_marker() {
            Some(next) if listed.is_truncated() == Some(true) => marker = Some(next.to_owned()),
            _ => break,
        }
    }
    if sizes.len() == parts as usize {
        Ok(Ok(sizes))
    } else {
        Ok(Err(format!(
            "its checksum covers {parts} parts but GetObjectAttributes lists {} part sizes",
            sizes.len()
        )))
    }
}

/// Reads `key` in full (streaming, constant memory) and checks it against its stored checksum;
/// a multipart checksum is recomputed part by part from the part sizes.
pub(crate) async fn read(client: &Client, bucket: &str, key: &str) -> PluginResult<Read> {
    let out = match client
        .get_object()
        .bucket(bucket)
        .key(key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if aws::code(&e) == Some("NoSuchKey") => {
            return Ok(Read {
                key: key.to_owned(),
                bytes: 0,
                verdict: Verdict::Gone,
                replication: None,
            });
        }
        Err(e) => return Err(aws::error(bucket, &format!("GetObject {key}"), e)),
    };
    let replication = out.replication_status().map(|status| Replication {
        status: status.clone(),
        last_modified: out.last_modified().map(|t| t.secs()),
    });
    let expected = match expectation(&out) {
        Ok(e) => match e.parts {
            None => Ok((e, None)),
            Some(n) => part_sizes(client, bucket, key, n)
                .await?
                .map(|sizes| (e, Some(sizes))),
        },
        Err(reason) => Err(reason),
    };
    let mut digest = expected
        .as_ref()
        .ok()
        .map(|(e, sizes)| Digest::new(e.algorithm, sizes.clone()));
    let mut body = out.body;
    let mut bytes = 0u64;
    let mut sdk_mismatch = false;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                if let Some(d) = digest.as_mut() {
                    d.update(&chunk);
                }
            }
            // The SDK validates a full-object checksum at the end of the stream; keep our own
            // verdict, which says what was stored and what was computed.
            Err(e)
                if aws_sdk_s3::error::DisplayErrorContext(&e)
                    .to_string()
                    .to_lowercase()
                    .contains("checksum") =>
            {
                sdk_mismatch = true;
                break;
            }
            Err(e) => {
                return Err(backplan_plugin_sdk::PluginError::transient(format!(
                    "bucket `{bucket}`: reading {key} failed: {e}"
                )));
            }
        }
    }
    let verdict = match (expected, digest) {
        (Ok((expected, _)), Some(digest)) => {
            let computed = digest.finish();
            if computed == expected.value && !sdk_mismatch {
                Verdict::Verified {
                    algorithm: expected.name(),
                }
            } else {
                Verdict::Mismatch {
                    algorithm: expected.name(),
                    stored: expected.shown(&expected.value),
                    computed: expected.shown(&computed),
                }
            }
        }
        (Err(reason), _) => Verdict::Unverifiable { reason },
        (Ok(_), None) => unreachable!("a digest exists for every expected checksum"),
    };
    Ok(Read {
        key: key.to_owned(),
        bytes,
        verdict,
        replication,
    })
}

/// The replication status of `key` (HeadObject); `None` when it has none or is gone.
pub(crate) async fn status(
    client: &Client,
    bucket: &str,
    key: &str,
) -> PluginResult<Option<Replication>> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(out.replication_status().map(|status| Replication {
            status: status.clone(),
            last_modified: out.last_modified().map(|t| t.secs()),
        })),
        Err(e) if matches!(aws::code(&e), Some("NotFound" | "NoSuchKey")) => Ok(None),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
        Err(e) => Err(aws::error(bucket, &format!("HeadObject {key}"), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(sample: Sample, seed: u64, keys: impl Iterator<Item = String>) -> Vec<String> {
        let mut s = Selector::new(sample, seed);
        for key in keys {
            s.offer(&key, 1, None);
        }
        s.into_sorted().into_iter().map(|p| p.key).collect()
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("job-{}/f{i}", i % 37))
    }

    #[test]
    fn a_count_sample_has_exactly_that_many_and_does_not_depend_on_order() {
        let forward = select(Sample::Count(25), 7, keys());
        let mut reversed: Vec<String> = keys().collect();
        reversed.reverse();
        assert_eq!(forward.len(), 25);
        assert_eq!(forward, select(Sample::Count(25), 7, reversed.into_iter()));
        assert_ne!(
            forward,
            select(Sample::Count(25), 8, keys()),
            "another seed, another sample"
        );
    }

    #[test]
    fn merged_partial_samples_equal_one_sample() {
        let all: Vec<String> = keys().collect();
        let mut whole = Selector::new(Sample::Count(40), 3);
        let (a, b) = all.split_at(4_321);
        let mut left = whole.fresh();
        let mut right = whole.fresh();
        a.iter().for_each(|k| left.offer(k, 1, None));
        b.iter().for_each(|k| right.offer(k, 1, None));
        whole.merge(left);
        whole.merge(right);
        let merged: Vec<String> = whole.into_sorted().into_iter().map(|p| p.key).collect();
        assert_eq!(merged, select(Sample::Count(40), 3, keys()));
    }

    #[test]
    fn a_fraction_sample_is_about_that_share() {
        let n = select(Sample::Fraction(0.1), 1, keys()).len();
        assert!((800..1200).contains(&n), "{n}");
        assert!(select(Sample::Fraction(0.0), 1, keys()).is_empty());
        assert_eq!(select(Sample::Fraction(1.0), 1, keys()).len(), 10_000);
        assert!(select(Sample::Count(0), 1, keys()).is_empty());
    }

    #[test]
    fn a_share_of_a_huge_bucket_keeps_at_most_the_cap_in_memory() {
        let mut whole = Selector::capped(Sample::Fraction(1.0), 1, 100);
        for key in keys() {
            whole.offer(&key, 1, None);
        }
        let kept = whole.into_sorted();
        assert_eq!(kept.len(), 100);
        let mut ten = Selector::capped(Sample::Count(10), 1, 100);
        keys().for_each(|k| ten.offer(&k, 1, None));
        let first_ten: Vec<String> = kept.iter().take(10).map(|p| p.key.clone()).collect();
        let ten: Vec<String> = ten.into_sorted().into_iter().map(|p| p.key).collect();
        assert_eq!(
            ten, first_ten,
            "the cap keeps the lowest ranks, like a count"
        );
    }

    #[test]
    fn digests_match_s3s_single_and_multipart_forms() {
        let mut md5 = Digest::new(Algorithm::EtagMd5, None);
        md5.update(b"hello");
        assert_eq!(md5.finish(), "5d41402abc4b2a76b9719d911017c592");
        let crc32 = Algorithm::Stored(ChecksumAlgorithm::Crc32);
        let mut crc = Digest::new(crc32, None);
        crc.update(b"hel");
        crc.update(b"lo");
        assert_eq!(crc.finish(), "NhCmhg==");
        // A 5 MiB + 10 byte multipart upload, fed in chunks that straddle the part boundary:
        // the composite CRC32 and the ETag S3 (and ministack) give it.
        let body: Vec<u8> = [vec![b'a'; 5 << 20], vec![b'b'; 10]].concat();
        for algorithm in [crc32, Algorithm::EtagMd5] {
            let mut d = Digest::new(algorithm, Some(vec![5 << 20, 10]));
            for chunk in body.chunks(1_000_003) {
                d.update(chunk);
            }
            let expected = match algorithm {
                Algorithm::EtagMd5 => "8b0be7847da5564ae08e97af63b60885",
                Algorithm::Stored(_) => "meG8JQ==",
            };
            assert_eq!(d.finish(), expected);
        }
    }

    #[test]
    fn multipart_suffixes_are_parsed() {
        assert_eq!(split_parts("abc==-12"), Some(("abc==", Some(12))));
        assert_eq!(split_parts("abc=="), Some(("abc==", None)));
        assert_eq!(split_parts("abc-x"), None);
    }
}
