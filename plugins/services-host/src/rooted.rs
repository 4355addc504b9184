//! Paths under the step's `root`, reached without following links.
//!
//! The fix-ups run as root on a machine just restored from an image: they rewrite configuration
//! files, keep copies of them, and remove nomad's state folder. A symlink where one of those
//! paths should be (`/etc/default/replicated` pointing at another file, `/opt/nomad` or `/opt`
//! at another tree) would turn the rewrite or the removal into one of whatever it points to.
//! So the folders below `root` are opened one by one from their parent with `O_NOFOLLOW`, and
//! every read, write, rename and removal is made by name relative to the opened folder: a symlink
//! anywhere on the way is refused with an error naming it and its target, and the operator lists
//! the real path instead. `root` itself is the operator's choice and may be a link.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// A path under the root: its opened folder and its name there.
#[derive(Debug)]
pub(crate) struct Rooted {
    folder: OwnedFd,
    name: Vec<u8>,
    /// The path as shown in messages (under the root).
    shown: PathBuf,
}

/// A regular file as read: its bytes, permission bits and owner.
#[derive(Debug)]
pub(crate) struct Contents {
    pub bytes: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Rooted {
    /// Finds `path` (absolute, as on the machine) under `root`: every folder on the way is
    /// opened without following a link. `None` if one of them does not exist.
    pub(crate) fn locate(root: &Path, path: &Path) -> io::Result<Option<Self>> {
        let names: Vec<&OsStr> = path
            .components()
            .filter_map(|part| match part {
                Component::Normal(name) => Some(Ok(name)),
                Component::RootDir | Component::CurDir => None,
                Component::ParentDir | Component::Prefix(_) => Some(Err(())),
            })
            .collect::<Result<_, ()>>()
            .map_err(|()| invalid(format!("{}: `..` is not allowed", path.display())))?;
        let Some((name, folders)) = names.split_last() else {
            return Err(invalid(format!("{}: names no file", path.display())));
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut folder =
            rustix::fs::openat(rustix::fs::CWD, root, flags, Mode::empty()).map_err(|err| {
                let err = io::Error::from(err);
                io::Error::new(err.kind(), format!("{}: {err}", root.display()))
            })?;
        let mut shown = root.to_owned();
        for part in folders {
            let next = rustix::fs::openat(&folder, *part, flags | OFlags::NOFOLLOW, Mode::empty());
            let here = Rooted {
                folder,
                name: part.as_bytes().to_vec(),
                shown: shown.join(part),
            };
            folder = match next {
                Ok(next) => next,
                Err(Errno::NOENT) => return Ok(None),
                Err(Errno::LOOP | Errno::NOTDIR) if here.kind()? == Some(FileType::Symlink) => {
                    return Err(here.not_followed());
                }
                Err(Errno::NOTDIR) => return Err(here.error(invalid("not a folder".into()))),
                Err(err) => return Err(here.error(err.into())),
            };
            shown = here.shown;
        }
        Ok(Some(Rooted {
            folder,
            name: name.as_bytes().to_vec(),
            shown: shown.join(name),
        }))
    }

    /// The path as shown in messages.
    pub(crate) fn shown(&self) -> &Path {
        &self.shown
    }

    /// What is at the path, without following a link; `None` if nothing is.
    pub(crate) fn kind(&self) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(&self.folder, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(err) => Err(self.error(err.into())),
        }
    }

    /// The file's contents; `None` if nothing is there. A symlink or anything but a regular
    /// file is an error.
    pub(crate) fn read(&self) -> io::Result<Option<Contents>> {
        match self.kind()? {
            None => return Ok(None),
            Some(FileType::RegularFile) => {}
            Some(FileType::Symlink) => return Err(self.not_followed()),
            Some(_) => return Err(self.error(invalid("not a regular file".into()))),
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let read = || -> io::Result<Contents> {
            let mut file = File::from(rustix::fs::openat(
                &self.folder,
                &self.name,
                flags,
                Mode::empty(),
            )?);
            let stat = rustix::fs::fstat(&file)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(Contents {
                bytes,
                mode: stat.st_mode & 0o7777,
                uid: stat.st_uid,
                gid: stat.st_gid,
            })
        };
        read().map(Some).map_err(|err| self.error(err))
    }

    /// The path next to this one named with `suffix` added (`FILE.backplan-orig`).
    pub(crate) fn sibling(&self, suffix: &str) -> io::Result<Rooted> {
        let mut name = self.name.clone();
        name.extend_from_slice(suffix.as_bytes());
        let mut shown = self.shown.clone().into_os_string();
        shown.push(suffix);
        Ok(Rooted {
            folder: self.folder.try_clone()?,
            name,
            shown: shown.into(),
        })
    }

    /// Creates the new file (never through a link; fails if anything has the name) with
    /// `bytes`, permission bits `mode` and owner `uid`:`gid`, synced.
    pub(crate) fn create(&self, bytes: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<()> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let write = || -> io::Result<()> {
            let file = File::from(rustix::fs::openat(
                &self.folder,
                &self.name,
                flags,
                Mode::from_raw_mode(0o600),
            )?);
            io::Write::write_all(&mut &file, bytes)?;
            rustix::fs::fchown(
                &file,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
            rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
            file.sync_all()
        };
        write().map_err(|err| self.error(err))
    }

    /// Renames this file over `to` (a name in the same folder; a link there is replaced, never
    /// followed) and syncs the folder.
    pub(crate) fn rename_over(&self, to: &Rooted) -> io::Result<()> {
        rustix::fs::renameat(&self.folder, &self.name, &to.folder, &to.name)
            .map_err(|err| self.error(err.into()))?;
        rustix::fs::fsync(&to.folder).map_err(|err| to.error(err.into()))
    }

    /// Removes what is at the path if it is not a folder (a link itself, never what it points
    /// to).
    pub(crate) fn remove_file(&self) -> io::Result<()> {
        rustix::fs::unlinkat(&self.folder, &self.name, AtFlags::empty())
            .map_err(|err| self.error(err.into()))
    }

    /// Removes the folder at the path and everything in it; nothing below is followed either.
    pub(crate) fn remove_tree(&self) -> io::Result<()> {
        remove_tree(&self.folder, &self.name).map_err(|err| self.error(err))
    }

    /// The error for a link found at this path.
    pub(crate) fn not_followed(&self) -> io::Error {
        let points_to = rustix::fs::readlinkat(&self.folder, &self.name, Vec::new())
            .map(|target| {
                format!(
                    " (to {})",
                    Path::new(OsStr::from_bytes(target.to_bytes())).display()
                )
            })
            .unwrap_or_default();
        invalid(format!(
            "{} is a symbolic link{points_to}: refusing to follow it; name the real path in the \
             step's configuration",
            self.shown.display()
        ))
    }

    fn error(&self, err: io::Error) -> io::Error {
        io::Error::new(err.kind(), format!("{}: {err}", self.shown.display()))
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Removes folder `name` of `parent` and its content, opening each folder without following a
/// link and removing links as links.
fn remove_tree(parent: &OwnedFd, name: &[u8]) -> io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let folder = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    for entry in rustix::fs::Dir::read_from(&folder)? {
        let entry = entry?;
        let child = entry.file_name().to_bytes();
        if child == b"." || child == b".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => {
                let stat = rustix::fs::statat(&folder, child, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode)
            }
            kind => kind,
        };
        if kind == FileType::Directory {
            remove_tree(&folder, child)?;
        } else {
            rustix::fs::unlinkat(&folder, child, AtFlags::empty())?;
        }
    }
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_on_the_way_or_at_the_end_is_named_and_refused() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/default")).unwrap();
        std::fs::write(elsewhere.path().join("replicated"), "X=1\n").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("opt")).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.path().join("replicated"),
            root.path().join("etc/default/replicated"),
        )
        .unwrap();

        let err = Rooted::locate(root.path(), Path::new("/opt/nomad")).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("opt is a symbolic link (to /"),
            "{message}"
        );
        assert!(message.contains("refusing to follow it"), "{message}");
        let file = Rooted::locate(root.path(), Path::new("/etc/default/replicated"))
            .unwrap()
            .unwrap();
        assert!(
            file.read()
                .unwrap_err()
                .to_string()
                .contains("is a symbolic link")
        );
        assert!(
            Rooted::locate(root.path(), Path::new("/etc/none/x"))
                .unwrap()
                .is_none()
        );
        assert!(Rooted::locate(root.path(), Path::new("/etc/../x")).is_err());
    }

    #[test]
    fn a_tree_is_removed_without_following_the_links_in_it() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("keep"), "keep").unwrap();
        std::fs::create_dir_all(root.path().join("opt/nomad/data/alloc")).unwrap();
        std::fs::write(root.path().join("opt/nomad/data/alloc/state"), "old").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("opt/nomad/data/link"))
            .unwrap();
        let nomad = Rooted::locate(root.path(), Path::new("/opt/nomad"))
            .unwrap()
            .unwrap();
        nomad.remove_tree().unwrap();
        assert!(!root.path().join("opt/nomad").exists());
        assert_eq!(
            std::fs::read_to_string(elsewhere.path().join("keep")).unwrap(),
            "keep"
        );
    }
}
