//! The catalog: a JSON record of every run of a plan, and the plan's lock.
//!
//! Where it lives is a [`CatalogStore`]: a local folder ([`LocalStore`], the default) or, through
//! another crate, an S3 prefix. Everything else is here, once: records are written whole (a crash
//! or Ctrl-C leaves the old record or the new one, never half of one, and a run's write never
//! touches another run's record); a record that cannot be parsed is skipped with a warning rather
//! than hiding every other run; what `latest` means; marking dead runs.
//!
//! The lock's rules are in [`lock`] (taken atomically with its owner inside, reclaimed only when
//! the owner is provably gone, by a compare-and-swap two reclaimers cannot both win); the local
//! store of it is [`file_lock`]. A record left "Running" by a process that died is marked
//! interrupted by the next run of the plan, which holds the lock and so knows no other is live.

pub mod file_lock;
pub mod lock;
pub mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use backplan_plugin_sdk::Outputs;
pub use lock::{HEARTBEAT, LockGuard, STALE_AFTER, hostname};
use lock::{LockError, LockOwner, Taken};
pub use store::{CatalogStore, LocalStore};

use crate::record::{RunKind, RunRecord, RunStatus, StepStatus};

/// What `--run` and `runs show` take for "the newest".
pub const LATEST: &str = "latest";

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// Reading or writing the store failed.
    #[error("catalog {location}: {source}")]
    Io {
        /// The record or catalog.
        location: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Another run of the plan holds the lock.
    #[error(
        "plan `{plan}` is already being run by pid {pid} on {host} (run {run_id}, since {since}); \
         once that process is gone the lock is reclaimed by the next run (at once on the same \
         machine, after {STALE_AFTER:?} without a heartbeat elsewhere); its lock is {lock}"
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
        /// Where the lock is.
        lock: String,
    },
    /// The lock could not be taken for another reason than a live holder.
    #[error("the lock {lock}: {reason}")]
    Lock {
        /// Where the lock is.
        lock: String,
        /// Why.
        reason: String,
    },
    /// The run id is not in the catalog.
    #[error("no run `{0}` in the catalog")]
    NoSuchRun(String),
    /// A backup was asked for and the run is another kind.
    #[error("run {run_id} is a {kind:?} run, not a backup")]
    NotABackup {
        /// The run.
        run_id: String,
        /// What it is.
        kind: RunKind,
    },
    /// `latest` was asked for and no backup of the plan ran to its end.
    #[error("the catalog has no successful backup of plan `{0}` yet")]
    NoBackup(String),
    /// `latest` was asked for and the plan has no runs.
    #[error("no runs of plan `{0}` are recorded yet")]
    NoRuns(String),
    /// A record could not be read.
    #[error("the record {location} is unreadable: {reason}")]
    BadRecord {
        /// The record.
        location: String,
        /// Why.
        reason: String,
    },
}

/// One plan's catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    plan: String,
    store: Arc<dyn CatalogStore>,
}

impl Catalog {
    /// Opens (creating if needed) the catalog of `plan` in the local folder `location`.
    pub fn open(location: &Path, plan: &str) -> Result<Self, CatalogError> {
        let store = LocalStore::open(location, plan).map_err(|source| CatalogError::Io {
            location: location.join(plan).display().to_string(),
            source,
        })?;
        Ok(Catalog::new(plan, Arc::new(store)))
    }

    /// The catalog of `plan` in `store`.
    pub fn new(plan: &str, store: Arc<dyn CatalogStore>) -> Self {
        Catalog {
            plan: plan.to_owned(),
            store,
        }
    }

    /// Where the record of `run_id` is (or, with `None`, the plan's catalog), for messages.
    pub fn location(&self, run_id: Option<&str>) -> String {
        self.store.location(run_id)
    }

    fn io(&self, run_id: Option<&str>) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
        let location = self.location(run_id);
        move |source| CatalogError::Io { location, source }
    }

    /// Writes (or rewrites) a run's record, whole.
    pub fn save(&self, record: &RunRecord) -> Result<(), CatalogError> {
        let mut bytes = serde_json::to_vec_pretty(record).expect("records serialise");
        bytes.push(b'\n');
        self.store
            .put_record(&record.run_id, &bytes)
            .map_err(self.io(Some(&record.run_id)))
    }

    fn decode(&self, run_id: &str, bytes: Option<Vec<u8>>) -> Result<RunRecord, CatalogError> {
        let bytes = bytes.ok_or_else(|| CatalogError::NoSuchRun(run_id.to_owned()))?;
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::BadRecord {
            location: self.location(Some(run_id)),
            reason: e.to_string(),
        })
    }

    /// Reads one run's record.
    pub fn load(&self, run_id: &str) -> Result<RunRecord, CatalogError> {
        if run_id.is_empty() || run_id.contains(['/', '\\']) || run_id.starts_with('.') {
            return Err(CatalogError::NoSuchRun(run_id.to_owned()));
        }
        let bytes = self
            .store
            .get_record(run_id)
            .map_err(self.io(Some(run_id)))?;
        self.decode(run_id, bytes)
    }

    /// Every readable record, oldest first, and the problems with unreadable ones.
    pub fn list(&self) -> Result<(Vec<RunRecord>, Vec<CatalogError>), CatalogError> {
        let mut ids = self.store.record_ids().map_err(self.io(None))?;
        ids.sort();
        let mut records = Vec::new();
        let mut problems = Vec::new();
        for (id, fetched) in ids.iter().zip(self.store.get_records(&ids)) {
            match fetched
                .map_err(self.io(Some(id)))
                .and_then(|bytes| self.decode(id, bytes))
            {
                Ok(record) => records.push(record),
                // Removed between the listing and the read: not a problem.
                Err(CatalogError::NoSuchRun(_)) => {}
                Err(problem) => problems.push(problem),
            }
        }
        // Ids sort by the second they were made; two runs within one second sort by start time.
        records.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
        Ok((records, problems))
    }

    /// The backup run `--run` names: a run id, or `latest`, the newest real (not dry-run) backup
    /// in which at least one step succeeded and that ran to its end (Succeeded or
    /// PartiallyFailed), newest by start time.
    pub fn backup(&self, id: &str) -> Result<RunRecord, CatalogError> {
        if id != LATEST {
            let record = self.load(id)?;
            if record.kind != RunKind::Backup {
                return Err(CatalogError::NotABackup {
                    run_id: id.to_owned(),
                    kind: record.kind,
                });
            }
            return Ok(record);
        }
        self.list()?
            .0
            .into_iter()
            .rev()
            .find(|r| {
                r.kind == RunKind::Backup
                    && !r.dry_run
                    && matches!(r.status, RunStatus::Succeeded | RunStatus::PartiallyFailed)
            })
            .ok_or_else(|| CatalogError::NoBackup(self.plan.clone()))
    }

    /// The run `runs show` names: a run id, or `latest`, the newest run of any kind (a backup,
    /// verify, restore, prune or drill, finished or not), newest by start time.
    pub fn run(&self, id: &str) -> Result<RunRecord, CatalogError> {
        if id != LATEST {
            let live = self.live_run();
            let mut record = self.load(id)?;
            if record.status == RunStatus::Running && live.as_deref() != Some(id) {
                record.mark_interrupted();
            }
            return Ok(record);
        }
        self.list_now()?
            .0
            .pop()
            .ok_or_else(|| CatalogError::NoRuns(self.plan.clone()))
    }

    /// For a restore of only the `selected` steps of backup `source`: the outputs of the other
    /// steps from earlier real restores of the same backup (the latest wins), so that, e.g.,
    /// the new machine's addresses found by the launch on an admin machine reach the steps run
    /// later on the new machine.
    pub fn earlier_restore_outputs(
        &self,
        source: &str,
        selected: &[String],
    ) -> Result<BTreeMap<String, Outputs>, CatalogError> {
        let mut outputs = BTreeMap::new();
        for run in self.list()?.0 {
            if run.kind != RunKind::Restore
                || run.source_run.as_deref() != Some(source)
                || run.dry_run
            {
                continue;
            }
            for step in run.steps {
                if step.status == StepStatus::Succeeded && !selected.contains(&step.id) {
                    outputs.insert(step.id, step.outputs);
                }
            }
        }
        Ok(outputs)
    }

    /// Every readable record as it stands now, oldest first: a run recorded as running whose
    /// process is provably gone shows as [`RunStatus::Interrupted`] (the next run of the plan
    /// records it so). Also the problems with unreadable records.
    pub fn list_now(&self) -> Result<(Vec<RunRecord>, Vec<CatalogError>), CatalogError> {
        // The lock first: a run that finishes meanwhile has written its record before it let go.
        let live = self.live_run();
        let (mut records, problems) = self.list()?;
        for record in &mut records {
            if record.status == RunStatus::Running && live.as_deref() != Some(&record.run_id) {
                record.mark_interrupted();
            }
        }
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

    /// Takes the plan's lock for `run_id`, reclaiming it if its owner is provably gone.
    pub fn lock(&self, run_id: &str) -> Result<LockGuard, CatalogError> {
        let store = self.store.lock();
        let where_ = store.describe();
        let owner = LockOwner::this_process(run_id);
        match lock::acquire(store, owner, SystemTime::now(), STALE_AFTER) {
            Ok((guard, Taken::Free)) => Ok(guard),
            Ok((guard, Taken::Reclaimed(old))) => {
                match old {
                    Some(old) => tracing::warn!(
                        "reclaimed the lock of run {} (pid {} on {}), whose process is gone",
                        old.run_id,
                        old.pid,
                        old.host
                    ),
                    None => tracing::warn!("reclaimed an unreadable lock untouched for long"),
                }
                Ok(guard)
            }
            Err(LockError::Busy(owner)) => Err(CatalogError::Busy {
                plan: self.plan.clone(),
                pid: owner.pid,
                host: owner.host,
                run_id: owner.run_id,
                since: owner.since,
                lock: where_,
            }),
            Err(other) => Err(CatalogError::Lock {
                lock: where_,
                reason: other.to_string(),
            }),
        }
    }

    /// The run that holds the plan's lock and is alive, if any. A run recorded as running that
    /// is not this one has stopped without finishing its record.
    pub fn live_run(&self) -> Option<String> {
        let held = self.store.lock().read().ok()??;
        let owner: LockOwner = serde_json::from_slice(&held.bytes).ok()?;
        (!lock::is_gone(&owner, held.written, SystemTime::now(), STALE_AFTER))
            .then_some(owner.run_id)
    }

    /// Settles what dead runs left, while `guard` (this run's lock) proves no other run is under
    /// way: records still "Running" become [`RunStatus::Interrupted`], and half-written record
    /// files are removed. Returns the ids of the runs marked.
    pub fn settle_dead_runs(&self, guard: &LockGuard) -> Result<Vec<String>, CatalogError> {
        let me = &guard.owner().run_id;
        self.store.remove_leftovers().map_err(self.io(None))?;
        let mut marked = Vec::new();
        for mut record in self.list()?.0 {
            if record.status != RunStatus::Running || &record.run_id == me {
                continue;
            }
            record.mark_interrupted();
            self.save(&record)?;
            marked.push(record.run_id);
        }
        Ok(marked)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};
    use std::path::PathBuf;

    use super::*;

    fn root(catalog: &Catalog) -> PathBuf {
        PathBuf::from(catalog.location(None))
    }
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
            stopped_because: None,
            rebuilt: None,
            notifications: Vec::new(),
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
            root(&catalog).join("runs/20260103T000000Z-broken.json"),
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
        let leftovers = fs::read_dir(root(&catalog).join("runs"))
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
        assert_eq!(catalog.live_run().as_deref(), Some("run-a"));
        drop(guard);
        assert_eq!(catalog.live_run(), None);
        assert!(catalog.lock("run-b").is_ok());
    }

    fn plant_lock(catalog: &Catalog, owner: &LockOwner) -> PathBuf {
        let path = root(catalog).join("lock");
        fs::write(&path, owner.to_bytes()).unwrap();
        path
    }

    #[test]
    fn a_lock_of_a_dead_process_on_this_boot_is_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path(), "p").unwrap();
        let mut dead = LockOwner::this_process("ghost");
        dead.pid = i32::MAX as u32;
        plant_lock(&catalog, &dead);
        assert_eq!(catalog.live_run(), None);
        let guard = catalog.lock("run-new").unwrap();
        assert_eq!(guard.owner().run_id, "run-new");
        assert_eq!(catalog.live_run().as_deref(), Some("run-new"));
    }

    #[test]
    fn a_live_lock_on_another_host_is_respected_until_stale() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path(), "p").unwrap();
        let mut other = LockOwner::this_process("remote");
        other.host = "elsewhere".into();
        other.pid = i32::MAX as u32;
        let path = plant_lock(&catalog, &other);
        assert!(matches!(
            catalog.lock("mine"),
            Err(CatalogError::Busy { .. })
        ));
        let old = SystemTime::now() - STALE_AFTER - std::time::Duration::from_secs(5);
        File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(catalog.lock("mine").is_ok());
    }

    #[test]
    fn an_empty_lock_file_is_not_stale_until_it_expires() {
        // What the old O_EXCL lock looked like between its creation and its write: the second
        // of two simultaneous runs reclaimed it, and both ran.
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path(), "p").unwrap();
        fs::write(root(&catalog).join("lock"), b"").unwrap();
        assert!(matches!(
            catalog.lock("mine"),
            Err(CatalogError::Lock { .. })
        ));
    }

    #[test]
    fn runs_left_running_by_a_dead_process_are_marked_interrupted_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path(), "p").unwrap();
        let mut dead = record("20260101T000000Z-000001");
        dead.steps = vec![crate::record::StepRecord::pending("a", "exec", "1")];
        dead.steps[0].status = crate::record::StepStatus::Running;
        catalog.save(&dead).unwrap();
        let mut done = record("20260101T000001Z-000002");
        done.status = RunStatus::Succeeded;
        catalog.save(&done).unwrap();
        fs::write(
            root(&catalog).join("runs/.20260101T000000Z-000001.json.tmp-1-0"),
            b"half",
        )
        .unwrap();
        let guard = catalog.lock("20260101T000002Z-000003").unwrap();
        let mine = record("20260101T000002Z-000003");
        catalog.save(&mine).unwrap();
        let marked = catalog.settle_dead_runs(&guard).unwrap();
        assert_eq!(marked, ["20260101T000000Z-000001"]);
        let dead = catalog.load("20260101T000000Z-000001").unwrap();
        assert_eq!(dead.status, RunStatus::Interrupted);
        assert_eq!(dead.steps[0].status, crate::record::StepStatus::Cancelled);
        assert_eq!(
            catalog.load("20260101T000001Z-000002").unwrap().status,
            RunStatus::Succeeded
        );
        assert_eq!(
            catalog.load("20260101T000002Z-000003").unwrap().status,
            RunStatus::Running
        );
        let names: Vec<_> = fs::read_dir(root(&catalog).join("runs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
