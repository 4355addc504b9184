//! Where a plan's catalog lives: a small storage contract, and the local folder that fulfils it.
//!
//! A [`CatalogStore`] keeps whole records by run id and hands out the plan's [`LockStore`]; every
//! rule about records (what `latest` means, marking dead runs) lives in [`super::Catalog`] above
//! it, so a folder and an S3 prefix behave alike. A store is small on purpose: writing a record
//! whole, reading one, listing the ids (every page of them), and the lock.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::file_lock::FileLockStore;
use super::lock::LockStore;

/// One plan's records and lock.
pub trait CatalogStore: Send + Sync + Debug {
    /// Writes the record of `run_id` whole: a reader sees the old bytes or the new, never a mix.
    fn put_record(&self, run_id: &str, bytes: &[u8]) -> io::Result<()>;
    /// The record of `run_id`, if there is one.
    fn get_record(&self, run_id: &str) -> io::Result<Option<Vec<u8>>>;
    /// The records of `run_ids`, each with its own outcome; a store may fetch them in parallel.
    fn get_records(&self, run_ids: &[String]) -> Vec<io::Result<Option<Vec<u8>>>> {
        run_ids.iter().map(|id| self.get_record(id)).collect()
    }
    /// The id of every record, in no particular order.
    fn record_ids(&self) -> io::Result<Vec<String>>;
    /// The plan's lock.
    fn lock(&self) -> Box<dyn LockStore>;
    /// Where the record of `run_id` is (or, with `None`, the plan's catalog), for messages.
    fn location(&self, run_id: Option<&str>) -> String;
    /// Removes what half-finished writes of dead processes left. Called only while holding the
    /// plan's lock, when no other writer of this plan's records can be at work.
    fn remove_leftovers(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The catalog of one plan in a local (or NFS-mounted) folder:
///
/// ```text
/// <folder>/<plan>/runs/<run-id>.json   one record per run, rewritten as the run goes
/// <folder>/<plan>/lock                 held by the one run of this plan under way
/// ```
///
/// Every write is atomic: a temp file in the same folder, fsync, rename, fsync of the folder.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// The catalog of `plan` under `folder`, created if needed.
    pub fn open(folder: &Path, plan: &str) -> io::Result<Self> {
        let root = folder.join(plan);
        fs::create_dir_all(root.join("runs"))?;
        Ok(LocalStore { root })
    }

    fn record_path(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(format!("{run_id}.json"))
    }
}

/// Whether a temp file name is one [`write_atomic`] makes.
fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Writes `bytes` to `path` atomically: a new temp file (never through a planted link), fsync,
/// rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

impl CatalogStore for LocalStore {
    fn put_record(&self, run_id: &str, bytes: &[u8]) -> io::Result<()> {
        write_atomic(&self.record_path(run_id), bytes)
    }

    fn get_record(&self, run_id: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.record_path(run_id)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn record_ids(&self) -> io::Result<Vec<String>> {
        Ok(fs::read_dir(self.root.join("runs"))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                (!id.starts_with('.')).then(|| id.to_owned())
            })
            .collect())
    }

    fn lock(&self) -> Box<dyn LockStore> {
        Box::new(FileLockStore::new(&self.root))
    }

    fn location(&self, run_id: Option<&str>) -> String {
        match run_id {
            Some(id) => self.record_path(id).display().to_string(),
            None => self.root.display().to_string(),
        }
    }

    fn remove_leftovers(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join("runs"))?.flatten() {
            if is_temp(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}
