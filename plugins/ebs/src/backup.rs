//! The backup action: find the instance, make its AMI or snapshots (or find the ones an earlier
//! attempt of this run made), wait until they are usable, copy the AMI to other regions, and
//! record everything restore and the host fix-up steps need (the instance's launch settings,
//! instance profile and Elastic IP included).

use std::collections::BTreeMap;

use aws_sdk_ec2::Client;
use backplan_aws::Meaning;
use backplan_plugin_sdk::{Context, PluginError, PluginResult, StepOutput};

use crate::address;
use crate::client::Aws;
use crate::config::{Mode, Settings, Target};
use crate::facts;
use crate::image;
use crate::instance;
use crate::record::{BackupRecord, CopyRecord, SnapshotRecord};
use crate::snapshot;
use crate::tags::Owner;
use crate::throttle::{COPY_SPACING, Pacer};

const GIB: u64 = 1 << 30;

pub(crate) async fn run(
    ctx: &Context,
    aws: &Aws,
    settings: &Settings,
    target: &Target,
    owner: &Owner,
) -> PluginResult<StepOutput> {
    let region = aws.region().to_owned();
    let ec2 = aws.ec2(&region);
    let found = instance::resolve(ctx, &ec2, target).await?;
    let mut info = instance::record(&found);
    let id = info.instance_id.clone();
    if ctx.request().dry_run {
        let what = match settings.mode {
            Mode::Ami => format!("an AMI of {id} (no_reboot = {})", settings.no_reboot),
            Mode::Snapshots => format!("snapshots of {id}'s volumes"),
        };
        let copies: Vec<&str> = settings.copies.iter().map(|c| c.region.as_str()).collect();
        let copies = if copies.is_empty() {
            String::new()
        } else {
            format!(", copied to {}", copies.join(", "))
        };
        return Ok(StepOutput::new(format!(
            "would make {what} in {region}{copies}"
        )));
    }
    let mut warnings = Vec::new();
    if settings.mode == Mode::Ami && info.public_ip.is_some() {
        match address::elastic_ip_of(ctx, &ec2, &id).await {
            Ok(found) => {
                info.elastic_ip_allocation_id =
                    found.and_then(|a| a.allocation_id().map(str::to_owned));
            }
            // The image matters more than the address: the backup goes on without it.
            Err(e) if e.failure.meaning == Meaning::Denied => warnings.push(format!(
                "the Elastic IP of {id} is not recorded, so a restore cannot move it: ec2:DescribeAddresses was refused (`backplan plan permissions` lists it)"
            )),
            Err(e) => return Err(e.into()),
        }
    }
    // What the record says of the machine goes onto everything made, for `discover`.
    let mut tags = settings.tags.clone();
    match facts::tags(&info, settings.machine_tag_room()) {
        Ok(machine) => tags.extend(machine),
        Err(needed) => warnings.push(format!(
            "the facts of {id} need {needed} tags and {} are left beside `tags`: this backup is not tagged with them, so `backplan catalog rebuild` cannot rediscover it (fewer `tags` make room)",
            settings.machine_tag_room()
        )),
    }
    let (image_id, snapshots, copies) = match settings.mode {
        Mode::Ami => {
            let image_id = image::make(
                ctx,
                &ec2,
                owner,
                &tags,
                &found,
                settings.no_reboot,
                &settings.timing,
            )
            .await?;
            let image = image::wait(ctx, &ec2, &image_id, &region, &settings.timing).await?;
            let copies = copy_all(ctx, aws, settings, &tags, owner, (&region, &image_id)).await?;
            (Some(image_id), image::snapshot_records(&image), copies)
        }
        Mode::Snapshots => {
            let volumes = instance::volumes(&found, settings.volumes);
            if volumes.is_empty() {
                return Err(PluginError::permanent(format!(
                    "{id} has no attached EBS volume to snapshot"
                )));
            }
            let made = snapshot::make(ctx, &ec2, owner, &tags, &volumes, &settings.timing).await?;
            let ids: Vec<String> = made.iter().map(|s| s.snapshot_id.clone()).collect();
            snapshot::wait(ctx, &ec2, &ids, &settings.timing).await?;
            (None, made, Vec::new())
        }
    };
    let (snapshots, bytes) = with_volumes(ctx, &ec2, snapshots).await?;
    let record = BackupRecord {
        mode: settings.mode,
        region: region.clone(),
        instance: info,
        image_id,
        snapshots,
        copies,
    };
    let mut out = output(record, bytes);
    for warning in warnings {
        out = out.warning(warning);
    }
    Ok(out)
}

/// What a backup that made `record` (of volumes adding up to `bytes`) returns: its summary,
/// outputs and record. `discover` builds the same from what it finds.
pub(crate) fn output(record: BackupRecord, bytes: u64) -> StepOutput {
    let id = &record.instance.instance_id;
    let mut summary = match &record.image_id {
        Some(image) => format!(
            "{image} available ({} snapshot(s)) of {id}",
            record.snapshots.len()
        ),
        None => format!("{} snapshot(s) of {id} completed", record.snapshots.len()),
    };
    for copy in &record.copies {
        summary.push_str(&format!(", copy {} in {}", copy.image_id, copy.region));
    }
    // The machine's addresses under the same names a restore gives the new machine's, so a
    // later step's `${steps.ID.outputs.private_ip}` means "the Services machine" in both.
    let machine = &record.instance;
    StepOutput::new(summary)
        .output("image_id", record.image_id.clone().unwrap_or_default())
        .output("instance_id", id)
        .output("private_ip", machine.private_ip.clone().unwrap_or_default())
        .output("public_ip", machine.public_ip.clone().unwrap_or_default())
        .output("hostname", machine.hostname.clone().unwrap_or_default())
        .bytes(bytes)
        .record(&record)
}

/// Copies the AMI to each `copy_to` region (CopyImage paced at one per second), then waits for
/// all the copies.
async fn copy_all(
    ctx: &Context,
    aws: &Aws,
    settings: &Settings,
    tags: &BTreeMap<String, String>,
    owner: &Owner,
    source: (&str, &str),
) -> PluginResult<Vec<CopyRecord>> {
    let mut pacer = Pacer::new(COPY_SPACING);
    let mut started: Vec<(String, Client, String)> = Vec::new();
    for copy in &settings.copies {
        let target = aws.ec2(&copy.region);
        let id = image::copy(ctx, &target, owner, tags, source, &copy.region, &mut pacer).await?;
        started.push((copy.region.clone(), target, id));
    }
    let mut copies = Vec::new();
    for (region, target, id) in started {
        let image = image::wait(ctx, &target, &id, &region, &settings.timing).await?;
        copies.push(CopyRecord {
            region,
            image_id: id,
            snapshot_ids: image::snapshot_ids(&image),
        });
    }
    Ok(copies)
}

/// Fills in each snapshot's volume id, and adds up the volume sizes.
pub(crate) async fn with_volumes(
    ctx: &Context,
    ec2: &Client,
    mut snapshots: Vec<SnapshotRecord>,
) -> PluginResult<(Vec<SnapshotRecord>, u64)> {
    let ids: Vec<String> = snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    let found = snapshot::existing(ctx, ec2, &ids).await?;
    let by_id: BTreeMap<&str, &aws_sdk_ec2::types::Snapshot> = found
        .iter()
        .filter_map(|s| Some((s.snapshot_id()?, s)))
        .collect();
    let mut bytes = 0;
    for record in &mut snapshots {
        if let Some(snapshot) = by_id.get(record.snapshot_id.as_str()) {
            if record.volume_id.is_none() {
                record.volume_id = snapshot.volume_id().map(str::to_owned);
            }
            bytes += snapshot.volume_size().unwrap_or(0).max(0) as u64 * GIB;
        }
    }
    Ok((snapshots, bytes))
}
