//! Reading blobs back, one request per run of neighbouring blobs.
//!
//! A backup worker appends the small files of a batch one after another to its pack, so restore
//! and verify usually ask for blobs that sit next to each other. Merging them into one ranged read
//! turns thousands of tiny reads (or S3 GETs) into a few large ones. The blobs asked for are
//! taken in pack order, not in the order asked (files of one folder were stored by several
//! workers, into several packs), and a read spans a short gap between two wanted blobs rather
//! than pay another request: on S3 a request costs more than the bytes of the gap.

use std::sync::Arc;

use crate::backend::Backend;
use crate::blob::{BlobRef, Decoder};
use crate::crypto::Keys;
use crate::dictionary::Dictionaries;
use crate::error::Result;
use crate::repo::pack_object;

/// Neighbouring blobs are merged into one read up to this many bytes (a larger blob is read
/// alone). Small enough that a batch of small files makes several reads at once: a GET's
/// answer streams at a rate of its own (s3s-fs: ~20 MB/s each), so a restore from S3 is only
/// as fast as the GETs it makes together.
const MAX_MERGED_READ: u64 = 512 << 10;
/// Bytes between two wanted blobs of a pack that a merged read spans rather than split (read
/// and thrown away: at ~100 MB/s per S3 stream, about the time of one more request).
const MAX_GAP: u64 = 256 << 10;
/// Merged reads made together, at most this many bytes (unless one read is larger): each worker
/// keeps a buffer this large. One buffer per read, each as large as the largest it ever held,
/// had grown to 32 MiB per worker.
const IN_FLIGHT_BYTES: u64 = 4 << 20;
/// ...and at most this many requests.
const IN_FLIGHT_READS: usize = 8;

/// What a worker needs to read blobs back: the backend, a zstd decoder and the buffer the reads
/// made together fill back to back, both kept from one call to the next.
pub struct Fetcher<'a> {
    backend: &'a dyn Backend,
    decoder: Decoder,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Fetcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("buffer", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Fetcher<'a> {
    /// A fetcher of blobs named and sealed with `keys`, compressed with `dictionaries`.
    pub fn new(
        backend: &'a dyn Backend,
        keys: Keys,
        dictionaries: Arc<Dictionaries>,
    ) -> Result<Self> {
        Ok(Self {
            backend,
            decoder: Decoder::new(keys, dictionaries)?,
            buffer: Vec::new(),
        })
    }

    /// Fetches and checks each `(tag, blob)`, calling `each` with the raw bytes or why they could
    /// not be had. Blobs are visited in pack order (by pack, then offset), not the order given.
    /// The reads of up to [`IN_FLIGHT_BYTES`] are made together (concurrently on S3), into one
    /// buffer.
    pub fn fetch_each<T>(
        &mut self,
        mut wanted: Vec<(T, BlobRef)>,
        mut each: impl FnMut(T, &BlobRef, std::result::Result<&[u8], String>),
    ) {
        wanted.sort_by(|(_, a), (_, b)| (&a.pack, a.offset).cmp(&(&b.pack, b.offset)));
        let mut rest = wanted.into_iter().peekable();
        let mut group: Vec<Vec<(T, BlobRef)>> = Vec::new();
        let mut group_bytes = 0;
        while let Some(first) = rest.next() {
            let mut run = vec![first];
            while let Some((_, next)) = rest.peek() {
                let (_, last) = run.last().expect("run is never empty");
                let end = last.offset + last.length;
                let near = next.pack == last.pack
                    && next.offset >= last.offset
                    && next.offset <= end + MAX_GAP;
                if !near || next.offset + next.length - run[0].1.offset > MAX_MERGED_READ {
                    break;
                }
                run.push(rest.next().expect("peeked"));
            }
            let (start, end) = span(&run);
            if group_bytes + (end - start) > IN_FLIGHT_BYTES && !group.is_empty() {
                self.read_group(std::mem::take(&mut group), &mut each);
                group_bytes = 0;
            }
            group_bytes += end - start;
            group.push(run);
            if group.len() >= IN_FLIGHT_READS {
                self.read_group(std::mem::take(&mut group), &mut each);
                group_bytes = 0;
            }
        }
        if !group.is_empty() {
            self.read_group(group, &mut each);
        }
    }

    /// Reads the runs of `group` together, then hands each blob to `each`.
    fn read_group<T>(
        &mut self,
        group: Vec<Vec<(T, BlobRef)>>,
        each: &mut impl FnMut(T, &BlobRef, std::result::Result<&[u8], String>),
    ) {
        let ranges: Vec<(String, u64, u64)> = group
            .iter()
            .map(|run| {
                let (start, end) = span(run);
                (pack_object(&run[0].1.pack), start, end - start)
            })
            .collect();
        let total: u64 = ranges.iter().map(|(_, _, len)| len).sum();
        let total = usize::try_from(total).expect("a group's reads fit in memory");
        // Grown once to the largest group and never shrunk: zero-filled only the first time.
        if self.buffer.len() < total {
            self.buffer.resize(total, 0);
        }
        let results = self.backend.read_ranges(&ranges, &mut self.buffer[..total]);
        let mut at_run = 0;
        for ((run, result), (_, _, len)) in group.into_iter().zip(results).zip(&ranges) {
            let read = &self.buffer[at_run..at_run + *len as usize];
            at_run += *len as usize;
            let start = span(&run).0;
            match result {
                Ok(()) => {
                    for (tag, blob) in run {
                        let at = (blob.offset - start) as usize;
                        let stored = &read[at..at + blob.length as usize];
                        let raw = self
                            .decoder
                            .decode(&blob, stored)
                            .map_err(|e| e.to_string());
                        each(tag, &blob, raw);
                    }
                }
                Err(err) => {
                    let reason = err.to_string();
                    for (tag, blob) in run {
                        each(tag, &blob, Err(reason.clone()));
                    }
                }
            }
        }
    }
}

/// The bytes a merged read of `run` covers: from its first blob to the end of the last.
fn span<T>(run: &[(T, BlobRef)]) -> (u64, u64) {
    let start = run[0].1.offset;
    let end = run
        .iter()
        .map(|(_, blob)| blob.offset + blob.length)
        .max()
        .unwrap_or(start);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::id::ContentId;
    use crate::pack::PackWriter;

    /// A fetcher of the plaintext repository in `backend`.
    fn plaintext_fetcher(backend: &Arc<dyn Backend>) -> Fetcher<'_> {
        let dictionaries = Arc::new(Dictionaries::new(Arc::clone(backend)));
        Fetcher::new(backend.as_ref(), Keys::plaintext(), dictionaries).unwrap()
    }

    #[test]
    fn merged_reads_return_each_blob_and_name_damage() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let mut writer =
            PackWriter::new(backend.clone(), 1 << 20, crate::crypto::Keys::plaintext());
        let blobs: Vec<BlobRef> = [&b"one"[..], b"two", b"three"]
            .iter()
            .map(|raw| {
                writer
                    .add(
                        ContentId::of(raw),
                        &mut raw.to_vec(),
                        raw.len() as u64,
                        false,
                    )
                    .unwrap()
            })
            .collect();
        writer.finish().unwrap();
        let mut missing = blobs[2].clone();
        missing.pack = "ff".repeat(16);
        let mut wrong = blobs[1].clone();
        wrong.id = ContentId::of(b"else");

        let wanted = vec![
            (0, blobs[0].clone()),
            (1, wrong),
            (2, blobs[2].clone()),
            (3, missing),
        ];
        let mut seen = Vec::new();
        plaintext_fetcher(&backend).fetch_each(wanted, |tag, _, result| {
            seen.push((tag, result.map(<[u8]>::to_vec)))
        });
        assert_eq!(seen[0], (0, Ok(b"one".to_vec())));
        assert!(seen[1].1.as_ref().unwrap_err().contains("does not match"));
        assert_eq!(seen[2], (2, Ok(b"three".to_vec())));
        assert!(seen[3].1.as_ref().unwrap_err().contains("missing"));
    }

    #[test]
    fn blobs_asked_out_of_pack_order_twice_or_across_a_gap_come_back_each_with_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let pack = |contents: &[&[u8]]| -> Vec<BlobRef> {
            let mut writer =
                PackWriter::new(backend.clone(), 64 << 20, crate::crypto::Keys::plaintext());
            let blobs = contents
                .iter()
                .map(|raw| {
                    let id = ContentId::of(raw);
                    let length = raw.len() as u64;
                    writer.add(id, &mut raw.to_vec(), length, false).unwrap()
                })
                .collect();
            writer.finish().unwrap();
            blobs
        };
        let gap = vec![7u8; 100 << 10];
        let a = pack(&[b"a0", &gap, b"a2"]);
        let b = pack(&[b"b0", b"b1"]);
        // Interleaved packs, reversed offsets, one blob twice, and a gap under MAX_GAP.
        let wanted = vec![
            ("a2", a[2].clone()),
            ("b1", b[1].clone()),
            ("a0", a[0].clone()),
            ("b0", b[0].clone()),
            ("a2 again", a[2].clone()),
        ];
        let mut seen = Vec::new();
        plaintext_fetcher(&backend).fetch_each(wanted, |tag, _, result| {
            seen.push((tag, result.unwrap().to_vec()))
        });
        seen.sort();
        let expected: Vec<(&str, Vec<u8>)> = [
            ("a0", &b"a0"[..]),
            ("a2", b"a2"),
            ("a2 again", b"a2"),
            ("b0", b"b0"),
            ("b1", b"b1"),
        ]
        .iter()
        .map(|(tag, raw)| (*tag, raw.to_vec()))
        .collect();
        assert_eq!(seen, expected);
    }
}
