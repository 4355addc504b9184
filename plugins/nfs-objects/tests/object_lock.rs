//! Prune under Object Lock, in process: a repository whose backend reports locks on chosen
//! objects (as HeadObject would), pruned at an injected time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use backplan_plugin_nfs_objects::backend::{Backend, Leftovers, LocalBackend, Lock, ObjectInfo};
use backplan_plugin_nfs_objects::backup::{BackupOptions, backup};
use backplan_plugin_nfs_objects::control::Control;
use backplan_plugin_nfs_objects::error::Result;
use backplan_plugin_nfs_objects::manifest::ManifestReader;
use backplan_plugin_nfs_objects::prune::{PruneOptions, Retention, prune_at};
use backplan_plugin_nfs_objects::repo::{
    RepoConfig, Repository, index_object, manifest_object, pack_object, snapshot_object,
};
use backplan_plugin_nfs_objects::snapshot::{self, Snapshot};
use backplan_plugin_nfs_objects::verify::{VerifyOptions, verify};
use jiff::Timestamp;

/// A local repository whose objects can be given a lock, and which refuses to delete a locked
/// object the way S3 refuses to delete a locked version.
#[derive(Debug)]
struct LockingBackend {
    inner: LocalBackend,
    locks: Mutex<HashMap<String, Lock>>,
    /// The time S3 judges locks at.
    now: Mutex<Timestamp>,
    /// Every name a backup asked to keep locked (`protect`).
    protected: Mutex<Vec<String>>,
}

impl LockingBackend {
    /// A repository folder at `store`, its locks judged at `now`.
    fn at(store: &Path, now: Timestamp) -> Arc<Self> {
        Arc::new(Self {
            inner: LocalBackend::new(store).unwrap(),
            locks: Mutex::default(),
            now: Mutex::new(now),
            protected: Mutex::default(),
        })
    }

    fn lock_until(&self, name: &str, until: Timestamp) {
        self.locks.lock().unwrap().insert(
            name.to_owned(),
            Lock {
                until: Some(until),
                mode: Some("GOVERNANCE".into()),
                legal_hold: false,
            },
        );
    }
}

impl Backend for LockingBackend {
    fn staging_dir(&self) -> &Path {
        self.inner.staging_dir()
    }
    fn collect_leftovers(&self, max_age: std::time::Duration, dry_run: bool) -> Leftovers {
        self.inner.collect_leftovers(max_age, dry_run)
    }
    fn put_file(&self, name: &str, staged: &Path) -> Result<()> {
        self.inner.put_file(name, staged)
    }
    fn put_bytes(&self, name: &str, data: &[u8]) -> Result<()> {
        self.inner.put_bytes(name, data)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.inner.get(name)
    }
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.get_range(name, offset, len)
    }
    fn open(&self, name: &str) -> Result<Box<dyn std::io::Read + Send>> {
        self.inner.open(name)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name)
    }
    fn protect(&self, names: &[String], time: jiff::Timestamp) -> Result<usize> {
        self.protected.lock().unwrap().extend_from_slice(names);
        self.inner.protect(names, time)
    }
    fn lock(&self, name: &str) -> Result<Lock> {
        Ok(self
            .locks
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default())
    }
    fn delete(&self, name: &str) -> Result<()> {
        let held = self.lock(name)?.holds(*self.now.lock().unwrap());
        assert_eq!(held, None, "prune tried to delete locked {name}");
        self.inner.delete(name)
    }
}

struct Fixture {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    backend: Arc<LockingBackend>,
    repo: Repository,
    /// Oldest first.
    snapshots: Vec<Snapshot>,
}

/// Two snapshots of a source whose one file changed between them, so each has a pack of its own.
fn two_snapshots(now: Timestamp) -> Fixture {
    let source = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let backend = LockingBackend::at(store.path(), now);
    let config = RepoConfig {
        chunk_size: 64 << 10,
        pack_size: 1,
        ..RepoConfig::default()
    };
    let repo = Repository::open_or_init(backend.clone(), config).unwrap();
    for content in ["first version", "second version, longer"] {
        std::fs::write(source.path().join("file"), content).unwrap();
        backup(&repo, &BackupOptions::new(source.path()), Control::silent()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let snapshots = snapshot::list(backend.as_ref()).unwrap();
    assert_eq!(snapshots.len(), 2);
    Fixture {
        _dirs: (source, store),
        backend,
        repo,
        snapshots,
    }
}

fn packs_of(fixture: &Fixture, snapshot: &Snapshot) -> Vec<String> {
    let mut packs: Vec<String> = ManifestReader::open(
        fixture.backend.as_ref(),
        &snapshot.manifest,
        snapshot.manifest_blake3,
    )
    .unwrap()
    .flat_map(|entry| entry.unwrap().chunks)
    .map(|blob| blob.pack)
    .collect();
    packs.sort();
    packs.dedup();
    packs
}

fn keep_last_one() -> PruneOptions {
    PruneOptions {
        retention: Retention {
            keep_last: Some(1),
            ..Retention::default()
        },
        source: None,
        dry_run: false,
        min_age: std::time::Duration::ZERO,
        leftover_age: std::time::Duration::ZERO,
    }
}

#[test]
fn a_snapshot_whose_header_is_locked_is_kept_whole_and_reported_with_its_date() {
    let now: Timestamp = Timestamp::now();
    let fixture = two_snapshots(now);
    let old = fixture.snapshots[0].clone();
    let until: Timestamp = now + jiff::SignedDuration::from_hours(24 * 10);
    fixture.backend.lock_until(&snapshot_object(&old.id), until);
    let old_packs = packs_of(&fixture, &old);
    assert!(!old_packs.is_empty());

    let report = prune_at(&fixture.repo, &keep_last_one(), Control::silent(), now).unwrap();
    assert!(report.forgotten.is_empty(), "{report:?}");
    assert_eq!(
        report.locked,
        [(old.id.clone(), format!("locked until {until}"))]
    );
    for pack in &old_packs {
        assert!(fixture.backend.exists(&pack_object(pack)).unwrap());
        assert!(fixture.backend.exists(&index_object(pack)).unwrap());
    }
    assert!(fixture.backend.exists(&manifest_object(&old.id)).unwrap());
    let check = verify(
        &fixture.repo,
        &old,
        &VerifyOptions::default(),
        Control::silent(),
    )
    .unwrap();
    assert!(check.is_sound(), "the locked snapshot stayed whole");

    // Once the date has passed, the next prune forgets it.
    let later = until + jiff::SignedDuration::from_secs(1);
    *fixture.backend.now.lock().unwrap() = later;
    let report = prune_at(&fixture.repo, &keep_last_one(), Control::silent(), later).unwrap();
    assert_eq!(report.forgotten, std::slice::from_ref(&old.id));
    assert!(report.locked.is_empty());
}

#[test]
fn an_unreferenced_pack_still_locked_is_left_with_its_index_for_a_later_prune() {
    let now: Timestamp = Timestamp::now();
    let fixture = two_snapshots(now);
    let old = fixture.snapshots[0].clone();
    let new_packs = packs_of(&fixture, &fixture.snapshots[1]);
    let only_old: Vec<String> = packs_of(&fixture, &old)
        .into_iter()
        .filter(|p| !new_packs.contains(p))
        .collect();
    assert!(!only_old.is_empty());
    let until: Timestamp = now + jiff::SignedDuration::from_hours(24);
    for pack in &only_old {
        fixture.backend.lock_until(&pack_object(pack), until);
    }
    let report = prune_at(&fixture.repo, &keep_last_one(), Control::silent(), now).unwrap();
    assert_eq!(
        report.forgotten,
        std::slice::from_ref(&old.id),
        "the header is not locked"
    );
    for pack in &only_old {
        assert!(report.locked_objects.contains(&pack_object(pack)));
        assert!(report.locked_objects.contains(&index_object(pack)));
        assert!(fixture.backend.exists(&index_object(pack)).unwrap());
    }
    assert!(!report.deleted_objects.contains(&index_object(&only_old[0])));
}

#[test]
fn an_encrypted_repositorys_backup_asks_the_store_to_keep_what_its_snapshot_needs_locked() {
    // SAFETY: no other test of this binary reads the variable; it only makes argon2id cheap.
    unsafe { std::env::set_var(backplan_plugin_nfs_objects::keyring::TEST_KDF_VARIABLE, "1") };
    let kek = backplan_plugin_nfs_objects::keyring::Kek::Passphrase {
        passphrase: b"locked and sealed".to_vec(),
        from: "passphrase in $TEST".into(),
    };
    let (source, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let backend = LockingBackend::at(store.path(), Timestamp::now());
    let repo =
        Repository::open_or_init_with(backend.clone(), RepoConfig::default(), Some(&kek)).unwrap();
    std::fs::write(source.path().join("file"), "sealed").unwrap();
    backup(&repo, &BackupOptions::new(source.path()), Control::silent()).unwrap();
    let snapshot = snapshot::list(repo.backend().as_ref()).unwrap().remove(0);
    let protected = backend.protected.lock().unwrap().clone();
    assert!(protected.contains(&snapshot.manifest), "{protected:?}");
    assert!(
        protected.iter().any(|name| name.starts_with("data/")),
        "the packs it references: {protected:?}"
    );
}

#[test]
fn a_later_backup_keeps_the_dictionary_locked_with_the_packs_compressed_with_it() {
    let (source, store) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let backend = LockingBackend::at(store.path(), Timestamp::now());
    let repo = Repository::open_or_init(backend.clone(), RepoConfig::default()).unwrap();
    // Small logs alike: the first backup trains a dictionary on them and compresses with it.
    std::fs::create_dir_all(source.path().join("logs")).unwrap();
    let mut rng = fastrand::Rng::with_seed(9);
    let words: Vec<String> = (0..2000)
        .map(|i| format!("job-{:x}", rng.u64(..) >> (i % 40)))
        .collect();
    for n in 0..100 {
        let text: Vec<&str> = (0..400)
            .map(|_| words[rng.usize(..words.len())].as_str())
            .collect();
        let log = source.path().join(format!("logs/{n}.log"));
        std::fs::write(log, text.join(" ")).unwrap();
    }
    backup(&repo, &BackupOptions::new(source.path()), Control::silent()).unwrap();
    let dictionaries: Vec<String> = backend
        .list("dictionaries/")
        .unwrap()
        .into_iter()
        .map(|object| object.name)
        .collect();
    assert_eq!(dictionaries.len(), 1, "the first backup trained one");

    // A later backup takes the old packs over: the dictionary must stay locked as long as they.
    backend.protected.lock().unwrap().clear();
    std::fs::write(source.path().join("logs/new.log"), "one more line").unwrap();
    backup(&repo, &BackupOptions::new(source.path()), Control::silent()).unwrap();
    let protected = backend.protected.lock().unwrap().clone();
    assert!(protected.contains(&dictionaries[0]), "{protected:?}");
}
