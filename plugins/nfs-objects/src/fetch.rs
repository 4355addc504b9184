//! Reading blobs back, one request per run of neighbouring blobs.
//!
//! A backup worker appends the small files of a batch one after another to its pack, so restore
//! and verify usually ask for blobs that sit next to each other. Merging them into one ranged read
//! turns thousands of tiny reads (or S3 GETs) into a few large ones.

use crate::backend::Backend;
use crate::blob::{BlobRef, Decoder};
use crate::crypto::Keys;
use crate::error::Result;
use crate::repo::pack_object;

/// Neighbouring blobs are merged into one read up to this many bytes (each worker keeps a
/// buffer this large; 16 MiB was no faster and cost 15 MB more peak memory).
const MAX_MERGED_READ: u64 = 4 << 20;

/// What a worker needs to read blobs back: the backend, a zstd decoder and a read buffer, both
/// kept from one call to the next.
pub struct Fetcher<'a> {
    backend: &'a dyn Backend,
    decoder: Decoder,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Fetcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("buffer", &self.buffer.capacity())
            .finish_non_exhaustive()
    }
}

impl<'a> Fetcher<'a> {
    /// A fetcher of blobs named and sealed with `keys`.
    pub fn new(backend: &'a dyn Backend, keys: Keys) -> Result<Self> {
        Ok(Self {
            backend,
            decoder: Decoder::new(keys)?,
            buffer: Vec::new(),
        })
    }

    /// Fetches and checks each `(tag, blob)`, calling `each` with the raw bytes or why they could
    /// not be had. Blobs are visited in the given order.
    pub fn fetch_each<T>(
        &mut self,
        wanted: Vec<(T, BlobRef)>,
        mut each: impl FnMut(T, &BlobRef, std::result::Result<&[u8], String>),
    ) {
        let mut rest = wanted.into_iter().peekable();
        while let Some(first) = rest.next() {
            let mut run = vec![first];
            while let Some((_, next)) = rest.peek() {
                let (_, last) = run.last().expect("run is never empty");
                let adjacent = next.pack == last.pack && next.offset == last.offset + last.length;
                if !adjacent || next.offset + next.length - run[0].1.offset > MAX_MERGED_READ {
                    break;
                }
                run.push(rest.next().expect("peeked"));
            }
            let start = run[0].1.offset;
            let end = run
                .last()
                .map_or(start, |(_, blob)| blob.offset + blob.length);
            let object = pack_object(&run[0].1.pack);
            match self
                .backend
                .get_range_into(&object, start, end - start, &mut self.buffer)
            {
                Ok(()) => {
                    for (tag, blob) in run {
                        let at = (blob.offset - start) as usize;
                        let stored = &self.buffer[at..at + blob.length as usize];
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::id::ContentId;
    use crate::pack::PackWriter;
    use std::sync::Arc;

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
        Fetcher::new(backend.as_ref(), Keys::plaintext())
            .unwrap()
            .fetch_each(wanted, |tag, _, result| {
                seen.push((tag, result.map(<[u8]>::to_vec)))
            });
        assert_eq!(seen[0], (0, Ok(b"one".to_vec())));
        assert!(seen[1].1.as_ref().unwrap_err().contains("does not match"));
        assert_eq!(seen[2], (2, Ok(b"three".to_vec())));
        assert!(seen[3].1.as_ref().unwrap_err().contains("missing"));
    }
}
