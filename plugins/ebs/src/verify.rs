//! The verify action: the recorded AMI, its copies and every snapshot still exist, are usable
//! (`available` / `completed`) and still carry the tags that tie them to this plan and step.
//! Every problem found is listed, each naming the resource, so one run tells the whole story.

use backplan_plugin_sdk::{Context, PluginError, PluginResult, StepOutput};

use crate::client::Aws;
use crate::image;
use crate::record::BackupRecord;
use crate::snapshot;
use crate::tags::{self, PLAN, STEP};

pub(crate) async fn run(
    ctx: &Context,
    aws: &Aws,
    record: &BackupRecord,
) -> PluginResult<StepOutput> {
    let request = ctx.request();
    let mut problems = Vec::new();
    let mut checked = 0;
    let expect = |found: &[aws_sdk_ec2::types::Tag], what: &str, problems: &mut Vec<String>| {
        for (key, wanted) in [
            (PLAN, request.plan.as_str()),
            (STEP, request.step_id.as_str()),
        ] {
            let actual = tags::value(found, key);
            if actual != Some(wanted) {
                problems.push(format!(
                    "{what} has tag {key} = {actual:?}, expected {wanted:?}"
                ));
            }
        }
    };
    // The main region's snapshots, then each copy's.
    let mut snapshot_sets = vec![(
        record.region.clone(),
        record
            .snapshots
            .iter()
            .map(|s| {
                let on = [s.volume_id.as_deref(), s.device.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", ");
                (s.snapshot_id.clone(), on)
            })
            .collect::<Vec<_>>(),
    )];
    for copy in &record.copies {
        snapshot_sets.push((
            copy.region.clone(),
            copy.snapshot_ids
                .iter()
                .map(|id| (id.clone(), String::new()))
                .collect(),
        ));
    }
    for (region, id) in record.images() {
        let ec2 = aws.ec2(&region);
        checked += 1;
        match image::get(ctx, &ec2, &id).await? {
            None => problems.push(format!("image {id} ({region}) no longer exists")),
            Some(found) => {
                let state = found.state().map(|s| s.as_str()).unwrap_or("unknown");
                if state != "available" {
                    problems.push(format!("image {id} ({region}) is {state}, not available"));
                }
                expect(
                    found.tags(),
                    &format!("image {id} ({region})"),
                    &mut problems,
                );
            }
        }
    }
    for (region, snapshots) in &snapshot_sets {
        let ec2 = aws.ec2(region);
        let ids: Vec<String> = snapshots.iter().map(|(id, _)| id.clone()).collect();
        let found = snapshot::existing(ctx, &ec2, &ids).await?;
        for (id, on) in snapshots {
            checked += 1;
            let what = if on.is_empty() {
                format!("snapshot {id} ({region})")
            } else {
                format!("snapshot {id} ({on}, {region})")
            };
            match found.iter().find(|s| s.snapshot_id() == Some(id.as_str())) {
                None => problems.push(format!("{what} no longer exists")),
                Some(snapshot) => {
                    let state = snapshot.state().map(|s| s.as_str()).unwrap_or("unknown");
                    if state != "completed" {
                        problems.push(format!("{what} is {state}, not completed"));
                    }
                    expect(snapshot.tags(), &what, &mut problems);
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(PluginError::permanent(problems.join("; ")));
    }
    Ok(StepOutput::new(format!(
        "{checked} image(s) and snapshot(s) exist, usable and tagged"
    )))
}
