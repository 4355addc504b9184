//! Restore and teardown: launch a replacement instance from the recorded AMI, and terminate it
//! again after a drill.
//!
//! The launch settings come from the backup record (the old instance's type, subnet, security
//! groups, key pair), overridden by the step's `launch` table, overridden by `-o` options. The
//! instance is tagged with the backup run it came from and with this run, which makes a retried
//! restore find it instead of launching a second one, and lets teardown refuse anything backplan
//! did not launch.

use std::collections::BTreeMap;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{Instance, InstanceType, ResourceType, Tag, TagSpecification};
use backplan_plugin_sdk::{Context, PluginError, PluginResult, StepOutput};

use crate::client::{Aws, call};
use crate::config::{LaunchOptions, Mode, Settings, Timing};
use crate::instance::{self, state};
use crate::probe;
use crate::record::{BackupRecord, RestoreRecord};
use crate::tags::{self, Owner, RESTORED_FROM};
use crate::wait::Poll;

/// What will be launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub region: String,
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
}

impl Launch {
    /// Record < step config < options; in another region than the backup's, the old network
    /// settings do not exist, so only what is given explicitly is used.
    pub fn plan(
        record: &BackupRecord,
        settings: &Settings,
        options: LaunchOptions,
    ) -> PluginResult<Launch> {
        if record.mode != Mode::Ami {
            return Err(PluginError::config(
                "this backup is plain snapshots (mode = \"snapshots\"): restore launches instances from AMIs only",
            ));
        }
        let region = options
            .region
            .clone()
            .unwrap_or_else(|| record.region.clone());
        let same_region = region == record.region;
        let image_id = if same_region {
            record.image_id.clone()
        } else {
            record
                .copies
                .iter()
                .find(|c| c.region == region)
                .map(|c| c.image_id.clone())
        };
        let image_id = image_id.ok_or_else(|| {
            let copies: Vec<&str> = record.copies.iter().map(|c| c.region.as_str()).collect();
            PluginError::config(format!(
                "the backup has no image in region {region} (made in {}; copies in: {})",
                record.region,
                if copies.is_empty() {
                    "none".to_owned()
                } else {
                    copies.join(", ")
                }
            ))
        })?;
        let old = &record.instance;
        let launch = &settings.launch;
        let inherit = |value: &Option<String>| if same_region { value.clone() } else { None };
        Ok(Launch {
            region,
            image_id,
            instance_type: options
                .instance_type
                .or_else(|| launch.instance_type.clone())
                .unwrap_or_else(|| old.instance_type.clone()),
            subnet_id: options
                .subnet_id
                .or_else(|| launch.subnet_id.clone())
                .or_else(|| inherit(&old.subnet_id)),
            security_group_ids: options
                .security_group_ids
                .map(|l| l.into_vec())
                .or_else(|| launch.security_group_ids.clone())
                .unwrap_or_else(|| {
                    if same_region {
                        old.security_group_ids.clone()
                    } else {
                        Vec::new()
                    }
                }),
            key_name: options
                .key_name
                .or_else(|| launch.key_name.clone())
                .or_else(|| inherit(&old.key_name)),
        })
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "instance type {} from {} in {}",
            self.instance_type, self.image_id, self.region
        );
        if let Some(subnet) = &self.subnet_id {
            text.push_str(&format!(", subnet {subnet}"));
        }
        if !self.security_group_ids.is_empty() {
            text.push_str(&format!(
                ", security groups {}",
                self.security_group_ids.join(" ")
            ));
        }
        if let Some(key) = &self.key_name {
            text.push_str(&format!(", key pair {key}"));
        }
        text
    }
}

/// Launches (or finds) the restored instance and waits until it runs.
pub async fn launch(
    ctx: &Context,
    aws: &Aws,
    settings: &Settings,
    record: &BackupRecord,
    plan: &Launch,
    owner: &Owner,
) -> PluginResult<StepOutput> {
    let ec2 = aws.ec2(&plan.region);
    let outputs = |out: StepOutput, instance: &Instance| {
        let new = instance::record(instance);
        let old = &record.instance;
        out.output("instance_id", &new.instance_id)
            .output("private_ip", new.private_ip.unwrap_or_default())
            .output("public_ip", new.public_ip.unwrap_or_default())
            .output("hostname", new.hostname.unwrap_or_default())
            .output("old_private_ip", old.private_ip.clone().unwrap_or_default())
            .output("old_public_ip", old.public_ip.clone().unwrap_or_default())
            .output("old_hostname", old.hostname.clone().unwrap_or_default())
            .output("image_id", &plan.image_id)
    };
    if ctx.request().dry_run {
        return Ok(StepOutput::new(format!("would launch {}", plan.describe())));
    }
    let id = match find_launched(ctx, &ec2, owner).await? {
        Some(id) => {
            ctx.info(format!(
                "reusing {id}, launched by an earlier attempt of this restore"
            ));
            id
        }
        None => {
            let source = ctx.request().source_run_id.clone().unwrap_or_default();
            run_instance(ctx, &ec2, plan, owner, &settings.tags, &source).await?
        }
    };
    let instance = wait_state(ctx, &ec2, &id, "running", &settings.timing).await?;
    let restored = RestoreRecord {
        instance_id: id.clone(),
        region: plan.region.clone(),
        image_id: plan.image_id.clone(),
    };
    let summary = format!(
        "{id} running ({}), launched from {}",
        instance.private_ip_address().unwrap_or("no private IP"),
        plan.image_id
    );
    Ok(outputs(StepOutput::new(summary), &instance).record(restored))
}

/// An instance this restore (plan, step, run) already launched, if one is pending or running.
async fn find_launched(ctx: &Context, ec2: &Client, owner: &Owner) -> PluginResult<Option<String>> {
    let mut filters = owner.run_filters();
    filters.push(
        aws_sdk_ec2::types::Filter::builder()
            .name("instance-state-name")
            .values("pending")
            .values("running")
            .build(),
    );
    let out = call(ctx, "DescribeInstances", || {
        ec2.describe_instances()
            .set_filters(Some(filters.clone()))
            .send()
    })
    .await?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.instance_id())
        .map(str::to_owned))
}

async fn run_instance(
    ctx: &Context,
    ec2: &Client,
    plan: &Launch,
    owner: &Owner,
    extra: &BTreeMap<String, String>,
    source_run: &str,
) -> PluginResult<String> {
    let mut tags = owner.tags(extra);
    tags.push(Tag::builder().key(RESTORED_FROM).value(source_run).build());
    let specs: Vec<TagSpecification> = [ResourceType::Instance, ResourceType::Volume]
        .into_iter()
        .map(|t| {
            TagSpecification::builder()
                .resource_type(t)
                .set_tags(Some(tags.clone()))
                .build()
        })
        .collect();
    let out = call(ctx, "RunInstances", || {
        run_instances(ec2, plan)
            .set_tag_specifications(Some(specs.clone()))
            .send()
    })
    .await?;
    let id = out
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .ok_or_else(|| PluginError::permanent("RunInstances returned no instance"))?
        .to_owned();
    ctx.info(format!("launched {id}: {}", plan.describe()));
    Ok(id)
}

/// The RunInstances call that launches `plan`: one instance, untagged.
fn run_instances(ec2: &Client, plan: &Launch) -> RunInstancesFluentBuilder {
    ec2.run_instances()
        .image_id(&plan.image_id)
        .instance_type(InstanceType::from(plan.instance_type.as_str()))
        .min_count(1)
        .max_count(1)
        .set_subnet_id(plan.subnet_id.clone())
        .set_security_group_ids(
            (!plan.security_group_ids.is_empty()).then(|| plan.security_group_ids.clone()),
        )
        .set_key_name(plan.key_name.clone())
}

/// Waits until instance `id` reaches state `wanted` (`running` or `terminated`).
async fn wait_state(
    ctx: &Context,
    ec2: &Client,
    id: &str,
    wanted: &str,
    timing: &Timing,
) -> PluginResult<Instance> {
    let mut poll = Poll::new(format!("{id} reaching {wanted}"), timing);
    loop {
        let found = instance::describe(ctx, ec2, id).await?;
        let now = state(&found);
        if now == wanted {
            return Ok(found);
        }
        if wanted == "running"
            && matches!(now, "shutting-down" | "terminated" | "stopping" | "stopped")
        {
            let reason = found
                .state_reason()
                .and_then(|r| r.message())
                .unwrap_or("AWS gave no reason");
            return Err(PluginError::permanent(format!(
                "{id} is {now} instead of running: {reason}"
            )));
        }
        ctx.debug(format!("{id} is {now}, waiting for {wanted}"));
        poll.tick(ctx).await?;
    }
}

/// Terminates the instance a restore launched, and waits until it is gone.
pub async fn teardown(
    ctx: &Context,
    aws: &Aws,
    record: &RestoreRecord,
    timing: &Timing,
) -> PluginResult<StepOutput> {
    let ec2 = aws.ec2(&record.region);
    let id = &record.instance_id;
    let Some(found) = instance::find(ctx, &ec2, id).await? else {
        return Ok(StepOutput::new(format!("{id} no longer exists")));
    };
    if tags::value(found.tags(), RESTORED_FROM).is_none() {
        return Err(PluginError::permanent(format!(
            "refusing to terminate {id}: it has no {RESTORED_FROM} tag, so backplan did not launch it"
        )));
    }
    if state(&found) == "terminated" {
        return Ok(StepOutput::new(format!("{id} was already terminated")));
    }
    if ctx.request().dry_run {
        return Ok(StepOutput::new(format!("would terminate {id}")));
    }
    call(ctx, "TerminateInstances", || {
        ec2.terminate_instances().instance_ids(id).send()
    })
    .await?;
    wait_state(ctx, &ec2, id, "terminated", timing).await?;
    Ok(StepOutput::new(format!("{id} terminated")))
}

/// Used by `check` before a restore: the image exists, and RunInstances would be allowed.
pub async fn preflight(ctx: &Context, aws: &Aws, plan: &Launch) -> PluginResult<String> {
    let ec2 = aws.ec2(&plan.region);
    let image = crate::image::get(ctx, &ec2, &plan.image_id)
        .await?
        .ok_or_else(|| {
            PluginError::config(format!(
                "image {} ({}) no longer exists",
                plan.image_id, plan.region
            ))
        })?;
    let state = image.state().map(|s| s.as_str()).unwrap_or("unknown");
    if state != "available" {
        return Err(PluginError::config(format!(
            "image {} is {state}, not available",
            plan.image_id
        )));
    }
    let answer = call(ctx, "RunInstances", || {
        run_instances(&ec2, plan).dry_run(true).send()
    })
    .await;
    probe::allowed(answer)?;
    Ok(format!(
        "{} is available; RunInstances allowed for {}",
        plan.image_id,
        plan.describe()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::record::{CopyRecord, InstanceRecord};
    use serde_json::json;

    fn record() -> BackupRecord {
        BackupRecord {
            mode: Mode::Ami,
            region: "us-east-1".into(),
            instance: InstanceRecord {
                instance_id: "i-old".into(),
                instance_type: "m5.xlarge".into(),
                subnet_id: Some("subnet-1".into()),
                security_group_ids: vec!["sg-1".into()],
                key_name: Some("ops".into()),
                ..InstanceRecord::default()
            },
            image_id: Some("ami-main".into()),
            snapshots: Vec::new(),
            copies: vec![CopyRecord {
                region: "us-west-2".into(),
                image_id: "ami-west".into(),
                snapshot_ids: Vec::new(),
            }],
        }
    }

    fn settings(config: serde_json::Value) -> Settings {
        Settings::new(&serde_json::from_value::<Config>(config).unwrap()).unwrap()
    }

    fn options(value: serde_json::Value) -> LaunchOptions {
        LaunchOptions::from_request(&value).unwrap()
    }

    #[test]
    fn the_record_then_the_config_then_the_options_decide() {
        let plain = Launch::plan(&record(), &settings(json!({})), options(json!(null))).unwrap();
        assert_eq!(plain.image_id, "ami-main");
        assert_eq!(plain.instance_type, "m5.xlarge");
        assert_eq!(plain.subnet_id.as_deref(), Some("subnet-1"));
        assert_eq!(plain.security_group_ids, ["sg-1"]);
        let configured =
            settings(json!({"launch": {"instance_type": "m5.2xlarge", "key_name": "dr"}}));
        let l = Launch::plan(&record(), &configured, options(json!(null))).unwrap();
        assert_eq!(
            (l.instance_type.as_str(), l.key_name.as_deref()),
            ("m5.2xlarge", Some("dr"))
        );
        let l = Launch::plan(
            &record(),
            &configured,
            options(json!({"instance_type": "c5.large"})),
        )
        .unwrap();
        assert_eq!(l.instance_type, "c5.large");
    }

    #[test]
    fn another_region_launches_the_copy_without_the_old_network() {
        let l = Launch::plan(
            &record(),
            &settings(json!({})),
            options(json!({"region": "us-west-2"})),
        )
        .unwrap();
        assert_eq!(l.image_id, "ami-west");
        assert_eq!(l.subnet_id, None);
        assert!(l.security_group_ids.is_empty());
        let missing = Launch::plan(
            &record(),
            &settings(json!({})),
            options(json!({"region": "eu-west-1"})),
        );
        assert!(
            missing
                .unwrap_err()
                .message
                .contains("copies in: us-west-2")
        );
    }

    #[test]
    fn snapshot_backups_cannot_be_launched() {
        let mut snapshots = record();
        snapshots.mode = Mode::Snapshots;
        let error =
            Launch::plan(&snapshots, &settings(json!({})), options(json!(null))).unwrap_err();
        assert!(error.message.contains("AMIs only"), "{}", error.message);
    }
}
