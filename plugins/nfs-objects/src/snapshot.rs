//! Snapshot headers: the commit point of a backup.
//!
//! A snapshot exists exactly when its header object `snapshots/<id>.json` does, and the header is
//! written last, after the manifest and every pack it references are durable. Ids start with the
//! UTC time to the second, for people reading a listing; but within one second the random suffix
//! decides their order, so snapshots are ordered by the header's `time` (nanoseconds), never by
//! name: that is how the parent of a backup and "latest" are chosen.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::id::{ContentId, random_name};
use crate::repo::{SNAPSHOT_PREFIX, object_stem, snapshot_object};

/// Counts describing one backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Sum of the sizes of all files.
    pub bytes: u64,
    /// Files read because they were new or changed.
    pub files_read: u64,
    pub bytes_read: u64,
    /// Files whose content was taken from the previous snapshot without reading.
    pub files_reused: u64,
    /// Bytes added to the repository (after deduplication and compression).
    pub bytes_stored: u64,
    pub packs_written: u64,
}

/// The backplan run that made a snapshot: what `discover` finds this step's snapshots by when
/// the catalog is lost. Absent from snapshots made before it was written, and from those made
/// by the engine alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The plan's name.
    pub plan: String,
    /// The step's id in the plan.
    pub step: String,
    /// The run's id.
    pub id: String,
    /// When the run started, as the plugin knew it at backup.
    pub started_at: jiff::Timestamp,
}

/// The header of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub time: jiff::Timestamp,
    /// The backed-up folder.
    pub source: String,
    pub host: String,
    /// The snapshot this one was compared against, if any.
    pub parent: Option<String>,
    /// Object name of the manifest.
    pub manifest: String,
    /// blake3 of the manifest object's bytes.
    pub manifest_blake3: ContentId,
    pub stats: SnapshotStats,
    /// Paths stored although they kept changing while read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub torn: Vec<String>,
    /// The run that made it, if a backplan run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Origin>,
}

/// A new snapshot id for `time`: `YYYYMMDDTHHMMSSZ-<8 hex>`.
pub fn new_id(time: jiff::Timestamp) -> String {
    format!(
        "{}-{}",
        time.strftime("%Y%m%dT%H%M%SZ"),
        &random_name()[..8]
    )
}

/// Every snapshot in the repository, oldest first by header time (ties broken by id). A header
/// that does not read fails the listing.
pub fn list(backend: &dyn Backend) -> Result<Vec<Snapshot>> {
    let (snapshots, mut unreadable) = list_readable(backend)?;
    if unreadable.is_empty() {
        Ok(snapshots)
    } else {
        Err(unreadable.swap_remove(0))
    }
}

/// Every snapshot whose header reads, oldest first as [`list`], and the errors of those whose
/// header is corrupt: for `discover`, where one damaged header must not hide the others. A
/// failure to reach the repository still fails the listing.
pub fn list_readable(backend: &dyn Backend) -> Result<(Vec<Snapshot>, Vec<Error>)> {
    let (mut snapshots, mut unreadable) = (Vec::new(), Vec::new());
    for object in backend.list(SNAPSHOT_PREFIX)? {
        if let Some(id) = object_stem(&object.name, ".json") {
            match load(backend, id) {
                Ok(snapshot) => snapshots.push(snapshot),
                // Removed by a concurrent prune between list and get.
                Err(Error::SnapshotNotFound(_)) => {}
                Err(err @ Error::Corrupt { .. }) => unreadable.push(err),
                Err(err) => return Err(err),
            }
        }
    }
    snapshots.sort_by(|a, b| (a.time, &a.id).cmp(&(b.time, &b.id)));
    Ok((snapshots, unreadable))
}

/// The snapshot with id `id`.
pub fn load(backend: &dyn Backend, id: &str) -> Result<Snapshot> {
    let name = snapshot_object(id);
    let bytes = match backend.get(&name) {
        Err(Error::MissingObject(_)) => return Err(Error::SnapshotNotFound(id.to_owned())),
        other => other?,
    };
    serde_json::from_slice(&bytes).map_err(|err| Error::Corrupt {
        name,
        reason: err.to_string(),
    })
}

/// Publishes `snapshot`; everything it references must already be durable.
pub fn publish(backend: &dyn Backend, snapshot: &Snapshot) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(snapshot).expect("snapshots serialise");
    backend.put_bytes(&snapshot_object(&snapshot.id), &bytes)
}

/// This machine's host name, for the record.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;

    fn snapshot(id: &str, seconds: i64) -> Snapshot {
        Snapshot {
            id: id.into(),
            time: jiff::Timestamp::from_second(seconds).unwrap(),
            source: "/data".into(),
            host: "h".into(),
            parent: None,
            manifest: "manifests/x".into(),
            manifest_blake3: ContentId::of(b""),
            stats: SnapshotStats::default(),
            torn: Vec::new(),
            run: None,
        }
    }

    #[test]
    fn publish_list_load() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        publish(&backend, &snapshot("b", 200)).unwrap();
        publish(&backend, &snapshot("a", 100)).unwrap();
        let ids: Vec<_> = list(&backend).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(load(&backend, "b").unwrap(), snapshot("b", 200));
        assert!(matches!(
            load(&backend, "c"),
            Err(Error::SnapshotNotFound(_))
        ));
    }

    #[test]
    fn the_latest_snapshot_is_chosen_by_its_time_not_by_its_name_within_one_second() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path()).unwrap();
        let second = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let at = |id: &str, millis: i64| Snapshot {
            id: id.into(),
            time: second + jiff::SignedDuration::from_millis(millis),
            ..snapshot(id, 0)
        };
        let (earlier, later) = (
            at("20231114T221320Z-ffffffff", 100),
            at("20231114T221320Z-00000000", 700),
        );
        publish(&backend, &earlier).unwrap();
        publish(&backend, &later).unwrap();
        assert_eq!(list(&backend).unwrap(), [earlier, later.clone()]);
        assert_eq!(load(&backend, &later.id).unwrap().time, later.time);
    }

    #[test]
    fn ids_sort_by_time() {
        let early = new_id(jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let late = new_id(jiff::Timestamp::from_second(1_800_000_000).unwrap());
        assert!(early < late);
        assert!(early.starts_with("20231114T221320Z-"), "{early}");
    }
}
