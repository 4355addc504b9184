//! Permission probes with EC2's `DryRun`: AWS answers `DryRunOperation` when a call would be
//! allowed and `UnauthorizedOperation` when not, without doing anything. `check` probes the
//! calls a backup will make, and a restore's preflight probes RunInstances.

use aws_sdk_ec2::Client;
use backplan_plugin_sdk::{Context, PluginResult};

use crate::client::{AwsError, call};

/// Turns a DryRun probe's answer into "allowed", or the error (a configuration error naming the
/// call when IAM refuses it).
pub(crate) fn allowed<T>(answer: Result<T, AwsError>) -> PluginResult<()> {
    match answer {
        Ok(_) => Ok(()),
        Err(e) if e.is_dry_run_ok() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether DescribeImages is allowed: credentials valid, region reachable.
pub(crate) async fn describe(ctx: &Context, ec2: &Client) -> PluginResult<()> {
    let answer = call(ctx, "DescribeImages", || {
        ec2.describe_images().dry_run(true).owners("self").send()
    })
    .await;
    allowed(answer)
}
