//! The plan lock as a file in a local (or NFS-mounted) catalog folder.
//!
//! - **Create** writes the owner into a private temp file, then `link(2)`s it to `lock`: the link
//!   either appears with every byte in it or fails with `EEXIST`. `link` is atomic on local file
//!   systems and on every NFS server (the classic NFS-safe lock file); a lost NFS reply is
//!   recognised by the temp file's link count.
//! - **Replace** and **remove** compare the current bytes with the expected ones and act while
//!   holding `flock(2)` on `lock.guard`, a file that is never removed; the kernel drops the
//!   flock if the process dies, so the guard itself can never go stale. The guard is held for a
//!   read and a rename, never during a run.
//!
//! On NFS, `flock` is carried by NFS byte-range locking (NFSv4, or NFSv3 with lockd). On a mount
//! without it (`nolock`, `local_lock=flock|all`), creating the lock is still safe, but two hosts
//! reclaiming the *same stale* lock at the same instant could both win; keep such catalogs on
//! one machine, or use an S3 catalog.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::lock::{Held, LockStore};

/// The lock file `<dir>/lock`, guarded by `<dir>/lock.guard`.
#[derive(Debug, Clone)]
pub struct FileLockStore {
    dir: PathBuf,
}

impl FileLockStore {
    /// The lock of the catalog folder `dir` (which must exist).
    pub fn new(dir: &Path) -> Self {
        FileLockStore {
            dir: dir.to_owned(),
        }
    }

    /// The lock file.
    pub fn path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    fn temp_path(&self) -> PathBuf {
        self.dir.join(format!(
            ".lock.new-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    /// Writes `bytes` to a new temp file, synced, and returns its path.
    fn write_temp(&self, bytes: &[u8]) -> io::Result<PathBuf> {
        let temp = self.temp_path();
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        match result {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Holds the guard's flock until the returned file is dropped.
    fn guard(&self) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join("lock.guard"))?;
        loop {
            // SAFETY: flock on a descriptor we own; released when the file is closed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(file);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

fn held(bytes: Vec<u8>, meta: &fs::Metadata) -> io::Result<Held> {
    Ok(Held {
        tag: crate::digest::sha256_hex(&bytes),
        written: meta.modified()?,
        bytes,
    })
}

impl LockStore for FileLockStore {
    fn create(&self, bytes: &[u8]) -> io::Result<Option<Held>> {
        let temp = self.write_temp(bytes)?;
        let linked = match fs::hard_link(&temp, self.path()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            // Over NFS a retransmitted LINK can fail although the first one worked.
            Err(e) => match fs::metadata(&temp) {
                Ok(meta) if meta.nlink() == 2 => Ok(true),
                _ => Err(e),
            },
        };
        let meta = fs::metadata(&temp);
        let _ = fs::remove_file(&temp);
        if !linked? {
            return Ok(None);
        }
        self.sync_dir()?;
        Ok(Some(held(bytes.to_vec(), &meta?)?))
    }

    fn read(&self) -> io::Result<Option<Held>> {
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path())
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes)?;
        Ok(Some(held(bytes, &file.metadata()?)?))
    }

    fn replace(&self, expected: &Held, bytes: &[u8]) -> io::Result<Option<Held>> {
        let _guard = self.guard()?;
        match self.read()? {
            Some(current) if current.bytes == expected.bytes => {}
            _ => return Ok(None),
        }
        let temp = self.write_temp(bytes)?;
        let meta = fs::metadata(&temp);
        if let Err(e) = fs::rename(&temp, self.path()) {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        self.sync_dir()?;
        Ok(Some(held(bytes.to_vec(), &meta?)?))
    }

    fn remove(&self, expected: &Held) -> io::Result<bool> {
        let _guard = self.guard()?;
        match self.read()? {
            Some(current) if current.bytes == expected.bytes => {}
            _ => return Ok(false),
        }
        fs::remove_file(self.path())?;
        self.sync_dir()?;
        Ok(true)
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::lock::conformance;

    #[test]
    fn the_file_lock_passes_the_lock_contract() {
        conformance::check_all(|| {
            let dir = tempfile::tempdir().unwrap().keep();
            move || Box::new(FileLockStore::new(&dir)) as Box<dyn LockStore>
        });
    }

    #[test]
    fn no_temp_file_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLockStore::new(dir.path());
        let held = store.create(b"one").unwrap().unwrap();
        assert!(store.create(b"two").unwrap().is_none());
        let again = store.replace(&held, b"three").unwrap().unwrap();
        assert!(
            store.replace(&held, b"four").unwrap().is_none(),
            "a stale compare won"
        );
        assert!(store.remove(&again).unwrap());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["lock.guard"]);
    }

    #[test]
    fn a_symlink_planted_as_the_lock_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        let catalog = dir.path().join("catalog");
        fs::create_dir(&catalog).unwrap();
        std::os::unix::fs::symlink(&outside, catalog.join("lock")).unwrap();
        let store = FileLockStore::new(&catalog);
        assert!(store.read().is_err(), "the symlink was read through");
        assert!(store.create(b"mine").unwrap().is_none());
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
    }
}
