//! The step's `config` table, and the defaults that make a bare `bucket = "..."` a useful check.
//!
//! Kept apart from the checks so that the schema `backplan plugins info` shows is one readable
//! file, and so that the checks receive already-resolved values (severities, sample sizes) rather
//! than re-deciding defaults each time.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::findings::{Check, Severity};

/// The most objects a sample may pick.
pub(crate) const MAX_SAMPLE: u64 = 1_000_000;
/// The most prefixes a step may list.
pub(crate) const MAX_PREFIXES: usize = 1_000;
/// The most keys `expected_keys` may name (a longer list belongs in `expected_manifest`).
pub(crate) const MAX_EXPECTED_KEYS: usize = 100_000;
/// The most parallel S3 requests.
pub(crate) const MAX_CONCURRENCY: usize = 1_024;
/// The most buckets `backup_buckets` may name.
pub(crate) const MAX_BACKUP_BUCKETS: usize = 100;
/// A century, the longest retention a bucket is checked for.
pub(crate) const MAX_DAYS: u32 = 36_500;
/// Ten years, the longest a replication may stay pending.
pub(crate) const MAX_HOURS: u64 = 87_600;

/// How many objects to pick: a fixed number or a share of the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Sample {
    /// At most this many objects (`{ count = 100 }`), at most a million: each one is kept in
    /// memory until the listing ends.
    Count(#[schemars(range(max = MAX_SAMPLE))] u64),
    /// This share of the objects, in [0, 1] (`{ fraction = 0.01 }`), at most a million of them.
    Fraction(#[schemars(range(min = 0.0, max = 1.0))] f64),
}

/// Where replicas must live for the replication check to pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Destination {
    /// Another region than the bucket's (the default: survives a regional outage).
    #[default]
    OtherRegion,
    /// Another AWS account (survives a compromised account).
    OtherAccount,
    /// Another region or another account.
    OtherRegionOrAccount,
    /// Anywhere (same-region replication is enough).
    Any,
}

/// The `[steps.config.replication]` table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplicationConfig {
    /// Whether the bucket must replicate (default true).
    #[serde(default = "yes")]
    pub required: bool,
    /// Where the replicas must live (default `other-region`).
    #[serde(default)]
    pub destination: Destination,
    /// A sampled object whose replication is still PENDING after this many hours is a finding
    /// (default 24).
    #[serde(default = "default_pending_hours")]
    #[schemars(range(max = MAX_HOURS))]
    pub pending_hours: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            required: true,
            destination: Destination::default(),
            pending_hours: default_pending_hours(),
        }
    }
}

/// The step's `config` table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The bucket to check.
    #[schemars(length(min = 1, max = 255))]
    pub bucket: String,
    /// Key prefixes in use (default: the whole bucket). Listing, sampling and the replication and
    /// lifecycle coverage checks are limited to these.
    #[serde(default)]
    #[schemars(length(max = MAX_PREFIXES), inner(length(min = 1)))]
    pub prefixes: Vec<String>,
    /// Region of the client (default: the environment's; the bucket's own region is looked up
    /// and used after that).
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// The region the bucket must be in; another region is a `region` finding.
    #[schemars(length(min = 1, max = 64))]
    pub expected_region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`). Default: on when an endpoint is set through
    /// `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (local S3 stand-ins need it), off otherwise.
    pub force_path_style: Option<bool>,
    /// Objects must be kept at least this many days: lifecycle rules that expire current or
    /// noncurrent versions sooner are `lifecycle` findings (default 30).
    #[serde(default = "default_min_retention_days")]
    #[schemars(range(max = MAX_DAYS))]
    pub min_retention_days: u32,
    /// MFA delete must be enabled (default false).
    #[serde(default)]
    pub require_mfa_delete: bool,
    /// Object lock with a default retention must be configured (default false).
    #[serde(default)]
    pub require_object_lock: bool,
    /// The buckets holding the backups themselves (nfs-objects repositories, the S3 catalog),
    /// as `s3://bucket/prefix`: their object lock (default retention mode and days),
    /// versioning and MFA delete are reported as `backup_bucket` findings.
    #[serde(default)]
    #[schemars(length(max = MAX_BACKUP_BUCKETS), inner(length(min = 6)))]
    pub backup_buckets: Vec<String>,
    /// Object lock must be enabled on every `backup_buckets` bucket (default true: a backup
    /// that the machine's own credentials can delete does not survive ransomware).
    #[serde(default = "yes")]
    pub require_backup_object_lock: bool,
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Objects read in full and checked against their stored checksum (default `{ count = 20 }`).
    pub sample: Option<Sample>,
    /// Objects whose replication status is looked up with HeadObject (default
    /// `{ count = 200 }`); the read sample's objects are always included.
    pub status_sample: Option<Sample>,
    /// Seed of the sampling (default: derived from the run id, so each run looks at other objects
    /// and a run can be reproduced with the seed recorded in its record).
    pub seed: Option<u64>,
    /// Keys that must exist.
    #[serde(default)]
    #[schemars(length(max = MAX_EXPECTED_KEYS), inner(length(min = 1, max = 1024)))]
    pub expected_keys: Vec<String>,
    /// A local file with one key per line that must exist (blank lines and `#` comments skipped).
    #[schemars(length(min = 1))]
    pub expected_manifest: Option<PathBuf>,
    /// A fall in object count or bytes since the last run larger than this is a `count_drop`
    /// finding (default 10).
    #[serde(default = "default_max_drop_percent")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_drop_percent: f64,
    /// Checks whose problems fail the step (shortcut for `severity = { CHECK = "fail" }`).
    #[serde(default)]
    pub fail_on: Vec<Check>,
    /// Per-check severity of a problem: `fail`, `warn` or `ignore`.
    #[serde(default)]
    pub severity: BTreeMap<Check, Severity>,
    /// Parallel S3 requests (default 32).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = MAX_CONCURRENCY))]
    pub concurrency: usize,
}

fn yes() -> bool {
    true
}
fn default_pending_hours() -> u64 {
    24
}
fn default_min_retention_days() -> u32 {
    30
}
fn default_max_drop_percent() -> f64 {
    10.0
}
fn default_concurrency() -> usize {
    32
}

/// Reads before checking anything: no sample by default would prove nothing about integrity.
pub(crate) const DEFAULT_SAMPLE: Sample = Sample::Count(20);
/// Replication-status lookups (HeadObject) are cheap: look at more objects than are read.
pub(crate) const DEFAULT_STATUS_SAMPLE: Sample = Sample::Count(200);

impl Config {
    /// The severity a problem of `check` has under this configuration.
    pub(crate) fn severity(&self, check: Check) -> Severity {
        if self.fail_on.contains(&check) {
            return Severity::Fail;
        }
        self.severity
            .get(&check)
            .copied()
            .unwrap_or_else(|| check.default_severity())
    }

    /// The prefixes to list: the configured ones, or the whole bucket.
    pub(crate) fn scopes(&self) -> Vec<String> {
        if self.prefixes.is_empty() {
            vec![String::new()]
        } else {
            self.prefixes.clone()
        }
    }

    /// Rejects values the schema cannot express.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.bucket.trim().is_empty() {
            return Err("`bucket` is empty".into());
        }
        if self.prefixes.iter().any(|p| p.is_empty()) {
            return Err(
                "`prefixes` holds an empty prefix (leave `prefixes` out for the whole bucket)"
                    .into(),
            );
        }
        for (name, sample) in [
            ("sample", self.sample),
            ("status_sample", self.status_sample),
        ] {
            if let Some(Sample::Fraction(f)) = sample
                && !(0.0..=1.0).contains(&f)
            {
                return Err(format!(
                    "`{name}.fraction` must be between 0 and 1, not {f}"
                ));
            }
        }
        if self.max_drop_percent.is_nan() || self.max_drop_percent < 0.0 {
            return Err("`max_drop_percent` must be 0 or more".into());
        }
        if let Some(bad) = self
            .backup_buckets
            .iter()
            .find(|b| crate::backup_buckets::parse(b).is_none())
        {
            return Err(format!(
                "`backup_buckets` holds {bad:?}: each one is an s3://bucket/prefix address"
            ));
        }
        if self.concurrency == 0 {
            return Err("`concurrency` must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Config {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_bare_bucket_gets_the_documented_defaults() {
        let c = parse(serde_json::json!({"bucket": "b"}));
        assert_eq!(c.min_retention_days, 30);
        assert!(c.replication.required);
        assert_eq!(c.replication.destination, Destination::OtherRegion);
        assert_eq!(c.scopes(), vec![String::new()]);
        assert_eq!(c.severity(Check::Versioning), Severity::Fail);
        assert_eq!(c.severity(Check::PublicAccess), Severity::Warn);
        c.validate().unwrap();
    }

    #[test]
    fn fail_on_and_overrides_change_severity() {
        let c = parse(serde_json::json!({
            "bucket": "b",
            "fail_on": ["public_access"],
            "severity": {"versioning": "warn", "encryption": "ignore", "public_access": "ignore"},
            "sample": {"fraction": 0.5},
        }));
        assert_eq!(c.severity(Check::PublicAccess), Severity::Fail);
        assert_eq!(c.severity(Check::Versioning), Severity::Warn);
        assert_eq!(c.severity(Check::Encryption), Severity::Ignore);
        assert_eq!(c.sample, Some(Sample::Fraction(0.5)));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(
            serde_json::from_value::<Config>(serde_json::json!({"bucket": "b", "smaple": {}}))
                .is_err()
        );
        let c = parse(serde_json::json!({"bucket": "b", "sample": {"fraction": 2.0}}));
        assert!(c.validate().unwrap_err().contains("sample.fraction"));
        let c = parse(serde_json::json!({"bucket": "b", "backup_buckets": ["vault/artifacts"]}));
        assert!(c.validate().unwrap_err().contains("s3://bucket/prefix"));
    }
}
