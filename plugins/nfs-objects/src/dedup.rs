//! Finding blobs the repository already holds, so identical content is stored once.
//!
//! Unchanged files never come here: the backup reuses their references from the previous
//! manifest. This index catches the rest — the same large artifact or cache under a new path, or a
//! chunk shared between two files. It only tracks blobs of at least `min_length` bytes so its
//! memory grows with the amount of large data, not with the number of files (a repository of
//! 500,000 small files would otherwise need tens of megabytes here); duplicate small files cost
//! little space. It is loaded from the `index/` objects the first time a backup has new data, so
//! a no-change run never pays for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::Backend;
use crate::blob::BlobRef;
use crate::error::{Error, Result};
use crate::id::ContentId;
use crate::repo::INDEX_PREFIX;

/// A lazily loaded map from content id to a stored copy, shared by the worker threads.
#[derive(Debug)]
pub struct DedupIndex {
    backend: Arc<dyn Backend>,
    min_length: u64,
    known: Mutex<Option<HashMap<ContentId, BlobRef>>>,
}

impl DedupIndex {
    /// An index of blobs of at least `min_length` raw bytes.
    pub fn new(backend: Arc<dyn Backend>, min_length: u64) -> Self {
        Self {
            backend,
            min_length,
            known: Mutex::new(None),
        }
    }

    /// Whether blobs of `raw_length` bytes are worth looking up.
    pub fn tracks(&self, raw_length: u64) -> bool {
        raw_length >= self.min_length
    }

    /// A stored copy of content `id`, if the repository has one.
    pub fn find(&self, id: &ContentId) -> Result<Option<BlobRef>> {
        Ok(self.loaded()?.as_ref().and_then(|map| map.get(id).cloned()))
    }

    /// Records a blob this backup has just stored.
    pub fn remember(&self, blob: &BlobRef) -> Result<()> {
        if self.tracks(blob.raw_length) {
            if let Some(map) = self.loaded()?.as_mut() {
                map.insert(blob.id, blob.clone());
            }
        }
        Ok(())
    }

    fn loaded(&self) -> Result<MutexGuard<'_, Option<HashMap<ContentId, BlobRef>>>> {
        let mut guard = self
            .known
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if guard.is_none() {
            let mut map = HashMap::new();
            for object in self.backend.list(INDEX_PREFIX)? {
                let bytes = match self.backend.get(&object.name) {
                    Ok(bytes) => bytes,
                    // Pruned meanwhile: nothing to learn from it.
                    Err(Error::MissingObject(_)) => continue,
                    Err(err) => return Err(err),
                };
                let blobs: Vec<BlobRef> =
                    serde_json::from_slice(&bytes).map_err(|err| Error::Corrupt {
                        name: object.name.clone(),
                        reason: err.to_string(),
                    })?;
                for blob in blobs.into_iter().filter(|b| self.tracks(b.raw_length)) {
                    map.insert(blob.id, blob);
                }
            }
            *guard = Some(map);
        }
        Ok(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::pack::PackWriter;

    #[test]
    fn finds_large_blobs_of_earlier_packs_and_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path()).unwrap());
        let mut writer = PackWriter::new(backend.clone(), 1 << 20);
        let large = writer
            .add(ContentId::of(b"large"), b"large", 5, false)
            .unwrap();
        let small = writer.add(ContentId::of(b"s"), b"s", 1, false).unwrap();
        writer.finish().unwrap();

        let index = DedupIndex::new(backend, 5);
        assert_eq!(index.find(&large.id).unwrap(), Some(large));
        assert_eq!(index.find(&small.id).unwrap(), None, "below min_length");
        let fresh = BlobRef {
            id: ContentId::of(b"fresh"),
            pack: "p".into(),
            offset: 0,
            length: 5,
            raw_length: 5,
            zstd: false,
        };
        assert_eq!(index.find(&fresh.id).unwrap(), None);
        index.remember(&fresh).unwrap();
        assert_eq!(index.find(&fresh.id).unwrap(), Some(fresh));
    }
}
