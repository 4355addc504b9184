//! The check action: credentials and region resolve the standard way, the instance exists, and
//! IAM allows the calls the step will make ([`probe`]: EC2's `DryRun`). Before a restore no
//! source instance is needed: the recorded image and RunInstances are checked instead
//! ([`restore::preflight`]).

use backplan_plugin_sdk::{Action, Context, PluginError, PluginResult, StepOutput};

use crate::client::{Aws, call};
use crate::config::{LaunchOptions, Mode, Settings, Target, Volumes};
use crate::instance;
use crate::probe;
use crate::record::BackupRecord;
use crate::restore::{self, Launch};
use crate::tags::{Owner, image_name};

pub(crate) async fn run(
    ctx: &Context,
    aws: &Aws,
    settings: &Settings,
    owner: &Owner,
) -> PluginResult<StepOutput> {
    aws.check_credentials().await?;
    let region = aws.region().to_owned();
    let ec2 = aws.ec2(&region);
    let request = ctx.request();
    if request.check_for == Some(Action::Restore) {
        let Some(record) = &request.record else {
            probe::describe(ctx, &ec2).await?;
            return Ok(StepOutput::new(format!(
                "credentials and {region} reachable; the backup to restore is chosen later"
            )));
        };
        let record: BackupRecord = serde_json::from_value(record.clone())
            .map_err(|e| PluginError::permanent(format!("the backup record is unreadable: {e}")))?;
        let plan = Launch::plan(
            &record,
            settings,
            LaunchOptions::from_request(&request.options)?,
        )?;
        return Ok(StepOutput::new(restore::preflight(ctx, aws, &plan).await?));
    }
    if matches!(
        request.check_for,
        Some(Action::Verify | Action::Prune | Action::Teardown)
    ) {
        probe::describe(ctx, &ec2).await?;
        return Ok(StepOutput::new(format!(
            "credentials valid; {region} reachable"
        )));
    }
    if matches!(settings.target, Some(Target::Id(ref id)) if backplan_plugin_sdk::Request::is_unresolved(id))
    {
        probe::describe(ctx, &ec2).await?;
        return Ok(StepOutput::new(
            "the instance comes from an earlier step; checked when the step runs",
        ));
    }
    let target = settings.require_target()?;
    let found = instance::resolve(ctx, &ec2, target).await?;
    let id = found.instance_id().unwrap_or_default().to_owned();
    let mut probed = vec!["DescribeImages"];
    probe::describe(ctx, &ec2).await?;
    match settings.mode {
        Mode::Ami => {
            let answer = call(ctx, "CreateImage", || {
                ec2.create_image()
                    .dry_run(true)
                    .instance_id(&id)
                    .name(image_name(owner))
                    .no_reboot(settings.no_reboot)
                    .send()
            })
            .await;
            probe::allowed(answer)?;
            probed.push("CreateImage");
        }
        Mode::Snapshots => {
            let volumes = instance::volumes(&found, settings.volumes);
            let Some((_, volume)) = volumes.first() else {
                let which = if settings.volumes == Volumes::Root {
                    "root volume"
                } else {
                    "EBS volume"
                };
                return Err(PluginError::config(format!(
                    "{id} has no attached {which} to snapshot"
                )));
            };
            let answer = call(ctx, "CreateSnapshot", || {
                ec2.create_snapshot().dry_run(true).volume_id(volume).send()
            })
            .await;
            probe::allowed(answer)?;
            probed.push("CreateSnapshot");
        }
    }
    for copy in &settings.copies {
        probe::describe(ctx, &aws.ec2(&copy.region)).await?;
    }
    let copies = if settings.copies.is_empty() {
        String::new()
    } else {
        format!(
            "; copy regions reachable: {}",
            settings
                .copies
                .iter()
                .map(|c| c.region.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Ok(StepOutput::new(format!(
        "{id} ({}) in {region}; allowed: {}{copies}{}",
        instance::state(&found),
        probed.join(", "),
        pass_role(&found, settings)
    )))
}

/// What `plan permissions` cannot know: the role a restore passes with the instance's profile.
fn pass_role(found: &aws_sdk_ec2::types::Instance, settings: &Settings) -> String {
    let profile = found.iam_instance_profile().and_then(|p| p.arn());
    match (settings.mode, profile, &settings.launch.iam_role_arn) {
        (Mode::Ami, Some(profile), None) => format!(
            "; instance profile {profile}: a restore passes its role, so `plan permissions` allows iam:PassRole of any role to EC2 unless launch.iam_role_arn names that role"
        ),
        (Mode::Ami, Some(profile), Some(role)) => {
            format!("; instance profile {profile} (iam:PassRole allowed for {role} only)")
        }
        _ => String::new(),
    }
}
