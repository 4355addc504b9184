//! S3 Object Lock: every object the backend writes carries a retention, and a backup extends the
//! retention of the older objects its snapshot references, so that whoever holds the backup
//! machine's credentials cannot delete a snapshot before it is `days` old (FORMAT.md, "Object
//! Lock").
//!
//! Objects are written locked until `now + days + margin`, and a backup extends an object it
//! references only when its retain-until falls before the new snapshot's time + `days`, again to
//! `now + days + margin`: a nightly backup that changes nothing extends each pack once every
//! `margin`, not every night. What the backend knows of retain-until dates (set by it, or read
//! with HeadObject) is kept in the repository's `locks/retention.json`; an entry is only ever a
//! lower bound of the real date (S3 never shortens a retention), so a lost or stale state costs
//! HeadObject requests, never protection. A HeadObject comes before every extension, so a date
//! is never moved earlier (which some S3 stand-ins would do).

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::DateTime;
use aws_sdk_s3::types::{
    ObjectLockLegalHoldStatus, ObjectLockMode, ObjectLockRetention, ObjectLockRetentionMode,
};
use jiff::{SignedDuration, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::Inner;
use super::errors::classify;
use crate::error::{Error, Result};

/// The object holding what the backend knows of retain-until dates.
pub const STATE_OBJECT: &str = "locks/retention.json";
/// The bounds of `object_lock.days`: a day to a century.
pub(super) const DAYS: std::ops::RangeInclusive<u32> = 1..=36_500;
/// Retention requests (HeadObject, PutObjectRetention) in flight at once during an extension.
const PARALLEL_REQUESTS: usize = 16;

/// The retention mode S3 applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with s3:BypassGovernanceRetention can still delete or shorten.
    Governance,
    /// Nobody, not even the account's root user, can delete or shorten before the date.
    Compliance,
}

impl LockMode {
    fn sdk(self) -> ObjectLockMode {
        match self {
            Self::Governance => ObjectLockMode::Governance,
            Self::Compliance => ObjectLockMode::Compliance,
        }
    }
}

/// The step's `object_lock` table: the retention every object written gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectLock {
    /// `governance` or `compliance`.
    pub mode: LockMode,
    /// Each snapshot stays undeletable at least this many days after it is made, 1 to 36500.
    #[schemars(range(min = 1, max = 36_500))]
    pub days: u32,
}

impl ObjectLock {
    /// Why these settings are unusable, if they are.
    pub fn flaw(&self) -> Option<String> {
        (!DAYS.contains(&self.days)).then(|| {
            format!(
                "object_lock.days {} is not between {} and {}",
                self.days,
                DAYS.start(),
                DAYS.end()
            )
        })
    }

    /// How much longer than `days` objects are locked, so that an object is extended once per
    /// margin rather than on every backup: a quarter of `days`, at least one day, at most 30.
    pub fn margin(&self) -> SignedDuration {
        days((self.days / 4).clamp(1, 30))
    }

    /// The retain-until date of what is written or extended at `now`.
    pub fn retain_until(&self, now: Timestamp) -> Timestamp {
        now + days(self.days) + self.margin()
    }

    /// The date an object referenced by a snapshot made at `time` must stay locked until.
    pub fn needed(&self, time: Timestamp) -> Timestamp {
        time + days(self.days)
    }

    /// Whether an object whose known retain-until is `known` must be looked at (HeadObject,
    /// then extended if still short) for a snapshot made at `time`. A date later than anything
    /// this backend sets at `now` did not come from it and is not believed.
    pub fn must_look(&self, known: Option<Timestamp>, time: Timestamp, now: Timestamp) -> bool {
        known.is_none_or(|known| known < self.needed(time) || known > self.retain_until(now))
    }
}

fn days(n: u32) -> SignedDuration {
    SignedDuration::from_hours(24 * i64::from(n))
}

/// The lock on one object, as HeadObject tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    /// The retention's date, if the object has one.
    pub until: Option<Timestamp>,
    /// Retention mode (`GOVERNANCE`, `COMPLIANCE`).
    pub mode: Option<String>,
    /// Under legal hold: undeletable until the hold is lifted, whatever the date.
    pub legal_hold: bool,
}

impl Lock {
    /// Why this lock forbids deleting the object at `now`, if it does.
    pub fn holds(&self, now: Timestamp) -> Option<String> {
        if self.legal_hold {
            return Some("under legal hold".into());
        }
        self.until
            .filter(|until| *until > now)
            .map(|until| format!("locked until {until}"))
    }
}

/// What the backend knows of retain-until dates, by object name (seconds since the epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Known {
    pub(super) until: BTreeMap<String, i64>,
}

impl Known {
    /// The known retain-until of `name`.
    pub(super) fn get(&self, name: &str) -> Option<Timestamp> {
        self.until
            .get(name)
            .and_then(|s| Timestamp::from_second(*s).ok())
    }

    /// Records that `name` is locked until `until` (a later date than known only).
    pub(super) fn record(&mut self, name: &str, until: Timestamp) {
        let seconds = until.as_second();
        let entry = self.until.entry(name.to_owned()).or_insert(seconds);
        *entry = (*entry).max(seconds);
    }

    /// Takes in what `other` knows.
    pub(super) fn merge(&mut self, other: &Known) {
        for (name, until) in &other.until {
            let entry = self.until.entry(name.clone()).or_insert(*until);
            *entry = (*entry).max(*until);
        }
    }

    /// Forgets dates already past at `now`: they protect nothing any more.
    pub(super) fn forget_expired(&mut self, now: Timestamp) {
        self.until.retain(|_, until| *until > now.as_second());
    }
}

fn sdk_time(t: Timestamp) -> DateTime {
    DateTime::from_secs(t.as_second())
}

fn timestamp(t: &DateTime) -> Option<Timestamp> {
    Timestamp::from_second(t.secs()).ok()
}

/// The retention of an object written now, if the backend locks what it writes: its mode, its
/// date as the SDK takes it, and as a timestamp.
pub(super) fn for_write(inner: &Inner) -> Option<(ObjectLockMode, DateTime, Timestamp)> {
    let lock = inner.object_lock?;
    let until = lock.retain_until(Timestamp::now());
    Some((lock.mode.sdk(), sdk_time(until), until))
}

/// Records that `name` was written (or found) locked until `until`.
pub(super) fn remember(inner: &Inner, name: &str, until: Timestamp) {
    inner.known.lock().expect("lock state").record(name, until);
}

/// The lock on object `name` (HeadObject).
pub(super) async fn head(inner: &Inner, name: &str) -> Result<Lock> {
    let out = inner
        .client
        .head_object()
        .bucket(inner.bucket())
        .key(inner.key(name))
        .send()
        .await
        .map_err(|err| classify(inner.bucket(), name, "HeadObject", err))?;
    Ok(Lock {
        until: out.object_lock_retain_until_date().and_then(timestamp),
        mode: out.object_lock_mode().map(|m| m.as_str().to_owned()),
        legal_hold: out.object_lock_legal_hold_status() == Some(&ObjectLockLegalHoldStatus::On),
    })
}

/// Sets the retention of `name` to `until` in `lock`'s mode (compliance stays compliance).
async fn extend(
    inner: &Inner,
    name: &str,
    lock: ObjectLock,
    current: &Lock,
    until: Timestamp,
) -> Result<()> {
    let mode = if current.mode.as_deref() == Some("COMPLIANCE") {
        ObjectLockRetentionMode::Compliance
    } else {
        match lock.mode {
            LockMode::Governance => ObjectLockRetentionMode::Governance,
            LockMode::Compliance => ObjectLockRetentionMode::Compliance,
        }
    };
    inner
        .client
        .put_object_retention()
        .bucket(inner.bucket())
        .key(inner.key(name))
        .retention(
            ObjectLockRetention::builder()
                .mode(mode)
                .retain_until_date(sdk_time(until))
                .build(),
        )
        .send()
        .await
        .map(drop)
        .map_err(|err| classify(inner.bucket(), name, "PutObjectRetention", err))
}

/// Makes `name` locked at least until `needed`: looks at its retention, and if it is shorter
/// sets it to `until`. The retain-until date it has afterwards, and whether it was extended.
pub(super) async fn ensure(
    inner: &Inner,
    name: &str,
    lock: ObjectLock,
    needed: Timestamp,
    until: Timestamp,
) -> Result<(Timestamp, bool)> {
    let current = head(inner, name).await?;
    match current.until {
        Some(date) if date >= needed => Ok((date, false)),
        _ => {
            extend(inner, name, lock, &current, until).await?;
            Ok((until, true))
        }
    }
}

/// What one [`ensure`] task gave: the object, its date afterwards, whether it was extended.
type Joined = std::result::Result<Result<(String, Timestamp, bool)>, tokio::task::JoinError>;

/// [`ensure`] for each of `names`, a few at a time; the dates they have afterwards and how many
/// were extended.
pub(super) async fn ensure_all(
    inner: &Arc<Inner>,
    names: Vec<String>,
    lock: ObjectLock,
    needed: Timestamp,
    until: Timestamp,
) -> Result<(Vec<(String, Timestamp)>, usize)> {
    let mut dates = Vec::with_capacity(names.len());
    let mut extended = 0;
    let mut running = JoinSet::new();
    let mut collect = |outcome: Option<Joined>| -> Result<()> {
        match outcome {
            Some(Ok(Ok((name, date, was_extended)))) => {
                extended += usize::from(was_extended);
                dates.push((name, date));
                Ok(())
            }
            Some(Ok(Err(err))) => Err(err),
            Some(Err(err)) => Err(Error::Internal(format!("retention task failed: {err}"))),
            None => Ok(()),
        }
    };
    for name in names {
        if running.len() >= PARALLEL_REQUESTS {
            collect(running.join_next().await)?;
        }
        let inner = inner.clone();
        running.spawn(async move {
            let (date, was_extended) = ensure(&inner, &name, lock, needed, until).await?;
            Ok((name, date, was_extended))
        });
    }
    while !running.is_empty() {
        collect(running.join_next().await)?;
    }
    Ok((dates, extended))
}

/// Whether the bucket has Object Lock enabled (GetObjectLockConfiguration).
pub(super) async fn bucket_enabled(inner: &Inner) -> Result<bool> {
    match inner
        .client
        .get_object_lock_configuration()
        .bucket(inner.bucket())
        .send()
        .await
    {
        Ok(out) => Ok(out
            .object_lock_configuration()
            .and_then(|c| c.object_lock_enabled())
            .is_some_and(|e| e.as_str() == "Enabled")),
        Err(err) => {
            use aws_sdk_s3::error::ProvideErrorMetadata;
            if err.code() == Some("ObjectLockConfigurationNotFoundError") {
                return Ok(false);
            }
            Err(classify(
                inner.bucket(),
                "",
                "GetObjectLockConfiguration",
                err,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    const THIRTY: ObjectLock = ObjectLock {
        mode: LockMode::Governance,
        days: 30,
    };

    #[test]
    fn objects_are_locked_for_days_plus_a_margin_of_a_quarter_between_one_and_thirty_days() {
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(THIRTY.retain_until(now), t("2026-02-07T00:00:00Z"));
        let one = ObjectLock { days: 1, ..THIRTY };
        assert_eq!(one.retain_until(now), t("2026-01-03T00:00:00Z"));
        let years = ObjectLock {
            days: 3650,
            ..THIRTY
        };
        assert_eq!(years.margin(), days(30));
    }

    #[test]
    fn a_nightly_backup_extends_an_unchanged_pack_once_per_margin_not_every_night() {
        // A pack written on day 0 and referenced by every nightly snapshot after that.
        let start = t("2026-01-01T03:00:00Z");
        let mut known = THIRTY.retain_until(start);
        let mut looked = Vec::new();
        for night in 1..=60 {
            let time = start + days(night);
            if THIRTY.must_look(Some(known), time, time) {
                looked.push(night);
                known = THIRTY.retain_until(time);
            }
            assert!(known >= THIRTY.needed(time), "night {night} left it short");
        }
        assert_eq!(looked, [8, 16, 24, 32, 40, 48, 56]);
    }

    #[test]
    fn an_unknown_short_or_implausibly_late_retention_is_looked_at() {
        let now = t("2026-03-01T00:00:00Z");
        assert!(THIRTY.must_look(None, now, now));
        assert!(THIRTY.must_look(Some(t("2026-03-30T23:59:59Z")), now, now));
        assert!(!THIRTY.must_look(Some(t("2026-03-31T00:00:00Z")), now, now));
        // Nothing this backend sets reaches beyond now + days + margin: a state claiming more
        // was not written by it.
        assert!(THIRTY.must_look(Some(t("2027-01-01T00:00:00Z")), now, now));
    }

    #[test]
    fn a_lock_holds_until_its_date_or_while_under_legal_hold() {
        let lock = Lock {
            until: Some(t("2026-02-01T00:00:00Z")),
            mode: Some("GOVERNANCE".into()),
            legal_hold: false,
        };
        assert_eq!(
            lock.holds(t("2026-01-31T00:00:00Z")).as_deref(),
            Some("locked until 2026-02-01T00:00:00Z")
        );
        assert_eq!(lock.holds(t("2026-02-01T00:00:00Z")), None);
        assert_eq!(Lock::default().holds(t("2026-01-01T00:00:00Z")), None);
        let held = Lock {
            legal_hold: true,
            ..Lock::default()
        };
        assert_eq!(
            held.holds(t("2030-01-01T00:00:00Z")).as_deref(),
            Some("under legal hold")
        );
    }

    #[test]
    fn known_dates_only_grow_and_expired_ones_are_forgotten() {
        let mut known = Known::default();
        known.record("a", t("2026-02-01T00:00:00Z"));
        known.record("a", t("2026-01-01T00:00:00Z"));
        known.record("b", t("2026-01-02T00:00:00Z"));
        assert_eq!(known.get("a"), Some(t("2026-02-01T00:00:00Z")));
        known.forget_expired(t("2026-01-15T00:00:00Z"));
        assert_eq!(known.get("b"), None);
        assert!(known.get("a").is_some());
    }

    #[test]
    fn object_lock_days_outside_one_to_a_century_are_refused() {
        for bad in [0, 36_501] {
            let lock = ObjectLock {
                days: bad,
                ..THIRTY
            };
            assert!(lock.flaw().unwrap().contains("not between 1 and 36500"));
        }
        assert_eq!(THIRTY.flaw(), None);
        let err =
            serde_json::from_value::<ObjectLock>(serde_json::json!({"mode": "legal", "days": 3}))
                .unwrap_err();
        assert!(err.to_string().contains("governance"), "{err}");
    }
}
