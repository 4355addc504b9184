//! The restore target, reached only through folders opened on the way down.
//!
//! A restore writes into a tree that others may have written into too. A symlink planted at
//! `target/sub` pointing at `/etc` must not turn the entry `sub/passwd` into a write to
//! `/etc/passwd`, and neither may a symlink the restore itself made a moment earlier. So no path
//! below the target is handed to the kernel to resolve: the target folder is opened once (it may
//! itself be a link the user named; that one is followed, at the start), and every folder below
//! it is opened from its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, which refuses a
//! link. Every file, folder and link is then made by name relative to its parent's descriptor
//! (`openat` with `O_EXCL | O_NOFOLLOW`, `mkdirat`, `symlinkat`, `linkat`, `renameat`), and
//! metadata is set through an open descriptor or with `AT_SYMLINK_NOFOLLOW`, so whatever a name
//! points to is never followed. A folder swapped for a link while the restore runs changes
//! nothing either: a descriptor keeps naming the folder it was opened on.
//!
//! The manifest lists entries depth first, so the folders a restore needs at any moment are the
//! ancestors of the current entry: [`Folders`] keeps them open on a stack, and opens each folder
//! once per visit rather than once per entry.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// An opened folder of the target, shared by the entries written into it.
pub type Folder = Arc<OwnedFd>;

/// Opens the target folder `path`, creating it (and its parents) if needed. This is the one
/// path resolved by name, links included: the user chose it.
pub fn open_root(path: &Path) -> io::Result<Folder> {
    std::fs::create_dir_all(path)?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(Arc::new(rustix::fs::openat(
        rustix::fs::CWD,
        path,
        flags,
        Mode::empty(),
    )?))
}

/// The folders open along the current path, from the target down.
#[derive(Debug)]
pub struct Folders {
    root: Folder,
    /// Each open folder below the root, outermost first: its name and descriptor.
    open: Vec<(Vec<u8>, Folder)>,
}

impl Folders {
    pub fn new(root: Folder) -> Self {
        Self {
            root,
            open: Vec::new(),
        }
    }

    /// The folder at relative path `path` (`/`-separated, empty for the target), each folder on
    /// the way opened without following links.
    pub fn open(&mut self, path: &[u8]) -> io::Result<Folder> {
        let mut depth = 0;
        let mut end = 0;
        if !path.is_empty() {
            for name in path.split(|&byte| byte == b'/') {
                end += name.len();
                if !matches!(self.open.get(depth), Some((open, _)) if open.as_slice() == name) {
                    self.open.truncate(depth);
                    let parent = self.open.last().map_or(&self.root, |(_, folder)| folder);
                    let folder = open_folder(parent, name)
                        .map_err(|err| explain(err, parent, name, &path[..end]))?;
                    self.open.push((name.to_vec(), Arc::new(folder)));
                }
                depth += 1;
                end += 1;
            }
        }
        self.open.truncate(depth);
        Ok(Arc::clone(
            self.open.last().map_or(&self.root, |(_, folder)| folder),
        ))
    }

    /// The folder holding relative path `path`, and `path`'s last component.
    pub fn parent_of<'p>(&mut self, path: &'p [u8]) -> io::Result<(Folder, &'p [u8])> {
        let (parent, name) = split_last(path);
        Ok((self.open(parent)?, name))
    }
}

/// `path` split into its parent folder and last component.
pub fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&byte| byte == b'/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => (&[], path),
    }
}

/// An error opening folder `name` of `parent` (at `path`) on the way, saying what is there
/// instead.
fn explain(err: io::Error, parent: &OwnedFd, name: &[u8], path: &[u8]) -> io::Error {
    let shown = String::from_utf8_lossy(path);
    let reason = match Errno::from_io_error(&err) {
        Some(Errno::LOOP | Errno::NOTDIR) => match look(parent, name) {
            Ok(Some(found)) if found.kind == FileType::Symlink => {
                "is a symlink, which is never followed".to_owned()
            }
            Ok(Some(found)) => format!("is a {}, not a folder", found.kind_name()),
            _ => err.to_string(),
        },
        _ => err.to_string(),
    };
    io::Error::new(err.kind(), format!("{shown} {reason}"))
}

/// Opens folder `name` in `parent`, refusing a link.
pub fn open_folder(parent: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?)
}

/// Opens the file at `relative` below folder `root` for reading (directly, if `direct`),
/// following no symlink on the way: a backup reads a file some time after the walk saw it, and
/// a folder of the source swapped meanwhile for a link to `/etc` must make the open fail, not
/// read `/etc` into the repository. One `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`;
/// on kernels without it (before 5.6), each folder is opened from its parent, refusing links.
pub fn open_beneath(root: &Folder, relative: &[u8], direct: bool) -> io::Result<File> {
    let flags = reading_flags(direct);
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(root, relative, flags, Mode::empty(), resolve) {
        Err(Errno::NOSYS) => open_through_folders(root, relative, direct),
        opened => Ok(opened?.into()),
    }
}

/// [`open_beneath`] without `openat2`: every folder on the way opened from its parent.
fn open_through_folders(root: &Folder, relative: &[u8], direct: bool) -> io::Result<File> {
    let (parent, name) = Folders::new(Arc::clone(root)).parent_of(relative)?;
    let opened = rustix::fs::openat(&parent, name, reading_flags(direct), Mode::empty())?;
    Ok(opened.into())
}

/// Flags to open a file of the source for reading: never through a link, never waiting on a
/// fifo that took its place.
fn reading_flags(direct: bool) -> OFlags {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    if direct {
        flags | OFlags::DIRECT
    } else {
        flags
    }
}

/// What is at a name, as `lstat` sees it.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    pub kind: FileType,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub device: u64,
    pub inode: u64,
    /// How many names the inode has.
    pub links: u64,
}

impl Found {
    // The field types of `struct stat` differ between architectures: the conversions are
    // needed on some and do nothing on others.
    #[allow(clippy::useless_conversion)]
    pub fn from_stat(stat: &rustix::fs::Stat) -> Self {
        Self {
            kind: FileType::from_raw_mode(stat.st_mode),
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime_ns: i64::from(stat.st_mtime)
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(stat.st_mtime_nsec) as i64),
            ctime_ns: i64::from(stat.st_ctime)
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(stat.st_ctime_nsec) as i64),
            device: u64::from(stat.st_dev),
            inode: u64::from(stat.st_ino),
            links: u64::from(stat.st_nlink),
        }
    }

    /// What is at `path`, without following a link at its end.
    pub fn of_path(path: &Path) -> io::Result<Self> {
        Ok(Self::from_stat(&rustix::fs::lstat(path)?))
    }

    /// The same file as `other` (a hard link to it).
    pub fn is_same_file(&self, other: &Found) -> bool {
        self.device == other.device && self.inode == other.inode
    }

    /// What this is, in a word for messages.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            FileType::RegularFile => "file",
            FileType::Directory => "folder",
            FileType::Symlink => "symlink",
            FileType::Fifo => "fifo",
            FileType::Socket => "socket",
            FileType::CharacterDevice | FileType::BlockDevice => "device",
            FileType::Unknown => "special file",
        }
    }
}

/// What is at `name` in `parent`, without following a link; `None` if nothing is.
pub fn look(parent: &OwnedFd, name: &[u8]) -> io::Result<Option<Found>> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(Found::from_stat(&stat))),
        Err(Errno::NOENT) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// What the open file `file` is.
pub fn look_open(file: &File) -> io::Result<Found> {
    Ok(Found::from_stat(&rustix::fs::fstat(file)?))
}

/// Makes folder `name` in `parent` (its final mode is set later).
pub fn make_folder(parent: &OwnedFd, name: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::mkdirat(
        parent,
        name,
        Mode::from_raw_mode(0o777),
    )?)
}

/// Removes the non-folder `name` from `parent` (a link itself, never what it points to).
pub fn remove(parent: &OwnedFd, name: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::empty())?)
}

/// Renames `from` to `to` within `parent`, replacing what `to` names (a link itself, never
/// what it points to).
pub fn rename(parent: &OwnedFd, from: &[u8], to: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::renameat(parent, from, parent, to)?)
}

/// Makes symlink `name` in `parent` with text `target`.
pub fn symlink(target: &[u8], parent: &OwnedFd, name: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, parent, name)?)
}

/// Makes `name` in `parent` a hard link to `first` in `first_parent` (a link is linked as a
/// link, never followed).
pub fn hard_link(
    first_parent: &OwnedFd,
    first: &[u8],
    parent: &OwnedFd,
    name: &[u8],
) -> io::Result<()> {
    Ok(rustix::fs::linkat(
        first_parent,
        first,
        parent,
        name,
        AtFlags::empty(),
    )?)
}

/// Creates the new file `name` in `parent` for writing, readable by its owner only until its
/// metadata is set. Fails if anything (a link included) already has that name.
pub fn create_file(parent: &OwnedFd, name: &[u8]) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::from_raw_mode(0o600))?.into())
}

/// Opens the existing file `name` in `parent` for reading, refusing a link (and never waiting
/// on a fifo).
pub fn open_file(parent: &OwnedFd, name: &[u8]) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(parent, name, flags, Mode::empty())?.into())
}

/// Asks that writes to `file` bypass the page cache (`O_DIRECT`); `false` where the
/// filesystem does not support it.
pub fn try_direct(file: &File) -> io::Result<bool> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    match rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT) {
        Ok(()) => Ok(true),
        Err(Errno::INVAL) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Calls `make` with fresh temporary names in the same folder until one is free; returns the
/// name used. The names start with `.backplan-restore-`.
pub fn with_temporary_name<T>(
    mut make: impl FnMut(&[u8]) -> io::Result<T>,
) -> io::Result<(Vec<u8>, T)> {
    let mut attempts = 0;
    loop {
        let name = format!(".backplan-restore-{:016x}", fastrand::u64(..)).into_bytes();
        match make(&name) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => {
                attempts += 1;
            }
            made => return made.map(|made| (name, made)),
        }
    }
}

/// Owner, permission bits and modification time, set through an open file or folder.
pub fn set_metadata_of(
    fd: impl AsFd,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    if let Some(mode) = mode {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    }
    if let Some(mtime_ns) = mtime_ns {
        rustix::fs::futimens(&fd, &timestamps(mtime_ns))?;
    }
    Ok(())
}

/// Owner and modification time of the link `name` in `parent` itself (a link has no mode).
pub fn set_link_metadata(
    parent: &OwnedFd,
    name: &[u8],
    owner: Option<(u32, u32)>,
    mtime_ns: i64,
) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    rustix::fs::utimensat(
        parent,
        name,
        &timestamps(mtime_ns),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Access and modification time both `mtime_ns`.
fn timestamps(mtime_ns: i64) -> rustix::fs::Timestamps {
    let time = rustix::fs::Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
    };
    rustix::fs::Timestamps {
        last_access: time,
        last_modification: time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_on_the_way_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a/link")).unwrap();
        std::fs::write(dir.path().join("a/file"), b"").unwrap();
        let mut folders = Folders::new(open_root(dir.path()).unwrap());
        let (_, name) = folders.parent_of(b"a/b/c").unwrap();
        assert_eq!(name, b"c");
        let err = folders.open(b"a/link/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "a/link is a symlink, which is never followed"
        );
        let err = folders.open(b"a/file").unwrap_err();
        assert_eq!(err.to_string(), "a/file is a file, not a folder");
        // The stack went back to `a` and on again.
        folders.open(b"a/b").unwrap();
        assert_eq!(split_last(b"x"), (&b""[..], &b"x"[..]));
    }

    #[test]
    fn a_file_is_opened_beneath_its_root_through_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/file"), b"ok").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("a/swapped")).unwrap();
        std::os::unix::fs::symlink("b/file", dir.path().join("a/link")).unwrap();
        let root = open_root(dir.path()).unwrap();
        // With `openat2`, and as on kernels without it.
        for open in [open_beneath, open_through_folders] {
            let mut read = String::new();
            io::Read::read_to_string(&mut open(&root, b"a/b/file", false).unwrap(), &mut read)
                .unwrap();
            assert_eq!(read, "ok");
            for through_a_link in [&b"a/swapped/secret"[..], b"a/link", b"../x"] {
                let shown = String::from_utf8_lossy(through_a_link);
                assert!(open(&root, through_a_link, false).is_err(), "{shown}");
            }
        }
    }
}
