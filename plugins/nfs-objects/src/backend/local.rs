//! A repository in a local folder (or any mounted filesystem).
//!
//! Objects are plain files named like their object names. Writes go to `tmp/` inside the
//! repository, are fsynced, then renamed into place, and the folder holding them is fsynced, so a
//! crash never leaves a half-written object under its final name. What a killed writer leaves in
//! `tmp/` is collected by the next backup or prune (see `leftovers`).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Backend, Leftovers, Lock, ObjectInfo, leftovers};
use crate::error::{Error, Result};

/// The folder holding staged, not yet published files.
const STAGING: &str = "tmp";

/// A repository rooted at a local folder.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    staging: PathBuf,
}

impl LocalBackend {
    /// Uses (and creates when missing) the folder `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let staging = root.join(STAGING);
        fs::create_dir_all(&staging).map_err(|source| Error::Io {
            path: staging.clone(),
            source,
        })?;
        Ok(Self { root, staging })
    }

    /// Uses the folder `root` as it is and creates nothing, for actions that only read (check,
    /// discover, verify, restore): a mistyped or unmounted path must not become an empty
    /// repository folder. Its staging folder is `tmp/` all the same, should it exist.
    pub fn reading(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let staging = root.join(STAGING);
        Self { root, staging }
    }

    /// Whether folder `root` holds nothing but staged files in `tmp/`: what a first backup
    /// killed before it wrote `config.json` leaves, as good as empty. `None` if it cannot be
    /// read.
    pub fn holds_only_staged_files(root: &Path) -> Option<bool> {
        for entry in fs::read_dir(root).ok()? {
            let entry = entry.ok()?;
            if entry.file_name() != STAGING || !entry.file_type().ok()?.is_dir() {
                return Some(false);
            }
            for staged in fs::read_dir(entry.path()).ok()? {
                let staged = staged.ok()?;
                let name = staged.file_name();
                let file = staged.file_type().ok()?.is_file();
                if !file || !name.to_str().is_some_and(leftovers::is_staged_name) {
                    return Some(false);
                }
            }
        }
        Some(true)
    }

    fn path_of(&self, name: &str) -> Result<PathBuf> {
        let valid = !name.is_empty()
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !valid {
            return Err(Error::Invalid(format!("bad object name {name:?}")));
        }
        Ok(self.root.join(name))
    }

    /// Creates the folders above `path` that are missing, fsyncing each new folder's parent so
    /// the new entry itself is durable.
    fn ensure_parent(&self, name: &str, path: &Path) -> Result<()> {
        let parent = path.parent().unwrap_or(&self.root);
        if parent.is_dir() {
            return Ok(());
        }
        if let Some(grandparent) = parent.parent() {
            if !grandparent.is_dir() {
                self.ensure_parent(name, parent)?;
            }
            fs::create_dir(parent)
                .or_else(|err| match err.kind() {
                    io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(err),
                })
                .map_err(|source| backend_error(name, source))?;
            sync_dir(grandparent).map_err(|source| backend_error(name, source))?;
        }
        Ok(())
    }

    fn publish(&self, name: &str, staged: &Path) -> Result<()> {
        let path = self.path_of(name)?;
        self.ensure_parent(name, &path)?;
        fs::rename(staged, &path).map_err(|source| backend_error(name, source))?;
        sync_dir(path.parent().unwrap_or(&self.root)).map_err(|source| backend_error(name, source))
    }

    fn list_into(&self, dir: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(backend_error(prefix, source)),
        };
        for entry in entries {
            let entry = entry.map_err(|source| backend_error(prefix, source))?;
            let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let name = format!("{prefix}{file_name}");
            let meta = entry
                .metadata()
                .map_err(|source| backend_error(&name, source))?;
            if meta.is_dir() {
                self.list_into(&entry.path(), &format!("{name}/"), out)?;
            } else {
                out.push(ObjectInfo {
                    name,
                    size: meta.len(),
                    modified: meta
                        .modified()
                        .map_err(|source| backend_error(prefix, source))?,
                });
            }
        }
        Ok(())
    }
}

impl Backend for LocalBackend {
    fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn collect_leftovers(&self, max_age: Duration, dry_run: bool) -> Leftovers {
        leftovers::collect(&self.staging, "", max_age, SystemTime::now(), dry_run)
    }

    fn put_file(&self, name: &str, staged: &Path) -> Result<()> {
        File::open(staged)
            .and_then(|file| file.sync_all())
            .map_err(|source| backend_error(name, source))?;
        self.publish(name, staged)
    }

    fn put_bytes(&self, name: &str, data: &[u8]) -> Result<()> {
        let staged = self.staging_file("");
        let written = File::create(&staged).and_then(|mut file| {
            file.write_all(data)?;
            file.sync_all()
        });
        if let Err(source) = written {
            let _ = fs::remove_file(&staged);
            return Err(backend_error(name, source));
        }
        self.publish(name, &staged)
    }

    /// A hard link: objects are never modified, and deleting one name leaves the other, so the
    /// copy shares the bytes instead of writing them again. Its time is set to now, so the new
    /// object is as young as a fresh write to prune's grace for unreferenced objects. On a
    /// filesystem without hard links (or a file this user may not touch), the bytes are copied.
    fn copy(&self, from: &str, to: &str) -> Result<()> {
        let source = self.path_of(from)?;
        let staged = self.staging_file("");
        if let Err(err) = fs::hard_link(&source, &staged) {
            return match err.kind() {
                io::ErrorKind::NotFound => Err(Error::MissingObject(from.to_owned())),
                _ => super::copy_through_staging(self, from, to),
            };
        }
        let touched = File::open(&staged).and_then(|file| {
            file.set_modified(SystemTime::now())?;
            file.sync_all()
        });
        if touched.is_err() {
            let _ = fs::remove_file(&staged);
            return super::copy_through_staging(self, from, to);
        }
        self.publish(to, &staged)
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        fs::read(self.path_of(name)?).map_err(|source| backend_error(name, source))
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let mut buffer = vec![0; usize::try_from(len).map_err(|_| too_large(name))?];
        self.read_range(name, offset, &mut buffer)?;
        Ok(buffer)
    }

    fn read_range(&self, name: &str, offset: u64, into: &mut [u8]) -> Result<()> {
        let file = File::open(self.path_of(name)?).map_err(|source| backend_error(name, source))?;
        file.read_exact_at(into, offset)
            .map_err(|source| match source.kind() {
                io::ErrorKind::UnexpectedEof => Error::Corrupt {
                    name: name.to_owned(),
                    reason: format!("shorter than {} bytes", offset + into.len() as u64),
                },
                _ => backend_error(name, source),
            })
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let file = File::open(self.path_of(name)?).map_err(|source| backend_error(name, source))?;
        Ok(Box::new(io::BufReader::with_capacity(256 * 1024, file)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = prefix.trim_end_matches('/');
        let mut out = Vec::new();
        self.list_into(&self.path_of(dir)?, &format!("{dir}/"), &mut out)?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        self.path_of(name)?
            .try_exists()
            .map_err(|source| backend_error(name, source))
    }

    /// A folder has no Object Lock: nothing to extend.
    fn protect(&self, _names: &[String], _time: jiff::Timestamp) -> Result<usize> {
        Ok(0)
    }

    /// A folder has no Object Lock: nothing is ever locked.
    fn lock(&self, _name: &str) -> Result<Lock> {
        Ok(Lock::default())
    }

    fn delete(&self, name: &str) -> Result<()> {
        match fs::remove_file(self.path_of(name)?) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(backend_error(name, err)),
            _ => Ok(()),
        }
    }
}

fn backend_error(name: &str, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::NotFound {
        Error::MissingObject(name.to_owned())
    } else {
        // A disk or NFS server that failed once may answer the next attempt.
        Error::Backend {
            name: name.to_owned(),
            source,
            transient: true,
        }
    }
}

fn too_large(name: &str) -> Error {
    Error::Invalid(format!("range of {name} does not fit in memory"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        backend.put_bytes("data/ab/one", b"hello world").unwrap();
        backend.put_bytes("data/cd/two", b"x").unwrap();
        assert_eq!(backend.get("data/ab/one").unwrap(), b"hello world");
        assert_eq!(backend.get_range("data/ab/one", 6, 5).unwrap(), b"world");
        assert!(matches!(
            backend.get_range("data/ab/one", 6, 50),
            Err(Error::Corrupt { .. })
        ));
        let names: Vec<_> = backend
            .list("data/")
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["data/ab/one", "data/cd/two"]);
        assert!(backend.exists("data/cd/two").unwrap());
        backend.delete("data/cd/two").unwrap();
        backend.delete("data/cd/two").unwrap();
        assert!(!backend.exists("data/cd/two").unwrap());
        assert!(matches!(
            backend.get("data/cd/two"),
            Err(Error::MissingObject(_))
        ));
        assert!(backend.list("nothing/").unwrap().is_empty());
        // Nothing is left behind in the staging folder.
        assert_eq!(fs::read_dir(backend.staging_dir()).unwrap().count(), 0);
    }

    #[test]
    fn rejects_names_that_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        assert!(matches!(
            backend.put_bytes("../x", b""),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(backend.get("a//b"), Err(Error::Invalid(_))));
    }

    #[test]
    fn a_copy_is_a_new_name_for_the_same_bytes_and_outlives_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        backend.put_bytes("manifests/a", b"manifest bytes").unwrap();
        let old = SystemTime::now() - Duration::from_secs(7200);
        File::open(dir.path().join("manifests/a"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        backend.copy("manifests/a", "manifests/b").unwrap();
        let copy = &backend.list("manifests/").unwrap()[1];
        assert_eq!(copy.name, "manifests/b");
        assert!(copy.modified.elapsed().unwrap() < Duration::from_secs(600));
        backend.delete("manifests/a").unwrap();
        assert_eq!(backend.get("manifests/b").unwrap(), b"manifest bytes");
        assert!(matches!(
            backend.copy("manifests/a", "manifests/c"),
            Err(Error::MissingObject(name)) if name == "manifests/a"
        ));
        assert_eq!(fs::read_dir(backend.staging_dir()).unwrap().count(), 0);
    }

    #[test]
    fn put_file_moves_the_staged_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        let staged = backend.staging_dir().join("s");
        fs::write(&staged, b"pack bytes").unwrap();
        backend.put_file("data/00/p", &staged).unwrap();
        assert!(!staged.exists());
        let mut text = String::new();
        backend
            .open("data/00/p")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "pack bytes");
    }
}
