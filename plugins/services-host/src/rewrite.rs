//! Replacing the old machine's addresses in configuration files: exactly, visibly, atomically.
//!
//! An address is replaced only as a whole token (`10.0.0.1` never matches inside `10.0.0.12`
//! or `110.0.0.1`), and all replacements are made in one pass so that one never feeds another
//! (swapping two addresses works). Every change is shown as a line diff before it is made. The
//! first rewrite keeps the original next to the file (`FILE.backplan-orig`); the new content is
//! written to a temporary file with the original's mode and owner, synced, then renamed over
//! the file, so a crash leaves either the old or the new file, never half of one. Files are
//! reached through `rooted`, so a symlink in their place is refused, never written through. A
//! file that already has no old address is not touched, which makes a second run a no-op.

use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use crate::rooted::{Contents, Rooted};

/// Replace `old` with `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replacement {
    /// The address to find.
    pub old: String,
    /// What to put instead.
    pub new: String,
}

/// `text` with every whole-token occurrence of each `old` replaced, and how many there were.
pub(crate) fn replace_addresses(text: &str, replacements: &[Replacement]) -> (String, usize) {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut i = 0;
    'scan: while i < bytes.len() {
        for r in replacements
            .iter()
            .filter(|r| !r.old.is_empty() && r.old != r.new)
        {
            if text[i..].starts_with(&r.old) && is_token(bytes, i, i + r.old.len()) {
                out.push_str(&r.new);
                i += r.old.len();
                count += 1;
                continue 'scan;
            }
        }
        let c = text[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    (out, count)
}

/// Whether `bytes[start..end]` is not part of a longer address or number.
fn is_token(bytes: &[u8], start: usize, end: usize) -> bool {
    let part_of_address = |b: u8| b.is_ascii_alphanumeric() || b == b'.';
    let before_ok = start == 0 || !part_of_address(bytes[start - 1]);
    // A trailing '.' ends a sentence, unless a digit follows (a longer address).
    let after_ok = match bytes.get(end) {
        None => true,
        Some(b'.') => !bytes.get(end + 1).is_some_and(u8::is_ascii_digit),
        Some(&b) => !part_of_address(b),
    };
    before_ok && after_ok
}

/// The changed lines of `before` → `after` (same number of lines), as a readable diff.
pub(crate) fn line_diff(path: &Path, before: &str, after: &str) -> String {
    let mut out = String::new();
    for (number, (old, new)) in before.lines().zip(after.lines()).enumerate() {
        if old != new {
            out.push_str(&format!(
                "{}:{}\n- {old}\n+ {new}\n",
                path.display(),
                number + 1
            ));
        }
    }
    out
}

/// Suffix of the copy of a file's original content, made before its first rewrite.
pub(crate) const ORIGINAL: &str = ".backplan-orig";
/// Suffix of the new content while it is written.
const TEMPORARY: &str = ".backplan-tmp";

/// Checks that `file` can be rewritten without following a link: its original copy is absent
/// or a regular file, and its temporary name is not a folder. Called before any file is
/// rewritten, so a refusal leaves them all as they were.
pub(crate) fn check_rewritable(file: &Rooted) -> io::Result<()> {
    match file.sibling(ORIGINAL)?.kind()? {
        None | Some(FileType::RegularFile) => {}
        Some(FileType::Symlink) => return Err(file.sibling(ORIGINAL)?.not_followed()),
        Some(_) => return Err(not_a_file(&file.sibling(ORIGINAL)?)),
    }
    let temporary = file.sibling(TEMPORARY)?;
    if temporary.kind()? == Some(FileType::Directory) {
        return Err(not_a_file(&temporary));
    }
    Ok(())
}

fn not_a_file(path: &Rooted) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{} is in the way and not a regular file",
            path.shown().display()
        ),
    )
}

/// Replaces the content of `file` (`before`, as read) with `content`: keeps the original
/// (first time only), then writes a synced temporary file with the same mode and owner and
/// renames it over the file. Nothing is written through a link: the original and the temporary
/// file are created new, and the rename replaces the name itself. Returns where the original is.
pub(crate) fn write_atomically(
    file: &Rooted,
    before: &Contents,
    content: &str,
) -> io::Result<PathBuf> {
    check_rewritable(file)?;
    let original = file.sibling(ORIGINAL)?;
    if original.kind()?.is_none() {
        original.create(&before.bytes, before.mode, before.uid, before.gid)?;
    }
    let temporary = file.sibling(TEMPORARY)?;
    if temporary.kind()?.is_some() {
        // Left by an interrupted run (or planted): removed as a name, never followed.
        temporary.remove_file()?;
    }
    let result = temporary
        .create(content.as_bytes(), before.mode, before.uid, before.gid)
        .and_then(|()| temporary.rename_over(file));
    if result.is_err() {
        let _ = temporary.remove_file();
    }
    result.map(|()| original.shown().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn swap(old: &str, new: &str) -> Replacement {
        Replacement {
            old: old.into(),
            new: new.into(),
        }
    }

    #[test]
    fn only_whole_addresses_are_replaced() {
        let text =
            "PRIVATE_ADDRESS=10.0.0.1\nOTHER=10.0.0.12 110.0.0.1 10.0.0.1.5\nEnd: 10.0.0.1:8800.\n";
        let (out, count) = replace_addresses(text, &[swap("10.0.0.1", "10.9.9.9")]);
        assert_eq!(
            out,
            "PRIVATE_ADDRESS=10.9.9.9\nOTHER=10.0.0.12 110.0.0.1 10.0.0.1.5\nEnd: 10.9.9.9:8800.\n"
        );
        assert_eq!(count, 2);
    }

    #[test]
    fn replacements_do_not_feed_each_other() {
        let text = "a=1.1.1.1 b=2.2.2.2";
        let (out, count) = replace_addresses(
            text,
            &[swap("1.1.1.1", "2.2.2.2"), swap("2.2.2.2", "1.1.1.1")],
        );
        assert_eq!(out, "a=2.2.2.2 b=1.1.1.1");
        assert_eq!(count, 2);
    }

    #[test]
    fn the_diff_shows_changed_lines_only() {
        let diff = line_diff(
            Path::new("/etc/x"),
            "a\nIP=1.2.3.4\nb\n",
            "a\nIP=5.6.7.8\nb\n",
        );
        assert_eq!(diff, "/etc/x:2\n- IP=1.2.3.4\n+ IP=5.6.7.8\n");
    }

    #[test]
    fn an_atomic_write_keeps_the_first_original_and_the_mode() {
        use std::fs;
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("replicated");
        fs::write(&file, "v1").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let rooted = Rooted::locate(dir.path(), Path::new("/replicated"))
            .unwrap()
            .unwrap();
        let original = write_atomically(&rooted, &rooted.read().unwrap().unwrap(), "v2").unwrap();
        write_atomically(&rooted, &rooted.read().unwrap().unwrap(), "v3").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "v3");
        assert_eq!(original, dir.path().join("replicated.backplan-orig"));
        assert_eq!(fs::read_to_string(&original).unwrap(), "v1");
        let mode = fs::metadata(&file).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(fs::metadata(&original).unwrap().mode() & 0o777, 0o640);
        assert!(!dir.path().join("replicated.backplan-tmp").exists());
    }

    #[test]
    fn links_planted_at_the_original_or_temporary_name_are_never_written_through() {
        use std::fs;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("victim");
        fs::write(dir.path().join("replicated"), "v1").unwrap();
        let rooted = Rooted::locate(dir.path(), Path::new("/replicated"))
            .unwrap()
            .unwrap();
        let before = rooted.read().unwrap().unwrap();

        // A dangling link where the original goes: refused, nothing created where it points.
        std::os::unix::fs::symlink(&victim, dir.path().join("replicated.backplan-orig")).unwrap();
        let err = write_atomically(&rooted, &before, "v2").unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert!(!victim.exists());
        assert_eq!(
            fs::read_to_string(dir.path().join("replicated")).unwrap(),
            "v1"
        );
        fs::remove_file(dir.path().join("replicated.backplan-orig")).unwrap();

        // A link where the temporary file goes is removed as a name.
        fs::write(&victim, "not yours").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("replicated.backplan-tmp")).unwrap();
        write_atomically(&rooted, &before, "v2").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "not yours");
        assert_eq!(
            fs::read_to_string(dir.path().join("replicated")).unwrap(),
            "v2"
        );
    }
}
