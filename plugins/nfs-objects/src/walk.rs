//! Walking a tree in manifest order with bounded memory.
//!
//! Depth-first, each folder's names sorted as bytes: this yields paths in exactly the order of
//! [`crate::manifest::path_order`], so the backup can merge-join the walk against the previous
//! manifest. Only the not-yet-visited names of the folders on the current path are held, never
//! the whole tree. Problems with one entry (unreadable folder, entry gone) are reported and the
//! walk goes on.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// One entry found by the walk.
#[derive(Debug)]
pub struct Found {
    /// Path relative to the root, `/`-separated; empty for the root.
    pub relative: Vec<u8>,
    pub absolute: PathBuf,
    /// `lstat` of the entry (symlinks are not followed).
    pub metadata: Metadata,
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
        let metadata = fs::symlink_metadata(root).at(root)?;
        if !metadata.is_dir() {
            return Err(Error::Io {
                path: root.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        // The root's own listing must work: an unreadable root is not an empty tree.
        let remaining = sorted_names(root).at(root)?;
        Ok(Self {
            root_device: metadata.dev(),
            root: Some(Found {
                relative: Vec::new(),
                absolute: root.to_owned(),
                metadata,
            }),
            one_file_system,
            folders: vec![Folder {
                relative: Vec::new(),
                absolute: root.to_owned(),
                remaining,
            }],
            skipped: VecDeque::new(),
        })
    }

    fn visit(&mut self, name: OsString) -> Option<Step> {
        let parent = self.folders.last()?;
        let absolute = parent.absolute.join(&name);
        let mut relative = parent.relative.clone();
        if !relative.is_empty() {
            relative.push(b'/');
        }
        relative.extend_from_slice(name.as_bytes());
        let metadata = match fs::symlink_metadata(&absolute) {
            Ok(metadata) => metadata,
            // Deleted between listing and lstat: it simply is not part of this snapshot.
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                return Some(Step::Skipped {
                    path: absolute,
                    reason: err.to_string(),
                });
            }
        };
        if metadata.is_dir() {
            if self.one_file_system && metadata.dev() != self.root_device {
                self.skipped.push_back(Step::Skipped {
                    path: absolute.clone(),
                    reason: "another filesystem is mounted here; its content is not backed up"
                        .into(),
                });
            } else {
                match sorted_names(&absolute) {
                    Ok(remaining) => self.folders.push(Folder {
                        relative: relative.clone(),
                        absolute: absolute.clone(),
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
        }))
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

fn sorted_names(folder: &Path) -> io::Result<Vec<OsString>> {
    let mut names = fs::read_dir(folder)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::path_order;

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
