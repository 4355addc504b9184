//! EC2's rate limits, as pure decisions the AWS code acts on.
//!
//! EC2 refuses a snapshot of a volume less than 15 s after the previous one
//! (`SnapshotCreationPerVolumeRateExceeded`) and more than 5 pending snapshots per volume;
//! CopyImage is throttled hard per account. Rather than hitting those limits and retrying, the
//! plugin waits before the call. The same module holds the backoff used when AWS throttles
//! anyway (exponential, with full jitter, so parallel steps do not retry in lock-step); which
//! answers are throttling is `backplan-aws`'s one error policy.

use std::time::{Duration, Instant};

use jiff::Timestamp;

/// The shortest gap EC2 allows between two snapshots of one volume.
pub(crate) const SNAPSHOT_SPACING: Duration = Duration::from_secs(15);
/// The most snapshots of one volume EC2 lets be pending at once.
pub(crate) const MAX_PENDING_PER_VOLUME: usize = 5;
/// The shortest gap between two CopyImage calls.
pub(crate) const COPY_SPACING: Duration = Duration::from_secs(1);

/// Whether a new snapshot of a volume may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Go ahead.
    Open,
    /// Wait this long, then ask again; the text says why.
    Wait(Duration, String),
}

/// The gate for a new snapshot of `volume`, given its latest snapshot's start time and how many
/// of its snapshots are still pending.
pub(crate) fn snapshot_gate(
    volume: &str,
    latest_start: Option<Timestamp>,
    pending: usize,
    now: Timestamp,
) -> Gate {
    if pending >= MAX_PENDING_PER_VOLUME {
        return Gate::Wait(
            SNAPSHOT_SPACING,
            format!(
                "{volume} has {pending} pending snapshots (EC2 allows {MAX_PENDING_PER_VOLUME})"
            ),
        );
    }
    let Some(latest) = latest_start else {
        return Gate::Open;
    };
    let since = now.duration_since(latest);
    let spacing = jiff::SignedDuration::try_from(SNAPSHOT_SPACING).unwrap_or_default();
    if since >= spacing {
        return Gate::Open;
    }
    let left = Duration::try_from(spacing - since).unwrap_or(SNAPSHOT_SPACING);
    Gate::Wait(
        left,
        format!(
            "{volume} was last snapshotted {}s ago (EC2 needs 15s between snapshots)",
            since.as_secs()
        ),
    )
}

/// Paces calls that must be at least a fixed gap apart (CopyImage).
#[derive(Debug)]
pub(crate) struct Pacer {
    gap: Duration,
    last: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(gap: Duration) -> Self {
        Pacer { gap, last: None }
    }

    /// How long to wait before the next call at `now`; the call is then counted as made.
    pub(crate) fn next(&mut self, now: Instant) -> Duration {
        let start = match self.last {
            Some(last) => (last + self.gap).max(now),
            None => now,
        };
        self.last = Some(start);
        start - now
    }
}

/// The pause before retry number `attempt` (1-based): `base * 2^(attempt-1)` capped at `cap`,
/// then a random point in its upper half (jitter that never collapses to no pause).
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(cap);
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_volume_needs_15s_between_snapshots() {
        let now = t("2026-01-01T00:00:20Z");
        assert_eq!(snapshot_gate("vol-1", None, 0, now), Gate::Open);
        assert_eq!(
            snapshot_gate("vol-1", Some(t("2026-01-01T00:00:05Z")), 0, now),
            Gate::Open
        );
        match snapshot_gate("vol-1", Some(t("2026-01-01T00:00:15Z")), 0, now) {
            Gate::Wait(left, why) => {
                assert_eq!(left, Duration::from_secs(10));
                assert!(why.contains("vol-1"), "{why}");
            }
            Gate::Open => panic!("5 s after the last snapshot must wait"),
        }
    }

    #[test]
    fn five_pending_snapshots_block_a_sixth() {
        let now = t("2026-01-01T00:10:00Z");
        assert_eq!(
            snapshot_gate("vol-1", Some(t("2026-01-01T00:00:00Z")), 4, now),
            Gate::Open
        );
        assert!(
            matches!(snapshot_gate("vol-1", None, 5, now), Gate::Wait(_, why) if why.contains("5 pending"))
        );
    }

    #[test]
    fn the_pacer_spaces_calls() {
        let mut pacer = Pacer::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(pacer.next(start), Duration::ZERO);
        assert_eq!(pacer.next(start), Duration::from_secs(1));
        assert_eq!(
            pacer.next(start + Duration::from_millis(500)),
            Duration::from_millis(1500)
        );
        assert_eq!(pacer.next(start + Duration::from_secs(10)), Duration::ZERO);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(8);
        for _ in 0..50 {
            let first = backoff(1, base, cap);
            assert!(
                first >= Duration::from_millis(500) && first <= base,
                "{first:?}"
            );
            let third = backoff(3, base, cap);
            assert!(
                third >= Duration::from_secs(2) && third <= Duration::from_secs(4),
                "{third:?}"
            );
            let late = backoff(30, base, cap);
            assert!(late >= Duration::from_secs(4) && late <= cap, "{late:?}");
        }
    }
}
