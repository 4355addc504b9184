//! Turning raw bytes into stored blobs and back.
//!
//! Artifacts are often already compressed, so compression must not cost space: a blob is stored
//! zstd-compressed only when that saves at least 1/16 of its size, otherwise raw. The check is
//! "compress into a buffer 1/16 smaller than the input": zstd gives up when the output does not
//! fit, so there is no extra copy. Random bytes cost little that way (zstd level 2 goes through
//! them at about 3 GB/s); judging a blob on a sample first, as this did, stored content-defined
//! chunks that straddle random and compressible data raw (16 MiB more on the bench tree, for no
//! measurable CPU saved). Decoding always checks the result against the content id, so no
//! corrupt byte is ever handed to a caller.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zstd::zstd_safe::{CParameter, Strategy};

use crate::crypto::{Keys, OVERHEAD, PackKey};
use crate::dictionary::Dictionaries;
use crate::direct::AlignedBuffer;
use crate::error::{Error, Result};
use crate::id::ContentId;

/// Blobs shorter than this are never worth a compression attempt.
const MIN_COMPRESS_LEN: usize = 128;

/// Where a blob is stored and how to turn it back into raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// blake3 of the raw bytes (keyed, in an encrypted repository).
    pub id: ContentId,
    /// Name of the pack holding it (32 hex digits; object `data/<first 2>/<name>.pack`).
    pub pack: String,
    /// Byte offset of the stored form inside the pack.
    pub offset: u64,
    /// Length of the stored form (sealed, in an encrypted repository: nonce, ciphertext, tag).
    pub length: u64,
    /// Length of the raw bytes.
    pub raw_length: u64,
    /// Whether the stored form is one zstd frame (otherwise it is the raw bytes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zstd: bool,
}

/// Reusable compression state of one worker thread.
pub struct Encoder {
    compressor: zstd::bulk::Compressor<'static>,
    /// For blobs up to [`DICTIONARY_USE_MAX`] bytes, when the repository has a dictionary.
    with_dictionary: Option<zstd::bulk::Compressor<'static>>,
    output: Vec<u8>,
}

/// At this level (the default), inputs over 256 KiB are searched as zstd does at level 3
/// (double-fast, matches from 5 bytes) instead of level 2's single-fast, 6 bytes, with level
/// 2's tables (smaller blobs are so already). Measured on one full backup each (local): a
/// `target/` folder 1,043.0 → 1,019.1 MB for +5 % CPU (level 3: 1,013.6 MB for +33 %), the
/// bench tree 1,187.6 → 1,180.1 MB for +6 %.
const DOUBLE_FAST_LEVEL: i32 = 2;

/// Blobs up to this size are compressed with the dictionary, if there is one: the largest files
/// it is trained on (see `dictionary`).
pub const DICTIONARY_USE_MAX: usize = 128 << 10;

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder at zstd `level` (1 is fast and already gets most of the gain on logs), with
    /// `dictionary` if given (each frame then names it in its header; see `dictionary`).
    pub fn new(level: i32, dictionary: Option<&[u8]>) -> Result<Self> {
        let invalid = |err: std::io::Error| Error::Invalid(format!("zstd level {level}: {err}"));
        let mut compressor = zstd::bulk::Compressor::new(level).map_err(invalid)?;
        if level == DOUBLE_FAST_LEVEL {
            compressor
                .set_parameter(CParameter::Strategy(Strategy::ZSTD_dfast))
                .and_then(|()| compressor.set_parameter(CParameter::MinMatch(5)))
                .map_err(invalid)?;
        }
        Ok(Self {
            compressor,
            with_dictionary: dictionary
                .map(|dictionary| zstd::bulk::Compressor::with_dictionary(level, dictionary))
                .transpose()
                .map_err(invalid)?,
            output: Vec::new(),
        })
    }

    /// The compressed form of `raw`, or `None` when compression does not save 1/16. Mutable,
    /// so that an encrypted repository seals it in place.
    pub fn compress(&mut self, raw: &[u8]) -> Option<&mut [u8]> {
        if raw.len() < MIN_COMPRESS_LEN {
            return None;
        }
        // Exactly the largest worthwhile size: zstd stops as soon as it is full. The buffer is
        // kept between blobs (a fresh 4 MiB allocation per chunk costs page faults).
        let limit = raw.len() - raw.len() / 16;
        if self.output.len() < limit {
            self.output.resize(limit, 0);
        }
        let compressor = match &mut self.with_dictionary {
            Some(compressor) if raw.len() <= DICTIONARY_USE_MAX => compressor,
            _ => &mut self.compressor,
        };
        match compressor.compress_to_buffer(raw, &mut self.output[..limit]) {
            Ok(len) if len < limit => Some(&mut self.output[..len]),
            _ => None,
        }
    }
}

/// Turns stored blobs back into raw bytes, checked against their ids. Restore and verify pass
/// every byte of a repository through here, so each worker keeps one: a raw blob is checked in
/// place, a compressed one is decompressed into a buffer and with a zstd context that are both
/// reused (a fresh context and 4 MiB buffer per blob cost 5 % of a restore). In an encrypted
/// repository a blob is opened first under its pack's key (kept while the blobs come from the
/// same pack): a raw one into the buffer a decompressed one fills, a compressed one into a
/// second reused buffer. A frame compressed with a dictionary names it in its header; a context
/// is made for each dictionary the first time a blob needs it.
pub struct Decoder {
    contexts: Contexts,
    /// A raw blob's bytes once opened, or a compressed one's decompressed: aligned, so a
    /// restore can write them straight to disk (see `direct`).
    scratch: AlignedBuffer,
    sealing: Sealing,
    /// A compressed blob's stored form once opened (decrypted).
    opened: AlignedBuffer,
}

/// A decoder's keys: the repository's, and the pack key of the last sealed blob opened.
struct Sealing {
    keys: Keys,
    pack_key: Option<PackKey>,
}

/// A decoder's zstd contexts.
struct Contexts {
    decompressor: zstd::bulk::Decompressor<'static>,
    dictionaries: Arc<Dictionaries>,
    /// Contexts holding a dictionary, by its id.
    with_dictionary: HashMap<u32, zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A decoder of blobs named and sealed with `keys`, compressed with `dictionaries`.
    pub fn new(keys: Keys, dictionaries: Arc<Dictionaries>) -> Result<Self> {
        let decompressor = zstd::bulk::Decompressor::new()
            .map_err(|err| Error::Internal(format!("zstd decompressor: {err}")))?;
        Ok(Self {
            contexts: Contexts {
                decompressor,
                dictionaries,
                with_dictionary: HashMap::new(),
            },
            scratch: AlignedBuffer::with_capacity(0),
            sealing: Sealing {
                keys,
                pack_key: None,
            },
            opened: AlignedBuffer::with_capacity(0),
        })
    }

    /// The raw bytes of `blob`, given its stored form.
    pub fn decode<'a>(&'a mut self, blob: &BlobRef, stored: &'a [u8]) -> Result<&'a [u8]> {
        let corrupt = |reason: String| Error::Corrupt {
            name: crate::repo::pack_object(&blob.pack),
            reason: format!("blob {} at offset {}: {reason}", blob.id, blob.offset),
        };
        if stored.len() as u64 != blob.length {
            return Err(corrupt(format!(
                "{} bytes instead of {}",
                stored.len(),
                blob.length
            )));
        }
        let raw: &[u8] = match (self.sealing.keys.is_encrypted(), blob.zstd) {
            (false, false) => stored,
            (false, true) => {
                (self.contexts)
                    .decompress(blob, stored, &mut self.scratch)
                    .map_err(corrupt)?;
                self.scratch.as_slice()
            }
            // A raw blob opens straight into `scratch`, the buffer a decompressed one fills:
            // one chunk-sized buffer per worker, not two.
            (true, false) => {
                (self.sealing)
                    .open(blob, stored, &mut self.scratch)
                    .map_err(corrupt)?;
                self.scratch.as_slice()
            }
            (true, true) => {
                (self.sealing)
                    .open(blob, stored, &mut self.opened)
                    .map_err(corrupt)?;
                (self.contexts)
                    .decompress(blob, self.opened.as_slice(), &mut self.scratch)
                    .map_err(corrupt)?;
                self.scratch.as_slice()
            }
        };
        if raw.len() as u64 != blob.raw_length {
            return Err(corrupt(format!(
                "{} raw bytes instead of {}",
                raw.len(),
                blob.raw_length
            )));
        }
        if self.sealing.keys.id_of(raw) != blob.id {
            return Err(corrupt("content does not match its id".into()));
        }
        Ok(raw)
    }
}

impl Sealing {
    /// Opens sealed blob `stored` under its pack's key into `buffer`.
    fn open(
        &mut self,
        blob: &BlobRef,
        stored: &[u8],
        buffer: &mut AlignedBuffer,
    ) -> std::result::Result<(), String> {
        if self
            .pack_key
            .as_ref()
            .is_none_or(|key| key.pack() != blob.pack)
        {
            self.pack_key = self.keys.pack_key(&blob.pack);
        }
        let key = self
            .pack_key
            .as_ref()
            .expect("encrypted keys make pack keys");
        let length = stored
            .len()
            .checked_sub(OVERHEAD)
            .ok_or_else(|| format!("{} bytes cannot hold a sealed blob", stored.len()))?;
        key.open(&blob.id, stored, &mut buffer.fill_area(length)[..length])?;
        buffer.truncate(length);
        Ok(())
    }
}

impl Contexts {
    /// Decompresses `stored` into `scratch`, with the dictionary its frame names if any.
    fn decompress(
        &mut self,
        blob: &BlobRef,
        stored: &[u8],
        scratch: &mut AlignedBuffer,
    ) -> std::result::Result<(), String> {
        let capacity = usize::try_from(blob.raw_length)
            .map_err(|_| "raw length does not fit in memory".to_owned())?;
        let decompressor = match zstd::zstd_safe::get_dict_id_from_frame(stored) {
            None => &mut self.decompressor,
            Some(id) => match self.with_dictionary.entry(id.get()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    let dictionary = self.dictionaries.get(id.get()).map_err(|why| {
                        format!("compressed with a dictionary that cannot be read: {why}")
                    })?;
                    let decompressor = zstd::bulk::Decompressor::with_dictionary(&dictionary)
                        .map_err(|err| format!("dictionary {:08x}: {err}", id.get()))?;
                    entry.insert(decompressor)
                }
            },
        };
        let len = decompressor
            .decompress_to_buffer(stored, scratch.fill_area(capacity))
            .map_err(|err| err.to_string())?;
        scratch.truncate(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, LocalBackend};

    /// A decoder of a plaintext repository in a folder of its own (kept with it).
    fn decoder() -> (tempfile::TempDir, Arc<dyn Backend>, Decoder) {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let dictionaries = Arc::new(Dictionaries::new(Arc::clone(&backend)));
        let decoder = Decoder::new(Keys::plaintext(), dictionaries).unwrap();
        (dir, backend, decoder)
    }

    fn stored(raw: &[u8], stored: &[u8], zstd: bool) -> BlobRef {
        BlobRef {
            id: ContentId::of(raw),
            pack: "00".repeat(16),
            offset: 0,
            length: stored.len() as u64,
            raw_length: raw.len() as u64,
            zstd,
        }
    }

    #[test]
    fn compressible_data_is_compressed_and_round_trips() {
        let raw = b"INFO build step finished\n".repeat(400);
        let mut encoder = Encoder::new(1, None).unwrap();
        let out = encoder.compress(&raw).expect("text compresses").to_vec();
        assert!(out.len() < raw.len() / 4);
        let (_dir, _, mut decoder) = decoder();
        assert_eq!(
            decoder.decode(&stored(&raw, &out, true), &out).unwrap(),
            raw
        );
    }

    #[test]
    fn random_data_is_stored_raw() {
        let mut rng = fastrand::Rng::with_seed(7);
        let raw: Vec<u8> = (0..100_000).map(|_| rng.u8(..)).collect();
        let mut encoder = Encoder::new(1, None).unwrap();
        assert_eq!(encoder.compress(&raw), None);
        assert_eq!(encoder.compress(b"short"), None);
    }

    /// Regression: a blob was judged on slices spread over it first, and stored raw when they
    /// did not compress, though a run of text between them did.
    #[test]
    fn noise_with_a_run_of_text_between_sample_slices_is_compressed() {
        let mut rng = fastrand::Rng::with_seed(9);
        let mut encoder = Encoder::new(2, None).unwrap();
        let mut blob: Vec<u8> = (0..1 << 20).map(|_| rng.u8(..)).collect();
        assert_eq!(encoder.compress(&blob), None);
        let text = b"INFO compiling src/main.rs\n".repeat(5000);
        blob[8 << 10..128 << 10].copy_from_slice(&text[..120 << 10]);
        assert!(encoder.compress(&blob).is_some());
    }

    #[test]
    fn decode_rejects_flipped_bytes() {
        let raw = b"some artifact".to_vec();
        let mut bad = raw.clone();
        bad[3] ^= 1;
        let (_dir, _, mut decoder) = decoder();
        let err = decoder
            .decode(&stored(&raw, &bad, false), &bad)
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        let err = decoder
            .decode(&stored(&raw, &raw, false), &raw[..5])
            .unwrap_err();
        assert!(err.to_string().contains("5 bytes instead of 13"), "{err}");
    }

    /// A dictionary made of `words`, in the form `dictionary::train` gives (id `id`).
    fn dictionary_of(words: &[u8], id: u32) -> Vec<u8> {
        let samples: Vec<Vec<u8>> = (0..64)
            .map(|n| [words, format!("{n}").as_bytes()].concat().repeat(3))
            .collect();
        let mut dictionary = zstd::dict::from_samples(&samples, 4096).unwrap();
        dictionary[4..8].copy_from_slice(&id.to_le_bytes());
        dictionary
    }

    #[test]
    fn a_blob_compressed_with_a_dictionary_is_read_with_it_and_named_when_it_is_missing() {
        let words = b"INFO compiling backplan-plugin-nfs-objects v0.1.0 (/work/plugins)\n";
        let dictionary = dictionary_of(words, 0x1234_5678);
        let raw = [&words[..], b"and more"].concat().repeat(2);
        let mut encoder = Encoder::new(2, Some(&dictionary)).unwrap();
        let out = encoder.compress(&raw).expect("compresses").to_vec();
        let blob = stored(&raw, &out, true);

        let (_dir, backend, mut decoder) = decoder();
        let err = decoder.decode(&blob, &out).unwrap_err();
        assert!(
            err.to_string()
                .contains("compressed with a dictionary that cannot be read"),
            "{err}"
        );
        // Published, it is read by a fresh decoder; a plain blob still decodes beside it.
        Dictionaries::new(Arc::clone(&backend))
            .publish(dictionary)
            .unwrap();
        let mut decoder = Decoder::new(
            Keys::plaintext(),
            Arc::new(Dictionaries::new(Arc::clone(&backend))),
        )
        .unwrap();
        assert_eq!(decoder.decode(&blob, &out).unwrap(), raw);
        let plain_raw = b"INFO build step finished\n".repeat(400);
        let plain = Encoder::new(2, None)
            .unwrap()
            .compress(&plain_raw)
            .unwrap()
            .to_vec();
        assert_eq!(
            decoder
                .decode(&stored(&plain_raw, &plain, true), &plain)
                .unwrap(),
            plain_raw
        );
    }
}
