//! The `s3-verify` plugin: the SDK's actions mapped onto one run of the checks.
//!
//! `backup` runs every check and records the findings (compared with the step's last backup);
//! `verify` re-runs them, compared with the record it is given. A failing finding fails the step
//! with a permanent error listing every problem; warnings become step warnings.

use backplan_plugin_sdk::{
    Action, Context, Permissions, Plugin, PluginError, PluginResult, Request, Role, StepOutput,
};
use serde_json::json;

use crate::aws;
use crate::config::{Config, Destination};
use crate::findings::Status;
use crate::run::{self, Report};

/// The plugin.
#[derive(Debug, Default)]
pub(crate) struct S3Verify;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn checked(config: &Config) -> PluginResult<()> {
    Request::require_resolved(
        std::iter::once(config.bucket.as_str()).chain(config.prefixes.iter().map(String::as_str)),
    )?;
    config.validate().map_err(PluginError::config)
}

/// `12.3 MiB`.
fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// The step's result: a record and warnings, or the failing findings as an error.
fn outcome(report: Report) -> PluginResult<StepOutput> {
    let t = report.tally;
    let summary = format!(
        "s3://{} ({}): {} objects, {}; {} of {} sampled reads verified; checks: {} pass, {} warn, {} fail",
        report.bucket,
        report.region,
        report.objects.count,
        human(report.objects.bytes),
        report.sample.verified,
        report.sample.read,
        t.pass,
        t.warn,
        t.fail,
    );
    if t.fail > 0 {
        let mut failed: Vec<&str> = Vec::new();
        for finding in report.findings.with_status(Status::Fail) {
            if !failed.contains(&finding.check.as_str()) {
                failed.push(finding.check.as_str());
            }
        }
        let mut detail: Vec<String> = report
            .findings
            .0
            .iter()
            .filter(|f| matches!(f.status, Status::Fail | Status::Warn))
            .map(|f| format!("{:?}: {}", f.status, f.line()).to_lowercase_first())
            .collect();
        detail.push(summary);
        return Err(PluginError::permanent(format!(
            "s3://{}: {} check(s) failed: {}",
            report.bucket,
            failed.len(),
            failed.join(", ")
        ))
        .with_detail(detail.join("\n")));
    }
    let mut out = StepOutput::new(summary)
        .bytes(report.sample.bytes)
        .output("objects", report.objects.count)
        .output("bytes", report.objects.bytes)
        .output("region", &report.region);
    for finding in report.findings.with_status(Status::Warn) {
        out = out.warning(finding.line());
    }
    Ok(out.record(&report))
}

trait LowercaseFirst {
    fn to_lowercase_first(self) -> String;
}

impl LowercaseFirst for String {
    fn to_lowercase_first(self) -> String {
        let mut chars = self.chars();
        match chars.next() {
            Some(c) => c.to_lowercase().chain(chars).collect(),
            None => self,
        }
    }
}

fn run_checks(
    ctx: &Context,
    config: &Config,
    previous: Option<(String, serde_json::Value)>,
) -> PluginResult<StepOutput> {
    checked(config)?;
    let report = run::runtime()?.block_on(run::run(ctx, config, previous, now()))?;
    outcome(report)
}

impl Plugin for S3Verify {
    type Config = Config;
    const NAME: &'static str = "s3-verify";
    const SUMMARY: &'static str = "Proves an S3 bucket is redundant and intact: posture, storage classes, replication, sampled checksums.";
    const DOCS: &'static str = include_str!("../DOCS.md");
    const ACTIONS: &'static [Action] = &[Action::Check, Action::Backup, Action::Verify];

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        if Request::is_unresolved(&config.bucket) {
            config.validate().map_err(PluginError::config)?;
            return Ok(StepOutput::new(
                "the bucket comes from an earlier step; checked at run time",
            ));
        }
        checked(config)?;
        crate::expected::Expected::load(config)?;
        let bucket = config.bucket.as_str();
        run::runtime()?.block_on(async {
            let sdk = aws::load(config).await;
            backplan_aws::check_credentials(&sdk).await?;
            run::head_bucket(&aws::client(&sdk, config, None), bucket).await?;
            ctx.debug(format!("s3://{bucket} answers HeadBucket"));
            Ok(StepOutput::new(format!(
                "s3://{bucket} is reachable with these credentials"
            )))
        })
    }

    fn backup(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let previous = ctx
            .request()
            .history
            .last()
            .map(|h| (h.run_id.clone(), h.record.clone()));
        run_checks(ctx, config, previous)
    }

    fn verify(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let request = ctx.request();
        let previous = request
            .record
            .clone()
            .map(|r| (request.source_run_id.clone().unwrap_or_default(), r));
        run_checks(ctx, config, previous)
    }

    fn permissions(&self, config: &Config) -> Permissions {
        let bucket = &config.bucket;
        let objects: Vec<String> = if config.prefixes.is_empty() {
            vec![format!("arn:aws:s3:::{bucket}/*")]
        } else {
            config
                .prefixes
                .iter()
                .map(|p| format!("arn:aws:s3:::{bucket}/{p}*"))
                .collect()
        };
        let mut statements = vec![
            json!({
                "Sid": "S3VerifyBucket",
                "Effect": "Allow",
                "Action": [
                    "s3:ListBucket",
                    "s3:GetBucketLocation",
                    "s3:GetBucketVersioning",
                    "s3:GetReplicationConfiguration",
                    "s3:GetLifecycleConfiguration",
                    "s3:GetEncryptionConfiguration",
                    "s3:GetBucketPublicAccessBlock",
                    "s3:GetBucketObjectLockConfiguration",
                ],
                "Resource": format!("arn:aws:s3:::{bucket}"),
            }),
            json!({
                "Sid": "S3VerifyObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectAttributes"],
                "Resource": objects,
            }),
        ];
        let needs_destination_region = config.replication.required
            && !matches!(
                config.replication.destination,
                Destination::Any | Destination::OtherAccount
            );
        if needs_destination_region {
            statements.push(json!({
                "Sid": "S3VerifyReplicaRegion",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation"],
                "Resource": "arn:aws:s3:::*",
            }));
        }
        // The posture of the buckets that hold the backups (their configuration only).
        let backup_buckets: Vec<String> = config
            .backup_buckets
            .iter()
            .filter_map(|address| crate::backup_buckets::parse(address))
            .map(|(bucket, _)| format!("arn:aws:s3:::{bucket}"))
            .collect();
        if !backup_buckets.is_empty() {
            statements.push(json!({
                "Sid": "S3VerifyBackupBuckets",
                "Effect": "Allow",
                "Action": [
                    "s3:GetBucketLocation",
                    "s3:GetBucketVersioning",
                    "s3:GetBucketObjectLockConfiguration",
                ],
                "Resource": backup_buckets,
            }));
        }
        // Read-only: every role may check the bucket (backup and a drill verify it).
        statements
            .into_iter()
            .fold(Permissions::default(), |p, s| p.grant(&Role::ALL, s))
    }
}

backplan_plugin_sdk::declare_plugin!(S3Verify);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_name_the_bucket_and_prefixes() {
        let config: Config =
            serde_json::from_value(json!({"bucket": "art", "prefixes": ["a/"]})).unwrap();
        let p = S3Verify.permissions(&config);
        assert_eq!(p.aws_iam_statements.len(), 3);
        assert_eq!(p.aws_iam_statements[0]["Resource"], "arn:aws:s3:::art");
        assert_eq!(
            p.aws_iam_statements[1]["Resource"][0],
            "arn:aws:s3:::art/a/*"
        );
        let any: Config =
            serde_json::from_value(json!({"bucket": "art", "replication": {"destination": "any"}}))
                .unwrap();
        assert_eq!(S3Verify.permissions(&any).aws_iam_statements.len(), 2);
        let guarded: Config = serde_json::from_value(json!({
            "bucket": "art", "replication": {"destination": "any"},
            "backup_buckets": ["s3://vault/artifacts", "s3://catalog"],
        }))
        .unwrap();
        let posture = &S3Verify.permissions(&guarded).aws_iam_statements[2];
        assert_eq!(
            posture["Resource"],
            json!(["arn:aws:s3:::vault", "arn:aws:s3:::catalog"])
        );
        for role in Role::ALL {
            assert_eq!(
                p.statements_for(role),
                p.aws_iam_statements,
                "{role}: read-only"
            );
        }
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * 1024 * 1024 + 1024 * 512), "3.5 MiB");
    }
}
