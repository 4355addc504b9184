//! The buckets that hold the backups themselves (nfs-objects repositories, the S3 catalog): is
//! what a compromised machine holding the backup's credentials could delete protected?
//!
//! Ransomware deletes backups first. For each `backup_buckets` entry the step reads the bucket's
//! Object Lock configuration (on? default retention mode and days), its versioning and MFA
//! delete, and judges them like the checked bucket's posture: split into [`gather`] (read-only
//! calls) and [`evaluate`] (no I/O, unit-tested). A bucket that cannot be read is a finding, not
//! an error: the checked bucket's own checks still run.

use aws_sdk_s3::types::{BucketVersioningStatus, MfaDeleteStatus};
use backplan_aws::SdkConfig;
use serde::Serialize;

use crate::aws;
use crate::config::Config;
use crate::findings::{Check, Findings};
use crate::posture::{self, ObjectLock};

/// `s3://bucket[/prefix]`, split; `None` when it is not such an address.
pub(crate) fn parse(address: &str) -> Option<(String, String)> {
    let rest = address.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

/// What one backup bucket's configuration says, for the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Posture {
    /// As configured, `s3://bucket/prefix`.
    pub location: String,
    pub bucket: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `Enabled`, `Suspended`, or `None` (never enabled).
    pub versioning: Option<String>,
    pub mfa_delete: bool,
    pub object_lock: Option<ObjectLock>,
    /// Why the configuration could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads the posture of the bucket of `location` (region, versioning, Object Lock).
pub(crate) async fn gather(sdk: &SdkConfig, config: &Config, location: &str) -> Posture {
    let (bucket, _) = parse(location).unwrap_or_default();
    let mut posture = Posture {
        location: location.to_owned(),
        bucket: bucket.clone(),
        ..Posture::default()
    };
    if let Err(err) = read(sdk, config, &mut posture).await {
        posture.error = Some(err.message);
    }
    posture
}

async fn read(
    sdk: &SdkConfig,
    config: &Config,
    posture: &mut Posture,
) -> backplan_plugin_sdk::PluginResult<()> {
    let bucket = posture.bucket.clone();
    let first = aws::client(sdk, config, None);
    let region = posture::bucket_region(&first, &bucket).await?;
    let client = aws::client(sdk, config, Some(&region));
    posture.region = Some(region);
    let (versioning, lock) = tokio::join!(
        client.get_bucket_versioning().bucket(&bucket).send(),
        client
            .get_object_lock_configuration()
            .bucket(&bucket)
            .send(),
    );
    let versioning = versioning.map_err(|e| aws::error(&bucket, "GetBucketVersioning", e))?;
    posture.versioning = versioning.status().map(|s| match s {
        BucketVersioningStatus::Enabled => "Enabled".to_owned(),
        other => other.as_str().to_owned(),
    });
    posture.mfa_delete = versioning.mfa_delete() == Some(&MfaDeleteStatus::Enabled);
    match lock {
        Ok(out) => posture.object_lock = out.object_lock_configuration().map(ObjectLock::of),
        Err(e) if aws::code(&e) == Some("ObjectLockConfigurationNotFoundError") => {}
        Err(e) => return Err(aws::error(&bucket, "GetObjectLockConfiguration", e)),
    }
    Ok(())
}

/// Judges one backup bucket's posture: findings of check `backup_bucket`, each naming it.
pub(crate) fn evaluate(posture: &Posture, config: &Config, findings: &mut Findings) {
    let severity = config.severity(Check::BackupBucket);
    let at = &posture.location;
    let bucket = &posture.bucket;
    if let Some(error) = &posture.error {
        findings.push_problem(
            Check::BackupBucket,
            severity,
            format!("backup bucket {at}: its configuration could not be read: {error}"),
            "allow s3:GetBucketVersioning, s3:GetBucketObjectLockConfiguration and \
             s3:GetBucketLocation on it",
        );
        return;
    }
    let lock = posture.object_lock.as_ref().filter(|l| l.enabled);
    match (lock, lock.and_then(|l| l.retention_days)) {
        (Some(l), Some(days)) => findings.pass(
            Check::BackupBucket,
            format!(
                "backup bucket {at}: object lock is on, default retention {} {days} days",
                l.mode.as_deref().unwrap_or("")
            ),
        ),
        (Some(_), None) => findings.pass(
            Check::BackupBucket,
            format!(
                "backup bucket {at}: object lock is on, no default retention (each object \
                 carries its own, as nfs-objects `object_lock` sets)"
            ),
        ),
        (None, _) if config.require_backup_object_lock => findings.push_problem(
            Check::BackupBucket,
            severity,
            format!(
                "backup bucket {at}: object lock is not enabled: whoever holds the backup's \
                 credentials can delete the backups"
            ),
            format!(
                "enable versioning, then `aws s3api put-object-lock-configuration --bucket \
                 {bucket} --object-lock-configuration ObjectLockEnabled=Enabled`, and set \
                 nfs-objects `object_lock` (or a default retention)"
            ),
        ),
        (None, _) => findings.pass(
            Check::BackupBucket,
            format!("backup bucket {at}: object lock is not enabled (not required)"),
        ),
    }
    match posture.versioning.as_deref() {
        Some("Enabled") => findings.pass(
            Check::BackupBucket,
            format!(
                "backup bucket {at}: versioning is enabled, MFA delete {}",
                if posture.mfa_delete { "on" } else { "off" }
            ),
        ),
        state => findings.push_problem(
            Check::BackupBucket,
            severity,
            format!(
                "backup bucket {at}: versioning is {}: an overwrite or delete loses the only copy",
                state.map_or("not enabled".to_owned(), |s| s.to_lowercase())
            ),
            format!(
                "aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration \
                 Status=Enabled"
            ),
        ),
    }
    if config.require_mfa_delete && !posture.mfa_delete {
        findings.push_problem(
            Check::BackupBucket,
            severity,
            format!("backup bucket {at}: MFA delete is not enabled"),
            "as the root user: put-bucket-versioning with MFADelete=Enabled and --mfa",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Status;

    fn config(json: serde_json::Value) -> Config {
        serde_json::from_value(json).unwrap()
    }

    fn statuses(posture: &Posture, config: &Config) -> Vec<(Status, String)> {
        let mut findings = Findings::default();
        evaluate(posture, config, &mut findings);
        findings
            .0
            .into_iter()
            .map(|f| (f.status, f.message))
            .collect()
    }

    fn posture(lock: Option<ObjectLock>, versioning: Option<&str>) -> Posture {
        Posture {
            location: "s3://vault/artifacts".into(),
            bucket: "vault".into(),
            region: Some("us-east-1".into()),
            versioning: versioning.map(str::to_owned),
            mfa_delete: false,
            object_lock: lock,
            error: None,
        }
    }

    #[test]
    fn a_backup_bucket_without_object_lock_fails_unless_not_required() {
        let required =
            config(serde_json::json!({"bucket": "b", "backup_buckets": ["s3://vault/artifacts"]}));
        let found = statuses(&posture(None, Some("Enabled")), &required);
        assert_eq!(found[0].0, Status::Fail, "{found:?}");
        assert!(
            found[0]
                .1
                .contains("backup bucket s3://vault/artifacts: object lock is not enabled")
        );
        assert_eq!(
            found[1],
            (
                Status::Pass,
                "backup bucket s3://vault/artifacts: versioning is enabled, MFA delete off".into()
            )
        );
        let optional =
            config(serde_json::json!({"bucket": "b", "require_backup_object_lock": false}));
        assert_eq!(
            statuses(&posture(None, Some("Enabled")), &optional)[0].0,
            Status::Pass
        );
    }

    #[test]
    fn a_locked_backup_bucket_reports_its_default_retention_and_versioning() {
        let c = config(serde_json::json!({"bucket": "b", "require_mfa_delete": true}));
        let lock = ObjectLock {
            enabled: true,
            mode: Some("COMPLIANCE".into()),
            retention_days: Some(30),
        };
        let found = statuses(&posture(Some(lock), Some("Enabled")), &c);
        assert_eq!(
            found[0],
            (Status::Pass, "backup bucket s3://vault/artifacts: object lock is on, default retention COMPLIANCE 30 days".into())
        );
        assert_eq!(
            found[2].0,
            Status::Fail,
            "MFA delete is required: {found:?}"
        );
        let no_default = ObjectLock {
            enabled: true,
            ..ObjectLock::default()
        };
        let found = statuses(&posture(Some(no_default), Some("Suspended")), &c);
        assert!(found[0].1.contains("no default retention"), "{found:?}");
        assert_eq!(found[1].0, Status::Fail);
        assert!(found[1].1.contains("versioning is suspended"));
    }

    #[test]
    fn an_unreadable_backup_bucket_is_a_finding_naming_it() {
        let c = config(serde_json::json!({"bucket": "b"}));
        let unreadable = Posture {
            error: Some("bucket `gone` does not exist".into()),
            location: "s3://gone".into(),
            ..Posture::default()
        };
        let found = statuses(&unreadable, &c);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Status::Fail);
        assert!(found[0].1.contains("s3://gone"), "{found:?}");
    }

    #[test]
    fn backup_bucket_addresses_are_s3_urls() {
        assert_eq!(parse("s3://b/p/q/"), Some(("b".into(), "p/q".into())));
        assert_eq!(parse("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse("s3:///p"), None);
        assert_eq!(parse("b/p"), None);
    }
}
