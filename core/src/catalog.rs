//! The catalog: one folder per plan holding a JSON record of every run, and the plan's lock.
//!
//! ```text
//! <catalog>/<plan-name>/runs/<run-id>.json   one record per run, rewritten as the run goes
//! <catalog>/<plan-name>/lock                 held by the one run of this plan under way
//! ```
//!
//! Every write is atomic (a temp file in the same folder, fsync, rename, fsync of the folder), so
//! a crash or Ctrl-C leaves either the old record or the new one, never half of one, and a run's
//! write never touches another run's record. A record that cannot be parsed is skipped with a
//! warning rather than hiding every other run.
//!
//! The lock is a file created with `O_EXCL` holding the owner's host, pid and run id; the owner
//! refreshes its mtime while it runs. It is stale when its pid is gone (same host) or it has not
//! been refreshed for [`STALE_AFTER`]. A stale lock is reclaimed by renaming it aside (only one
//! contender's rename can succeed) and creating a fresh one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::record::RunRecord;

/// A lock not refreshed for this long is taken to belong to a dead run.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// How often a running backplan refreshes its lock.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A file operation failed.
    #[error("catalog {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Another run of the plan holds the lock.
    #[error(
        "plan `{plan}` is already being run by pid {pid} on {host} (run {run_id}, since {since}); \
         if that process is gone, the lock is reclaimed automatically once stale, or remove {path}"
    )]
    Busy {
        /// The plan.
        plan: String,
        /// The holder's pid.
        pid: u32,
        /// The holder's host.
        host: String,
        /// The holder's run.
        run_id: String,
        /// When it took the lock.
        since: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The run id is not in the catalog.
    #[error("no run `{0}` in the catalog")]
    NoSuchRun(String),
    /// A record could not be read.
    #[error("the record {path} is unreadable: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CatalogError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(io(path))
}

/// The catalog folder of one plan.
#[derive(Debug, Clone)]
pub struct Catalog {
    plan: String,
    root: PathBuf,
}

impl Catalog {
    /// Opens (creating if needed) the catalog of `plan` under `location`.
    pub fn open(location: &Path, plan: &str) -> Result<Self, CatalogError> {
        let root = location.join(plan);
        fs::create_dir_all(root.join("runs")).map_err(io(&root))?;
        Ok(Catalog {
            plan: plan.to_owned(),
            root,
        })
    }

    /// The plan's folder in the catalog.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn record_path(&self, run_id: &str) -> PathBuf {
        self.root.join("runs").join(format!("{run_id}.json"))
    }

    /// Writes (or rewrites) a run's record atomically.
    pub fn save(&self, record: &RunRecord) -> Result<(), CatalogError> {
        let mut bytes = serde_json::to_vec_pretty(record).expect("records serialise");
        bytes.push(b'\n');
        write_atomic(&self.record_path(&record.run_id), &bytes)
    }

    /// Reads one run's record.
    pub fn load(&self, run_id: &str) -> Result<RunRecord, CatalogError> {
        if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return Err(CatalogError::NoSuchRun(run_id.to_owned()));
        }
        let path = self.record_path(run_id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CatalogError::NoSuchRun(run_id.to_owned()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::BadRecord {
            path,
            reason: e.to_string(),
        })
    }

    /// Every readable record, oldest first, and the problems with unreadable ones.
    pub fn list(&self) -> Result<(Vec<RunRecord>, Vec<CatalogError>), CatalogError> {
        let dir = self.root.join("runs");
        let mut ids: Vec<String> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                (!id.starts_with('.')).then(|| id.to_owned())
            })
            .collect();
        ids.sort();
        let mut records = Vec::new();
        let mut problems = Vec::new();
        for id in ids {
            match self.load(&id) {
                Ok(record) => records.push(record),
                Err(problem) => problems.push(problem),
            }
        }
        // Ids sort by the second they were made; two runs within one second sort by start time.
        records.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
        Ok((records, problems))
    }

    /// Marks backup run `run_id` as proven usable by run `by_run`.
    pub fn mark_verified(&self, run_id: &str, by_run: &str) -> Result<(), CatalogError> {
        let mut record = self.load(run_id)?;
        record.verified = Some(crate::record::Verification {
            at: jiff::Timestamp::now(),
            by_run: by_run.to_owned(),
        });
        self.save(&record)
    }

    /// Takes the plan's lock for `run_id`, reclaiming it if stale.
    pub fn lock(&self, run_id: &str) -> Result<LockGuard, CatalogError> {
        let path = self.root.join("lock");
        let mine = LockInfo {
            pid: std::process::id(),
            host: hostname(),
            run_id: run_id.to_owned(),
            since: jiff::Timestamp::now().to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&mine).expect("lock info serialises");
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(&bytes)
                        .and_then(|()| file.sync_all())
                        .map_err(io(&path))?;
                    return Ok(LockGuard { path, mine });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(&path)(e)),
            }
            let holder = read_lock(&path);
            match &holder {
                Some((info, _)) if !is_stale(&path, info) => {
                    return Err(CatalogError::Busy {
                        plan: self.plan.clone(),
                        pid: info.pid,
                        host: info.host.clone(),
                        run_id: info.run_id.clone(),
                        since: info.since.clone(),
                        path,
                    });
                }
                // Stale, or unreadable (a crash between create and write): reclaim.
                _ => self.reclaim(&path, holder.map(|(_, raw)| raw))?,
            }
        }
        Err(io(&path)(std::io::Error::other(
            "the lock keeps changing hands; try again",
        )))
    }

    /// Moves a stale lock aside. If what was moved is not the lock judged stale (someone
    /// reclaimed it first and took it), it is put back.
    fn reclaim(&self, path: &Path, judged: Option<Vec<u8>>) -> Result<(), CatalogError> {
        let aside = self.root.join(format!(
            ".lock.stale-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        match fs::rename(path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(path)(e)),
        }
        let moved = fs::read(&aside).ok();
        if judged.is_some() && moved != judged {
            // Not the one we judged: restore it unless a new lock already exists.
            let _ = fs::hard_link(&aside, path);
        } else {
            tracing::warn!(lock = %path.display(), "reclaimed a stale lock");
        }
        let _ = fs::remove_file(&aside);
        Ok(())
    }
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LockInfo {
    pid: u32,
    host: String,
    run_id: String,
    since: String,
}

fn read_lock(path: &Path) -> Option<(LockInfo, Vec<u8>)> {
    let raw = fs::read(path).ok()?;
    let info = serde_json::from_slice(&raw).ok()?;
    Some((info, raw))
}

fn is_stale(path: &Path, info: &LockInfo) -> bool {
    if info.host == hostname() && !pid_alive(info.pid) {
        return true;
    }
    let age = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    age.is_some_and(|age| age > STALE_AFTER)
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This machine's host name.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// The held lock. Dropping it releases the lock, if it is still ours.
#[derive(Debug)]
pub struct LockGuard {
    path: PathBuf,
    mine: LockInfo,
}

impl LockGuard {
    /// Refreshes the lock's mtime so others see the run is alive.
    pub fn heartbeat(&self) {
        if let Ok(file) = File::options().append(true).open(&self.path) {
            let _ = file.set_modified(SystemTime::now());
        }
    }

    fn still_mine(&self) -> bool {
        read_lock(&self.path).is_some_and(|(info, _)| info == self.mine)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.still_mine() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{PlanInfo, RunKind, RunStatus};

    fn record(id: &str) -> RunRecord {
        RunRecord {
            format: 1,
            run_id: id.into(),
            kind: RunKind::Backup,
            plan: PlanInfo {
                name: "p".into(),
                digest: "sha256:0".into(),
                path: "/p.toml".into(),
            },
            source_run: None,
            started_at: jiff::Timestamp::now(),
            finished_at: None,
            status: RunStatus::Running,
            interrupted: false,
            dry_run: false,
            host: hostname(),
            backplan_version: "test".into(),
            verified: None,
            drill: None,
            steps: Vec::new(),
        }
    }

    #[test]
    fn records_round_trip_and_list_in_order_skipping_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path(), "p").unwrap();
        let mut later = record("20260102T000000Z-000002");
        later.started_at = "2026-01-02T00:00:00Z".parse().unwrap();
        let mut earlier = record("20260101T000000Z-000001");
        earlier.started_at = "2026-01-01T00:00:00Z".parse().unwrap();
        catalog.save(&later).unwrap();
        catalog.save(&earlier).unwrap();
        fs::write(
            catalog.root().join("runs/20260103T000000Z-broken.json"),
            b"{ half",
        )
        .unwrap();
        let (records, problems) = catalog.list().unwrap();
        let ids: Vec<_> = records.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["20260101T000000Z-000001", "20260102T000000Z-000002"]);
        assert_eq!(problems.len(), 1);
        assert!(matches!(
            catalog.load("nope"),
            Err(CatalogError::NoSuchRun(_))
        ));
        assert!(matches!(
            catalog.load("../x"),
            Err(CatalogError::NoSuchRun(_))
        ));
        // No temp files are left behind.
        let leftovers = fs::read_dir(catalog.root().join("runs"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path(), "p").unwrap();
        let guard = catalog.lock("run-a").unwrap();
        let err = catalog.lock("run-b").unwrap_err();
        assert!(
            matches!(err, CatalogError::Busy { ref run_id, .. } if run_id == "run-a"),
            "{err}"
        );
        drop(guard);
        assert!(catalog.lock("run-b").is_ok());
    }

    #[test]
    fn a_lock_of_a_dead_process_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path(), "p").unwrap();
        let dead = LockInfo {
            pid: i32::MAX as u32,
            host: hostname(),
            run_id: "ghost".into(),
            since: "2020-01-01T00:00:00Z".into(),
        };
        fs::write(
            catalog.root().join("lock"),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let guard = catalog.lock("run-new").unwrap();
        assert_eq!(read_lock(&guard.path).unwrap().0.run_id, "run-new");
    }

    #[test]
    fn a_live_lock_on_another_host_is_respected_until_stale() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path(), "p").unwrap();
        let other = LockInfo {
            pid: 1,
            host: "elsewhere".into(),
            run_id: "remote".into(),
            since: "2020-01-01T00:00:00Z".into(),
        };
        let path = catalog.root().join("lock");
        fs::write(&path, serde_json::to_vec(&other).unwrap()).unwrap();
        assert!(matches!(
            catalog.lock("mine"),
            Err(CatalogError::Busy { .. })
        ));
        let old = SystemTime::now() - STALE_AFTER - Duration::from_secs(5);
        File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(catalog.lock("mine").is_ok());
    }
}
