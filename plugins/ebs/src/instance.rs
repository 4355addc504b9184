//! Finding the instance to back up, and what is worth remembering about it.
//!
//! Three ways to name it: an id, `self` (IMDSv2: a token PUT, then the instance id; the endpoint
//! follows the standard `AWS_EC2_METADATA_SERVICE_ENDPOINT`), or tags that exactly one running
//! instance must carry. A tag search matching none or several is an error listing what matched,
//! so that the operator sees why.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Instance;
use backplan_plugin_sdk::{Context, PluginError, PluginResult};

use crate::client::call;
use crate::config::{Target, Volumes};
use crate::record::InstanceRecord;
use crate::tags::filter;

/// The instance `target` names, described.
pub(crate) async fn resolve(
    ctx: &Context,
    ec2: &Client,
    target: &Target,
) -> PluginResult<Instance> {
    match target {
        Target::Id(id) => describe(ctx, ec2, id).await,
        Target::Myself => {
            let id = own_instance_id().await?;
            ctx.debug(format!("instance = \"self\" is {id}"));
            describe(ctx, ec2, &id).await
        }
        Target::Tags(tags) => {
            let filters: Vec<_> = tags
                .iter()
                .map(|(k, v)| filter(&format!("tag:{k}"), v))
                .collect();
            let found = call(ctx, "DescribeInstances", || {
                ec2.describe_instances()
                    .set_filters(Some(filters.clone()))
                    .send()
            })
            .await?;
            let all: Vec<Instance> = found
                .reservations()
                .iter()
                .flat_map(|r| r.instances().to_vec())
                .collect();
            let running: Vec<&Instance> = all.iter().filter(|i| state(i) == "running").collect();
            if let [one] = running.as_slice() {
                return Ok((*one).clone());
            }
            let wanted = tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let listed = if all.is_empty() {
                "none".to_owned()
            } else {
                all.iter()
                    .map(|i| format!("{} ({})", i.instance_id().unwrap_or("?"), state(i)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            Err(PluginError::config(format!(
                "instance_tags {{{wanted}}} must match exactly one running instance; {} running, matched: {listed}",
                running.len()
            )))
        }
    }
}

/// One instance by id; a clear error when it does not exist.
pub(crate) async fn describe(ctx: &Context, ec2: &Client, id: &str) -> PluginResult<Instance> {
    find(ctx, ec2, id).await?.ok_or_else(|| {
        PluginError::permanent(format!("instance {id} does not exist in this region"))
    })
}

/// One instance by id, if it exists.
pub(crate) async fn find(ctx: &Context, ec2: &Client, id: &str) -> PluginResult<Option<Instance>> {
    let found = call(ctx, "DescribeInstances", || {
        ec2.describe_instances().instance_ids(id).send()
    })
    .await;
    match found {
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
        Ok(out) => Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .cloned()),
    }
}

/// The instance's state name (`running`, `stopped`...).
pub(crate) fn state(instance: &Instance) -> &str {
    instance
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str())
        .unwrap_or("unknown")
}

/// The id of the instance this process runs on, from IMDSv2.
async fn own_instance_id() -> PluginResult<String> {
    let imds = aws_config::imds::Client::builder().build();
    let id = imds
        .get("/latest/meta-data/instance-id")
        .await
        .map_err(|e| {
            PluginError::config(format!(
                "instance = \"self\": the instance metadata service (IMDSv2) did not answer: {}",
                aws_sdk_ec2::error::DisplayErrorContext(&e)
            ))
        })?;
    Ok(id.as_ref().trim().to_owned())
}

/// What the record keeps about the instance.
pub(crate) fn record(instance: &Instance) -> InstanceRecord {
    let some = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
    InstanceRecord {
        instance_id: instance.instance_id().unwrap_or_default().to_owned(),
        instance_type: instance
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        subnet_id: some(instance.subnet_id()),
        vpc_id: some(instance.vpc_id()),
        availability_zone: some(instance.placement().and_then(|p| p.availability_zone())),
        security_group_ids: instance
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id())
            .map(str::to_owned)
            .collect(),
        key_name: some(instance.key_name()),
        private_ip: some(instance.private_ip_address()),
        public_ip: some(instance.public_ip_address()),
        hostname: some(instance.private_dns_name()),
        root_device_name: some(instance.root_device_name()),
        iam_instance_profile_arn: some(instance.iam_instance_profile().and_then(|p| p.arn())),
        // Only DescribeAddresses knows the allocation: the backup adds it.
        elastic_ip_allocation_id: None,
    }
}

/// The attached EBS volumes `volumes` selects, as (device, volume id).
pub(crate) fn volumes(instance: &Instance, volumes: Volumes) -> Vec<(String, String)> {
    let root = instance.root_device_name().unwrap_or_default();
    instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            Some((
                m.device_name()?.to_owned(),
                m.ebs()?.volume_id()?.to_owned(),
            ))
        })
        .filter(|(device, _)| volumes == Volumes::All || device == root)
        .collect()
}
