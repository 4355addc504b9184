//! The prune action: retention per region, only among what this plan and step made (by tag).
//!
//! Retention counts backups, not resources: in AMI mode a backup is an image (deregistered, then
//! its snapshots deleted), in snapshots mode it is the set of snapshots one run made. The newest
//! backup proven usable — a `verified` entry in the step's history, or an image tagged
//! `backplan:verified` — is never deleted, whatever the rules say. Dry-run lists what would go.

use std::collections::{BTreeMap, BTreeSet};

use backplan_plugin_sdk::retention::Retention;
use backplan_plugin_sdk::{Context, HistoryEntry, PluginError, PluginResult, StepOutput};
use jiff::Timestamp;
use serde::Serialize;

use crate::client::Aws;
use crate::config::{Mode, Settings};
use crate::image;
use crate::record::BackupRecord;
use crate::retention::{Candidate, decide};
use crate::snapshot::{self, timestamp};
use crate::tags::{self, Owner, RUN, VERIFIED};

/// What prune did (or would do) in one region.
#[derive(Debug, Default, Serialize)]
struct RegionReport {
    region: String,
    kept: Vec<String>,
    deleted: Vec<String>,
    protected: Vec<String>,
}

/// The newest verified backup in the history (which is oldest first).
fn newest_verified(history: &[HistoryEntry]) -> Option<(String, BackupRecord)> {
    history.iter().rev().filter(|h| h.verified).find_map(|h| {
        Some((
            h.run_id.clone(),
            serde_json::from_value(h.record.clone()).ok()?,
        ))
    })
}

pub(crate) async fn run(
    ctx: &Context,
    aws: &Aws,
    settings: &Settings,
    owner: &Owner,
) -> PluginResult<StepOutput> {
    let request = ctx.request();
    let verified = newest_verified(&request.history);
    let mut regions: Vec<(String, Retention)> = vec![(aws.region().to_owned(), settings.retention)];
    regions.extend(
        settings
            .copies
            .iter()
            .map(|c| (c.region.clone(), c.retention)),
    );
    let mut reports = Vec::new();
    let mut notes = Vec::new();
    for (region, rules) in regions {
        if rules.is_empty() {
            notes.push(format!("{region}: no retention rules, everything kept"));
            continue;
        }
        let report = match settings.mode {
            Mode::Ami => prune_images(ctx, aws, &region, &rules, owner, verified.as_ref()).await?,
            Mode::Snapshots => {
                prune_snapshots(ctx, aws, &region, &rules, owner, verified.as_ref()).await?
            }
        };
        let verb = if request.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let mut line = format!(
            "{region}: kept {}, {verb} {}",
            report.kept.len(),
            report.deleted.len()
        );
        if !report.deleted.is_empty() {
            line.push_str(&format!(" ({})", report.deleted.join(", ")));
        }
        if !report.protected.is_empty() {
            line.push_str(&format!(
                "; spared the newest verified {}",
                report.protected.join(", ")
            ));
        }
        ctx.info(&line);
        notes.push(line);
        reports.push(report);
    }
    let summary = if request.dry_run {
        format!("dry run: {}", notes.join("; "))
    } else {
        notes.join("; ")
    };
    Ok(StepOutput::new(summary)
        .record(serde_json::json!({ "dry_run": request.dry_run, "regions": reports })))
}

async fn prune_images(
    ctx: &Context,
    aws: &Aws,
    region: &str,
    rules: &Retention,
    owner: &Owner,
    verified: Option<&(String, BackupRecord)>,
) -> PluginResult<RegionReport> {
    let ec2 = aws.ec2(region);
    let images = image::find_own(ctx, &ec2, owner, false).await?;
    let mut protected: BTreeSet<String> = verified
        .into_iter()
        .flat_map(|(_, r)| r.images())
        .filter(|(r, _)| r == region)
        .map(|(_, id)| id)
        .collect();
    let mut candidates = Vec::new();
    let mut tagged_verified: Option<Candidate> = None;
    for found in &images {
        let Some(id) = found.image_id() else { continue };
        // An image whose creation date does not parse is never a candidate: kept.
        let Some(created) = found
            .creation_date()
            .and_then(|d| d.parse::<Timestamp>().ok())
        else {
            protected.insert(id.to_owned());
            continue;
        };
        let candidate = Candidate {
            key: id.to_owned(),
            created,
        };
        if tags::value(found.tags(), VERIFIED) == Some("true")
            && tagged_verified.as_ref().is_none_or(|v| v.created < created)
        {
            tagged_verified = Some(candidate.clone());
        }
        candidates.push(candidate);
    }
    protected.extend(tagged_verified.map(|c| c.key));
    let decision = decide(rules, &candidates, &protected)
        .map_err(|e| PluginError::permanent(format!("{region}: {e}")))?;
    if !ctx.request().dry_run {
        for id in &decision.delete {
            ctx.check_cancelled()?;
            if let Some(found) = images.iter().find(|i| i.image_id() == Some(id.as_str())) {
                image::delete(ctx, &ec2, found).await?;
                ctx.info(format!(
                    "{region}: deregistered {id} and deleted its snapshots"
                ));
            }
        }
    }
    Ok(RegionReport {
        region: region.to_owned(),
        kept: decision.keep,
        deleted: decision.delete,
        protected: decision.protected,
    })
}

async fn prune_snapshots(
    ctx: &Context,
    aws: &Aws,
    region: &str,
    rules: &Retention,
    owner: &Owner,
    verified: Option<&(String, BackupRecord)>,
) -> PluginResult<RegionReport> {
    let ec2 = aws.ec2(region);
    let snapshots = snapshot::find_own(ctx, &ec2, owner, false).await?;
    // One backup = the snapshots one run made; it dates from its first snapshot.
    let mut runs: BTreeMap<String, (Timestamp, Vec<String>)> = BTreeMap::new();
    for s in &snapshots {
        let (Some(run), Some(id)) = (tags::value(s.tags(), RUN), s.snapshot_id()) else {
            continue;
        };
        let started = s.start_time().map(timestamp).unwrap_or_else(Timestamp::now);
        let entry = runs.entry(run.to_owned()).or_insert((started, Vec::new()));
        entry.0 = entry.0.min(started);
        entry.1.push(id.to_owned());
    }
    let candidates: Vec<Candidate> = runs
        .iter()
        .map(|(run, (created, _))| Candidate {
            key: run.clone(),
            created: *created,
        })
        .collect();
    let protected: BTreeSet<String> = verified.map(|(run, _)| run.clone()).into_iter().collect();
    let decision = decide(rules, &candidates, &protected)
        .map_err(|e| PluginError::permanent(format!("{region}: {e}")))?;
    let mut deleted = Vec::new();
    for run in &decision.delete {
        for id in &runs[run].1 {
            if !ctx.request().dry_run {
                ctx.check_cancelled()?;
                snapshot::delete(ctx, &ec2, id).await?;
            }
            deleted.push(format!("{id} (run {run})"));
        }
    }
    Ok(RegionReport {
        region: region.to_owned(),
        kept: decision.keep,
        deleted,
        protected: decision.protected,
    })
}
