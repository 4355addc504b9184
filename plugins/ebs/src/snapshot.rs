//! EBS snapshots: made one per volume (`mode = "snapshots"`), spaced as EC2 requires, waited on
//! until `completed`, and looked up by id or tag.
//!
//! The AMI code uses the same waiting and lookup: an AMI is only as usable as its snapshots, and
//! a snapshot in `error` carries the reason AWS gives, which is what the step should fail with.

use std::collections::BTreeMap;
use std::time::Instant;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{ResourceType, Snapshot, SnapshotState};
use backplan_plugin_sdk::{Context, PluginError, PluginResult, Progress};
use jiff::Timestamp;

use crate::client::{AwsError, call};
use crate::config::Timing;
use crate::record::SnapshotRecord;
use crate::tags::{DEVICE, Owner, filter};
use crate::throttle::{Gate, snapshot_gate};
use crate::wait::{Poll, pause};

/// An AWS time as a timestamp.
pub(crate) fn timestamp(time: &aws_sdk_ec2::primitives::DateTime) -> Timestamp {
    Timestamp::new(time.secs(), time.subsec_nanos() as i32).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Our own snapshots: of this step in this run (`run_only`) or in any run.
pub(crate) async fn find_own(
    ctx: &Context,
    ec2: &Client,
    owner: &Owner,
    run_only: bool,
) -> Result<Vec<Snapshot>, AwsError> {
    let filters = if run_only {
        owner.run_filters()
    } else {
        owner.step_filters()
    };
    let out = call(ctx, "DescribeSnapshots", || {
        ec2.describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(filters.clone()))
            .send()
    })
    .await?;
    Ok(out.snapshots().to_vec())
}

/// The snapshots among `ids` that still exist (a filter, so a missing one is simply absent).
pub(crate) async fn existing(
    ctx: &Context,
    ec2: &Client,
    ids: &[String],
) -> Result<Vec<Snapshot>, AwsError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let out = call(ctx, "DescribeSnapshots", || {
        ec2.describe_snapshots()
            .owner_ids("self")
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("snapshot-id")
                    .set_values(Some(ids.to_vec()))
                    .build(),
            )
            .send()
    })
    .await?;
    Ok(out.snapshots().to_vec())
}

/// Waits until EC2 allows a new snapshot of `volume` (15 s spacing, 5 pending at most), for
/// `wait_timeout` at most.
pub(crate) async fn gate(
    ctx: &Context,
    ec2: &Client,
    volume: &str,
    timing: &Timing,
) -> PluginResult<()> {
    let deadline = Instant::now() + timing.timeout;
    loop {
        let out = call(ctx, "DescribeSnapshots", || {
            ec2.describe_snapshots()
                .owner_ids("self")
                .filters(filter("volume-id", volume))
                .send()
        })
        .await?;
        let latest = out
            .snapshots()
            .iter()
            .filter_map(|s| s.start_time())
            .map(timestamp)
            .max();
        let pending = out
            .snapshots()
            .iter()
            .filter(|s| s.state() == Some(&SnapshotState::Pending))
            .count();
        match snapshot_gate(volume, latest, pending, Timestamp::now()) {
            Gate::Open => return Ok(()),
            Gate::Wait(wait, why) => {
                if Instant::now() + wait > deadline {
                    return Err(PluginError::transient(format!(
                        "{why}, still after wait_timeout"
                    )));
                }
                ctx.info(format!("{why}; waiting {}s", wait.as_secs_f64().ceil()));
                pause(ctx, wait).await?;
            }
        }
    }
}

/// Snapshots of `volumes` (device, volume id) for this run: those an earlier attempt made are
/// reused, the others created.
pub(crate) async fn make(
    ctx: &Context,
    ec2: &Client,
    owner: &Owner,
    tags: &BTreeMap<String, String>,
    volumes: &[(String, String)],
    timing: &Timing,
) -> PluginResult<Vec<SnapshotRecord>> {
    let earlier = find_own(ctx, ec2, owner, true).await?;
    let mut made = Vec::new();
    for (device, volume) in volumes {
        ctx.check_cancelled()?;
        let reused = earlier.iter().find(|s| {
            s.volume_id() == Some(volume.as_str()) && s.state() != Some(&SnapshotState::Error)
        });
        let snapshot_id = match reused.and_then(|s| s.snapshot_id()) {
            Some(id) => {
                ctx.info(format!(
                    "{volume}: reusing {id} from an earlier attempt of this run"
                ));
                id.to_owned()
            }
            None => {
                gate(ctx, ec2, volume, timing).await?;
                let mut tags = tags.clone();
                tags.insert(DEVICE.to_owned(), device.clone());
                let specs = owner.specs(&tags, &[ResourceType::Snapshot]);
                let out = call(ctx, "CreateSnapshot", || {
                    ec2.create_snapshot()
                        .volume_id(volume)
                        .description(format!(
                            "backplan {} {} {} ({device})",
                            owner.plan, owner.step, owner.run
                        ))
                        .set_tag_specifications(Some(specs.clone()))
                        .send()
                })
                .await?;
                let id = out.snapshot_id().unwrap_or_default().to_owned();
                ctx.info(format!("{volume} ({device}): snapshot {id} started"));
                id
            }
        };
        made.push(SnapshotRecord {
            snapshot_id,
            volume_id: Some(volume.clone()),
            device: Some(device.clone()),
        });
    }
    Ok(made)
}

/// The state of a set of snapshots at one poll.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Completed,
    /// Average progress in percent.
    Pending(u64),
}

/// Looks at `ids` once: a snapshot in `error` is a permanent failure with AWS's reason. One not
/// listed yet counts as pending at 0%: EC2's describe calls are eventually consistent, so a
/// snapshot just created may not show for a moment (the wait's timeout bounds this).
pub(crate) async fn status(ctx: &Context, ec2: &Client, ids: &[String]) -> PluginResult<Status> {
    let found = existing(ctx, ec2, ids).await?;
    let mut total = 0u64;
    let mut all_done = true;
    for id in ids {
        let Some(snapshot) = found.iter().find(|s| s.snapshot_id() == Some(id.as_str())) else {
            ctx.debug(format!("{id} is not listed yet"));
            all_done = false;
            continue;
        };
        match snapshot.state() {
            Some(SnapshotState::Error) => {
                return Err(PluginError::permanent(format!(
                    "snapshot {id} failed: {}",
                    snapshot.state_message().unwrap_or("AWS gave no reason")
                )));
            }
            Some(SnapshotState::Completed) => total += 100,
            _ => {
                all_done = false;
                total += percent(snapshot.progress());
            }
        }
    }
    Ok(if all_done {
        Status::Completed
    } else {
        Status::Pending(total / ids.len().max(1) as u64)
    })
}

/// `"42%"` as 42.
fn percent(progress: Option<&str>) -> u64 {
    progress
        .and_then(|p| p.trim_end_matches('%').trim().parse().ok())
        .unwrap_or(0)
        .min(100)
}

/// Waits until every snapshot in `ids` is `completed`, reporting progress.
pub(crate) async fn wait(
    ctx: &Context,
    ec2: &Client,
    ids: &[String],
    timing: &Timing,
) -> PluginResult<()> {
    let what = format!("snapshot(s) {}", ids.join(", "));
    let mut poll = Poll::new(&what, timing);
    loop {
        match status(ctx, ec2, ids).await? {
            Status::Completed => {
                ctx.progress(progress(100, &format!("{what} completed")));
                return Ok(());
            }
            Status::Pending(done) => ctx.progress(progress(done, &format!("waiting for {what}"))),
        }
        poll.tick(ctx).await?;
    }
}

/// A percent progress update.
pub(crate) fn progress(done: u64, message: &str) -> Progress {
    Progress {
        done,
        total: Some(100),
        unit: "percent".into(),
        message: message.to_owned(),
    }
}

/// Deletes a snapshot; one already gone counts as deleted.
pub(crate) async fn delete(ctx: &Context, ec2: &Client, id: &str) -> PluginResult<()> {
    match call(ctx, "DeleteSnapshot", || {
        ec2.delete_snapshot().snapshot_id(id).send()
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn progress_text_parses() {
        assert_eq!(percent(Some("42%")), 42);
        assert_eq!(percent(Some("100%")), 100);
        assert_eq!(percent(Some("")), 0);
        assert_eq!(percent(None), 0);
    }
}
