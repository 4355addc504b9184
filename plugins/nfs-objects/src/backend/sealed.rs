//! An encrypted repository's backend: indexes, manifests and snapshot headers sealed on the way
//! in and opened on the way out, so the engine reads and writes them as in a plaintext one.
//!
//! Only whole objects are sealed here (see `crypto` for how). Packs pass through untouched:
//! their blobs are sealed one by one by the pack writer, so that a blob stays readable by its
//! byte range; `config.json` and the wrapped keys under `keys/` are never sealed (they are what
//! opening starts from).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{Backend, Leftovers, Lock, ObjectInfo, split_ranges};
use crate::crypto::{Keys, OVERHEAD, ObjectKey, SEGMENT};
use crate::error::{Error, IoContext, Result};
use crate::repo::{DICTIONARY_PREFIX, INDEX_PREFIX, MANIFEST_PREFIX, SNAPSHOT_PREFIX};

/// `inner` with the objects it holds sealed under `keys`.
#[derive(Debug)]
pub struct SealedBackend {
    inner: Arc<dyn Backend>,
    keys: Keys,
}

impl SealedBackend {
    /// `inner`, sealed under `keys` (which must be an encrypted repository's).
    pub fn new(inner: Arc<dyn Backend>, keys: Keys) -> Self {
        debug_assert!(keys.is_encrypted());
        Self { inner, keys }
    }

    /// The key of object `name`, if it is one that is sealed whole.
    fn key(&self, name: &str) -> Option<ObjectKey> {
        let sealed = [
            INDEX_PREFIX,
            MANIFEST_PREFIX,
            SNAPSHOT_PREFIX,
            DICTIONARY_PREFIX,
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix));
        sealed.then(|| self.keys.object_key(name)).flatten()
    }
}

impl Backend for SealedBackend {
    fn staging_dir(&self) -> &Path {
        self.inner.staging_dir()
    }

    fn staging_file(&self, suffix: &str) -> PathBuf {
        self.inner.staging_file(suffix)
    }

    fn collect_leftovers(&self, max_age: Duration, dry_run: bool) -> Leftovers {
        self.inner.collect_leftovers(max_age, dry_run)
    }

    fn put_file(&self, name: &str, staged: &Path) -> Result<()> {
        let Some(key) = self.key(name) else {
            return self.inner.put_file(name, staged);
        };
        let sealed = self.inner.staging_file(".sealed");
        let done =
            seal_file(&key, staged, &sealed).and_then(|()| self.inner.put_file(name, &sealed));
        let _ = std::fs::remove_file(staged);
        if done.is_err() {
            let _ = std::fs::remove_file(&sealed);
        }
        done
    }

    fn put_bytes(&self, name: &str, data: &[u8]) -> Result<()> {
        match self.key(name) {
            Some(key) => self.inner.put_bytes(name, &key.seal(data)?),
            None => self.inner.put_bytes(name, data),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let bytes = self.inner.get(name)?;
        match self.key(name) {
            Some(key) => key.open(&bytes),
            None => Ok(bytes),
        }
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if self.key(name).is_none() {
            return self.inner.get_range(name, offset, len);
        }
        let whole = self.get(name)?;
        let range = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(offset.saturating_add(len)).ok())
            .and_then(|(start, end)| whole.get(start..end));
        range.map(<[u8]>::to_vec).ok_or_else(|| Error::Corrupt {
            name: name.to_owned(),
            reason: format!("shorter than {} bytes", offset.saturating_add(len)),
        })
    }

    fn read_range(&self, name: &str, offset: u64, into: &mut [u8]) -> Result<()> {
        if self.key(name).is_none() {
            return self.inner.read_range(name, offset, into);
        }
        into.copy_from_slice(&self.get_range(name, offset, into.len() as u64)?);
        Ok(())
    }

    fn read_ranges(&self, ranges: &[(String, u64, u64)], into: &mut [u8]) -> Vec<Result<()>> {
        if ranges.iter().all(|(name, _, _)| self.key(name).is_none()) {
            return self.inner.read_ranges(ranges, into);
        }
        split_ranges(ranges, into)
            .map(|((name, offset, _), into)| self.read_range(name, *offset, into))
            .collect()
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let inner = self.inner.open(name)?;
        Ok(match self.key(name) {
            Some(key) => Box::new(Opening::new(key, inner)),
            None => inner,
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name)
    }

    fn protect(&self, names: &[String], time: jiff::Timestamp) -> Result<usize> {
        self.inner.protect(names, time)
    }

    fn lock(&self, name: &str) -> Result<Lock> {
        self.inner.lock(name)
    }

    fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name)
    }
}

/// Seals the file `plain` into a new file `sealed`, one segment at a time.
fn seal_file(key: &ObjectKey, plain: &Path, sealed: &Path) -> Result<()> {
    let mut input = BufReader::with_capacity(SEGMENT, File::open(plain).at(plain)?);
    let mut output = File::create(sealed).at(sealed)?;
    let mut piece = Vec::with_capacity(SEGMENT);
    let mut out = Vec::with_capacity(SEGMENT + OVERHEAD);
    let mut index = 0;
    loop {
        piece.clear();
        (&mut input)
            .take(SEGMENT as u64)
            .read_to_end(&mut piece)
            .at(plain)?;
        let last = input.fill_buf().at(plain)?.is_empty();
        out.clear();
        key.seal_segment(index, last, &piece, &mut out)?;
        output.write_all(&out).at(sealed)?;
        if last {
            return Ok(());
        }
        index += 1;
    }
}

/// A sealed object opened as a stream: one segment in memory at a time, each checked before a
/// byte of it is handed out.
struct Opening {
    key: ObjectKey,
    inner: BufReader<Box<dyn Read + Send>>,
    /// The plaintext of the current segment, and how much of it was read.
    plain: Vec<u8>,
    position: usize,
    next_index: u64,
    finished: bool,
    sealed: Vec<u8>,
}

impl Opening {
    fn new(key: ObjectKey, inner: Box<dyn Read + Send>) -> Self {
        Self {
            key,
            inner: BufReader::with_capacity(SEGMENT + OVERHEAD, inner),
            plain: Vec::new(),
            position: 0,
            next_index: 0,
            finished: false,
            sealed: Vec::with_capacity(SEGMENT + OVERHEAD),
        }
    }

    /// Reads and opens the next segment.
    fn next_segment(&mut self) -> io::Result<()> {
        self.sealed.clear();
        (&mut self.inner)
            .take((SEGMENT + OVERHEAD) as u64)
            .read_to_end(&mut self.sealed)?;
        let last = self.inner.fill_buf()?.is_empty();
        self.plain.clear();
        self.position = 0;
        self.key
            .open_segment(self.next_index, last, &self.sealed, &mut self.plain)
            .map_err(io::Error::other)?;
        self.next_index += 1;
        self.finished = last;
        Ok(())
    }
}

impl Read for Opening {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.plain.len() {
            if self.finished {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let n = buf.len().min(self.plain.len() - self.position);
        buf[..n].copy_from_slice(&self.plain[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    fn sealed() -> (tempfile::TempDir, Arc<dyn Backend>, SealedBackend) {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let backend = SealedBackend::new(inner.clone(), Keys::from_master(&[3; 32]));
        (dir, inner, backend)
    }

    #[test]
    fn indexes_manifests_and_headers_are_sealed_and_read_back_plain() {
        let (_dir, inner, backend) = sealed();
        backend
            .put_bytes("snapshots/s.json", b"{\"id\":\"s\"}")
            .unwrap();
        assert_eq!(backend.get("snapshots/s.json").unwrap(), b"{\"id\":\"s\"}");
        let stored = inner.get("snapshots/s.json").unwrap();
        assert_eq!(stored.len(), 10 + OVERHEAD);
        assert!(!stored.windows(4).any(|w| w == b"\"id\""));

        let manifest: Vec<u8> = (0..3 * SEGMENT + 17).map(|i| (i % 251) as u8).collect();
        let staged = backend.staging_file(".manifest");
        std::fs::write(&staged, &manifest).unwrap();
        backend.put_file("manifests/m.jsonl.zst", &staged).unwrap();
        assert!(!staged.exists());
        let mut read = Vec::new();
        backend
            .open("manifests/m.jsonl.zst")
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, manifest);
        assert_eq!(
            inner.get("manifests/m.jsonl.zst").unwrap().len(),
            manifest.len() + 4 * OVERHEAD
        );
        assert_eq!(std::fs::read_dir(backend.staging_dir()).unwrap().count(), 0);
    }

    #[test]
    fn packs_and_the_config_pass_through() {
        let (_dir, inner, backend) = sealed();
        backend.put_bytes("data/ab/ab.pack", b"blobs").unwrap();
        assert_eq!(inner.get("data/ab/ab.pack").unwrap(), b"blobs");
        assert_eq!(backend.get_range("data/ab/ab.pack", 1, 2).unwrap(), b"lo");
        for name in ["config.json", "keys/0123456789abcdef.json"] {
            backend.put_bytes(name, b"{}").unwrap();
            assert_eq!(
                inner.get(name).unwrap(),
                b"{}",
                "{name} is what opening starts from"
            );
        }
    }

    #[test]
    fn a_sealed_object_moved_to_another_name_does_not_open() {
        let (_dir, inner, backend) = sealed();
        backend.put_bytes("index/a.json", b"[]").unwrap();
        inner
            .put_bytes("index/b.json", &inner.get("index/a.json").unwrap())
            .unwrap();
        let err = backend.get("index/b.json").unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { name, .. } if name == "index/b.json"),
            "{err}"
        );
        // A stream ends in an error, not in bytes, when a segment does not open.
        let mut flipped = inner.get("index/a.json").unwrap();
        flipped[14] ^= 1;
        inner.put_bytes("index/a.json", &flipped).unwrap();
        let mut read = Vec::new();
        let err = backend
            .open("index/a.json")
            .unwrap()
            .read_to_end(&mut read)
            .unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
        assert!(read.is_empty());
    }
}
