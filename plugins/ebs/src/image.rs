//! AMIs: made (CreateImage, no reboot by default), copied to other regions, waited on until
//! `available`, looked up by id or tag, and deleted with their snapshots.
//!
//! An AMI is usable only once it is `available`, which AWS reaches after all of its snapshots
//! complete; the wait reports the snapshots' progress and fails at once with AWS's reason when
//! the image fails or one of its snapshots ends in `error`.

use std::collections::BTreeMap;
use std::time::Instant;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Image, ImageState, Instance, ResourceType};
use backplan_plugin_sdk::{Context, PluginError, PluginResult};

use crate::client::{AwsError, call};
use crate::config::{Timing, Volumes};
use crate::instance;
use crate::record::SnapshotRecord;
use crate::snapshot::{self, Status, progress};
use crate::tags::{Owner, image_name};
use crate::throttle::Pacer;
use crate::wait::{Poll, pause};

/// Our own images: of this step in this run (`run_only`) or in any run. Deregistered and failed
/// ones are left out.
pub(crate) async fn find_own(
    ctx: &Context,
    ec2: &Client,
    owner: &Owner,
    run_only: bool,
) -> Result<Vec<Image>, AwsError> {
    let filters = if run_only {
        owner.run_filters()
    } else {
        owner.step_filters()
    };
    let out = call(ctx, "DescribeImages", || {
        ec2.describe_images()
            .owners("self")
            .set_filters(Some(filters.clone()))
            .send()
    })
    .await?;
    Ok(out
        .images()
        .iter()
        .filter(|i| {
            !matches!(
                i.state(),
                Some(ImageState::Deregistered | ImageState::Failed)
            )
        })
        .cloned()
        .collect())
}

/// The image `id`, if it still exists.
pub(crate) async fn get(ctx: &Context, ec2: &Client, id: &str) -> Result<Option<Image>, AwsError> {
    let out = call(ctx, "DescribeImages", || {
        ec2.describe_images()
            .filters(crate::tags::filter("image-id", id))
            .send()
    })
    .await?;
    Ok(out.images().first().cloned())
}

/// The snapshot ids of an image's EBS mappings.
pub(crate) fn snapshot_ids(image: &Image) -> Vec<String> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_owned))
        .collect()
}

/// The image's snapshots with their devices.
pub(crate) fn snapshot_records(image: &Image) -> Vec<SnapshotRecord> {
    image
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some(SnapshotRecord {
                snapshot_id: m.ebs()?.snapshot_id()?.to_owned(),
                volume_id: None,
                device: m.device_name().map(str::to_owned),
            })
        })
        .collect()
}

/// The AMI of this run: the one an earlier attempt made, or a new one (once EC2 allows a new
/// snapshot of each volume: CreateImage snapshots them all).
pub(crate) async fn make(
    ctx: &Context,
    ec2: &Client,
    owner: &Owner,
    tags: &BTreeMap<String, String>,
    instance: &Instance,
    no_reboot: bool,
    timing: &Timing,
) -> PluginResult<String> {
    if let Some(id) = find_own(ctx, ec2, owner, true)
        .await?
        .iter()
        .find_map(|i| i.image_id())
    {
        ctx.info(format!(
            "reusing {id}, made by an earlier attempt of this run"
        ));
        return Ok(id.to_owned());
    }
    for (_, volume) in instance::volumes(instance, Volumes::All) {
        snapshot::gate(ctx, ec2, &volume, timing).await?;
    }
    let instance_id = instance.instance_id().unwrap_or_default();
    let specs = owner.specs(tags, &[ResourceType::Image, ResourceType::Snapshot]);
    let out = call(ctx, "CreateImage", || {
        ec2.create_image()
            .instance_id(instance_id)
            .name(image_name(owner))
            .description(format!(
                "backplan plan {} step {} run {}",
                owner.plan, owner.step, owner.run
            ))
            .no_reboot(no_reboot)
            .set_tag_specifications(Some(specs.clone()))
            .send()
    })
    .await?;
    let id = out.image_id().unwrap_or_default().to_owned();
    ctx.info(format!(
        "CreateImage of {instance_id}: {id} (no_reboot = {no_reboot})"
    ));
    Ok(id)
}

/// The copy of `source` in `region` for this run: the one an earlier attempt made, or a new one
/// (CopyImage calls paced by `pacer`).
pub(crate) async fn copy(
    ctx: &Context,
    target: &Client,
    owner: &Owner,
    tags: &BTreeMap<String, String>,
    source: (&str, &str),
    region: &str,
    pacer: &mut Pacer,
) -> PluginResult<String> {
    let (source_region, source_id) = source;
    if let Some(id) = find_own(ctx, target, owner, true)
        .await?
        .iter()
        .find_map(|i| i.image_id())
    {
        ctx.info(format!(
            "{region}: reusing copy {id}, made by an earlier attempt of this run"
        ));
        return Ok(id.to_owned());
    }
    pause(ctx, pacer.next(Instant::now())).await?;
    let specs = owner.specs(tags, &[ResourceType::Image, ResourceType::Snapshot]);
    let out = call(ctx, "CopyImage", || {
        target
            .copy_image()
            .source_region(source_region)
            .source_image_id(source_id)
            .name(image_name(owner))
            .description(format!("backplan copy of {source_id} from {source_region}"))
            .set_tag_specifications(Some(specs.clone()))
            .send()
    })
    .await?;
    let id = out.image_id().unwrap_or_default().to_owned();
    ctx.info(format!(
        "CopyImage {source_id} ({source_region}) → {id} ({region})"
    ));
    Ok(id)
}

/// Waits until image `id` is `available`; fails at once if it or one of its snapshots fails.
pub(crate) async fn wait(
    ctx: &Context,
    ec2: &Client,
    id: &str,
    region: &str,
    timing: &Timing,
) -> PluginResult<Image> {
    let what = format!("{id} ({region})");
    let mut poll = Poll::new(&what, timing);
    loop {
        let image = get(ctx, ec2, id).await?.ok_or_else(|| {
            PluginError::permanent(format!("image {what} disappeared while waiting for it"))
        })?;
        let ids = snapshot_ids(&image);
        match image.state() {
            Some(ImageState::Available) => {
                ctx.progress(progress(100, &format!("{what} available")));
                return Ok(image);
            }
            Some(ImageState::Pending) | None => {
                // A failed snapshot explains a failing image better than the image does.
                let done = if ids.is_empty() {
                    0
                } else {
                    match snapshot::status(ctx, ec2, &ids).await? {
                        Status::Completed => 99,
                        Status::Pending(p) => p,
                    }
                };
                ctx.progress(progress(
                    done,
                    &format!("waiting for {what}: snapshots {done}%"),
                ));
            }
            Some(state) => {
                if !ids.is_empty() {
                    snapshot::status(ctx, ec2, &ids).await?;
                }
                let reason = image
                    .state_reason()
                    .and_then(|r| r.message())
                    .unwrap_or("AWS gave no reason");
                return Err(PluginError::permanent(format!(
                    "image {what} is {}: {reason}",
                    state.as_str()
                )));
            }
        }
        poll.tick(ctx).await?;
    }
}

/// Deregisters an image, then deletes its snapshots (AWS keeps them otherwise).
pub(crate) async fn delete(ctx: &Context, ec2: &Client, image: &Image) -> PluginResult<()> {
    let id = image.image_id().unwrap_or_default();
    match call(ctx, "DeregisterImage", || {
        ec2.deregister_image().image_id(id).send()
    })
    .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    for snapshot_id in snapshot_ids(image) {
        snapshot::delete(ctx, ec2, &snapshot_id).await?;
    }
    Ok(())
}
