//! The local folder where packs and manifests are built before they are uploaded.
//!
//! Each backend gets its own folder under the system temp directory, removed when the backend
//! is dropped, so concurrent backups never share staged files. A process killed outright leaves
//! its folder behind; such folders, untouched for `STALE_AFTER`, are removed by the next backend
//! (a running backup writes into its folder all the time, so it never looks stale).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{IoContext, Result};

const PREFIX: &str = "backplan-nfs-objects-";
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub(super) struct StagingDir(PathBuf);

impl StagingDir {
    pub(super) fn create() -> Result<Self> {
        let temp = std::env::temp_dir();
        remove_stale(&temp);
        let path = temp.join(format!("{PREFIX}{}", crate::id::random_name()));
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

/// Best effort: a folder that cannot be inspected or removed is left alone.
fn remove_stale(temp: &Path) {
    let Ok(entries) = fs::read_dir(temp) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(PREFIX)
            && entry.metadata().is_ok_and(|meta| {
                meta.is_dir()
                    && meta
                        .modified()
                        .is_ok_and(|at| now.duration_since(at).unwrap_or_default() > STALE_AFTER)
            });
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
