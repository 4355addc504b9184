//! Walking a tree in manifest order with bounded memory.
//!
//! Depth-first, each folder's names sorted as bytes: this yields paths in exactly the order of
//! [`crate::manifest::path_order`], so the backup can merge-join the walk against the previous
//! manifest. Only the not-yet-visited names of the folders on the current path are held, never
//! the whole tree. Problems with one entry (unreadable folder, entry gone) are reported and the
//! walk goes on.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, IoContext, Result};
use crate::target;

/// Folders deeper than this are looked into by path: each open folder holds a descriptor.
const MAX_OPEN_FOLDERS: usize = 128;

/// One entry found by the walk.
#[derive(Debug)]
pub struct Found {
    /// Path relative to the root, `/`-separated; empty for the root.
    pub relative: Vec<u8>,
    pub absolute: PathBuf,
    /// `lstat` of the entry (symlinks are not followed).
    pub metadata: target::Found,
    /// A symlink's target, read relative to its open folder (`None` for other entries, and for
    /// links in folders looked into by path).
    pub link_target: Option<Vec<u8>>,
}

/// What the walk yields: an entry, or a problem with one path that the caller should report.
#[derive(Debug)]
pub enum Step {
    Found(Found),
    Skipped { path: PathBuf, reason: String },
}

#[derive(Debug)]
struct Folder {
    relative: Vec<u8>,
    absolute: PathBuf,
    /// The folder, open: its entries are looked at by name relative to it, so the kernel does
    /// not resolve the whole path again for each (a third of a no-change run's system time).
    /// `None` below [`MAX_OPEN_FOLDERS`] or when no descriptor was left: by path then.
    handle: Option<OwnedFd>,
    /// Names not yet visited, sorted descending so the next one pops off the end.
    remaining: Vec<OsString>,
}

/// A sorted depth-first walk below a root folder.
#[derive(Debug)]
pub struct Walk {
    root: Option<Found>,
    root_device: u64,
    one_file_system: bool,
    folders: Vec<Folder>,
    skipped: VecDeque<Step>,
}

impl Walk {
    /// Starts a walk of folder `root`. Stays on the root's filesystem when `one_file_system`.
    pub fn new(root: &Path, one_file_system: bool) -> Result<Self> {
        let metadata = target::Found::of_path(root).at(root)?;
        if metadata.kind != FileType::Directory {
            return Err(Error::Io {
                path: root.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        // The root's own listing must work: an unreadable root is not an empty tree.
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let handle = rustix::fs::openat(rustix::fs::CWD, root, flags, Mode::empty())
            .map_err(io::Error::from)
            .at(root)?;
        let remaining = sorted_names(&handle).at(root)?;
        Ok(Self {
            root_device: metadata.device,
            root: Some(Found {
                relative: Vec::new(),
                absolute: root.to_owned(),
                metadata,
                link_target: None,
            }),
            one_file_system,
            folders: vec![Folder {
                relative: Vec::new(),
                absolute: root.to_owned(),
                handle: Some(handle),
                remaining,
            }],
            skipped: VecDeque::new(),
        })
    }

    /// Another descriptor of the folder walked, to read the files found below it (see
    /// `target::open_beneath`).
    pub fn root_folder(&self) -> io::Result<OwnedFd> {
        match self.folders.first().and_then(|root| root.handle.as_ref()) {
            Some(handle) => handle.try_clone(),
            None => Err(io::Error::other("the walk is past its root folder")),
        }
    }

    fn visit(&mut self, name: OsString) -> Option<Step> {
        let parent = self.folders.last()?;
        let absolute = parent.absolute.join(&name);
        let mut relative = parent.relative.clone();
        if !relative.is_empty() {
            relative.push(b'/');
        }
        relative.extend_from_slice(name.as_bytes());
        let looked = match &parent.handle {
            Some(handle) => target::look(handle, name.as_bytes()),
            None => target::Found::of_path(&absolute)
                .map(Some)
                .or_else(|err| match err.kind() {
                    io::ErrorKind::NotFound => Ok(None),
                    _ => Err(err),
                }),
        };
        let metadata = match looked {
            Ok(Some(metadata)) => metadata,
            // Deleted between listing and lstat: it simply is not part of this snapshot.
            Ok(None) => return None,
            Err(err) => {
                return Some(Step::Skipped {
                    path: absolute,
                    reason: err.to_string(),
                });
            }
        };
        // A link's target is read where it was looked at, not through the path again.
        let link_target = match (&parent.handle, metadata.kind) {
            (Some(handle), FileType::Symlink) => {
                match rustix::fs::readlinkat(handle, name.as_bytes(), Vec::new()) {
                    Ok(target) => Some(target.into_bytes()),
                    Err(Errno::NOENT) => return None,
                    Err(err) => {
                        return Some(Step::Skipped {
                            path: absolute,
                            reason: io::Error::from(err).to_string(),
                        });
                    }
                }
            }
            _ => None,
        };
        if metadata.kind == FileType::Directory {
            if self.one_file_system && metadata.device != self.root_device {
                self.skipped.push_back(Step::Skipped {
                    path: absolute.clone(),
                    reason: "another filesystem is mounted here; its content is not backed up"
                        .into(),
                });
            } else {
                match self.open_folder(name.as_bytes(), &absolute) {
                    Ok((handle, remaining)) => self.folders.push(Folder {
                        relative: relative.clone(),
                        absolute: absolute.clone(),
                        handle,
                        remaining,
                    }),
                    Err(err) => self.skipped.push_back(Step::Skipped {
                        path: absolute.clone(),
                        reason: format!("cannot list: {err}"),
                    }),
                }
            }
        }
        Some(Step::Found(Found {
            relative,
            absolute,
            metadata,
            link_target,
        }))
    }

    /// Opens folder `name` of the current folder (at `absolute`) and lists it. Opened from its
    /// parent's descriptor without following a link (the walk's `lstat` said it is a folder;
    /// if it was swapped for a link since, it cannot be listed).
    fn open_folder(
        &self,
        name: &[u8],
        absolute: &Path,
    ) -> io::Result<(Option<OwnedFd>, Vec<OsString>)> {
        let parent = self.folders.last().and_then(|f| f.handle.as_ref());
        let opened = match parent {
            Some(parent) if self.folders.len() < MAX_OPEN_FOLDERS => {
                target::open_folder(parent, name)
            }
            _ => Err(Errno::MFILE.into()),
        };
        match opened {
            Ok(handle) => {
                let names = sorted_names(&handle)?;
                Ok((Some(handle), names))
            }
            Err(err)
                if matches!(
                    Errno::from_io_error(&err),
                    Some(Errno::MFILE | Errno::NFILE)
                ) =>
            {
                Ok((None, sorted_names_at(absolute)?))
            }
            Err(err) => Err(err),
        }
    }
}

impl Iterator for Walk {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        if let Some(root) = self.root.take() {
            return Some(Step::Found(root));
        }
        loop {
            if let Some(skipped) = self.skipped.pop_front() {
                return Some(skipped);
            }
            let folder = self.folders.last_mut()?;
            match folder.remaining.pop() {
                Some(name) => {
                    if let Some(step) = self.visit(name) {
                        return Some(step);
                    }
                }
                None => {
                    self.folders.pop();
                }
            }
        }
    }
}

/// The names in open folder `folder`, sorted descending.
fn sorted_names(folder: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(folder)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    sort_descending(&mut names);
    Ok(names)
}

/// The names in folder `path`, sorted descending.
fn sorted_names_at(path: &Path) -> io::Result<Vec<OsString>> {
    let mut names = fs::read_dir(path)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    sort_descending(&mut names);
    Ok(names)
}

fn sort_descending(names: &mut [OsString]) {
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::path_order;

    #[test]
    fn folders_deeper_than_the_open_ones_are_walked_by_path_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = vec![String::new()];
        let mut relative = String::new();
        for depth in 0..MAX_OPEN_FOLDERS + 20 {
            for name in ["a", "b"] {
                let path = format!(
                    "{relative}{}{name}{depth}",
                    if depth > 0 { "/" } else { "" }
                );
                if name == "a" {
                    fs::write(dir.path().join(&path), b"").unwrap();
                    expected.push(path);
                } else {
                    fs::create_dir(dir.path().join(&path)).unwrap();
                    expected.push(path.clone());
                    relative = path;
                }
            }
        }
        let mut walk = Walk::new(dir.path(), true).unwrap();
        let (mut paths, mut most_open) = (Vec::new(), 0);
        while let Some(step) = walk.next() {
            match step {
                Step::Found(found) => paths.push(String::from_utf8(found.relative).unwrap()),
                Step::Skipped { path, reason } => panic!("{path:?}: {reason}"),
            }
            let open = walk.folders.iter().filter(|f| f.handle.is_some()).count();
            most_open = most_open.max(open);
        }
        assert_eq!(paths, expected);
        assert_eq!(most_open, MAX_OPEN_FOLDERS, "descriptors stay bounded");
    }

    #[test]
    fn what_the_walk_sees_is_what_lstat_by_path_says() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/f"), b"content").unwrap();
        fs::hard_link(dir.path().join("d/f"), dir.path().join("g")).unwrap();
        std::os::unix::fs::symlink("d/f", dir.path().join("l")).unwrap();
        for step in Walk::new(dir.path(), true).unwrap() {
            let Step::Found(found) = step else {
                panic!("{step:?}")
            };
            let by_path = fs::symlink_metadata(&found.absolute).unwrap();
            let link = fs::read_link(&found.absolute).ok();
            assert_eq!(
                found.link_target,
                link.map(|l| l.into_os_string().into_vec())
            );
            let seen = found.metadata;
            let what = &found.absolute;
            assert_eq!(seen.size, by_path.size(), "{what:?}");
            assert_eq!(seen.mode, by_path.mode() & 0o7777, "{what:?}");
            assert_eq!((seen.uid, seen.gid), (by_path.uid(), by_path.gid()));
            let ns = |s: i64, n: i64| s * 1_000_000_000 + n;
            assert_eq!(seen.mtime_ns, ns(by_path.mtime(), by_path.mtime_nsec()));
            assert_eq!(seen.ctime_ns, ns(by_path.ctime(), by_path.ctime_nsec()));
            assert_eq!((seen.device, seen.inode), (by_path.dev(), by_path.ino()));
            assert_eq!(seen.links, by_path.nlink(), "{what:?}");
            assert_eq!(
                seen.kind,
                FileType::from_raw_mode(by_path.mode()),
                "{what:?}"
            );
        }
    }

    #[test]
    fn walks_in_manifest_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for folder in ["a/c", "a-b", "b"] {
            fs::create_dir_all(root.join(folder)).unwrap();
        }
        for file in ["a/c/z", "a/d", "a-b/x", "a.txt", "b/y"] {
            fs::write(root.join(file), b"").unwrap();
        }
        std::os::unix::fs::symlink("a", root.join("link")).unwrap();

        let paths: Vec<String> = Walk::new(root, true)
            .unwrap()
            .map(|step| match step {
                Step::Found(found) => String::from_utf8(found.relative).unwrap(),
                Step::Skipped { path, reason } => panic!("{path:?}: {reason}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "", "a", "a/c", "a/c/z", "a/d", "a-b", "a-b/x", "a.txt", "b", "b/y", "link"
            ]
        );
        assert!(
            paths
                .windows(2)
                .all(|w| path_order(w[0].as_bytes(), w[1].as_bytes()).is_lt())
        );
    }

    #[test]
    fn a_file_is_not_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        assert!(Walk::new(&file, true).is_err());
        assert!(Walk::new(&dir.path().join("missing"), true).is_err());
    }
}
