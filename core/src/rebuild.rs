//! `backplan catalog rebuild`: run records recreated from what the backups left behind, for when
//! the catalog is lost (it lived on the lost machine, or its bucket prefix was deleted).
//!
//! Each step whose plugin can `discover` lists the backups it finds (ebs: its AMIs by the tags
//! it writes; nfs-objects: its repository's snapshots, whose headers name plan, step and run),
//! each with the run id and the record that run stored. [`records`] groups them by run into
//! backup records marked [`RunRecord::rebuilt`]. A step whose plugin has nothing to discover is
//! recorded as skipped without blame (a restore still calls it, without a record); a step that could discover but whose backup of that run
//! is gone is skipped with the reason, so the run is partial. Existing records are never
//! replaced: rebuilding adds only what is missing.

use std::collections::BTreeMap;

use backplan_plugin_sdk::{DiscoveredBackup, ErrorKind};
use jiff::Timestamp;

use crate::plan::Plan;
use crate::record::{
    PlanInfo, RECORD_FORMAT, RunKind, RunRecord, RunStatus, StepError, StepRecord, StepStatus,
};

/// What one step found.
#[derive(Debug, Clone)]
pub struct Found {
    /// The step.
    pub step: String,
    /// Its plugin and that plugin's version.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// Whether its plugin can discover at all.
    pub can_discover: bool,
    /// What it found.
    pub backups: Vec<DiscoveredBackup>,
    /// What its plugin said of the search: a summary, and warnings (backups it could not read,
    /// images still pending...).
    pub summary: String,
    /// Its warnings.
    pub warnings: Vec<String>,
}

/// The time a run started: what a plugin recorded, else the run id's own (`20261124T182700Z-…`).
fn started(run_id: &str, said: &str) -> Timestamp {
    said.parse().ok().unwrap_or_else(|| {
        let stamp = run_id.split('-').next().unwrap_or_default();
        jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp)
            .ok()
            .and_then(|t| jiff::tz::TimeZone::UTC.to_timestamp(t).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH)
    })
}

/// The backup records of `plan` that `found` describes, oldest first, made at `now`.
pub fn records(plan: &Plan, found: &[Found], now: Timestamp) -> Vec<RunRecord> {
    let mut runs: BTreeMap<&str, BTreeMap<&str, &DiscoveredBackup>> = BTreeMap::new();
    for step in found {
        for backup in &step.backups {
            runs.entry(&backup.run_id)
                .or_default()
                .insert(&step.step, backup);
        }
    }
    let by_step: BTreeMap<&str, &Found> = found.iter().map(|f| (f.step.as_str(), f)).collect();
    let mut records: Vec<RunRecord> = runs
        .into_iter()
        .map(|(run_id, steps)| {
            let started_at = steps
                .values()
                .map(|b| started(run_id, &b.started_at))
                .min()
                .unwrap_or(Timestamp::UNIX_EPOCH);
            let steps: Vec<StepRecord> = plan
                .steps
                .iter()
                .map(|step| {
                    let info = by_step.get(step.id.as_str());
                    let mut entry = StepRecord::pending(
                        &step.id,
                        &step.plugin,
                        info.map_or("", |f| f.version.as_str()),
                    );
                    match (steps.get(step.id.as_str()), info) {
                        (Some(backup), _) => {
                            entry.status = StepStatus::Succeeded;
                            entry.record = backup.record.clone();
                            entry.outputs = backup.outputs.clone();
                            entry.bytes = backup.bytes;
                            entry.summary = backup.summary.clone();
                        }
                        (None, Some(f)) if f.can_discover => {
                            entry.status = StepStatus::Skipped;
                            entry.error = Some(StepError {
                                kind: ErrorKind::Permanent,
                                message: "its backup of this run was not found".into(),
                                detail: None,
                            });
                        }
                        (None, _) => {
                            entry.status = StepStatus::Skipped;
                            entry.summary = format!(
                                "not rebuilt: plugin `{}` keeps nothing to rediscover",
                                step.plugin
                            );
                        }
                    }
                    entry
                })
                .collect();
            let partial = steps.iter().any(|s| s.error.is_some());
            RunRecord {
                format: RECORD_FORMAT,
                run_id: run_id.to_owned(),
                kind: RunKind::Backup,
                plan: PlanInfo {
                    name: plan.name.clone(),
                    digest: plan.digest.clone(),
                    path: plan.path.to_string_lossy().into_owned(),
                },
                source_run: None,
                started_at,
                finished_at: None,
                status: if partial {
                    RunStatus::PartiallyFailed
                } else {
                    RunStatus::Succeeded
                },
                interrupted: false,
                dry_run: false,
                host: String::new(),
                backplan_version: env!("CARGO_PKG_VERSION").to_owned(),
                verified: None,
                drill: None,
                stopped_because: None,
                rebuilt: Some(now),
                notifications: Vec::new(),
                steps,
            }
        })
        .collect();
    records.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::parse(
            std::path::Path::new("/p.toml"),
            "[plan]\nname = \"p\"\n[[steps]]\nid = \"ami\"\nplugin = \"ebs\"\n\
             [[steps]]\nid = \"host\"\nplugin = \"services-host\"\n\
             [[steps]]\nid = \"files\"\nplugin = \"nfs-objects\"\n"
                .into(),
        )
        .unwrap()
    }

    fn backup(run: &str) -> DiscoveredBackup {
        DiscoveredBackup {
            run_id: run.into(),
            started_at: String::new(),
            record: serde_json::json!({"run": run}),
            outputs: Default::default(),
            bytes: 7,
            summary: "found".into(),
        }
    }

    #[test]
    fn discovered_backups_become_one_record_per_run_and_missing_steps_say_why() {
        let found = [
            Found {
                step: "ami".into(),
                plugin: "ebs".into(),
                version: "1".into(),
                can_discover: true,
                backups: vec![
                    backup("20260101T030000Z-aaaaaa"),
                    backup("20260102T030000Z-bbbbbb"),
                ],
                summary: String::new(),
                warnings: Vec::new(),
            },
            Found {
                step: "host".into(),
                plugin: "services-host".into(),
                version: "1".into(),
                can_discover: false,
                backups: vec![],
                summary: String::new(),
                warnings: Vec::new(),
            },
            Found {
                step: "files".into(),
                plugin: "nfs-objects".into(),
                version: "1".into(),
                can_discover: true,
                backups: vec![backup("20260102T030000Z-bbbbbb")],
                summary: String::new(),
                warnings: Vec::new(),
            },
        ];
        let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let records = records(&plan(), &found, now);
        assert_eq!(records.len(), 2);
        let (first, second) = (&records[0], &records[1]);
        assert_eq!(first.run_id, "20260101T030000Z-aaaaaa");
        assert_eq!(first.started_at.to_string(), "2026-01-01T03:00:00Z");
        assert_eq!(
            first.status,
            RunStatus::PartiallyFailed,
            "its files are gone"
        );
        assert_eq!(second.status, RunStatus::Succeeded);
        assert_eq!(second.steps[2].record["run"], "20260102T030000Z-bbbbbb");
        assert!(second.steps[1].error.is_none());
        assert!(second.steps[1].summary.contains("nothing to rediscover"));
        assert_eq!(second.rebuilt, Some(now));
        assert!(second.has_backup_of("files") && !second.has_backup_of("host"));
    }
}
