//! Which objects to look at closely, and the close look: a full read checked against the stored
//! checksum, and the replication status.
//!
//! Selection is by a seeded hash of the key, not by listing order: an object is in the sample
//! when its rank is among the `count` smallest (or below `fraction` of the hash range). That makes
//! the sample the same whatever order the parallel listing sees keys in, mergeable from partial
//! samples, reproducible from the seed, and bounded in memory by the sample size.

use std::collections::BinaryHeap;

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{ChecksumMode, ReplicationStatus};
use aws_smithy_checksums::ChecksumAlgorithm;
use backplan_plugin_sdk::PluginResult;
use md5::Digest;
use serde::Serialize;

use crate::aws;
use crate::config::Sample;

/// The seeded rank of a key: FNV-1a over the bytes, then a splitmix64 finaliser.
pub fn rank(seed: u64, key: &str) -> u64 {
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
pub struct Picked {
    pub rank: u64,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// Keeps the objects of one sample while the listing streams past.
#[derive(Debug, Clone)]
pub struct Selector {
    sample: Sample,
    seed: u64,
    /// Max-heap on rank: the top is the first to go when a smaller rank arrives.
    picked: BinaryHeap<Picked>,
}

impl Selector {
    pub fn new(sample: Sample, seed: u64) -> Self {
        Self {
            sample,
            seed,
            picked: BinaryHeap::new(),
        }
    }

    /// An empty selector of the same sample, for another listing task.
    pub fn fresh(&self) -> Self {
        Self::new(self.sample, self.seed)
    }

    /// Offers one listed object; allocates only when it is kept.
    pub fn offer(&mut self, key: &str, size: u64, etag: Option<&str>) {
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
        match self.sample {
            Sample::Count(0) => false,
            Sample::Count(n) => {
                (self.picked.len() as u64) < n
                    || self.picked.peek().is_some_and(|top| rank < top.rank)
            }
            Sample::Fraction(f) => f >= 1.0 || (rank as f64) < f * (u64::MAX as f64),
        }
    }

    fn keep(&mut self, picked: Picked) {
        self.picked.push(picked);
        if let Sample::Count(n) = self.sample
            && self.picked.len() as u64 > n
        {
            self.picked.pop();
        }
    }

    /// Adds another task's selection.
    pub fn merge(&mut self, other: Selector) {
        for picked in other.picked {
            if self.wants(picked.rank) {
                self.keep(picked);
            }
        }
    }

    /// The selection, smallest rank first.
    pub fn into_sorted(self) -> Vec<Picked> {
        self.picked.into_sorted_vec()
    }
}

/// How a sampled object's content was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum Verdict {
    /// The content matches the stored checksum.
    Verified { algorithm: String },
    /// The content does not match.
    Mismatch {
        algorithm: String,
        stored: String,
        computed: String,
    },
    /// No checksum the content can be checked against (e.g. a multipart upload without
    /// additional checksums: its ETag is not an MD5 of the content).
    Unverifiable { reason: String },
    /// The object was listed but is gone now (deleted meanwhile).
    Gone,
}

/// What one sampled read found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Read {
    pub key: String,
    pub bytes: u64,
    #[serde(flatten)]
    pub verdict: Verdict,
    #[serde(skip)]
    pub replication: Option<Replication>,
}

/// An object's replication status and age, from GetObject or HeadObject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub status: ReplicationStatus,
    /// Seconds since the epoch.
    pub last_modified: Option<i64>,
}

/// What a stored checksum was computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// One of S3's additional checksums (full-object).
    Stored(ChecksumAlgorithm),
    /// The ETag of a single-part upload: the MD5 of the content, in hex.
    EtagMd5,
}

impl Algorithm {
    fn name(self) -> String {
        match self {
            Algorithm::Stored(a) => a.as_str().to_owned(),
            Algorithm::EtagMd5 => "etag-md5".to_owned(),
        }
    }
}

/// The checksum to verify against: the strongest full-object checksum S3 returned, or the ETag
/// when it is a plain MD5 (single-part upload without SSE-KMS).
fn expected_checksum(
    out: &aws_sdk_s3::operation::get_object::GetObjectOutput,
) -> Result<(Algorithm, String), String> {
    let stored = [
        (ChecksumAlgorithm::Sha256, out.checksum_sha256()),
        (ChecksumAlgorithm::Sha1, out.checksum_sha1()),
        (ChecksumAlgorithm::Crc64Nvme, out.checksum_crc64_nvme()),
        (ChecksumAlgorithm::Crc32c, out.checksum_crc32_c()),
        (ChecksumAlgorithm::Crc32, out.checksum_crc32()),
    ];
    let mut composite = None;
    for (algorithm, value) in stored {
        let Some(value) = value else { continue };
        match value.split_once('-') {
            None => return Ok((Algorithm::Stored(algorithm), value.to_owned())),
            Some((_, parts)) => composite = Some((algorithm, parts.to_owned())),
        }
    }
    if let Some((algorithm, parts)) = composite {
        return Err(format!(
            "only a composite {} checksum over {parts} parts is stored (a checksum of part checksums; part boundaries are not checked)",
            algorithm.as_str()
        ));
    }
    match out.e_tag().map(|e| e.trim_matches('"')) {
        Some(etag) if etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok((Algorithm::EtagMd5, etag.to_ascii_lowercase()))
        }
        Some(etag) if etag.contains('-') => Err(
            "multipart upload without an additional checksum: its ETag is not an MD5 of the content"
                .to_owned(),
        ),
        _ => Err("no stored checksum and no MD5 ETag".to_owned()),
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
    /// The digest in the form S3 shows it: hex for an ETag, base64 for the others.
    fn finish(self) -> String {
        match self {
            Hasher::Md5(h) => h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
            Hasher::Smithy(h) => aws_smithy_types::base64::encode(h.finalize()),
        }
    }
}

/// Reads `key` in full (streaming, constant memory) and checks it against its stored checksum.
pub async fn read(client: &Client, bucket: &str, key: &str) -> PluginResult<Read> {
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
    let expected = expected_checksum(&out);
    let mut hasher = expected.as_ref().ok().map(|(a, _)| Hasher::new(*a));
    let mut body = out.body;
    let mut bytes = 0u64;
    let mut sdk_mismatch = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
            }
            // The SDK validates the same checksum at the end of the stream; keep our own verdict,
            // which says what was stored and what was computed.
            Err(e)
                if aws_sdk_s3::error::DisplayErrorContext(&e)
                    .to_string()
                    .to_lowercase()
                    .contains("checksum") =>
            {
                sdk_mismatch = Some(e.to_string());
                break;
            }
            Err(e) => {
                return Err(backplan_plugin_sdk::PluginError::transient(format!(
                    "bucket `{bucket}`: reading {key} failed: {e}"
                )));
            }
        }
    }
    let verdict = match (expected, hasher) {
        (Ok((algorithm, stored)), Some(hasher)) => {
            let computed = hasher.finish();
            if computed == stored && sdk_mismatch.is_none() {
                Verdict::Verified {
                    algorithm: algorithm.name(),
                }
            } else {
                Verdict::Mismatch {
                    algorithm: algorithm.name(),
                    stored,
                    computed,
                }
            }
        }
        (Err(reason), _) => Verdict::Unverifiable { reason },
        (Ok(_), None) => unreachable!("a hasher exists for every expected checksum"),
    };
    Ok(Read {
        key: key.to_owned(),
        bytes,
        verdict,
        replication,
    })
}

/// The replication status of `key` (HeadObject); `None` when it has none or is gone.
pub async fn status(client: &Client, bucket: &str, key: &str) -> PluginResult<Option<Replication>> {
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
    fn hashers_match_known_digests() {
        let mut md5 = Hasher::new(Algorithm::EtagMd5);
        md5.update(b"hello");
        assert_eq!(md5.finish(), "5d41402abc4b2a76b9719d911017c592");
        let mut crc = Hasher::new(Algorithm::Stored(ChecksumAlgorithm::Crc32));
        crc.update(b"hel");
        crc.update(b"lo");
        assert_eq!(crc.finish(), "NhCmhg==");
    }
}
