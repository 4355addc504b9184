//! Which backups retention keeps: pure selection, no AWS.
//!
//! The rules are the usual ones (restic's, the nfs-objects plugin's): `keep_last` keeps the N
//! newest; `keep_daily`/`weekly`/`monthly` keep the newest backup of each of the N most recent
//! days/ISO weeks/months that have one (UTC). A backup kept by any rule stays. Kept apart from
//! the AWS code so the choice can be tested on its own, with made-up times.

use std::collections::BTreeSet;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// The retention rules of one region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    pub last: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
}

impl Rules {
    /// No rule at all: prune keeps everything.
    pub fn is_empty(&self) -> bool {
        self.counts().iter().all(Option::is_none)
    }

    /// Refuses rules that are given but would keep nothing (all zero).
    pub fn validate(&self) -> Result<(), String> {
        if !self.is_empty() && self.counts().iter().flatten().all(|n| *n == 0) {
            return Err("the retention rules keep nothing (every keep_* is 0)".into());
        }
        Ok(())
    }

    fn counts(&self) -> [Option<u32>; 4] {
        [self.last, self.daily, self.weekly, self.monthly]
    }
}

/// One backup retention decides about: its key (e.g. the AMI id) and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub key: String,
    pub created: Timestamp,
}

/// The calendar period (day, ISO week or month) a time falls in, as a comparable key.
type PeriodOf = fn(&Timestamp) -> (i16, i16, i8);

/// The keys `rules` keep among `candidates` (in any order). Empty rules keep everything.
pub fn keep(rules: &Rules, candidates: &[Candidate]) -> BTreeSet<String> {
    if rules.is_empty() {
        return candidates.iter().map(|c| c.key.clone()).collect();
    }
    let mut newest_first: Vec<&Candidate> = candidates.iter().collect();
    newest_first.sort_by(|a, b| b.created.cmp(&a.created).then(b.key.cmp(&a.key)));
    let mut kept = BTreeSet::new();
    if let Some(n) = rules.last {
        kept.extend(newest_first.iter().take(n as usize).map(|c| c.key.clone()));
    }
    let periods: [(Option<u32>, PeriodOf); 3] = [
        (rules.daily, |t| {
            let d = TimeZone::UTC.to_datetime(*t).date();
            (d.year(), d.month().into(), d.day())
        }),
        (rules.weekly, |t| {
            let w = TimeZone::UTC.to_datetime(*t).date().iso_week_date();
            (w.year(), w.week().into(), 0)
        }),
        (rules.monthly, |t| {
            let d = TimeZone::UTC.to_datetime(*t).date();
            (d.year(), d.month().into(), 0)
        }),
    ];
    for (count, period_of) in periods {
        let Some(count) = count else { continue };
        let mut seen = BTreeSet::new();
        for candidate in &newest_first {
            if seen.len() >= count as usize {
                break;
            }
            if seen.insert(period_of(&candidate.created)) {
                kept.insert(candidate.key.clone());
            }
        }
    }
    kept
}

/// What prune does in one region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Kept, newest first.
    pub keep: Vec<String>,
    /// Deleted, oldest first.
    pub delete: Vec<String>,
    /// Kept only because they are protected (the newest verified backup).
    pub protected: Vec<String>,
}

/// Applies `rules`, then spares `protected` keys whatever the rules say. Refuses when the rules
/// would keep nothing at all.
pub fn decide(
    rules: &Rules,
    candidates: &[Candidate],
    protected: &BTreeSet<String>,
) -> Result<Decision, String> {
    let kept = keep(rules, candidates);
    if kept.is_empty() && !candidates.is_empty() {
        return Err(format!(
            "the retention rules would delete all {} backups; refusing",
            candidates.len()
        ));
    }
    let mut oldest_first: Vec<&Candidate> = candidates.iter().collect();
    oldest_first.sort_by(|a, b| a.created.cmp(&b.created).then(a.key.cmp(&b.key)));
    let mut decision = Decision::default();
    for candidate in oldest_first.into_iter().rev() {
        let key = candidate.key.clone();
        if kept.contains(&key) {
            decision.keep.push(key);
        } else if protected.contains(&key) {
            decision.protected.push(key.clone());
            decision.keep.push(key);
        } else {
            decision.delete.push(key);
        }
    }
    decision.delete.reverse();
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: &str, time: &str) -> Candidate {
        Candidate {
            key: key.into(),
            created: time.parse().unwrap(),
        }
    }

    fn keys(set: BTreeSet<String>) -> Vec<String> {
        set.into_iter().collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let c = [
            at("a", "2026-01-01T00:00:00Z"),
            at("c", "2026-01-03T00:00:00Z"),
            at("b", "2026-01-02T00:00:00Z"),
        ];
        let rules = Rules {
            last: Some(2),
            ..Rules::default()
        };
        assert_eq!(keys(keep(&rules, &c)), ["b", "c"]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let c = [
            at("d1-early", "2026-01-01T01:00:00Z"),
            at("d1-late", "2026-01-01T23:00:00Z"),
            at("d2", "2026-01-02T12:00:00Z"),
            at("d3-a", "2026-01-03T08:00:00Z"),
            at("d3-b", "2026-01-03T09:00:00Z"),
        ];
        let rules = Rules {
            daily: Some(2),
            ..Rules::default()
        };
        assert_eq!(keys(keep(&rules, &c)), ["d2", "d3-b"]);
        let rules = Rules {
            daily: Some(5),
            ..Rules::default()
        };
        assert_eq!(keys(keep(&rules, &c)), ["d1-late", "d2", "d3-b"]);
    }

    #[test]
    fn weekly_and_monthly_use_iso_weeks_and_months() {
        let c = [
            // 2026-01-04 is a Sunday (ISO week 1), 2026-01-05 a Monday (week 2).
            at("sun", "2026-01-04T10:00:00Z"),
            at("mon", "2026-01-05T10:00:00Z"),
            at("tue", "2026-01-06T10:00:00Z"),
            at("feb", "2026-02-10T10:00:00Z"),
        ];
        let weekly = Rules {
            weekly: Some(2),
            ..Rules::default()
        };
        assert_eq!(keys(keep(&weekly, &c)), ["feb", "tue"]);
        let monthly = Rules {
            monthly: Some(2),
            ..Rules::default()
        };
        assert_eq!(keys(keep(&monthly, &c)), ["feb", "tue"]);
        let weekly3 = Rules {
            weekly: Some(3),
            ..Rules::default()
        };
        assert_eq!(keys(keep(&weekly3, &c)), ["feb", "sun", "tue"]);
    }

    #[test]
    fn rules_add_up_and_empty_rules_keep_everything() {
        let c = [
            at("old", "2025-06-01T00:00:00Z"),
            at("mid", "2026-01-01T00:00:00Z"),
            at("new", "2026-01-02T00:00:00Z"),
        ];
        let rules = Rules {
            last: Some(1),
            monthly: Some(3),
            ..Rules::default()
        };
        assert_eq!(keys(keep(&rules, &c)), ["new", "old"]);
        assert_eq!(keep(&Rules::default(), &c).len(), 3);
    }

    #[test]
    fn the_protected_backup_survives_the_rules() {
        let c = [
            at("verified", "2026-01-01T00:00:00Z"),
            at("b", "2026-01-02T00:00:00Z"),
            at("c", "2026-01-03T00:00:00Z"),
            at("d", "2026-01-04T00:00:00Z"),
        ];
        let rules = Rules {
            last: Some(2),
            ..Rules::default()
        };
        let protected = BTreeSet::from(["verified".to_owned()]);
        let d = decide(&rules, &c, &protected).unwrap();
        assert_eq!(d.keep, ["d", "c", "verified"]);
        assert_eq!(d.delete, ["b"]);
        assert_eq!(d.protected, ["verified"]);
        let zero = Rules {
            last: Some(0),
            ..Rules::default()
        };
        assert!(
            decide(&zero, &c, &BTreeSet::new())
                .unwrap_err()
                .contains("refusing")
        );
    }

    #[test]
    fn all_zero_rules_are_refused() {
        assert!(
            Rules {
                last: Some(0),
                daily: Some(0),
                ..Rules::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Rules {
                last: Some(0),
                daily: Some(1),
                ..Rules::default()
            }
            .validate()
            .is_ok()
        );
        assert!(Rules::default().validate().is_ok());
    }
}
