//! Staged files left behind by writers that died, told apart from those of live writers.
//!
//! A backup builds packs and its manifest in a staging area (`tmp/` of a local repository, a
//! folder of its own under `$TMPDIR` for S3) and removes what it did not publish, unless it is
//! SIGKILLed or the machine loses power: then the files stay, and without collection the staging
//! area only grows. The next backup and every prune collect them, but must never take a file a
//! concurrent backup is still writing. So every staged name starts with its writer's identity,
//! `<boot id>-<pid namespace>-<pid>-<start time>.`:
//!
//! - written during this boot (same boot id, which is also unique to this host) in this pid
//!   namespace, the writer is alive exactly when that pid exists and started at that time (a
//!   reused pid has another start time). A dead writer's files are removed at once, a live
//!   writer's never, whatever their age;
//! - anything else (another host sharing the repository, a boot before a reboot, another
//!   container, a name without an identity) cannot be judged from here: it is removed once
//!   untouched for `max_age` (a day in the plugin). A live writer touches its files all the
//!   time (a pack every few seconds, the manifest with every batch of entries).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::id::random_name;

/// Files untouched this long whose writer cannot be judged are taken for leftovers.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Staged files (a staging folder counts the files in it).
    pub files: u64,
    pub bytes: u64,
}

/// The process that wrote a staged file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Writer {
    /// `/proc/sys/kernel/random/boot_id` without dashes: this host, this boot.
    boot: String,
    /// Inode of `/proc/self/ns/pid`: the pid namespace the pid is meaningful in.
    pid_namespace: u64,
    pid: u32,
    /// Start time of the process in clock ticks after boot (`/proc/<pid>/stat`, field 22).
    started: u64,
}

impl Writer {
    /// This process, if `/proc` tells enough about it.
    fn current() -> Option<&'static Writer> {
        static CURRENT: OnceLock<Option<Writer>> = OnceLock::new();
        CURRENT
            .get_or_init(|| {
                let pid = std::process::id();
                Some(Writer {
                    boot: boot_id()?,
                    pid_namespace: pid_namespace()?,
                    pid,
                    started: start_time(pid)?,
                })
            })
            .as_ref()
    }

    fn tag(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.boot, self.pid_namespace, self.pid, self.started
        )
    }

    /// The writer named at the start of a staged file's name (up to its first `.`).
    fn parse(name: &str) -> Option<Writer> {
        let tag = name.split('.').next()?;
        let mut parts = tag.split('-');
        let writer = Writer {
            boot: parts.next()?.to_owned(),
            pid_namespace: parts.next()?.parse().ok()?,
            pid: parts.next()?.parse().ok()?,
            started: parts.next()?.parse().ok()?,
        };
        (parts.next().is_none() && writer.boot.len() == 32).then_some(writer)
    }

    /// `Some(true)` when provably alive, `Some(false)` when provably dead, `None` when it ran
    /// where this process cannot see (another host, boot or pid namespace).
    fn alive(&self) -> Option<bool> {
        let me = Writer::current()?;
        if self.boot != me.boot || self.pid_namespace != me.pid_namespace {
            return None;
        }
        Some(start_time(self.pid) == Some(self.started))
    }
}

/// A fresh staged file name ending in `suffix` (e.g. `.pack`), naming this process as its writer.
pub fn staged_name(suffix: &str) -> String {
    let writer = Writer::current().map_or_else(|| "unknown".to_owned(), Writer::tag);
    format!("{writer}.{}{suffix}", random_name())
}

/// Whether `name` is one this crate gives staged files: named after a writer, or as before
/// writers were named, 32 hex digits and a suffix, or `<snapshot id>.manifest`.
pub fn is_staged_name(name: &str) -> bool {
    let first = name.split('.').next().unwrap_or_default();
    let hex = |text: &str| text.bytes().all(|b| b.is_ascii_hexdigit());
    let snapshot_id = first.len() == 25
        && first.as_bytes()[8] == b'T'
        && first.get(15..17) == Some("Z-")
        && hex(&first[17..]);
    Writer::parse(name).is_some()
        || name.starts_with("unknown.")
        || (first.len() == 32 && hex(first))
        || (snapshot_id && name.ends_with(".manifest"))
}

/// Removes the leftovers among the entries of `dir` named `prefix` and a staged name (see
/// [`is_staged_name`]): files, or folders with their files. Only entries owned by this user are
/// considered (in a shared `$TMPDIR` nothing of anyone else's is touched), symlinks are removed,
/// never followed, and a `dir` that is itself a symlink is left alone. Best effort: what cannot
/// be inspected or removed is left and not counted.
pub fn collect(
    dir: &Path,
    prefix: &str,
    max_age: Duration,
    now: SystemTime,
    dry_run: bool,
) -> Leftovers {
    let mut removed = Leftovers::default();
    if dir.symlink_metadata().is_ok_and(|meta| meta.is_symlink()) {
        return removed;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return removed;
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(staged) = name.strip_prefix(prefix).filter(|s| is_staged_name(s)) else {
            continue;
        };
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.uid() != me {
            continue;
        }
        let (files, bytes, touched) = contents(&entry.path(), &meta);
        let abandoned = match Writer::parse(staged).and_then(|w| w.alive()) {
            Some(alive) => !alive,
            None => now.duration_since(touched).unwrap_or_default() > max_age,
        };
        if !abandoned {
            continue;
        }
        let gone = dry_run
            || if meta.is_dir() {
                fs::remove_dir_all(entry.path()).is_ok()
            } else {
                fs::remove_file(entry.path()).is_ok()
            };
        if gone {
            removed.files += files;
            removed.bytes += bytes;
        }
    }
    removed
}

/// Files, bytes and last modification of a staged file, or of a staging folder and the files
/// directly in it (a live writer may be writing a file without changing its folder).
fn contents(path: &Path, meta: &fs::Metadata) -> (u64, u64, SystemTime) {
    let touched = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if !meta.is_dir() {
        return (1, meta.len(), touched);
    }
    let mut total = (0, 0, touched);
    for entry in fs::read_dir(path).into_iter().flatten().flatten() {
        if let Ok(meta) = entry.path().symlink_metadata() {
            total.0 += 1;
            total.1 += meta.len();
            total.2 = total
                .2
                .max(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        }
    }
    total
}

fn boot_id() -> Option<String> {
    let text = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id: String = text.trim().chars().filter(|c| *c != '-').collect();
    (id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

fn pid_namespace() -> Option<u64> {
    let link = fs::read_link("/proc/self/ns/pid").ok()?;
    let text = link.to_str()?;
    text.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Start time of process `pid`, `None` if there is no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name a staged file of process `pid` (same boot and namespace as this one) would have.
    fn staged_by(pid: u32, started: u64) -> String {
        let me = Writer::current().expect("/proc describes this process");
        let writer = Writer {
            pid,
            started,
            ..me.clone()
        };
        format!("{}.{}.pack", writer.tag(), random_name())
    }

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    fn set_age(path: &Path, age: Duration) {
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
    }

    #[test]
    fn staged_files_of_a_dead_writer_are_collected_at_once_and_of_a_live_one_never() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join(staged_name(".pack"));
        fs::write(&mine, b"live").unwrap();
        set_age(&mine, 10 * MAX_AGE);
        let me = Writer::current().unwrap();
        // A pid now running something else: its start time differs.
        let reused = dir.path().join(staged_by(me.pid, me.started + 1));
        fs::write(&reused, b"reused pid").unwrap();
        let dead = dir.path().join(staged_by(dead_pid(), 1));
        fs::write(&dead, b"dead!").unwrap();

        let now = SystemTime::now();
        let dry = collect(dir.path(), "", MAX_AGE, now, true);
        assert_eq!(
            dry,
            Leftovers {
                files: 2,
                bytes: 15
            }
        );
        assert!(
            dead.exists() && reused.exists(),
            "a dry run removes nothing"
        );
        assert_eq!(collect(dir.path(), "", MAX_AGE, now, false), dry);
        assert!(
            mine.exists(),
            "this live process's file is kept, however old"
        );
        assert!(!dead.exists() && !reused.exists());
    }

    #[test]
    fn staged_files_of_unknown_writers_are_collected_once_old() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = Writer {
            boot: "0".repeat(32),
            ..Writer::current().unwrap().clone()
        };
        let other_host = dir.path().join(format!("{}.x.pack", foreign.tag()));
        let unnamed = dir.path().join("20240601T000000Z-1a2b3c4d.manifest");
        for path in [&other_host, &unnamed] {
            fs::write(path, b"left").unwrap();
        }
        let now = SystemTime::now();
        assert_eq!(collect(dir.path(), "", MAX_AGE, now, false).files, 0);
        set_age(&other_host, MAX_AGE + Duration::from_secs(60));
        assert_eq!(
            collect(dir.path(), "", MAX_AGE, now, false),
            Leftovers { files: 1, bytes: 4 }
        );
        assert!(!other_host.exists() && unnamed.exists());
        assert_eq!(collect(dir.path(), "", Duration::ZERO, now, false).files, 1);
    }

    #[test]
    fn a_staging_folder_counts_its_files_and_only_prefixed_entries_are_considered() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir
            .path()
            .join(format!("stage-{}", staged_by(dead_pid(), 1)));
        fs::create_dir(&folder).unwrap();
        fs::write(folder.join("a.pack"), b"123").unwrap();
        fs::write(folder.join("b.manifest"), b"45").unwrap();
        let unrelated = dir.path().join(staged_by(dead_pid(), 1));
        fs::write(&unrelated, b"not ours").unwrap();
        let removed = collect(dir.path(), "stage-", MAX_AGE, SystemTime::now(), false);
        assert_eq!(removed, Leftovers { files: 2, bytes: 5 });
        assert!(!folder.exists());
        assert!(unrelated.exists(), "no prefix, not a staging folder");
    }

    #[test]
    fn only_staged_names_are_collected_and_a_symlinked_folder_never() {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("notes.txt");
        fs::write(&notes, b"someone's").unwrap();
        set_age(&notes, 10 * MAX_AGE);
        let old = dir.path().join("0123456789abcdef0123456789abcdef.pack");
        fs::write(&old, b"old").unwrap();
        set_age(&old, 10 * MAX_AGE);
        let link = dir.path().join("tmp");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let now = SystemTime::now();
        assert_eq!(
            collect(&link, "", MAX_AGE, now, false),
            Leftovers::default()
        );
        assert!(old.exists(), "not through a symlink");
        assert_eq!(collect(dir.path(), "", MAX_AGE, now, false).files, 1);
        assert!(notes.exists() && !old.exists());
    }

    #[test]
    fn writer_names_round_trip() {
        let name = staged_name(".pack");
        let writer = Writer::parse(&name).unwrap();
        assert_eq!(&writer, Writer::current().unwrap());
        assert_eq!(writer.alive(), Some(true));
        assert!(name.ends_with(".pack"));
        assert_eq!(Writer::parse("0123abcd.pack"), None);
        assert!(is_staged_name(&name) && is_staged_name(&staged_name("")));
        assert!(is_staged_name("0123456789abcdef0123456789abcdef"));
        assert!(is_staged_name("20240601T000000Z-1a2b3c4d.manifest"));
        assert!(!is_staged_name("20240601T000000Z-1a2b3c4d.json"));
        assert!(!is_staged_name("notes.txt") && !is_staged_name("0123.pack"));
        assert_eq!(Writer::parse("unknown.0123.pack"), None);
    }
}
