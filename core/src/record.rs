//! The run record: what the catalog keeps about every run, as JSON.
//!
//! Restore, verify and prune start from these records, so a fresh machine that can read the
//! catalog can restore without the old one. The format carries a version number; fields are
//! added with defaults so that older records stay readable.

use backplan_plugin_sdk::{ErrorKind, Outputs, PluginError};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of the record format written by this backplan.
pub const RECORD_FORMAT: u32 = 1;

/// What kind of run it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// `backplan run`.
    Backup,
    /// `backplan verify`.
    Verify,
    /// `backplan restore`.
    Restore,
    /// `backplan prune`.
    Prune,
    /// `backplan drill`: restore some steps, check the result answers, tear it down.
    Drill,
}

impl RunKind {
    /// The plugin action this kind of run performs.
    pub fn action(self) -> backplan_plugin_sdk::Action {
        use backplan_plugin_sdk::Action;
        match self {
            RunKind::Backup => Action::Backup,
            RunKind::Verify => Action::Verify,
            RunKind::Restore => Action::Restore,
            RunKind::Prune => Action::Prune,
            RunKind::Drill => Action::Restore,
        }
    }

    /// The order this kind of run takes the plan's steps in: restores and drills take the
    /// restore order.
    pub fn order(self) -> crate::plan::Order {
        match self {
            RunKind::Restore | RunKind::Drill => crate::plan::Order::Restore,
            RunKind::Backup | RunKind::Verify | RunKind::Prune => crate::plan::Order::Backup,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    /// Still running (or the process died: the record was never finished).
    Running,
    /// Every step succeeded.
    Succeeded,
    /// Some steps succeeded, some did not.
    PartiallyFailed,
    /// No step succeeded, or the checks failed.
    Failed,
    /// Stopped by Ctrl-C or SIGTERM; what ran is recorded.
    Cancelled,
    /// The process died (SIGKILL, power loss) before it finished the record; found and marked
    /// by a later run of the plan.
    Interrupted,
}

impl RunStatus {
    /// Whether the run is over (as far as its record says).
    pub fn is_final(self) -> bool {
        self != RunStatus::Running
    }
}

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Not started yet.
    Pending,
    /// Under way.
    Running,
    /// Done.
    Succeeded,
    /// Failed (see its error).
    Failed,
    /// Its last attempt ran out of time.
    TimedOut,
    /// Stopped by Ctrl-C, or never started because of it.
    Cancelled,
    /// Not run: a dependency failed, or nothing to act on.
    Skipped,
}

impl StepStatus {
    /// Whether the step is over.
    pub fn is_final(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

/// The error a step ended with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    /// The plugin's classification.
    pub kind: ErrorKind,
    /// One line.
    pub message: String,
    /// More, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<PluginError> for StepError {
    fn from(e: PluginError) -> Self {
        StepError {
            kind: e.kind,
            message: e.message,
            detail: e.detail,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        Ok(())
    }
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's id.
    pub id: String,
    /// The plugin that ran it.
    pub plugin: String,
    /// That plugin's version.
    #[serde(default)]
    pub plugin_version: String,
    /// How it ended.
    pub status: StepStatus,
    /// How many attempts were made.
    #[serde(default)]
    pub attempts: u32,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Bytes the plugin reported.
    #[serde(default)]
    pub bytes: u64,
    /// The plugin's one-line summary.
    #[serde(default)]
    pub summary: String,
    /// Values later steps could read.
    #[serde(default)]
    pub outputs: Outputs,
    /// What the plugin made: handed back to verify, restore and prune.
    #[serde(default)]
    pub record: Value,
    /// Warnings that did not fail the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why it failed, was skipped or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

impl StepRecord {
    /// A step that has not started.
    pub fn pending(id: &str, plugin: &str, plugin_version: &str) -> Self {
        StepRecord {
            id: id.to_owned(),
            plugin: plugin.to_owned(),
            plugin_version: plugin_version.to_owned(),
            status: StepStatus::Pending,
            attempts: 0,
            started_at: None,
            finished_at: None,
            bytes: 0,
            summary: String::new(),
            outputs: Outputs::new(),
            record: Value::Null,
            warnings: Vec::new(),
            error: None,
        }
    }

    /// How long it ran, when it has started and ended.
    pub fn duration(&self) -> Option<std::time::Duration> {
        let (start, end) = (self.started_at?, self.finished_at?);
        end.duration_since(start).try_into().ok()
    }
}

/// The plan a run came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInfo {
    /// Its name.
    pub name: String,
    /// `sha256:` of the plan file as it was.
    pub digest: String,
    /// Where the file was.
    pub path: String,
}

/// Proof that a backup was shown to be usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// When.
    pub at: Timestamp,
    /// The verify (or drill) run that showed it.
    pub by_run: String,
}

/// Everything recorded about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// [`RECORD_FORMAT`] at the time of writing.
    pub format: u32,
    /// Sortable id: UTC start time and a random suffix.
    pub run_id: String,
    /// What kind of run.
    pub kind: RunKind,
    /// The plan.
    pub plan: PlanInfo,
    /// For verify and restore: the backup run acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run: Option<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// How it ended.
    pub status: RunStatus,
    /// Whether a signal (Ctrl-C, SIGTERM) stopped it, or its process died.
    #[serde(default)]
    pub interrupted: bool,
    /// Whether nothing was meant to change.
    #[serde(default)]
    pub dry_run: bool,
    /// The machine it ran on.
    #[serde(default)]
    pub host: String,
    /// The backplan that ran it.
    #[serde(default)]
    pub backplan_version: String,
    /// For backups: set when a verify or drill proved it usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verification>,
    /// For drills: the health check, the time to recovery and the teardown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillOutcome>,
    /// Every step, in the order the run took them.
    pub steps: Vec<StepRecord>,
    /// Why the run stopped early when neither a step nor a signal says it (its lock was taken
    /// over by a process that judged it dead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_because: Option<String>,
    /// Set when `backplan catalog rebuild` recreated this record from what the backups left
    /// (AMI tags, snapshot headers): when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuilt: Option<Timestamp>,
    /// The notifications sent about this run, delivered or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<crate::notify::Delivery>,
}

/// What a restore drill showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillOutcome {
    /// The `host:port` that had to accept a TCP connection, or the http(s) URL that had to
    /// answer with [`health_expected`](Self::health_expected).
    pub health_target: String,
    /// Whether it did before the deadline.
    pub healthy: bool,
    /// From the start of the run to the first successful health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_recovery_secs: Option<f64>,
    /// Why the health check did not pass, if it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
    /// For a URL: the HTTP status it last answered with (the one that passed, if it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_status: Option<u16>,
    /// For a URL: the statuses that pass, `200` or `200-399`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_expected: Option<String>,
    /// For an https URL: any certificate was accepted (`--health-insecure`), so the check did
    /// not show who answered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub health_insecure: bool,
    /// The teardown of each restored step.
    pub teardown: Vec<TeardownOutcome>,
}

/// The teardown of one restored step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeardownOutcome {
    /// The step.
    pub step: String,
    /// Whether it was undone.
    pub ok: bool,
    /// The plugin's summary, or the error.
    pub message: String,
}

impl RunRecord {
    /// The step of that id.
    pub fn step(&self, id: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Whether this is a real backup whose step `id` succeeded (what verify, restore and prune
    /// may act upon).
    pub fn has_backup_of(&self, id: &str) -> bool {
        self.kind == RunKind::Backup
            && !self.dry_run
            && self
                .step(id)
                .is_some_and(|s| s.status == StepStatus::Succeeded)
    }

    /// Sets the final status from the steps' statuses.
    pub fn conclude(&mut self) {
        let succeeded = self
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Succeeded)
            .count();
        let failed = self
            .steps
            .iter()
            .filter(|s| !matches!(s.status, StepStatus::Succeeded | StepStatus::Skipped))
            .count()
            + self
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Skipped && s.error.is_some())
                .count();
        self.status = match (succeeded, failed) {
            _ if self.interrupted => RunStatus::Cancelled,
            (_, 0) => RunStatus::Succeeded,
            (0, _) => RunStatus::Failed,
            _ => RunStatus::PartiallyFailed,
        };
        // A drill whose restored system never answered proved nothing; one that could not tear
        // down what it launched left something running.
        if let Some(drill) = self.drill.as_ref().filter(|_| !self.interrupted) {
            if !drill.healthy {
                self.status = RunStatus::Failed;
            } else if drill.teardown.iter().any(|t| !t.ok) && self.status == RunStatus::Succeeded {
                self.status = RunStatus::PartiallyFailed;
            }
        }
        self.finished_at = Some(Timestamp::now());
    }
}

impl RunRecord {
    /// Marks a run whose process died while it was "Running": the run and every step that was
    /// under way or waiting.
    pub fn mark_interrupted(&mut self) {
        for step in &mut self.steps {
            if !step.status.is_final() {
                let started = step.status == StepStatus::Running;
                step.status = StepStatus::Cancelled;
                step.error = Some(StepError {
                    kind: ErrorKind::Cancelled,
                    message: if started {
                        "interrupted: backplan stopped while this step ran".into()
                    } else {
                        "not started: backplan stopped before this step".into()
                    },
                    detail: None,
                });
            }
        }
        self.status = RunStatus::Interrupted;
        self.interrupted = true;
    }
}

/// A new, sortable run id: `20261124T182700Z-3f9a1c`.
pub fn new_run_id() -> String {
    let now = Timestamp::now();
    format!(
        "{}-{:06x}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        fastrand::u32(..0x100_0000)
    )
}
