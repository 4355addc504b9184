//! The local folder where packs and manifests are built before they are uploaded.
//!
//! Each backend gets its own folder under the system temp directory, removed when the backend
//! is dropped, so concurrent backups never share staged files and nothing outlives the run.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

#[derive(Debug)]
pub(super) struct StagingDir(PathBuf);

impl StagingDir {
    pub(super) fn create() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("backplan-nfs-objects-{}", crate::id::random_name()));
        fs::create_dir_all(&path).at(&path)?;
        Ok(Self(path))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
