//! Writing blobs into pack files.
//!
//! A backup of 20,000 small files must not become 20,000 objects (slow on any filesystem, costly
//! on S3), so blobs are appended to pack files of about `pack_size` bytes. Each worker thread
//! owns one `PackWriter`, so packs are written without locks. A pack is a plain concatenation of
//! stored blobs; its table of contents is the separate `index/<pack>.json` object, published
//! right after the pack. References to a blob are handed out before its pack is sealed; the
//! backup publishes nothing that uses them until every writer has finished.
//!
//! In an encrypted repository each blob is sealed on its own (under its pack's key, see
//! `crypto`) by the worker that stores it, so encryption costs the single coordinating thread
//! nothing, and a blob stays readable by its byte range.
//!
//! The staged pack is written around the page cache in whole aligned blocks (see `direct`): the
//! blobs are gathered in an aligned buffer, each full buffer is one direct write, and the last,
//! zero-padded block is cut back to the pack's true length before the pack is synced.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::backend::Backend;
use crate::blob::BlobRef;
use crate::crypto::{Keys, PackKey};
use crate::direct::{AlignedBuffer, DirectFile};
use crate::error::{IoContext, Result};
use crate::id::{ContentId, random_name};
use crate::repo::{index_object, pack_object};

/// Bytes gathered before one write to the staged pack (direct writes of 1 MiB already run at
/// the disk's speed; the buffer is per worker).
const WRITE_SIZE: usize = 1 << 20;

/// Appends blobs to packs and publishes each pack (then its index) when it is full.
#[derive(Debug)]
pub struct PackWriter {
    backend: Arc<dyn Backend>,
    target_size: u64,
    keys: Keys,
    open: Option<OpenPack>,
    /// Blobs not yet written to the open pack (kept between packs).
    buffer: AlignedBuffer,
    packs_written: u64,
    /// Staged packs are written with `O_DIRECT` (where the filesystem allows it).
    direct: bool,
}

#[derive(Debug)]
struct OpenPack {
    name: String,
    staged: PathBuf,
    file: DirectFile,
    /// Bytes of the pack already written to `file` (a multiple of the buffer's size).
    written: u64,
    length: u64,
    /// Its index: the blobs appended so far.
    blobs: Vec<PackEntry>,
    /// What its blobs are sealed with, in an encrypted repository.
    key: Option<PackKey>,
}

/// A blob of the open pack: its [`BlobRef`] without the pack's name, which all share (a pack of
/// small files holds thousands; at 1,000,000 files every worker's open pack does).
#[derive(Debug)]
struct PackEntry {
    id: ContentId,
    offset: u64,
    length: u64,
    raw_length: u64,
    zstd: bool,
}

/// A pack's entries, serialised as the `[BlobRef]` of its index object.
struct PackIndex<'a> {
    pack: &'a str,
    blobs: &'a [PackEntry],
}

impl Serialize for PackIndex<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        /// One entry, with the fields of [`BlobRef`] in its order.
        #[derive(Serialize)]
        struct Entry<'a> {
            id: &'a ContentId,
            pack: &'a str,
            offset: u64,
            length: u64,
            raw_length: u64,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            zstd: bool,
        }
        serializer.collect_seq(self.blobs.iter().map(|blob| Entry {
            id: &blob.id,
            pack: self.pack,
            offset: blob.offset,
            length: blob.length,
            raw_length: blob.raw_length,
            zstd: blob.zstd,
        }))
    }
}

impl OpenPack {
    /// Appends `bytes` to the pack through `buffer`, writing each time it is full.
    fn append(&mut self, bytes: &[u8], buffer: &mut AlignedBuffer) -> Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let taken = buffer.append(rest);
            rest = &rest[taken..];
            if buffer.spare() == 0 {
                self.write(buffer)?;
            }
        }
        self.length += bytes.len() as u64;
        Ok(())
    }

    /// Writes the full `buffer` at the end of the staged file.
    fn write(&mut self, buffer: &mut AlignedBuffer) -> Result<()> {
        self.file
            .write_all_at(buffer.as_slice(), self.written)
            .at(&self.staged)?;
        self.written += buffer.len() as u64;
        buffer.clear();
        Ok(())
    }
}

impl Drop for OpenPack {
    /// An unsealed pack is never published: remove its staging file.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.staged);
    }
}

impl PackWriter {
    /// A writer closing packs once they reach `target_size` bytes, sealing blobs under `keys`.
    pub fn new(backend: Arc<dyn Backend>, target_size: u64, keys: Keys) -> Self {
        Self {
            backend,
            target_size,
            keys,
            open: None,
            buffer: AlignedBuffer::with_capacity(WRITE_SIZE),
            packs_written: 0,
            direct: true,
        }
    }

    /// Whether staged packs are written around the page cache (default: yes).
    pub fn direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// Appends one stored blob and returns where it will be found. In an encrypted repository
    /// the blob is sealed first, in place: `stored` then holds its ciphertext.
    pub fn add(
        &mut self,
        id: ContentId,
        stored: &mut [u8],
        raw_length: u64,
        zstd: bool,
    ) -> Result<BlobRef> {
        let pack = match &mut self.open {
            Some(pack) => pack,
            None => self
                .open
                .insert(start_pack(&self.backend, &self.keys, self.direct)?),
        };
        let start = pack.length;
        match &pack.key {
            Some(key) => {
                let (nonce, tag) = key.seal_in_place(&id, stored)?;
                for piece in [&nonce[..], stored, tag.as_ref()] {
                    pack.append(piece, &mut self.buffer)?;
                }
            }
            None => pack.append(stored, &mut self.buffer)?,
        }
        let blob = BlobRef {
            id,
            pack: pack.name.clone(),
            offset: start,
            length: pack.length - start,
            raw_length,
            zstd,
        };
        pack.blobs.push(PackEntry {
            id,
            offset: start,
            length: blob.length,
            raw_length,
            zstd,
        });
        if pack.length >= self.target_size {
            self.seal()?;
        }
        Ok(blob)
    }

    /// Seals the last pack; returns how many packs this writer published.
    pub fn finish(mut self) -> Result<u64> {
        self.seal()?;
        Ok(self.packs_written)
    }

    fn seal(&mut self) -> Result<()> {
        let Some(mut pack) = self.open.take() else {
            return Ok(());
        };
        if !self.buffer.is_empty() {
            let tail = self.buffer.padded();
            pack.file
                .write_all_at(tail, pack.written)
                .at(&pack.staged)?;
            self.buffer.clear();
            pack.file.file().set_len(pack.length).at(&pack.staged)?;
        }
        self.backend
            .put_file(&pack_object(&pack.name), &pack.staged)?;
        let index = crate::index::encode_index(&PackIndex {
            pack: &pack.name,
            blobs: &pack.blobs,
        });
        self.backend.put_bytes(&index_object(&pack.name), &index)?;
        self.packs_written += 1;
        Ok(())
    }
}

/// A new, empty staged pack.
fn start_pack(backend: &Arc<dyn Backend>, keys: &Keys, direct: bool) -> Result<OpenPack> {
    let name = random_name();
    let staged = backend.staging_file(".pack");
    let file = if direct {
        DirectFile::create(&staged)
    } else {
        DirectFile::create_buffered(&staged)
    }
    .at(&staged)?;
    Ok(OpenPack {
        key: keys.pack_key(&name),
        name,
        file,
        staged,
        written: 0,
        length: 0,
        blobs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    #[test]
    fn packs_are_sealed_at_the_target_size_with_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let mut writer = PackWriter::new(backend.clone(), 10, Keys::plaintext());
        let a = writer
            .add(
                ContentId::of(b"aaaaaa"),
                &mut b"aaaaaa".to_owned(),
                6,
                false,
            )
            .unwrap();
        let b = writer
            .add(ContentId::of(b"bbbbbb"), &mut b"bbbbbb".to_owned(), 6, true)
            .unwrap();
        let c = writer
            .add(ContentId::of(b"c"), &mut b"c".to_owned(), 1, false)
            .unwrap();
        assert_eq!(a.pack, b.pack);
        assert_eq!(b.offset, 6);
        assert_ne!(c.pack, a.pack, "the first pack was full");
        assert_eq!(writer.finish().unwrap(), 2);

        assert_eq!(backend.get(&pack_object(&a.pack)).unwrap(), b"aaaaaabbbbbb");
        let index = crate::index::read_index(backend.as_ref(), &index_object(&a.pack)).unwrap();
        assert_eq!(index, [a.clone(), b.clone()]);
        // The writer's compact entries serialise exactly as blob references do.
        let stored = backend.get(&index_object(&a.pack)).unwrap();
        let json = zstd::stream::decode_all(&stored[..]).unwrap();
        assert_eq!(json, serde_json::to_vec(&[a, b]).unwrap());
        assert_eq!(fs::read_dir(backend.staging_dir()).unwrap().count(), 0);
    }

    #[test]
    fn an_abandoned_writer_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let mut writer = PackWriter::new(backend.clone(), 1 << 20, Keys::plaintext());
        writer
            .add(ContentId::of(b"x"), &mut b"x".to_owned(), 1, false)
            .unwrap();
        drop(writer);
        assert!(backend.list("data/").unwrap().is_empty());
        assert_eq!(fs::read_dir(backend.staging_dir()).unwrap().count(), 0);
    }
}
