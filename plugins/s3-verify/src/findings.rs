//! What the checks found, and what that means for the step.
//!
//! Every check reports a [`Finding`]: pass, or a problem with a one-line reason and the fix.
//! Checks never decide themselves whether a problem fails the step: the configured severity of
//! its [`Check`] does, in one place ([`Findings::push_problem`]), so `fail_on` and overrides work
//! the same for every check.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The checks, by the names plans use in `fail_on` and `severity`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Check {
    /// Versioning is enabled.
    Versioning,
    /// MFA delete is enabled (only when required).
    MfaDelete,
    /// Replication is configured, enabled, covers the prefixes in use, lands elsewhere.
    Replication,
    /// Object lock with a default retention (only when required).
    ObjectLock,
    /// The buckets holding backups (`backup_buckets`): object lock, versioning, MFA delete.
    BackupBucket,
    /// No lifecycle rule expires versions sooner than `min_retention_days`.
    Lifecycle,
    /// Default encryption is configured.
    Encryption,
    /// All four public-access blocks are on.
    PublicAccess,
    /// The bucket is in the expected region.
    Region,
    /// Objects in storage classes kept in one availability zone.
    LowRedundancy,
    /// Sampled objects whose replication FAILED or stays PENDING.
    ReplicationStatus,
    /// A sampled object's content does not match its stored checksum.
    Checksum,
    /// A sampled object has no checksum that can be verified.
    Unverifiable,
    /// An expected key is missing.
    Expected,
    /// Fewer objects or bytes than the last run, beyond `max_drop_percent`.
    CountDrop,
}

impl Check {
    /// The name used in plans and records.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Check::Versioning => "versioning",
            Check::MfaDelete => "mfa_delete",
            Check::Replication => "replication",
            Check::ObjectLock => "object_lock",
            Check::BackupBucket => "backup_bucket",
            Check::Lifecycle => "lifecycle",
            Check::Encryption => "encryption",
            Check::PublicAccess => "public_access",
            Check::Region => "region",
            Check::LowRedundancy => "low_redundancy",
            Check::ReplicationStatus => "replication_status",
            Check::Checksum => "checksum",
            Check::Unverifiable => "unverifiable",
            Check::Expected => "expected",
            Check::CountDrop => "count_drop",
        }
    }

    /// How serious a problem is unless the plan says otherwise: what loses data or redundancy
    /// fails, hardening and things that may be deliberate warn.
    pub(crate) fn default_severity(self) -> Severity {
        match self {
            Check::Versioning
            | Check::MfaDelete
            | Check::Replication
            | Check::ObjectLock
            | Check::BackupBucket
            | Check::Lifecycle
            | Check::Region
            | Check::Checksum
            | Check::Expected
            | Check::CountDrop => Severity::Fail,
            Check::Encryption
            | Check::PublicAccess
            | Check::LowRedundancy
            | Check::ReplicationStatus
            | Check::Unverifiable => Severity::Warn,
        }
    }
}

/// How much a problem matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Severity {
    /// The step fails.
    Fail,
    /// The step succeeds with a warning.
    Warn,
    /// Recorded as ignored; no warning.
    Ignore,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Pass,
    Warn,
    Fail,
    Ignored,
}

/// One line of the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Finding {
    pub check: Check,
    pub status: Status,
    /// What was seen, in one line.
    pub message: String,
    /// What to do about it (problems only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    /// `check: message (fix: ...)`, for warnings and error details.
    pub(crate) fn line(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}: {} — fix: {fix}", self.check.as_str(), self.message),
            None => format!("{}: {}", self.check.as_str(), self.message),
        }
    }
}

/// Counts of findings per status, for the record and the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tally {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub ignored: usize,
}

/// All findings of one run, in the order the checks ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Findings(pub Vec<Finding>);

impl Findings {
    /// Records a check that passed.
    pub(crate) fn pass(&mut self, check: Check, message: impl Into<String>) {
        self.0.push(Finding {
            check,
            status: Status::Pass,
            message: message.into(),
            fix: None,
        });
    }

    /// Records a problem; `severity` (from the configuration) decides its status.
    pub(crate) fn push_problem(
        &mut self,
        check: Check,
        severity: Severity,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Finding {
            check,
            status: match severity {
                Severity::Fail => Status::Fail,
                Severity::Warn => Status::Warn,
                Severity::Ignore => Status::Ignored,
            },
            message: message.into(),
            fix: Some(fix.into()),
        });
    }

    /// Counts per status.
    pub(crate) fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for finding in &self.0 {
            match finding.status {
                Status::Pass => tally.pass += 1,
                Status::Warn => tally.warn += 1,
                Status::Fail => tally.fail += 1,
                Status::Ignored => tally.ignored += 1,
            }
        }
        tally
    }

    /// The findings with `status`.
    pub(crate) fn with_status(&self, status: Status) -> impl Iterator<Item = &Finding> {
        self.0.iter().filter(move |f| f.status == status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_decides_the_status_of_a_problem() {
        let mut findings = Findings::default();
        findings.pass(Check::Versioning, "enabled");
        findings.push_problem(Check::Encryption, Severity::Warn, "none", "enable it");
        findings.push_problem(Check::PublicAccess, Severity::Fail, "open", "block it");
        findings.push_problem(Check::Region, Severity::Ignore, "elsewhere", "move it");
        assert_eq!(
            findings.tally(),
            Tally {
                pass: 1,
                warn: 1,
                fail: 1,
                ignored: 1
            }
        );
        let failed: Vec<_> = findings
            .with_status(Status::Fail)
            .map(Finding::line)
            .collect();
        assert_eq!(failed, ["public_access: open — fix: block it"]);
    }

    #[test]
    fn names_round_trip_through_serde() {
        for check in [Check::MfaDelete, Check::CountDrop, Check::ReplicationStatus] {
            let json = serde_json::to_value(check).unwrap();
            assert_eq!(json, check.as_str());
            assert_eq!(serde_json::from_value::<Check>(json).unwrap(), check);
        }
    }
}
