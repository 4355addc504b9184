//! The addresses a restore can carry over from the old machine: its Elastic IP (found at backup,
//! moved at restore) and its private IP (launched with again, once nothing holds it).
//!
//! CircleCI Server's Replicated settings, the Nomad clients and the GitHub OAuth application
//! name the Services machine's addresses; a replacement that has the same ones needs none of
//! them changed. Both are off by default: taking an address is only right when the old machine
//! is gone for good, which is why a drill never does it.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Address;
use backplan_plugin_sdk::{Context, PluginError, PluginResult};

use crate::client::{AwsError, call};
use crate::tags::filter;

/// The Elastic IP associated with `instance_id`, if it has one.
pub(crate) async fn elastic_ip_of(
    ctx: &Context,
    ec2: &Client,
    instance_id: &str,
) -> Result<Option<Address>, AwsError> {
    let out = call(ctx, "DescribeAddresses", || {
        ec2.describe_addresses()
            .filters(filter("instance-id", instance_id))
            .send()
    })
    .await?;
    Ok(out
        .addresses()
        .iter()
        .find(|a| a.allocation_id().is_some())
        .cloned())
}

/// The Elastic IP `allocation_id`; a configuration error when it is gone.
pub(crate) async fn elastic_ip(
    ctx: &Context,
    ec2: &Client,
    allocation_id: &str,
) -> PluginResult<Address> {
    let gone = || {
        PluginError::config(format!(
            "the Elastic IP {allocation_id} recorded at backup no longer exists (released?): restore without reuse_elastic_ip"
        ))
    };
    let out = call(ctx, "DescribeAddresses", || {
        ec2.describe_addresses()
            .allocation_ids(allocation_id)
            .send()
    })
    .await;
    match out {
        Err(e) if e.is_not_found() => Err(gone()),
        Err(e) => Err(e.into()),
        Ok(out) => out.addresses().first().cloned().ok_or_else(gone),
    }
}

/// Moves Elastic IP `allocation_id` to `instance_id` (from the old machine too, if it still
/// holds it); nothing to do when it is there already. Returns its public IP.
pub(crate) async fn move_elastic_ip(
    ctx: &Context,
    ec2: &Client,
    allocation_id: &str,
    instance_id: &str,
) -> PluginResult<String> {
    let address = elastic_ip(ctx, ec2, allocation_id).await?;
    let public_ip = address.public_ip().unwrap_or_default().to_owned();
    if address.instance_id() == Some(instance_id) {
        return Ok(public_ip);
    }
    call(ctx, "AssociateAddress", || {
        ec2.associate_address()
            .allocation_id(allocation_id)
            .instance_id(instance_id)
            .allow_reassociation(true)
            .send()
    })
    .await?;
    ctx.info(format!(
        "moved Elastic IP {public_ip} ({allocation_id}) from {} to {instance_id}",
        address.instance_id().unwrap_or("no instance")
    ));
    Ok(public_ip)
}

/// What holds private IP `ip` in `subnet_id` (`eni-… of i-… (in-use)`), or `None` when it is
/// free.
pub(crate) async fn holder(
    ctx: &Context,
    ec2: &Client,
    subnet_id: &str,
    ip: &str,
) -> PluginResult<Option<String>> {
    let out = call(ctx, "DescribeNetworkInterfaces", || {
        ec2.describe_network_interfaces()
            .filters(filter("subnet-id", subnet_id))
            .filters(filter("addresses.private-ip-address", ip))
            .send()
    })
    .await?;
    Ok(out.network_interfaces().first().map(|eni| {
        let id = eni.network_interface_id().unwrap_or("a network interface");
        let status = eni.status().map(|s| s.as_str()).unwrap_or("unknown");
        match eni.attachment().and_then(|a| a.instance_id()) {
            Some(instance) => format!("{id} of {instance} ({status})"),
            None => format!("{id} ({status})"),
        }
    }))
}

/// Refuses to launch with private IP `ip` while something in `subnet_id` holds it.
pub(crate) async fn require_free(
    ctx: &Context,
    ec2: &Client,
    subnet_id: &str,
    ip: &str,
) -> PluginResult<()> {
    match holder(ctx, ec2, subnet_id, ip).await? {
        None => Ok(()),
        Some(holder) => Err(PluginError::config(format!(
            "reuse_private_ip: {ip} is still in use in {subnet_id}, by {holder}: the old machine (or something else) still exists. Terminate it first, or restore without reuse_private_ip"
        ))),
    }
}
