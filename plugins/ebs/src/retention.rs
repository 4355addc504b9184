//! What prune does with the backups of one region: the retention rules (shared by every
//! plugin, `backplan_plugin_sdk::retention`) plus the one exception of this plugin, the newest
//! verified backup, which is never deleted. Pure, no AWS, so it is tested with made-up times.

use std::collections::BTreeSet;

use backplan_plugin_sdk::retention::Retention;
use jiff::Timestamp;

/// One backup retention decides about: its key (e.g. the AMI id) and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub key: String,
    pub created: Timestamp,
}

/// What prune does in one region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Kept, newest first.
    pub keep: Vec<String>,
    /// Deleted, oldest first.
    pub delete: Vec<String>,
    /// Kept only because they are protected (the newest verified backup).
    pub protected: Vec<String>,
}

/// Applies `rules`, then spares `protected` keys whatever the rules say. Refuses when the rules
/// would keep nothing at all.
pub(crate) fn decide(
    rules: &Retention,
    candidates: &[Candidate],
    protected: &BTreeSet<String>,
) -> Result<Decision, String> {
    let backups: Vec<(String, Timestamp)> = candidates
        .iter()
        .map(|c| (c.key.clone(), c.created))
        .collect();
    let kept = rules.keep(&backups);
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

    #[test]
    fn the_protected_backup_survives_the_rules() {
        let c = [
            at("verified", "2026-01-01T00:00:00Z"),
            at("b", "2026-01-02T00:00:00Z"),
            at("c", "2026-01-03T00:00:00Z"),
            at("d", "2026-01-04T00:00:00Z"),
        ];
        let rules = Retention {
            keep_last: Some(2),
            ..Retention::default()
        };
        let protected = BTreeSet::from(["verified".to_owned()]);
        let d = decide(&rules, &c, &protected).unwrap();
        assert_eq!(d.keep, ["d", "c", "verified"]);
        assert_eq!(d.delete, ["b"]);
        assert_eq!(d.protected, ["verified"]);
        let zero = Retention {
            keep_last: Some(0),
            ..Retention::default()
        };
        assert!(
            decide(&zero, &c, &BTreeSet::new())
                .unwrap_err()
                .contains("refusing")
        );
    }
}
