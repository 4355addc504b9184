//! Retention: which backups a `prune` keeps, the same way in every plugin.
//!
//! The rules are the usual ones (restic's): `keep_last` keeps the N newest backups;
//! `keep_daily` / `keep_weekly` / `keep_monthly` keep the newest backup of each of the N most
//! recent days / ISO weeks / months that have one (UTC). A backup kept by any rule stays; no rule
//! at all keeps everything. A plugin puts [`Retention`] in its config and asks
//! [`Retention::keep`] which of its backups stay; what "deleting" means stays the plugin's.

use std::collections::BTreeSet;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Retention applied by `prune`; a backup kept by any rule stays, and no rule at all keeps
/// everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest N backups.
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N days (UTC) that have one.
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks that have one.
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have one.
    pub keep_monthly: Option<u32>,
}

/// The calendar period (day, ISO week or month) a time falls in, as a comparable key.
type PeriodOf = fn(&Timestamp) -> (i16, i8, i8);

impl Retention {
    /// No rule at all: prune keeps everything.
    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(Option::is_none)
    }

    /// Refuses rules that are given but would keep nothing (every one is 0).
    pub fn validate(&self) -> Result<(), String> {
        if !self.is_empty() && self.counts().iter().flatten().all(|n| *n == 0) {
            return Err("the retention rules keep nothing (every keep_* is 0)".into());
        }
        Ok(())
    }

    /// The keys of `backups` (key and creation time, in any order) that these rules keep. Ties
    /// in time are broken by key, so the choice never depends on the input's order.
    pub fn keep<K: Ord + Clone>(&self, backups: &[(K, Timestamp)]) -> BTreeSet<K> {
        if self.is_empty() {
            return backups.iter().map(|(key, _)| key.clone()).collect();
        }
        let mut newest_first: Vec<&(K, Timestamp)> = backups.iter().collect();
        newest_first.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        let mut kept = BTreeSet::new();
        if let Some(n) = self.keep_last {
            kept.extend(
                newest_first
                    .iter()
                    .take(n as usize)
                    .map(|(key, _)| key.clone()),
            );
        }
        let periods: [(Option<u32>, PeriodOf); 3] = [
            (self.keep_daily, |t| {
                let d = TimeZone::UTC.to_datetime(*t).date();
                (d.year(), d.month(), d.day())
            }),
            (self.keep_weekly, |t| {
                let w = TimeZone::UTC.to_datetime(*t).date().iso_week_date();
                (w.year(), w.week(), 0)
            }),
            (self.keep_monthly, |t| {
                let d = TimeZone::UTC.to_datetime(*t).date();
                (d.year(), d.month(), 0)
            }),
        ];
        for (count, period_of) in periods {
            let Some(count) = count else { continue };
            let mut seen = BTreeSet::new();
            for (key, created) in &newest_first {
                if seen.len() >= count as usize {
                    break;
                }
                if seen.insert(period_of(created)) {
                    kept.insert(key.clone());
                }
            }
        }
        kept
    }

    fn counts(&self) -> [Option<u32>; 4] {
        [
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: &str, time: &str) -> (String, Timestamp) {
        (key.into(), time.parse().unwrap())
    }

    fn kept(retention: Retention, backups: &[(String, Timestamp)]) -> Vec<String> {
        retention.keep(backups).into_iter().collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let b = [
            at("a", "2026-01-01T00:00:00Z"),
            at("c", "2026-01-03T00:00:00Z"),
            at("b", "2026-01-02T00:00:00Z"),
        ];
        let last2 = Retention {
            keep_last: Some(2),
            ..Retention::default()
        };
        assert_eq!(kept(last2, &b), ["b", "c"]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let b = [
            at("d1-early", "2026-01-01T01:00:00Z"),
            at("d1-late", "2026-01-01T23:00:00Z"),
            at("d2", "2026-01-02T12:00:00Z"),
            at("d3-a", "2026-01-03T08:00:00Z"),
            at("d3-b", "2026-01-03T09:00:00Z"),
        ];
        let daily = |n| Retention {
            keep_daily: Some(n),
            ..Retention::default()
        };
        assert_eq!(kept(daily(2), &b), ["d2", "d3-b"]);
        assert_eq!(kept(daily(5), &b), ["d1-late", "d2", "d3-b"]);
    }

    #[test]
    fn weekly_and_monthly_use_iso_weeks_and_months() {
        let b = [
            // 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2).
            at("sun", "2026-01-04T10:00:00Z"),
            at("mon", "2026-01-05T10:00:00Z"),
            at("tue", "2026-01-06T10:00:00Z"),
            at("feb", "2026-02-10T10:00:00Z"),
        ];
        let weekly = |n| Retention {
            keep_weekly: Some(n),
            ..Retention::default()
        };
        let monthly2 = Retention {
            keep_monthly: Some(2),
            ..Retention::default()
        };
        assert_eq!(kept(weekly(2), &b), ["feb", "tue"]);
        assert_eq!(kept(monthly2, &b), ["feb", "tue"]);
        assert_eq!(kept(weekly(3), &b), ["feb", "sun", "tue"]);
    }

    #[test]
    fn rules_add_up_and_no_rule_keeps_everything() {
        let b = [
            at("old", "2025-06-01T00:00:00Z"),
            at("mid", "2026-01-01T00:00:00Z"),
            at("new", "2026-01-02T00:00:00Z"),
        ];
        let combined = Retention {
            keep_last: Some(1),
            keep_monthly: Some(3),
            ..Retention::default()
        };
        assert_eq!(kept(combined, &b), ["new", "old"]);
        assert_eq!(kept(Retention::default(), &b).len(), 3);
    }

    #[test]
    fn equal_times_are_decided_by_key_not_input_order() {
        let mut b = [
            at("x", "2026-01-01T00:00:00Z"),
            at("y", "2026-01-01T00:00:00Z"),
        ];
        let last1 = Retention {
            keep_last: Some(1),
            ..Retention::default()
        };
        assert_eq!(kept(last1, &b), ["y"]);
        b.reverse();
        assert_eq!(kept(last1, &b), ["y"]);
    }

    #[test]
    fn all_zero_rules_are_refused() {
        let rules = |last, daily| Retention {
            keep_last: last,
            keep_daily: daily,
            ..Retention::default()
        };
        assert!(rules(Some(0), Some(0)).validate().is_err());
        assert!(rules(Some(0), Some(1)).validate().is_ok());
        assert!(Retention::default().validate().is_ok());
    }
}
