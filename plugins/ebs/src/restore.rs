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
use aws_sdk_ec2::types::{
    IamInstanceProfileSpecification, Instance, InstanceType, ResourceType, Tag, TagSpecification,
};
use backplan_plugin_sdk::{Context, PluginError, PluginResult, StepOutput};

use crate::address;
use crate::client::{Aws, call};
use crate::config::{self, LaunchConfig, LaunchOptions, Mode, Settings, Timing};
use crate::instance::{self, state};
use crate::probe;
use crate::record::{BackupRecord, RestoreRecord};
use crate::tags::{self, Owner, RESTORED_FROM};
use crate::wait::Poll;

/// What will be launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub region: String,
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    /// The instance profile's ARN or name.
    pub iam_instance_profile: Option<String>,
    /// The old machine's private IP, to launch with again.
    pub private_ip: Option<String>,
    /// The Elastic IP (`eipalloc-…`) to move to the new machine.
    pub elastic_ip: Option<String>,
    /// What the operator should know about the plan (settings a drill leaves out).
    pub notes: Vec<String>,
}

impl Launch {
    /// Record < step config < options; in another region than the backup's, the old network
    /// settings do not exist, so only what is given explicitly is used (the instance profile,
    /// an IAM resource, is global and still inherited). A drill refuses the production subnet
    /// and never takes the old machine's addresses.
    pub(crate) fn plan(
        record: &BackupRecord,
        settings: &Settings,
        options: LaunchOptions,
    ) -> PluginResult<Launch> {
        if record.mode != Mode::Ami {
            return Err(PluginError::config(
                "this backup is plain snapshots (mode = \"snapshots\"): restore launches instances from AMIs only",
            ));
        }
        if let Some(profile) = &options.iam_instance_profile {
            config::instance_profile("-o iam_instance_profile", profile)?;
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
        let drill = options.is_drill();
        let subnet_given = options.subnet_id.is_some();
        let subnet_id = options
            .subnet_id
            .clone()
            .or_else(|| launch.subnet_id.clone())
            .or_else(|| inherit(&old.subnet_id));
        if drill && !subnet_given && options.allow_production_subnet != Some(true) {
            production_subnet(record, &region, subnet_id.as_deref())?;
        }
        let (private_ip, elastic_ip, notes) = if drill {
            drill_addresses(&options, launch)?
        } else {
            let reuse_ip = options.reuse_private_ip.unwrap_or(launch.reuse_private_ip);
            let reuse_eip = options.reuse_elastic_ip.unwrap_or(launch.reuse_elastic_ip);
            let private_ip = reuse_ip
                .then(|| old_private_ip(record, &region, subnet_id.as_deref()))
                .transpose()?;
            let elastic_ip = reuse_eip
                .then(|| old_elastic_ip(record, &region))
                .transpose()?;
            (private_ip, elastic_ip, Vec::new())
        };
        let instance_type = options
            .instance_type
            .or_else(|| launch.instance_type.clone())
            .unwrap_or_else(|| old.instance_type.clone());
        if instance_type.is_empty() {
            return Err(PluginError::config(format!(
                "the backup record names no instance type (it was rebuilt from {image_id}, made before backups were tagged with the machine's facts): give -o instance_type=… or launch.instance_type, and the subnet, security groups and instance profile the old machine had"
            )));
        }
        Ok(Launch {
            region,
            image_id,
            instance_type,
            subnet_id,
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
            iam_instance_profile: options
                .iam_instance_profile
                .or_else(|| launch.iam_instance_profile.clone())
                .or_else(|| old.iam_instance_profile_arn.clone())
                .filter(|p| p != NO_PROFILE),
            private_ip,
            elastic_ip,
            notes,
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
        if let Some(profile) = &self.iam_instance_profile {
            text.push_str(&format!(", instance profile {profile}"));
        }
        if let Some(ip) = &self.private_ip {
            text.push_str(&format!(", the old private IP {ip}"));
        }
        if let Some(allocation) = &self.elastic_ip {
            text.push_str(&format!(", then the old Elastic IP {allocation}"));
        }
        text
    }
}

/// The `iam_instance_profile` that launches without one.
const NO_PROFILE: &str = "none";

/// A drill refuses to launch into the backed-up instance's own subnet unless told where to go.
fn production_subnet(
    record: &BackupRecord,
    region: &str,
    subnet: Option<&str>,
) -> PluginResult<()> {
    let old = &record.instance;
    match (subnet, &old.subnet_id) {
        (Some(subnet), Some(production)) if region == record.region && subnet == production => {
            Err(PluginError::config(format!(
                "a drill would launch into {subnet}, the subnet of the backed-up instance {}: give a test subnet with -o subnet_id=…, or -o allow_production_subnet=true to drill there anyway",
                old.instance_id
            )))
        }
        _ => Ok(()),
    }
}

/// In a drill, the production machine keeps its addresses: asked for with `-o`, that is an
/// error; set in the step's `launch`, it is left out with a note.
fn drill_addresses(
    options: &LaunchOptions,
    launch: &LaunchConfig,
) -> PluginResult<(Option<String>, Option<String>, Vec<String>)> {
    for (asked, key) in [
        (options.reuse_private_ip, "reuse_private_ip"),
        (options.reuse_elastic_ip, "reuse_elastic_ip"),
    ] {
        if asked == Some(true) {
            return Err(PluginError::config(format!(
                "-o {key}=true: a drill never takes the production machine's addresses"
            )));
        }
    }
    let mut notes = Vec::new();
    if launch.reuse_private_ip || launch.reuse_elastic_ip {
        notes.push(
            "a drill leaves the production machine's addresses alone: reuse_private_ip and reuse_elastic_ip are not applied"
                .to_owned(),
        );
    }
    Ok((None, None, notes))
}

/// The old private IP, which only exists in the old subnet.
fn old_private_ip(
    record: &BackupRecord,
    region: &str,
    subnet: Option<&str>,
) -> PluginResult<String> {
    let old = &record.instance;
    let ip = old.private_ip.clone().ok_or_else(|| {
        PluginError::config(format!(
            "reuse_private_ip: the backup recorded no private IP for {}",
            old.instance_id
        ))
    })?;
    let old_subnet = old.subnet_id.as_deref().unwrap_or("its subnet");
    if region != record.region || subnet != old.subnet_id.as_deref() {
        return Err(PluginError::config(format!(
            "reuse_private_ip: {ip} belongs to {old_subnet} in {}; this restore launches into {} in {region}",
            record.region,
            subnet.unwrap_or("the default subnet")
        )));
    }
    Ok(ip)
}

/// The Elastic IP recorded at backup, which only exists in the backup's region.
fn old_elastic_ip(record: &BackupRecord, region: &str) -> PluginResult<String> {
    let old = &record.instance;
    let allocation = old.elastic_ip_allocation_id.clone().ok_or_else(|| {
        let why = match &old.public_ip {
            Some(ip) => format!(
                " (its public IP {ip} was not an Elastic IP, or ec2:DescribeAddresses was refused at backup)"
            ),
            None => " (it had no public IP)".to_owned(),
        };
        PluginError::config(format!(
            "reuse_elastic_ip: the backup recorded no Elastic IP for {}{why}",
            old.instance_id
        ))
    })?;
    if region != record.region {
        return Err(PluginError::config(format!(
            "reuse_elastic_ip: the Elastic IP {allocation} belongs to {}; this restore launches in {region}",
            record.region
        )));
    }
    Ok(allocation)
}

/// Launches (or finds) the restored instance and waits until it runs.
pub(crate) async fn launch(
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
            if let (Some(ip), Some(subnet)) = (&plan.private_ip, &plan.subnet_id) {
                address::require_free(ctx, &ec2, subnet, ip).await?;
            }
            let source = ctx.request().source_run_id.clone().unwrap_or_default();
            run_instance(ctx, &ec2, plan, owner, &settings.tags, &source).await?
        }
    };
    let mut instance = wait_state(ctx, &ec2, &id, "running", &settings.timing).await?;
    let mut summary = format!(
        "{id} running ({}), launched from {}",
        instance.private_ip_address().unwrap_or("no private IP"),
        plan.image_id
    );
    if let Some(profile) = &plan.iam_instance_profile {
        summary.push_str(&format!(" with instance profile {profile}"));
    }
    if let Some(allocation) = &plan.elastic_ip {
        let public_ip = address::move_elastic_ip(ctx, &ec2, allocation, &id).await?;
        summary.push_str(&format!("; Elastic IP {public_ip} moved to it"));
        // Its public address is the Elastic IP now.
        instance = instance::describe(ctx, &ec2, &id).await?;
    }
    let restored = RestoreRecord {
        instance_id: id.clone(),
        region: plan.region.clone(),
        image_id: plan.image_id.clone(),
        iam_instance_profile: plan.iam_instance_profile.clone(),
        reused_private_ip: plan.private_ip.clone(),
        elastic_ip_allocation_id: plan.elastic_ip.clone(),
    };
    let mut out = outputs(StepOutput::new(summary), &instance).record(restored);
    for note in &plan.notes {
        out = out.warning(note);
    }
    Ok(out)
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
    let profile = plan.iam_instance_profile.as_ref().map(|p| {
        let spec = IamInstanceProfileSpecification::builder();
        if p.starts_with("arn:") {
            spec.arn(p).build()
        } else {
            spec.name(p).build()
        }
    });
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
        .set_iam_instance_profile(profile)
        .set_private_ip_address(plan.private_ip.clone())
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
pub(crate) async fn teardown(
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
pub(crate) async fn preflight(ctx: &Context, aws: &Aws, plan: &Launch) -> PluginResult<String> {
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
    if let (Some(ip), Some(subnet)) = (&plan.private_ip, &plan.subnet_id) {
        address::require_free(ctx, &ec2, subnet, ip).await?;
    }
    if let Some(allocation) = &plan.elastic_ip {
        address::elastic_ip(ctx, &ec2, allocation).await?;
    }
    // With an instance profile, this also asks IAM whether the role may be passed.
    let answer = call(ctx, "RunInstances", || {
        run_instances(&ec2, plan).dry_run(true).send()
    })
    .await;
    probe::allowed(answer)?;
    let mut summary = format!(
        "{} is available; RunInstances allowed for {}",
        plan.image_id,
        plan.describe()
    );
    for note in &plan.notes {
        summary.push_str(&format!("; {note}"));
    }
    Ok(summary)
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
                private_ip: Some("10.0.1.5".into()),
                public_ip: Some("203.0.113.7".into()),
                iam_instance_profile_arn: Some(
                    "arn:aws:iam::123456789012:instance-profile/services".into(),
                ),
                elastic_ip_allocation_id: Some("eipalloc-1".into()),
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

    fn plan(config: serde_json::Value, opts: serde_json::Value) -> PluginResult<Launch> {
        Launch::plan(&record(), &settings(config), options(opts))
    }

    #[test]
    fn the_instance_profile_is_inherited_even_in_another_region_and_can_be_overridden() {
        let profile = "arn:aws:iam::123456789012:instance-profile/services";
        let l = plan(json!({}), json!(null)).unwrap();
        assert_eq!(l.iam_instance_profile.as_deref(), Some(profile));
        assert!(l.describe().contains(profile), "{}", l.describe());
        let west = plan(json!({}), json!({"region": "us-west-2"})).unwrap();
        assert_eq!(west.iam_instance_profile.as_deref(), Some(profile));
        let configured = plan(
            json!({"launch": {"iam_instance_profile": "dr"}}),
            json!(null),
        );
        assert_eq!(
            configured.unwrap().iam_instance_profile.as_deref(),
            Some("dr")
        );
        let given = plan(
            json!({"launch": {"iam_instance_profile": "dr"}}),
            json!({"iam_instance_profile": "drill-profile"}),
        );
        assert_eq!(
            given.unwrap().iam_instance_profile.as_deref(),
            Some("drill-profile")
        );
        let none = plan(json!({}), json!({"iam_instance_profile": "none"})).unwrap();
        assert_eq!(none.iam_instance_profile, None);
    }

    #[test]
    fn a_role_arn_given_as_the_instance_profile_is_refused_by_name() {
        let error = plan(
            json!({}),
            json!({"iam_instance_profile": "arn:aws:iam::123456789012:role/services"}),
        )
        .unwrap_err();
        assert!(error.message.contains("a role's ARN"), "{}", error.message);
        let error = Settings::new(
            &serde_json::from_value::<Config>(
                json!({"launch": {"iam_role_arn": "arn:aws:iam::1:instance-profile/x"}}),
            )
            .unwrap(),
        )
        .unwrap_err();
        assert!(
            error.message.contains("not a role ARN"),
            "{}",
            error.message
        );
    }

    #[test]
    fn addresses_are_reused_only_when_asked_and_only_where_they_exist() {
        let plain = plan(json!({}), json!(null)).unwrap();
        assert_eq!((plain.private_ip, plain.elastic_ip), (None, None));
        let reuse = json!({"launch": {"reuse_private_ip": true, "reuse_elastic_ip": true}});
        let l = plan(reuse.clone(), json!(null)).unwrap();
        assert_eq!(l.private_ip.as_deref(), Some("10.0.1.5"));
        assert_eq!(l.elastic_ip.as_deref(), Some("eipalloc-1"));
        let off = plan(reuse.clone(), json!({"reuse_elastic_ip": false})).unwrap();
        assert_eq!(off.elastic_ip, None, "-o turns it off");
        let elsewhere = plan(reuse.clone(), json!({"subnet_id": "subnet-2"})).unwrap_err();
        assert!(
            elsewhere.message.contains("10.0.1.5 belongs to subnet-1"),
            "{}",
            elsewhere.message
        );
        let west = plan(
            json!({"launch": {"reuse_elastic_ip": true}}),
            json!({"region": "us-west-2"}),
        )
        .unwrap_err();
        assert!(
            west.message.contains("belongs to us-east-1"),
            "{}",
            west.message
        );
        let mut no_eip = record();
        no_eip.instance.elastic_ip_allocation_id = None;
        let error = Launch::plan(
            &no_eip,
            &settings(json!({})),
            options(json!({"reuse_elastic_ip": true})),
        )
        .unwrap_err();
        assert!(
            error.message.contains("recorded no Elastic IP")
                && error.message.contains("203.0.113.7"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_drill_refuses_the_production_subnet_unless_told_where_to_go() {
        let error = plan(json!({}), json!({"drill": true})).unwrap_err();
        assert!(
            error
                .message
                .contains("subnet-1, the subnet of the backed-up instance i-old")
                && error.message.contains("-o subnet_id="),
            "{}",
            error.message
        );
        let configured = plan(
            json!({"launch": {"subnet_id": "subnet-1"}}),
            json!({"drill": true}),
        );
        assert!(
            configured.is_err(),
            "the step's own launch.subnet_id is no way out"
        );
        let test_subnet = plan(json!({}), json!({"drill": true, "subnet_id": "subnet-9"}));
        assert_eq!(test_subnet.unwrap().subnet_id.as_deref(), Some("subnet-9"));
        let allowed = plan(
            json!({}),
            json!({"drill": true, "allow_production_subnet": true}),
        );
        assert_eq!(allowed.unwrap().subnet_id.as_deref(), Some("subnet-1"));
        let restore = plan(json!({}), json!(null));
        assert_eq!(restore.unwrap().subnet_id.as_deref(), Some("subnet-1"));
    }

    #[test]
    fn a_drill_never_takes_the_production_addresses() {
        let reuse = json!({"launch": {"reuse_private_ip": true, "reuse_elastic_ip": true}});
        let l = plan(reuse, json!({"drill": true, "subnet_id": "subnet-9"})).unwrap();
        assert_eq!((l.private_ip, l.elastic_ip), (None, None));
        assert!(l.notes[0].contains("not applied"), "{:?}", l.notes);
        let asked = plan(
            json!({}),
            json!({"drill": true, "subnet_id": "subnet-9", "reuse_elastic_ip": true}),
        )
        .unwrap_err();
        assert!(asked.message.contains("never takes"), "{}", asked.message);
    }

    #[test]
    fn snapshot_backups_cannot_be_launched() {
        let mut snapshots = record();
        snapshots.mode = Mode::Snapshots;
        let error =
            Launch::plan(&snapshots, &settings(json!({})), options(json!(null))).unwrap_err();
        assert!(error.message.contains("AMIs only"), "{}", error.message);
    }

    #[test]
    fn a_rebuilt_record_that_names_no_machine_launches_only_with_an_instance_type_given() {
        let mut rebuilt = record();
        rebuilt.instance = InstanceRecord::default();
        let error = Launch::plan(&rebuilt, &settings(json!({})), options(json!(null))).unwrap_err();
        assert_eq!(error.kind, backplan_plugin_sdk::ErrorKind::Config);
        assert!(
            error.message.contains("-o instance_type="),
            "{}",
            error.message
        );
        let given = Launch::plan(
            &rebuilt,
            &settings(json!({})),
            options(json!({"instance_type": "m5.xlarge"})),
        )
        .unwrap();
        assert_eq!(given.instance_type, "m5.xlarge");
    }
}
