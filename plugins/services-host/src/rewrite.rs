//! Replacing the old machine's addresses in configuration files: exactly, visibly, atomically.
//!
//! An address is replaced only as a whole token (`10.0.0.1` never matches inside `10.0.0.12`
//! or `110.0.0.1`), and all replacements are made in one pass so that one never feeds another
//! (swapping two addresses works). Every change is shown as a line diff before it is made. The
//! first rewrite keeps the original next to the file (`FILE.backplan-orig`); the new content is
//! written to a temporary file with the original's mode and owner, synced, then renamed over
//! the file, so a crash leaves either the old or the new file, never half of one. A file that
//! already has no old address is not touched, which makes a second run a no-op.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replace `old` with `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// The address to find.
    pub old: String,
    /// What to put instead.
    pub new: String,
}

/// `text` with every whole-token occurrence of each `old` replaced, and how many there were.
pub fn replace_addresses(text: &str, replacements: &[Replacement]) -> (String, usize) {
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
pub fn line_diff(path: &Path, before: &str, after: &str) -> String {
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

/// Where the original of `path` is kept.
pub fn original_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".backplan-orig");
    path.with_file_name(name)
}

/// Replaces `path`'s content with `content`: keeps the original (first time only), then writes
/// a synced temporary file with the same mode and owner and renames it over `path`.
pub fn write_atomically(path: &Path, content: &str) -> std::io::Result<PathBuf> {
    let meta = fs::metadata(path)?;
    let original = original_path(path);
    if !original.exists() {
        fs::copy(path, &original)?;
        fs::File::open(&original)?.sync_all()?;
    }
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(".backplan-tmp");
    let temp = path.with_file_name(temp_name);
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(content.as_bytes())?;
        fs::set_permissions(&temp, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        std::os::unix::fs::chown(&temp, Some(meta.uid()), Some(meta.gid()))?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| original)
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
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("replicated");
        fs::write(&file, "v1").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let original = write_atomically(&file, "v2").unwrap();
        write_atomically(&file, "v3").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "v3");
        assert_eq!(fs::read_to_string(&original).unwrap(), "v1");
        let mode = fs::metadata(&file).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(!dir.path().join("replicated.backplan-tmp").exists());
    }
}
