//! Prune: forget snapshots by a retention policy, then delete data nothing references.
//!
//! Order matters for crash safety: snapshot headers go first (a snapshot either exists whole or
//! not at all), then their manifests, then packs that no remaining manifest references, each pack's
//! index before the pack itself (so deduplication never points into a deleted pack).
//! Unreferenced objects younger than `min_age` are left alone: they may belong to a backup that is
//! still running. Packs holding some live blobs are kept whole; artifacts are write-once and age out
//! together, so rewriting packs is not worth its risk. Staged files that killed runs left in the
//! staging area are collected too (see `backend::leftovers`) and counted in the report.
//!
//! Under S3 Object Lock nothing locked is deleted: on a versioned bucket a DeleteObject would
//! succeed anyway, hiding the object behind a delete marker, and a snapshot would lose a part it
//! still has. A snapshot the retention would forget whose header is still locked is kept whole
//! (header, manifest and every pack it references) and reported with its date; an unreferenced
//! object still locked waits for a later prune (a pack and its index go together or not at all).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use crate::backend::Backend;
use crate::backend::Leftovers;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::manifest::ManifestReader;
use crate::repo::{
    DATA_PREFIX, INDEX_PREFIX, MANIFEST_PREFIX, Repository, index_object, manifest_object,
    object_stem, snapshot_object,
};
use crate::snapshot::{self, Snapshot};

pub use backplan_plugin_sdk::retention::Retention;

/// What to prune.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub retention: Retention,
    /// Only apply the retention to snapshots of this source (others are kept).
    pub source: Option<String>,
    /// Report what would go; delete nothing.
    pub dry_run: bool,
    /// Unreferenced objects younger than this are kept.
    pub min_age: Duration,
    /// Staged files whose writer cannot be told alive or dead are removed once untouched this
    /// long (those of dead writers at once).
    pub leftover_age: Duration,
}

/// What prune removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub kept: Vec<String>,
    pub forgotten: Vec<String>,
    /// Deleted objects: packs, their indexes, orphaned manifests.
    pub deleted_objects: Vec<String>,
    /// Bytes of `deleted_objects` (packs and manifests).
    pub freed_bytes: u64,
    /// Staged files of killed runs removed from the staging area.
    pub leftovers: Leftovers,
    pub dry_run: bool,
    /// Snapshots the retention would forget, kept whole because their header is locked (Object
    /// Lock): id and why (`locked until <date>`).
    pub locked: Vec<(String, String)>,
    /// Unreferenced objects left in place because they are locked (a later prune deletes them).
    pub locked_objects: Vec<String>,
}

/// The ids of `snapshots` (any order) that `retention` keeps.
pub fn select(snapshots: &[Snapshot], retention: &Retention) -> BTreeSet<String> {
    let backups: Vec<(String, jiff::Timestamp)> =
        snapshots.iter().map(|s| (s.id.clone(), s.time)).collect();
    retention.keep(&backups)
}

/// Applies `options` to `repo`.
pub fn prune(
    repo: &Repository,
    options: &PruneOptions,
    control: Control<'_>,
) -> Result<PruneReport> {
    prune_at(repo, options, control, jiff::Timestamp::now())
}

/// Why one of `names` may not be deleted at `now` (its Object Lock), if one is locked.
fn locked(backend: &dyn Backend, names: &[String], now: jiff::Timestamp) -> Result<Option<String>> {
    for name in names {
        match backend.lock(name) {
            Ok(lock) => {
                if let Some(why) = lock.holds(now) {
                    return Ok(Some(why));
                }
            }
            // Gone already (another prune): nothing to protect.
            Err(Error::MissingObject(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}

/// [`prune`] with the time locks are judged at.
pub fn prune_at(
    repo: &Repository,
    options: &PruneOptions,
    control: Control<'_>,
    now: jiff::Timestamp,
) -> Result<PruneReport> {
    let backend = repo.backend().as_ref();
    let snapshots = snapshot::list(backend)?;
    let (candidates, others): (Vec<Snapshot>, Vec<Snapshot>) =
        snapshots.into_iter().partition(|s| {
            options
                .source
                .as_ref()
                .is_none_or(|source| &s.source == source)
        });
    let keep = select(&candidates, &options.retention);
    if keep.is_empty() && !candidates.is_empty() {
        return Err(Error::Invalid(
            "the retention rules keep no snapshot at all; refusing to forget everything".into(),
        ));
    }
    let mut report = PruneReport {
        dry_run: options.dry_run,
        ..PruneReport::default()
    };
    let mut live = Vec::new();
    for snapshot in candidates {
        if keep.contains(&snapshot.id) {
            report.kept.push(snapshot.id.clone());
            live.push(snapshot);
        } else if let Some(why) = locked(backend, &[snapshot_object(&snapshot.id)], now)? {
            report.locked.push((snapshot.id.clone(), why));
            live.push(snapshot);
        } else {
            report.forgotten.push(snapshot.id);
        }
    }
    live.extend(others);

    // Every pack a remaining snapshot needs. An unreadable manifest stops the prune: deleting on
    // an incomplete picture could destroy live data.
    let mut live_packs = HashSet::new();
    for snapshot in &live {
        control.check_cancelled()?;
        for entry in ManifestReader::open(backend, &snapshot.manifest, snapshot.manifest_blake3)? {
            live_packs.extend(entry?.chunks.into_iter().map(|blob| blob.pack));
        }
    }
    let live_manifests: HashSet<String> = live.iter().map(|s| s.manifest.clone()).collect();

    for id in &report.forgotten {
        if !options.dry_run {
            backend.delete(&snapshot_object(id))?;
        }
        let manifest = manifest_object(id);
        if locked(backend, std::slice::from_ref(&manifest), now)?.is_some() {
            report.locked_objects.push(manifest);
        } else if !options.dry_run {
            backend.delete(&manifest)?;
        }
    }
    let old_enough =
        |modified: SystemTime| modified.elapsed().is_ok_and(|age| age >= options.min_age);
    // Groups of objects deleted together, in order, and the bytes they free.
    let mut doomed: Vec<(Vec<String>, u64)> = Vec::new();
    for object in backend.list(DATA_PREFIX)? {
        let Some(pack) = object_stem(&object.name, ".pack") else {
            continue;
        };
        if !live_packs.contains(pack) && old_enough(object.modified) {
            doomed.push((vec![index_object(pack), object.name.clone()], object.size));
        }
    }
    let present: HashSet<String> = backend
        .list(DATA_PREFIX)?
        .into_iter()
        .filter_map(|o| object_stem(&o.name, ".pack").map(str::to_owned))
        .collect();
    for object in backend.list(INDEX_PREFIX)? {
        let orphan = object_stem(&object.name, ".json").is_some_and(|pack| !present.contains(pack));
        if orphan && old_enough(object.modified) {
            doomed.push((vec![object.name], 0));
        }
    }
    for object in backend.list(MANIFEST_PREFIX)? {
        let forgotten_now = report
            .forgotten
            .iter()
            .any(|id| manifest_object(id) == object.name);
        if !live_manifests.contains(&object.name) && !forgotten_now && old_enough(object.modified) {
            doomed.push((vec![object.name], object.size));
        }
    }
    for (group, bytes) in doomed {
        control.check_cancelled()?;
        if locked(backend, &group, now)?.is_some() {
            report.locked_objects.extend(group);
            continue;
        }
        for name in group {
            if !options.dry_run {
                backend.delete(&name)?;
            }
            report.deleted_objects.push(name);
        }
        report.freed_bytes += bytes;
    }
    report.leftovers = backend.collect_leftovers(options.leftover_age, options.dry_run);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ContentId;
    use crate::snapshot::SnapshotStats;

    fn at(id: &str, time: &str) -> Snapshot {
        Snapshot {
            id: id.into(),
            time: time.parse().unwrap(),
            source: "/data".into(),
            host: String::new(),
            parent: None,
            manifest: String::new(),
            manifest_blake3: ContentId::of(b""),
            stats: SnapshotStats::default(),
            torn: Vec::new(),
            run: None,
        }
    }

    fn kept(snapshots: &[Snapshot], retention: Retention) -> Vec<String> {
        let keep = select(snapshots, &retention);
        let mut ids: Vec<String> = keep.into_iter().collect();
        ids.sort();
        ids
    }

    #[test]
    fn calendar_rules_keep_the_newest_of_each_period() {
        let snapshots = [
            at("a", "2024-01-31T10:00:00Z"),
            at("b", "2024-02-05T10:00:00Z"), // Monday, ISO week 6
            at("c", "2024-02-07T09:00:00Z"), // same week
            at("d", "2024-02-07T18:00:00Z"), // same day as c, later
            at("e", "2024-02-12T08:00:00Z"), // week 7
        ];
        let daily = Retention {
            keep_daily: Some(2),
            ..Retention::default()
        };
        assert_eq!(kept(&snapshots, daily), ["d", "e"]);
        let weekly = Retention {
            keep_weekly: Some(3),
            ..Retention::default()
        };
        assert_eq!(kept(&snapshots, weekly), ["a", "d", "e"]);
        let monthly = Retention {
            keep_monthly: Some(5),
            ..Retention::default()
        };
        assert_eq!(kept(&snapshots, monthly), ["a", "e"]);
        let combined = Retention {
            keep_last: Some(1),
            keep_monthly: Some(2),
            ..Retention::default()
        };
        assert_eq!(kept(&snapshots, combined), ["a", "e"]);
        assert_eq!(
            kept(&snapshots, Retention::default()).len(),
            5,
            "no rule keeps all"
        );
    }
}
