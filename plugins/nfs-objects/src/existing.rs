//! What restore does with what it finds where an entry goes, and what it trusts about it.
//!
//! A restore into a folder that still holds data (a re-run after an interruption, a restore over
//! the damaged original) must neither destroy what the user would want kept nor leave wrong
//! bytes in place. The rules:
//! - nothing there: the entry is made;
//! - a folder where a folder goes is kept; a folder where anything else goes is never removed
//!   (the entry fails);
//! - a symlink, fifo, socket or device where a file, hard link or folder goes is replaced only
//!   with `force` (the entry fails otherwise): replacing it removes the link, never what it
//!   points to;
//! - a file where a file goes, with the snapshot's size and mtime, is read and compared with the
//!   snapshot's content ids (blake3 of each chunk, as the backup recorded them): only a file that
//!   differs is rewritten. With `trust_metadata`, size and mtime are taken on trust and the file
//!   is not read: fast, but a file changed without its mtime changing (`touch -r`, a clock
//!   reset, a tool that restores mtimes) stays wrong;
//! - anything else newer than the snapshot's entry is kept unless `force`; older is replaced.
//!
//! Replacing always means making the complete new entry under a temporary name and renaming it
//! over the old one, never writing into what was there.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::FileType;

use crate::crypto::Keys;
use crate::manifest::{Entry, Kind};
use crate::target::Found;

/// What to do about what is at an entry's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing is there: make the entry.
    Make,
    /// Replace what is there with the entry.
    Replace,
    /// Leave what is there: the folder the entry is (for a folder), or something newer than the
    /// entry (for anything else: reported as kept).
    Keep,
    /// Something is in the way that may not be replaced; why.
    Refuse(String),
}

/// The rule for `entry` and what `found` at its name (a file with the entry's size and mtime is
/// decided by [`same_size_and_mtime`] and [`holds_content`] first).
pub fn decide(found: Option<&Found>, entry: &Entry, force: bool) -> Verdict {
    let Some(found) = found else {
        return Verdict::Make;
    };
    if found.kind == FileType::Directory {
        return if entry.kind == Kind::Dir {
            Verdict::Keep
        } else {
            Verdict::Refuse("a folder is in the way".into())
        };
    }
    let special = found.kind != FileType::RegularFile && entry.kind != Kind::Symlink;
    if (special || entry.kind == Kind::Dir) && !force {
        return Verdict::Refuse(format!(
            "a {} is in the way (use force to replace it)",
            found.kind_name()
        ));
    }
    if entry.kind != Kind::Dir && found.mtime_ns > entry.mtime_ns && !force {
        return Verdict::Keep;
    }
    Verdict::Replace
}

/// Whether `found` is a file with `entry`'s size and mtime: restored already, if its content
/// agrees (or if metadata is trusted).
pub fn same_size_and_mtime(found: &Found, entry: &Entry) -> bool {
    found.kind == FileType::RegularFile
        && found.size == entry.size
        && found.mtime_ns == entry.mtime_ns
}

/// Whether open `file` holds exactly `entry`'s content: same size and mtime, and every chunk
/// hashes to its content id (under `keys`). Stops reading at the first chunk that differs.
/// `buffer` holds one chunk at a time (kept by the caller between calls).
pub fn holds_content(
    file: &File,
    found: &Found,
    entry: &Entry,
    keys: &Keys,
    buffer: &mut Vec<u8>,
) -> io::Result<bool> {
    if !same_size_and_mtime(found, entry) {
        return Ok(false);
    }
    let mut offset = 0;
    for blob in &entry.chunks {
        let length = usize::try_from(blob.raw_length).map_err(io::Error::other)?;
        buffer.resize(length, 0);
        file.read_exact_at(buffer, offset)?;
        if keys.id_of(buffer) != blob.id {
            return Ok(false);
        }
        offset += blob.raw_length;
    }
    Ok(offset == found.size)
}

/// The owner (when restoring owners) and mode `found` must be given to match `entry`; `None`
/// for what already matches. A change of owner clears setuid and setgid bits, so the mode is
/// then set again too.
pub fn metadata_to_fix(
    found: &Found,
    entry: &Entry,
    owners: bool,
) -> (Option<(u32, u32)>, Option<u32>) {
    let owner = (owners && (found.uid, found.gid) != (entry.uid, entry.gid))
        .then_some((entry.uid, entry.gid));
    let mode = (owner.is_some() || found.mode != entry.mode).then_some(entry.mode);
    (owner, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, mtime_ns: i64) -> Entry {
        Entry {
            path: b"x".to_vec(),
            kind,
            size: 3,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime_ns,
            ctime_ns: 0,
            inode: 0,
            target: None,
            chunks: Vec::new(),
            torn: false,
        }
    }

    fn found(kind: FileType, mtime_ns: i64) -> Found {
        Found {
            kind,
            mode: 0o644,
            uid: 1,
            gid: 2,
            size: 3,
            mtime_ns,
            ctime_ns: mtime_ns,
            device: 1,
            inode: 1,
            links: 1,
        }
    }

    #[test]
    fn links_and_folders_in_the_way_are_replaced_only_as_the_rules_say() {
        let file = entry(Kind::File, 10);
        let link = found(FileType::Symlink, 5);
        assert_eq!(decide(None, &file, false), Verdict::Make);
        assert!(
            matches!(decide(Some(&link), &file, false), Verdict::Refuse(r) if r.contains("symlink"))
        );
        assert_eq!(decide(Some(&link), &file, true), Verdict::Replace);
        let dir = entry(Kind::Dir, 10);
        assert!(matches!(
            decide(Some(&link), &dir, false),
            Verdict::Refuse(_)
        ));
        assert_eq!(decide(Some(&link), &dir, true), Verdict::Replace);
        let folder = found(FileType::Directory, 50);
        assert_eq!(decide(Some(&folder), &dir, false), Verdict::Keep);
        assert!(matches!(
            decide(Some(&folder), &file, true),
            Verdict::Refuse(_)
        ));
        // A link where a link goes follows the age rule.
        let symlink = entry(Kind::Symlink, 10);
        assert_eq!(decide(Some(&link), &symlink, false), Verdict::Replace);
        assert_eq!(
            decide(Some(&found(FileType::Symlink, 11)), &symlink, false),
            Verdict::Keep
        );
    }

    #[test]
    fn a_newer_file_is_kept_unless_force() {
        let file = entry(Kind::File, 10);
        let newer = found(FileType::RegularFile, 11);
        assert_eq!(decide(Some(&newer), &file, false), Verdict::Keep);
        assert_eq!(decide(Some(&newer), &file, true), Verdict::Replace);
        let hardlink = entry(Kind::Hardlink, 10);
        assert_eq!(decide(Some(&newer), &hardlink, false), Verdict::Keep);
        assert_eq!(
            decide(Some(&found(FileType::RegularFile, 9)), &hardlink, false),
            Verdict::Replace
        );
    }

    #[test]
    fn only_what_differs_is_fixed_and_a_new_owner_resets_the_mode() {
        let mut e = entry(Kind::File, 10);
        let f = found(FileType::RegularFile, 10);
        assert_eq!(metadata_to_fix(&f, &e, true), (None, None));
        e.mode = 0o4755;
        assert_eq!(metadata_to_fix(&f, &e, true), (None, Some(0o4755)));
        e.mode = 0o644;
        e.uid = 7;
        assert_eq!(metadata_to_fix(&f, &e, true), (Some((7, 2)), Some(0o644)));
        assert_eq!(metadata_to_fix(&f, &e, false), (None, None));
    }
}
