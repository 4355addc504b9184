//! The discover action, for `backplan catalog rebuild` when the catalog is lost: this plan's and
//! step's backups found again by their `backplan:*` tags, each with the record its backup
//! returned.
//!
//! In AMI mode a backup is an available image of the step's region (its snapshots, their
//! volumes and sizes from DescribeSnapshots) plus the copies of the same run in the `copy_to`
//! regions; in snapshots mode it is the completed snapshots one run made. The machine part of
//! the record comes from the `backplan:machine` tags ([`facts`]); a backup made before those
//! tags existed is still found, with a record that names no machine, and a warning says which
//! launch settings its restore needs. Only Describe calls: nothing is made, tagged or deleted.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Image, ImageState, SnapshotState, Tag};
use backplan_plugin_sdk::{Context, Discovered, DiscoveredBackup, PluginResult, StepOutput};
use jiff::Timestamp;

use crate::backup::{output, with_volumes};
use crate::client::Aws;
use crate::config::{Mode, Settings};
use crate::facts;
use crate::image;
use crate::record::{BackupRecord, CopyRecord, InstanceRecord, SnapshotRecord};
use crate::snapshot::{self, timestamp};
use crate::tags::{self, DEVICE, Owner, RUN};

pub(crate) async fn run(
    ctx: &Context,
    aws: &Aws,
    settings: &Settings,
    owner: &Owner,
) -> PluginResult<StepOutput> {
    let mut notes = Vec::new();
    let backups = match settings.mode {
        Mode::Ami => images(ctx, aws, settings, owner, &mut notes).await?,
        Mode::Snapshots => snapshot_sets(ctx, aws, owner, &mut notes).await?,
    };
    let mut regions = vec![aws.region().to_owned()];
    regions.extend(settings.copies.iter().map(|c| c.region.clone()));
    let mut out = StepOutput::new(format!(
        "{} backup(s) of step {} found by tag in {}",
        backups.len(),
        owner.step,
        regions.join(", ")
    ));
    for note in notes {
        // Logged too: `catalog rebuild` shows a step's log, not its output's warnings.
        ctx.warn(&note);
        out = out.warning(note);
    }
    Ok(out.record(Discovered { backups }))
}

/// AMI mode: the available images of this step, one per run, with their copies.
async fn images(
    ctx: &Context,
    aws: &Aws,
    settings: &Settings,
    owner: &Owner,
    notes: &mut Vec<String>,
) -> PluginResult<Vec<DiscoveredBackup>> {
    let region = aws.region().to_owned();
    let ec2 = aws.ec2(&region);
    // The copies first, in `copy_to` order as the backup recorded them.
    let mut copies: BTreeMap<String, Vec<(CopyRecord, Image)>> = BTreeMap::new();
    for copy in &settings.copies {
        let target = aws.ec2(&copy.region);
        for (run, found) in by_run(image::find_own(ctx, &target, owner, false).await?, notes) {
            copies.entry(run).or_default().push((
                CopyRecord {
                    region: copy.region.clone(),
                    image_id: found.image_id().unwrap_or_default().to_owned(),
                    snapshot_ids: image::snapshot_ids(&found),
                },
                found,
            ));
        }
    }
    let mut backups = Vec::new();
    for (run, found) in by_run(image::find_own(ctx, &ec2, owner, false).await?, notes) {
        let id = found.image_id().unwrap_or_default().to_owned();
        let instance =
            machine(found.tags(), &format!("image {id}"), &run, notes).unwrap_or_else(|| {
                InstanceRecord {
                    root_device_name: found.root_device_name().map(str::to_owned),
                    ..InstanceRecord::default()
                }
            });
        let (snapshots, bytes) = with_volumes(ctx, &ec2, image::snapshot_records(&found)).await?;
        let record = BackupRecord {
            mode: Mode::Ami,
            region: region.clone(),
            instance,
            image_id: Some(id),
            snapshots,
            copies: copies
                .remove(&run)
                .unwrap_or_default()
                .into_iter()
                .map(|(copy, _)| copy)
                .collect(),
        };
        let started = started(&run, created(&found));
        backups.push(discovered(run, started, record, bytes));
    }
    // Runs whose image in the step's region is gone (its retention there is shorter) but whose
    // copies remain: restorable in the copies' regions.
    for (run, copies) in copies {
        let (first, found) = &copies[0];
        let what = format!("copy {} in {}", first.image_id, first.region);
        let instance = machine(found.tags(), &what, &run, notes).unwrap_or_default();
        notes.push(format!(
            "run {run}: its image in {region} is gone, only its copies remain; rediscovered with those"
        ));
        let started = started(&run, created(found));
        let record = BackupRecord {
            mode: Mode::Ami,
            region: region.clone(),
            instance,
            image_id: None,
            snapshots: Vec::new(),
            copies: copies.into_iter().map(|(copy, _)| copy).collect(),
        };
        backups.push(discovered(run, started, record, 0));
    }
    Ok(backups)
}

/// The available images among `found`, by run: the latest should a run have made two. Images
/// still pending are left out with a note.
fn by_run(found: Vec<Image>, notes: &mut Vec<String>) -> BTreeMap<String, Image> {
    let mut runs: BTreeMap<String, Image> = BTreeMap::new();
    for found in found {
        let Some(run) = tags::value(found.tags(), RUN).map(str::to_owned) else {
            continue;
        };
        if found.state() != Some(&ImageState::Available) {
            notes.push(format!(
                "image {} of run {run} is {}: not rediscovered (rebuild again once it is available)",
                found.image_id().unwrap_or("?"),
                found.state().map(|s| s.as_str()).unwrap_or("of no known state")
            ));
            continue;
        }
        if runs
            .get(&run)
            .is_none_or(|kept| created(kept) < created(&found))
        {
            runs.insert(run, found);
        }
    }
    runs
}

/// Snapshots mode: the snapshots of this step, one backup per run whose snapshots all completed.
async fn snapshot_sets(
    ctx: &Context,
    aws: &Aws,
    owner: &Owner,
    notes: &mut Vec<String>,
) -> PluginResult<Vec<DiscoveredBackup>> {
    let region = aws.region().to_owned();
    let ec2 = aws.ec2(&region);
    let mut runs: BTreeMap<String, Vec<aws_sdk_ec2::types::Snapshot>> = BTreeMap::new();
    for found in snapshot::find_own(ctx, &ec2, owner, false).await? {
        if let Some(run) = tags::value(found.tags(), RUN) {
            runs.entry(run.to_owned()).or_default().push(found);
        }
    }
    let mut backups = Vec::new();
    for (run, mut set) in runs {
        let unfinished: Vec<&str> = set
            .iter()
            .filter(|s| s.state() != Some(&SnapshotState::Completed))
            .filter_map(|s| s.snapshot_id())
            .collect();
        if !unfinished.is_empty() {
            notes.push(format!(
                "run {run}: snapshot(s) {} not completed: not rediscovered",
                unfinished.join(", ")
            ));
            continue;
        }
        // The backup listed them in the instance's device order; the device name is what is
        // left of it.
        set.sort_by(|a, b| tags::value(a.tags(), DEVICE).cmp(&tags::value(b.tags(), DEVICE)));
        let what = format!("snapshot {}", set[0].snapshot_id().unwrap_or("?"));
        let instance = machine(set[0].tags(), &what, &run, notes).unwrap_or_default();
        let records = set
            .iter()
            .map(|s| SnapshotRecord {
                snapshot_id: s.snapshot_id().unwrap_or_default().to_owned(),
                volume_id: None,
                device: tags::value(s.tags(), DEVICE).map(str::to_owned),
            })
            .collect();
        let (snapshots, bytes) = with_volumes(ctx, &ec2, records).await?;
        let first = set
            .iter()
            .filter_map(|s| s.start_time())
            .map(timestamp)
            .min();
        let record = BackupRecord {
            mode: Mode::Snapshots,
            region: region.clone(),
            instance,
            image_id: None,
            snapshots,
            copies: Vec::new(),
        };
        backups.push(discovered(run.clone(), started(&run, first), record, bytes));
    }
    Ok(backups)
}

/// The machine `tags` describe; `None`, with a note on what a restore then needs, when they do
/// not (`what` of run `run` was made before backups were tagged with it, or the tags are cut).
fn machine(tags: &[Tag], what: &str, run: &str, notes: &mut Vec<String>) -> Option<InstanceRecord> {
    let why = match facts::read(tags) {
        Some(Ok(machine)) => return Some(machine),
        Some(Err(e)) => e,
        None => "made before backups were tagged with the machine's facts".to_owned(),
    };
    notes.push(format!(
        "{what} of run {run}: {why}; its record names no machine, so a restore needs -o instance_type=… (and subnet_id, security_group_ids, key_name, iam_instance_profile as the old machine had them)"
    ));
    None
}

/// The backup of `run` that `record` describes, as the backup returned it.
fn discovered(
    run: String,
    started: Timestamp,
    record: BackupRecord,
    bytes: u64,
) -> DiscoveredBackup {
    let out = output(record, bytes);
    DiscoveredBackup {
        run_id: run,
        started_at: started.to_string(),
        record: out.record,
        outputs: out.outputs,
        bytes: out.bytes,
        summary: out.summary,
    }
}

/// When an image was made, if EC2 says so in a form that parses.
fn created(image: &Image) -> Option<Timestamp> {
    image.creation_date().and_then(|d| d.parse().ok())
}

/// When run `run` started: the runner's run ids begin with the UTC second the run started
/// (`20261124T182700Z-…`), closer than when its backup was made (`made`), which is used for an
/// id of another shape.
fn started(run: &str, made: Option<Timestamp>) -> Timestamp {
    let stamp = run.split('-').next().unwrap_or_default();
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp)
        .ok()
        .and_then(|t| jiff::tz::TimeZone::UTC.to_timestamp(t).ok())
        .or(made)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, run: &str, state: ImageState, created: &str) -> Image {
        Image::builder()
            .image_id(id)
            .state(state)
            .creation_date(created)
            .tags(Tag::builder().key(RUN).value(run).build())
            .build()
    }

    #[test]
    fn one_available_image_per_run_the_latest_and_pending_ones_are_noted() {
        let mut notes = Vec::new();
        let runs = by_run(
            vec![
                image(
                    "ami-1",
                    "r1",
                    ImageState::Available,
                    "2026-01-01T03:00:00.000Z",
                ),
                image(
                    "ami-2",
                    "r1",
                    ImageState::Available,
                    "2026-01-01T04:00:00.000Z",
                ),
                image(
                    "ami-3",
                    "r2",
                    ImageState::Pending,
                    "2026-01-02T03:00:00.000Z",
                ),
                Image::builder().image_id("ami-untagged").build(),
            ],
            &mut notes,
        );
        let kept: Vec<(&str, &str)> = runs
            .iter()
            .map(|(run, i)| (run.as_str(), i.image_id().unwrap()))
            .collect();
        assert_eq!(kept, [("r1", "ami-2")]);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("ami-3 of run r2 is pending"), "{notes:?}");
    }

    #[test]
    fn a_run_started_when_its_id_says_else_when_its_backup_was_made() {
        let made: Timestamp = "2026-01-01T03:05:00Z".parse().unwrap();
        assert_eq!(
            started("20260101T030000Z-abcdef", Some(made)).to_string(),
            "2026-01-01T03:00:00Z"
        );
        assert_eq!(started("run-1", Some(made)), made);
        assert_eq!(started("run-1", None), Timestamp::UNIX_EPOCH);
    }
}
