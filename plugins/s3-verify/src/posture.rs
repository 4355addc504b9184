//! Bucket posture: versioning, replication, object lock, lifecycle, encryption, public access
//! and region, each judged pass or problem with the fix.
//!
//! Split in two on purpose: [`gather`] makes the read-only API calls and reduces their answers to
//! plain [`Facts`]; [`evaluate`] judges the facts against the configuration without any I/O, so
//! every rule (notably lifecycle against retention) is unit-tested without an endpoint.

use aws_sdk_s3::Client;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ExpirationStatus, MfaDeleteStatus, ObjectLockEnabled,
    ReplicationRuleStatus,
};
use backplan_plugin_sdk::PluginResult;
use serde::Serialize;

use crate::aws;
use crate::config::{Config, Destination};
use crate::findings::{Check, Findings};

/// A replication rule, reduced to what the checks need.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct ReplicationRule {
    pub id: String,
    pub enabled: bool,
    /// The key prefix it applies to ("" = every key).
    pub prefix: String,
    /// Also narrowed by tags: it does not cover every key under `prefix`.
    pub tag_filtered: bool,
    pub destination_bucket: String,
    pub destination_account: Option<String>,
    /// Looked up with GetBucketLocation; `None` when that was not allowed.
    pub destination_region: Option<String>,
}

/// A lifecycle rule, reduced to what can delete or demote data.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct LifecycleRule {
    pub id: String,
    pub enabled: bool,
    pub prefix: String,
    pub expiration_days: Option<i64>,
    /// Seconds since the epoch.
    pub expiration_date: Option<i64>,
    pub noncurrent_days: Option<i64>,
    /// Storage classes current versions move to.
    pub transitions: Vec<String>,
}

/// Object lock, when enabled.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct ObjectLock {
    pub enabled: bool,
    pub mode: Option<String>,
    pub retention_days: Option<i64>,
}

impl ObjectLock {
    /// What a bucket's Object Lock configuration says (years of default retention as days).
    pub(crate) fn of(config: &aws_sdk_s3::types::ObjectLockConfiguration) -> Self {
        let retention = config.rule().and_then(|r| r.default_retention());
        ObjectLock {
            enabled: config.object_lock_enabled() == Some(&ObjectLockEnabled::Enabled),
            mode: retention
                .and_then(|r| r.mode())
                .map(|m| m.as_str().to_owned()),
            retention_days: retention.and_then(|r| {
                r.days()
                    .map(i64::from)
                    .or_else(|| r.years().map(|y| i64::from(y) * 365))
            }),
        }
    }
}

/// What the bucket's configuration says.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Facts {
    pub region: String,
    /// `Enabled`, `Suspended`, or `None` (never enabled).
    pub versioning: Option<String>,
    pub mfa_delete: bool,
    /// `None`: no replication configuration.
    pub replication: Option<Vec<ReplicationRule>>,
    /// The account of the replication role (from its ARN): the source account.
    pub replication_account: Option<String>,
    pub lifecycle: Vec<LifecycleRule>,
    /// The default encryption algorithm.
    pub encryption: Option<String>,
    /// BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy, RestrictPublicBuckets.
    pub public_access: Option<[bool; 4]>,
    pub object_lock: Option<ObjectLock>,
}

/// The bucket's region from GetBucketLocation (empty means us-east-1, `EU` eu-west-1).
pub(crate) async fn bucket_region(client: &Client, bucket: &str) -> PluginResult<String> {
    let out = client
        .get_bucket_location()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| aws::error(bucket, "GetBucketLocation", e))?;
    Ok(
        match out.location_constraint().map(|c| c.as_str()).unwrap_or("") {
            "" => "us-east-1".to_owned(),
            "EU" => "eu-west-1".to_owned(),
            other => other.to_owned(),
        },
    )
}

/// Reads the bucket's configuration (all calls in parallel). A configuration that does not exist
/// is a fact (`None`); a denied call is an error naming it.
pub(crate) async fn gather(client: &Client, bucket: &str, region: String) -> PluginResult<Facts> {
    let (versioning, replication, lifecycle, encryption, public_access, object_lock) = tokio::join!(
        client.get_bucket_versioning().bucket(bucket).send(),
        client.get_bucket_replication().bucket(bucket).send(),
        client
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send(),
        client.get_bucket_encryption().bucket(bucket).send(),
        client.get_public_access_block().bucket(bucket).send(),
        client.get_object_lock_configuration().bucket(bucket).send(),
    );
    let mut facts = Facts {
        region,
        ..Facts::default()
    };

    let versioning = versioning.map_err(|e| aws::error(bucket, "GetBucketVersioning", e))?;
    facts.versioning = versioning.status().map(|s| match s {
        BucketVersioningStatus::Enabled => "Enabled".to_owned(),
        other => other.as_str().to_owned(),
    });
    facts.mfa_delete = versioning.mfa_delete() == Some(&MfaDeleteStatus::Enabled);

    match replication {
        Ok(out) => {
            let config = out.replication_configuration();
            facts.replication_account = config.and_then(|c| arn_account(c.role()));
            let rules = config.map(|c| c.rules()).unwrap_or_default();
            let mut reduced = Vec::with_capacity(rules.len());
            for rule in rules {
                let filter = rule.filter();
                #[allow(deprecated)] // the old top-level prefix is still what some buckets have
                let prefix = filter
                    .and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())))
                    .or(rule.prefix())
                    .unwrap_or("");
                let tag_filtered = filter.is_some_and(|f| {
                    f.tag().is_some() || f.and().is_some_and(|a| !a.tags().is_empty())
                });
                let destination = rule.destination();
                reduced.push(ReplicationRule {
                    id: rule.id().unwrap_or("").to_owned(),
                    enabled: rule.status() == &ReplicationRuleStatus::Enabled,
                    prefix: prefix.to_owned(),
                    tag_filtered,
                    destination_bucket: destination
                        .map(|d| d.bucket().trim_start_matches("arn:aws:s3:::").to_owned())
                        .unwrap_or_default(),
                    destination_account: destination.and_then(|d| d.account()).map(str::to_owned),
                    destination_region: None,
                });
            }
            for rule in reduced
                .iter_mut()
                .filter(|r| r.enabled && !r.destination_bucket.is_empty())
            {
                rule.destination_region =
                    bucket_region(client, &rule.destination_bucket).await.ok();
            }
            facts.replication = Some(reduced);
        }
        Err(e) if aws::code(&e) == Some("ReplicationConfigurationNotFoundError") => {}
        Err(e) => return Err(aws::error(bucket, "GetBucketReplication", e)),
    }

    match lifecycle {
        Ok(out) => {
            for rule in out.rules() {
                let filter = rule.filter();
                #[allow(deprecated)]
                let prefix = filter
                    .and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())))
                    .or(rule.prefix())
                    .unwrap_or("");
                facts.lifecycle.push(LifecycleRule {
                    id: rule.id().unwrap_or("").to_owned(),
                    enabled: rule.status() == &ExpirationStatus::Enabled,
                    prefix: prefix.to_owned(),
                    expiration_days: rule.expiration().and_then(|e| e.days()).map(i64::from),
                    expiration_date: rule.expiration().and_then(|e| e.date()).map(|d| d.secs()),
                    noncurrent_days: rule
                        .noncurrent_version_expiration()
                        .and_then(|e| e.noncurrent_days())
                        .map(i64::from),
                    transitions: rule
                        .transitions()
                        .iter()
                        .filter_map(|t| t.storage_class().map(|c| c.as_str().to_owned()))
                        .collect(),
                });
            }
        }
        Err(e) if aws::code(&e) == Some("NoSuchLifecycleConfiguration") => {}
        Err(e) => return Err(aws::error(bucket, "GetBucketLifecycleConfiguration", e)),
    }

    match encryption {
        Ok(out) => {
            facts.encryption = out
                .server_side_encryption_configuration()
                .and_then(|c| c.rules().first())
                .and_then(|r| r.apply_server_side_encryption_by_default())
                .map(|d| d.sse_algorithm().as_str().to_owned());
        }
        Err(e) if aws::code(&e) == Some("ServerSideEncryptionConfigurationNotFoundError") => {}
        Err(e) => return Err(aws::error(bucket, "GetBucketEncryption", e)),
    }

    match public_access {
        Ok(out) => {
            facts.public_access = out.public_access_block_configuration().map(|c| {
                [
                    c.block_public_acls().unwrap_or(false),
                    c.ignore_public_acls().unwrap_or(false),
                    c.block_public_policy().unwrap_or(false),
                    c.restrict_public_buckets().unwrap_or(false),
                ]
            });
        }
        Err(e) if aws::code(&e) == Some("NoSuchPublicAccessBlockConfiguration") => {}
        Err(e) => return Err(aws::error(bucket, "GetPublicAccessBlock", e)),
    }

    match object_lock {
        Ok(out) => {
            facts.object_lock = out.object_lock_configuration().map(ObjectLock::of);
        }
        Err(e) if aws::code(&e) == Some("ObjectLockConfigurationNotFoundError") => {}
        Err(e) => return Err(aws::error(bucket, "GetObjectLockConfiguration", e)),
    }
    Ok(facts)
}

/// The account id in an ARN (`arn:aws:iam::123456789012:role/x`).
fn arn_account(arn: &str) -> Option<String> {
    arn.split(':')
        .nth(4)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
}

/// Whether a rule on `rule_prefix` applies to some keys under `scope` (either contains the other).
fn overlaps(rule_prefix: &str, scope: &str) -> bool {
    scope.starts_with(rule_prefix) || rule_prefix.starts_with(scope)
}

/// Judges the facts. `now` (seconds since the epoch) is a parameter so tests are exact.
pub(crate) fn evaluate(facts: &Facts, config: &Config, now: i64, findings: &mut Findings) {
    let bucket = &config.bucket;
    match facts.versioning.as_deref() {
        Some("Enabled") => findings.pass(Check::Versioning, "versioning is enabled"),
        state => findings.push_problem(
            Check::Versioning,
            config.severity(Check::Versioning),
            format!(
                "versioning is {}: an overwrite or delete loses the only copy",
                state.map_or("not enabled".to_owned(), |s| s.to_lowercase())
            ),
            format!("aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled"),
        ),
    }
    if config.require_mfa_delete {
        if facts.mfa_delete {
            findings.pass(Check::MfaDelete, "MFA delete is enabled");
        } else {
            findings.push_problem(
                Check::MfaDelete,
                config.severity(Check::MfaDelete),
                "MFA delete is not enabled",
                "as the root user: put-bucket-versioning with MFADelete=Enabled and --mfa",
            );
        }
    }

    replication(facts, config, findings);
    object_lock(facts, config, findings);

    let problems = lifecycle_problems(
        &facts.lifecycle,
        &config.scopes(),
        config.min_retention_days,
        now,
    );
    if problems.is_empty() {
        findings.pass(
            Check::Lifecycle,
            format!(
                "no lifecycle rule expires versions sooner than {} days",
                config.min_retention_days
            ),
        );
    }
    for problem in problems {
        findings.push_problem(
            Check::Lifecycle,
            config.severity(Check::Lifecycle),
            problem,
            format!(
                "lengthen or narrow the rule to at least {} days (get-bucket-lifecycle-configuration / put-bucket-lifecycle-configuration)",
                config.min_retention_days
            ),
        );
    }
    for rule in facts.lifecycle.iter().filter(|r| r.enabled) {
        for class in rule.transitions.iter().filter(|c| is_low_redundancy(c)) {
            findings.push_problem(
                Check::LowRedundancy,
                config.severity(Check::LowRedundancy),
                format!(
                    "lifecycle rule `{}` moves objects to {class}, kept in one availability zone",
                    rule.id
                ),
                "transition to STANDARD_IA, INTELLIGENT_TIERING or GLACIER instead",
            );
        }
    }

    match &facts.encryption {
        Some(algorithm) => findings.pass(Check::Encryption, format!("default encryption is {algorithm}")),
        None => findings.push_problem(
            Check::Encryption,
            config.severity(Check::Encryption),
            "no default encryption is configured",
            format!("aws s3api put-bucket-encryption --bucket {bucket} with SSEAlgorithm AES256 or aws:kms"),
        ),
    }

    match facts.public_access {
        Some(flags) if flags.iter().all(|f| *f) => {
            findings.pass(Check::PublicAccess, "all four public-access blocks are on")
        }
        flags => findings.push_problem(
            Check::PublicAccess,
            config.severity(Check::PublicAccess),
            match flags {
                None => "no public-access block is configured".to_owned(),
                Some(flags) => {
                    let names = ["BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"];
                    let off: Vec<_> = names.iter().zip(flags).filter(|(_, on)| !on).map(|(n, _)| *n).collect();
                    format!("public-access block is off for {}", off.join(", "))
                }
            },
            format!("aws s3api put-public-access-block --bucket {bucket} --public-access-block-configuration BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true"),
        ),
    }

    match &config.expected_region {
        Some(expected) if expected != &facts.region => findings.push_problem(
            Check::Region,
            config.severity(Check::Region),
            format!("the bucket is in {}, not {expected}", facts.region),
            "point the plan at the right bucket, or correct `expected_region`",
        ),
        _ => findings.pass(Check::Region, format!("the bucket is in {}", facts.region)),
    }
}

fn replication(facts: &Facts, config: &Config, findings: &mut Findings) {
    let required = config.replication.required;
    let severity = config.severity(Check::Replication);
    let fix = "put-bucket-replication with an enabled rule whose filter covers the prefixes in use, to a bucket in another region";
    let Some(rules) = &facts.replication else {
        if required {
            findings.push_problem(
                Check::Replication,
                severity,
                "no replication is configured: the bucket is the only copy",
                fix,
            );
        } else {
            findings.pass(Check::Replication, "no replication (not required)");
        }
        return;
    };
    let enabled: Vec<&ReplicationRule> = rules.iter().filter(|r| r.enabled).collect();
    if enabled.is_empty() {
        if required {
            findings.push_problem(
                Check::Replication,
                severity,
                "replication is configured but every rule is disabled",
                fix,
            );
        } else {
            findings.pass(
                Check::Replication,
                "replication rules are all disabled (not required)",
            );
        }
        return;
    }
    let mut problems = Vec::new();
    for scope in config.scopes() {
        let covered = enabled
            .iter()
            .any(|r| !r.tag_filtered && scope.starts_with(r.prefix.as_str()));
        if !covered {
            problems.push(format!(
                "no enabled replication rule covers every key under `{}`",
                if scope.is_empty() {
                    "(the whole bucket)"
                } else {
                    &scope
                }
            ));
        }
    }
    for rule in &enabled {
        let other_region = rule.destination_region.as_ref().map(|r| r != &facts.region);
        let other_account = match (&rule.destination_account, &facts.replication_account) {
            (Some(dest), Some(source)) => Some(dest != source),
            (Some(_), None) => Some(true),
            (None, _) => Some(false),
        };
        let ok = match config.replication.destination {
            Destination::Any => Some(true),
            Destination::OtherRegion => other_region,
            Destination::OtherAccount => other_account,
            Destination::OtherRegionOrAccount => match (other_region, other_account) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (None, _) => None,
                _ => Some(false),
            },
        };
        match ok {
            Some(true) => {}
            Some(false) => problems.push(format!(
                "rule `{}` replicates to `{}` in {}{}, which does not satisfy destination = {:?}",
                rule.id,
                rule.destination_bucket,
                rule.destination_region.as_deref().unwrap_or("an unknown region"),
                rule.destination_account.as_ref().map_or(String::new(), |a| format!(" (account {a})")),
                config.replication.destination,
            )),
            None => problems.push(format!(
                "the region of replication destination `{}` could not be read (GetBucketLocation denied or the bucket is missing)",
                rule.destination_bucket
            )),
        }
    }
    if problems.is_empty() {
        let destinations: Vec<String> = enabled
            .iter()
            .map(|r| {
                format!(
                    "{} ({})",
                    r.destination_bucket,
                    r.destination_region.as_deref().unwrap_or("?")
                )
            })
            .collect();
        findings.pass(
            Check::Replication,
            format!("replicated to {}", destinations.join(", ")),
        );
    } else if required {
        for problem in problems {
            findings.push_problem(Check::Replication, severity, problem, fix);
        }
    } else {
        findings.pass(
            Check::Replication,
            format!("not required; {}", problems.join("; ")),
        );
    }
}

fn object_lock(facts: &Facts, config: &Config, findings: &mut Findings) {
    let lock = facts.object_lock.as_ref().filter(|l| l.enabled);
    let retention = lock.and_then(|l| l.retention_days);
    match (lock, retention) {
        (Some(l), Some(days)) => {
            let message = format!("object lock is on, default retention {} {days} days", l.mode.as_deref().unwrap_or(""));
            if days < i64::from(config.min_retention_days) && config.require_object_lock {
                findings.push_problem(
                    Check::ObjectLock,
                    config.severity(Check::ObjectLock),
                    format!("{message}, shorter than min_retention_days = {}", config.min_retention_days),
                    "put-object-lock-configuration with a longer default retention",
                );
            } else {
                findings.pass(Check::ObjectLock, message);
            }
        }
        _ if !config.require_object_lock => findings.pass(Check::ObjectLock, "no object lock default retention (not required)"),
        (Some(_), None) => findings.push_problem(
            Check::ObjectLock,
            config.severity(Check::ObjectLock),
            "object lock is on but has no default retention: new objects are not protected",
            "put-object-lock-configuration with Rule.DefaultRetention (Mode and Days)",
        ),
        (None, _) => findings.push_problem(
            Check::ObjectLock,
            config.severity(Check::ObjectLock),
            "object lock is not enabled",
            "object lock can only be enabled with versioning; enable it (put-object-lock-configuration) and set a default retention",
        ),
    }
}

/// Storage classes kept in a single availability zone (or with reduced durability).
pub(crate) fn is_low_redundancy(class: &str) -> bool {
    matches!(
        class,
        "REDUCED_REDUNDANCY" | "ONEZONE_IA" | "EXPRESS_ONEZONE"
    )
}

/// Enabled lifecycle rules touching a prefix in use that expire current or noncurrent versions
/// within `min_days`, one line each.
pub(crate) fn lifecycle_problems(
    rules: &[LifecycleRule],
    scopes: &[String],
    min_days: u32,
    now: i64,
) -> Vec<String> {
    let min_days = i64::from(min_days);
    let mut problems = Vec::new();
    for rule in rules.iter().filter(|r| r.enabled) {
        if !scopes.iter().any(|s| overlaps(&rule.prefix, s)) {
            continue;
        }
        let on = if rule.prefix.is_empty() {
            "every key".to_owned()
        } else {
            format!("keys under `{}`", rule.prefix)
        };
        if let Some(days) = rule.expiration_days.filter(|d| *d < min_days) {
            problems.push(format!(
                "lifecycle rule `{}` expires current versions of {on} after {days} days (< {min_days})",
                rule.id
            ));
        }
        if let Some(date) = rule
            .expiration_date
            .filter(|d| *d < now + min_days * 86_400)
        {
            let days = (date - now).div_euclid(86_400);
            problems.push(format!(
                "lifecycle rule `{}` expires current versions of {on} on a date {}",
                rule.id,
                if days < 0 {
                    "already past".to_owned()
                } else {
                    format!("{days} days away (< {min_days})")
                }
            ));
        }
        if let Some(days) = rule.noncurrent_days.filter(|d| *d < min_days) {
            problems.push(format!(
                "lifecycle rule `{}` deletes noncurrent versions of {on} after {days} days (< {min_days})",
                rule.id
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn rule(prefix: &str) -> LifecycleRule {
        LifecycleRule {
            id: "r".into(),
            enabled: true,
            prefix: prefix.into(),
            ..LifecycleRule::default()
        }
    }

    fn config(json: serde_json::Value) -> Config {
        let mut base = serde_json::json!({"bucket": "b"});
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn lifecycle_rules_shorter_than_retention_are_problems() {
        let scopes = vec!["artifacts/".to_owned()];
        let short = LifecycleRule {
            expiration_days: Some(7),
            ..rule("")
        };
        let long = LifecycleRule {
            expiration_days: Some(90),
            noncurrent_days: Some(30),
            ..rule("")
        };
        let noncurrent = LifecycleRule {
            noncurrent_days: Some(3),
            ..rule("artifacts/old/")
        };
        let elsewhere = LifecycleRule {
            expiration_days: Some(1),
            ..rule("tmp/")
        };
        let disabled = LifecycleRule {
            enabled: false,
            expiration_days: Some(1),
            ..rule("")
        };
        let dated = LifecycleRule {
            expiration_date: Some(NOW + 5 * 86_400),
            ..rule("artifacts/")
        };
        let problems = lifecycle_problems(
            &[short, long, noncurrent, elsewhere, disabled, dated],
            &scopes,
            30,
            NOW,
        );
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("current versions of every key after 7 days"));
        assert!(
            problems[1].contains("noncurrent versions of keys under `artifacts/old/` after 3 days")
        );
        assert!(problems[2].contains("5 days away"));
    }

    #[test]
    fn exactly_the_minimum_is_enough() {
        let rules = [LifecycleRule {
            expiration_days: Some(30),
            noncurrent_days: Some(30),
            ..rule("")
        }];
        assert!(lifecycle_problems(&rules, &[String::new()], 30, NOW).is_empty());
    }

    fn good_facts() -> Facts {
        Facts {
            region: "us-east-1".into(),
            versioning: Some("Enabled".into()),
            replication: Some(vec![ReplicationRule {
                id: "all".into(),
                enabled: true,
                destination_bucket: "replica".into(),
                destination_region: Some("eu-west-1".into()),
                ..ReplicationRule::default()
            }]),
            encryption: Some("AES256".into()),
            public_access: Some([true; 4]),
            ..Facts::default()
        }
    }

    fn statuses(facts: &Facts, config: &Config) -> Vec<(Check, crate::findings::Status)> {
        let mut findings = Findings::default();
        evaluate(facts, config, NOW, &mut findings);
        findings.0.iter().map(|f| (f.check, f.status)).collect()
    }

    #[test]
    fn a_well_configured_bucket_passes_everything() {
        let all = statuses(&good_facts(), &config(serde_json::json!({})));
        assert!(
            all.iter().all(|(_, s)| *s == crate::findings::Status::Pass),
            "{all:?}"
        );
    }

    #[test]
    fn each_missing_protection_is_its_own_finding() {
        use crate::findings::Status::*;
        let facts = Facts {
            region: "us-east-1".into(),
            ..Facts::default()
        };
        let all = statuses(
            &facts,
            &config(serde_json::json!({"require_object_lock": true})),
        );
        for expected in [
            (Check::Versioning, Fail),
            (Check::Replication, Fail),
            (Check::ObjectLock, Fail),
            (Check::Encryption, Warn),
            (Check::PublicAccess, Warn),
        ] {
            assert!(all.contains(&expected), "{expected:?} missing from {all:?}");
        }
    }

    #[test]
    fn replication_must_cover_the_prefixes_and_leave_the_region() {
        let mut facts = good_facts();
        let rules = facts.replication.as_mut().unwrap();
        rules[0].prefix = "logs/".into();
        rules[0].destination_region = Some("us-east-1".into());
        let mut findings = Findings::default();
        evaluate(
            &facts,
            &config(serde_json::json!({"prefixes": ["artifacts/", "logs/x/"]})),
            NOW,
            &mut findings,
        );
        let lines: Vec<String> = findings
            .0
            .iter()
            .filter(|f| f.check == Check::Replication)
            .map(|f| f.message.clone())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("`artifacts/`"));
        assert!(lines[1].contains("in us-east-1"));
        // Same region is fine when any destination is accepted.
        let any = config(
            serde_json::json!({"prefixes": ["logs/"], "replication": {"destination": "any"}}),
        );
        assert!(
            statuses(&facts, &any)
                .iter()
                .all(|(_, s)| *s == crate::findings::Status::Pass)
        );
    }

    #[test]
    fn region_and_arn_helpers() {
        assert_eq!(
            arn_account("arn:aws:iam::123456789012:role/r").as_deref(),
            Some("123456789012")
        );
        assert_eq!(arn_account("nonsense"), None);
        let facts = good_facts();
        let wrong = config(serde_json::json!({"expected_region": "eu-central-1"}));
        assert!(statuses(&facts, &wrong).contains(&(Check::Region, crate::findings::Status::Fail)));
    }
}
