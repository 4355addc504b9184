//! The local folder where packs and manifests are built before they are uploaded.
//!
//! Each backend gets its own folder under the system temp directory, removed when the backend
//! is dropped, so concurrent backups never share staged files. A process killed outright leaves
//! its folder behind; the folder is named after its writer (see `leftovers`), so the next backup
//! or prune removes it as soon as that process is provably gone, or once untouched for the
//! collection's `max_age` when that cannot be told.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::backend::leftovers::{self, Leftovers};
use crate::error::{IoContext, Result};

const PREFIX: &str = "backplan-nfs-objects-";

#[derive(Debug)]
pub(super) struct StagingDir(PathBuf);

impl StagingDir {
    pub(super) fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("{PREFIX}{}", leftovers::staged_name("")));
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

/// Removes the staging folders of dead S3 backups (of any repository) under `temp`.
pub(super) fn collect_leftovers(temp: &Path, max_age: Duration, dry_run: bool) -> Leftovers {
    leftovers::collect(temp, PREFIX, max_age, SystemTime::now(), dry_run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_s3_backups_staging_folder_is_collected_and_a_live_ones_kept() {
        let temp = tempfile::tempdir().unwrap();
        let live = temp
            .path()
            .join(format!("{PREFIX}{}", leftovers::staged_name("")));
        fs::create_dir(&live).unwrap();
        fs::write(live.join("p.pack"), b"being written").unwrap();
        // Named before writers were named: judged by age only.
        let old = temp
            .path()
            .join(format!("{PREFIX}0123456789abcdef0123456789abcdef"));
        fs::create_dir(&old).unwrap();
        fs::write(old.join("p.pack"), b"left by a kill").unwrap();
        let removed = collect_leftovers(temp.path(), Duration::from_secs(3600), false);
        assert_eq!(removed, Leftovers::default(), "both were touched just now");
        let removed = collect_leftovers(temp.path(), Duration::ZERO, false);
        assert_eq!(
            removed,
            Leftovers {
                files: 1,
                bytes: 14
            }
        );
        assert!(live.exists() && !old.exists());
    }
}
