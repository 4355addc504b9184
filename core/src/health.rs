//! How a plan's backups stand, from its catalog alone: for each step the newest successful and
//! the newest verified backup, the last run of each kind, and a verdict a monitor can act on.
//!
//! `backplan status` and the metrics file both read these facts, so what a pager says and what
//! Prometheus graphs agree. [`judge`] is a pure function of the facts and a clock: it is tested
//! against backdated records without waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::plan::Plan;
use crate::record::{RunKind, RunRecord, RunStatus, StepStatus};

/// One run, as the facts name it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFact {
    /// The run.
    pub run_id: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended, if it did.
    pub finished_at: Option<Timestamp>,
    /// How it ended.
    pub status: RunStatus,
}

impl RunFact {
    fn of(record: &RunRecord) -> Self {
        RunFact {
            run_id: record.run_id.clone(),
            started_at: record.started_at,
            finished_at: record.finished_at,
            status: record.status,
        }
    }

    /// How long it took, if it ended.
    pub fn duration(&self) -> Option<Duration> {
        self.finished_at?
            .duration_since(self.started_at)
            .try_into()
            .ok()
    }
}

/// One step's backups.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepHealth {
    /// The step.
    pub step: String,
    /// The newest real backup run in which this step succeeded.
    pub last_success: Option<RunFact>,
    /// The newest of those that a verify or drill proved usable.
    pub last_verified: Option<RunFact>,
    /// How the step ended in the newest real backup run that included it.
    pub last_status: Option<StepStatus>,
    /// What the step's newest successful backup reported: bytes, and files if its plugin
    /// counts them (a `files` number in its record).
    pub bytes: u64,
    /// Files, when known.
    pub files: Option<u64>,
    /// How long the newest successful backup of the step took.
    pub duration: Option<Duration>,
}

/// A plan's backups, from its catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// The plan.
    pub plan: String,
    /// Every step of the plan, in backup order.
    pub steps: Vec<StepHealth>,
    /// The newest finished (or interrupted) run of each kind; dry runs are left out.
    pub last_runs: BTreeMap<String, RunFact>,
    /// The newest healthy drill's time to recovery, in seconds.
    pub time_to_recovery_secs: Option<f64>,
}

/// The facts of `plan` from its `records` (any order).
pub fn health(plan: &Plan, records: &[RunRecord]) -> Health {
    let mut runs: Vec<&RunRecord> = records.iter().filter(|r| !r.dry_run).collect();
    runs.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
    let mut last_runs = BTreeMap::new();
    for run in runs.iter().filter(|r| r.status.is_final()) {
        last_runs.insert(kind_name(run.kind).to_owned(), RunFact::of(run));
    }
    let time_to_recovery_secs = runs
        .iter()
        .rev()
        .filter_map(|r| r.drill.as_ref())
        .find(|d| d.healthy)
        .and_then(|d| d.time_to_recovery_secs);
    let backups: Vec<&RunRecord> = runs
        .iter()
        .copied()
        .filter(|r| r.kind == RunKind::Backup)
        .collect();
    let steps = plan
        .steps
        .iter()
        .map(|step| {
            let succeeded = |r: &&&RunRecord| r.has_backup_of(&step.id);
            let last_success = backups.iter().rev().find(succeeded);
            let last_verified = backups
                .iter()
                .rev()
                .filter(succeeded)
                .find(|r| r.verified.is_some());
            let last_status = backups
                .iter()
                .rev()
                .find_map(|r| r.step(&step.id))
                .map(|s| s.status);
            let entry = last_success.and_then(|r| r.step(&step.id));
            StepHealth {
                step: step.id.clone(),
                last_success: last_success.map(|r| RunFact::of(r)),
                last_verified: last_verified.map(|r| RunFact::of(r)),
                last_status,
                bytes: entry.map_or(0, |s| s.bytes),
                files: entry
                    .and_then(|s| s.record.get("files"))
                    .and_then(|f| f.as_u64()),
                duration: entry.and_then(|s| s.duration()),
            }
        })
        .collect();
    Health {
        plan: plan.name.clone(),
        steps,
        last_runs,
        time_to_recovery_secs,
    }
}

/// The plan's word for a kind of run.
pub fn kind_name(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Backup => "backup",
        RunKind::Verify => "verify",
        RunKind::Restore => "restore",
        RunKind::Prune => "prune",
        RunKind::Drill => "drill",
    }
}

/// How bad it is, by the monitoring-plugin convention (Nagios, Icinga, Sensu): the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Every step has a fresh backup, verified recently enough, and the last backup ran well.
    Ok = 0,
    /// Still restorable, but something needs a look: the last backup run did not fully
    /// succeed, or a step was not verified recently enough.
    Warning = 1,
    /// A step has no successful backup, or only one older than the allowed age.
    Critical = 2,
    /// The catalog could not be read.
    Unknown = 3,
}

/// What a monitor wants: the level and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The worst finding.
    pub level: Level,
    /// Each finding, worst first, one line each.
    pub findings: Vec<String>,
}

impl Verdict {
    /// One line a pager can show.
    pub fn line(&self, plan: &str) -> String {
        let level = match self.level {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        };
        if self.findings.is_empty() {
            format!("backplan {level}: plan `{plan}`: every step backed up and verified in time")
        } else {
            format!(
                "backplan {level}: plan `{plan}`: {}",
                self.findings.join("; ")
            )
        }
    }
}

/// What counts as fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A step's newest successful backup may be at most this old.
    pub max_age: Duration,
    /// And its newest verified backup at most this old (`None`: not checked).
    pub verified_within: Option<Duration>,
}

fn age(now: Timestamp, then: Timestamp) -> Duration {
    now.duration_since(then).try_into().unwrap_or_default()
}

fn human(d: Duration) -> String {
    let rounded = Duration::from_secs(if d.as_secs() >= 3600 {
        d.as_secs() / 60 * 60
    } else {
        d.as_secs()
    });
    humantime::format_duration(rounded).to_string()
}

/// Judges `health` at `now` against `limits`.
pub fn judge(health: &Health, now: Timestamp, limits: Limits) -> Verdict {
    let mut findings: Vec<(Level, String)> = Vec::new();
    for step in &health.steps {
        match &step.last_success {
            None => findings.push((
                Level::Critical,
                format!("step `{}` has no successful backup", step.step),
            )),
            Some(run) if age(now, run.started_at) > limits.max_age => findings.push((
                Level::Critical,
                format!(
                    "step `{}` last backed up {} ago (at most {})",
                    step.step,
                    human(age(now, run.started_at)),
                    human(limits.max_age)
                ),
            )),
            Some(_) => {}
        }
        if let Some(within) = limits.verified_within {
            match &step.last_verified {
                None if step.last_success.is_some() => findings.push((
                    Level::Warning,
                    format!("step `{}` has no verified backup", step.step),
                )),
                Some(run) if age(now, run.started_at) > within => findings.push((
                    Level::Warning,
                    format!(
                        "step `{}` last verified backup is {} old (at most {})",
                        step.step,
                        human(age(now, run.started_at)),
                        human(within)
                    ),
                )),
                _ => {}
            }
        }
    }
    if let Some(last) = health.last_runs.get("backup")
        && last.status != RunStatus::Succeeded
    {
        findings.push((
            Level::Warning,
            format!(
                "the last backup run {} ended {:?}",
                last.run_id, last.status
            ),
        ));
    }
    findings.sort_by_key(|f| std::cmp::Reverse(f.0));
    Verdict {
        level: findings.first().map_or(Level::Ok, |f| f.0),
        findings: findings.into_iter().map(|f| f.1).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{PlanInfo, StepRecord, Verification};

    const LIMITS: Limits = Limits {
        max_age: Duration::from_secs(26 * 3600),
        verified_within: Some(Duration::from_secs(8 * 24 * 3600)),
    };

    fn plan() -> Plan {
        Plan::parse(
            std::path::Path::new("/p.toml"),
            "[plan]\nname = \"p\"\n[[steps]]\nid = \"ami\"\nplugin = \"e\"\n[[steps]]\nid = \"files\"\nplugin = \"e\"\n"
                .into(),
        )
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    /// A backup `hours_ago`, with each step's status.
    fn backup(id: &str, hours_ago: u64, steps: &[(&str, StepStatus)]) -> RunRecord {
        let started = now() - jiff::SignedDuration::from_hours(hours_ago as i64);
        let mut record = RunRecord {
            format: 1,
            run_id: id.into(),
            kind: RunKind::Backup,
            plan: PlanInfo {
                name: "p".into(),
                digest: String::new(),
                path: String::new(),
            },
            source_run: None,
            started_at: started,
            finished_at: Some(started + jiff::SignedDuration::from_mins(5)),
            status: RunStatus::Succeeded,
            interrupted: false,
            dry_run: false,
            host: String::new(),
            backplan_version: String::new(),
            verified: None,
            drill: None,
            stopped_because: None,
            rebuilt: None,
            notifications: Vec::new(),
            steps: steps
                .iter()
                .map(|(id, status)| StepRecord {
                    status: *status,
                    ..StepRecord::pending(id, "e", "1")
                })
                .collect(),
        };
        if steps.iter().any(|(_, s)| *s != StepStatus::Succeeded) {
            record.status = RunStatus::PartiallyFailed;
        }
        record
    }

    fn verified(mut record: RunRecord) -> RunRecord {
        record.verified = Some(Verification {
            at: now(),
            by_run: "v".into(),
        });
        record
    }

    const BOTH_OK: &[(&str, StepStatus)] = &[
        ("ami", StepStatus::Succeeded),
        ("files", StepStatus::Succeeded),
    ];

    #[test]
    fn fresh_and_verified_backups_are_ok() {
        let records = [
            verified(backup("r1", 30, BOTH_OK)),
            backup("r2", 2, BOTH_OK),
        ];
        let verdict = judge(&health(&plan(), &records), now(), LIMITS);
        assert_eq!(verdict.level, Level::Ok, "{verdict:?}");
        assert!(verdict.line("p").starts_with("backplan OK: plan `p`"));
    }

    #[test]
    fn an_empty_catalog_is_critical() {
        let verdict = judge(&health(&plan(), &[]), now(), LIMITS);
        assert_eq!(verdict.level, Level::Critical);
        assert_eq!(verdict.findings.len(), 2);
    }

    #[test]
    fn a_stale_step_is_critical_and_says_how_old() {
        let failed_files = &[
            ("ami", StepStatus::Succeeded),
            ("files", StepStatus::Failed),
        ];
        let records = [
            verified(backup("r1", 40, BOTH_OK)),
            verified(backup("r2", 2, failed_files)),
        ];
        let verdict = judge(&health(&plan(), &records), now(), LIMITS);
        assert_eq!(verdict.level, Level::Critical);
        assert_eq!(
            verdict.findings,
            [
                "step `files` last backed up 1day 16h ago (at most 1day 2h)",
                "the last backup run r2 ended PartiallyFailed",
            ]
        );
    }

    #[test]
    fn never_or_long_ago_verified_is_a_warning() {
        let records = [
            verified(backup("r1", 24 * 9, BOTH_OK)),
            backup("r2", 1, BOTH_OK),
        ];
        let verdict = judge(&health(&plan(), &records), now(), LIMITS);
        assert_eq!(verdict.level, Level::Warning);
        assert!(verdict.findings[0].contains("9days old"), "{verdict:?}");
        let never = judge(&health(&plan(), &[backup("r1", 1, BOTH_OK)]), now(), LIMITS);
        assert_eq!(never.level, Level::Warning);
        let unchecked = Limits {
            verified_within: None,
            ..LIMITS
        };
        assert_eq!(
            judge(&health(&plan(), &records), now(), unchecked).level,
            Level::Ok
        );
    }

    #[test]
    fn the_facts_name_the_newest_success_and_verification_of_each_step() {
        let records = [
            verified(backup("r1", 30, BOTH_OK)),
            backup(
                "r2",
                2,
                &[
                    ("ami", StepStatus::Succeeded),
                    ("files", StepStatus::Failed),
                ],
            ),
        ];
        let health = health(&plan(), &records);
        let files = &health.steps[1];
        assert_eq!(files.last_success.as_ref().unwrap().run_id, "r1");
        assert_eq!(files.last_verified.as_ref().unwrap().run_id, "r1");
        assert_eq!(files.last_status, Some(StepStatus::Failed));
        assert_eq!(health.steps[0].last_success.as_ref().unwrap().run_id, "r2");
        assert_eq!(health.last_runs["backup"].run_id, "r2");
    }
}
