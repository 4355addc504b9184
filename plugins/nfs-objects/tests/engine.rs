//! End-to-end tests of the repository engine on real temporary folders.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use backplan_plugin_nfs_objects::backend::{Backend, Leftovers, LocalBackend, Lock, ObjectInfo};
use backplan_plugin_nfs_objects::backup::{BackupOptions, BackupReport, backup};
use backplan_plugin_nfs_objects::blob::BlobRef;
use backplan_plugin_nfs_objects::control::Control;
use backplan_plugin_nfs_objects::error::{Error, Result};
use backplan_plugin_nfs_objects::index::{decode_index, encode_index};
use backplan_plugin_nfs_objects::manifest::{Entry, ManifestReader, ManifestWriter};
use backplan_plugin_nfs_objects::prune::{PruneOptions, Retention, prune};
use backplan_plugin_nfs_objects::repo::{RepoConfig, Repository, index_object, pack_object};
use backplan_plugin_nfs_objects::restore::{RestoreOptions, restore};
use backplan_plugin_nfs_objects::snapshot::{self, Snapshot};
use backplan_plugin_nfs_objects::verify::{VerifyOptions, VerifyReport, verify};

const CHUNK: u64 = 64 * 1024;

fn small_config() -> RepoConfig {
    RepoConfig {
        chunk_size: CHUNK,
        pack_size: 256 * 1024,
        ..RepoConfig::default()
    }
}

fn open_repo(dir: &Path) -> Repository {
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir).unwrap());
    Repository::open_or_init(backend, small_config()).unwrap()
}

fn run_backup(repo: &Repository, source: &Path) -> Result<BackupReport> {
    backup(repo, &BackupOptions::new(source), Control::silent())
}

fn restore_to(repo: &Repository, snapshot: &Snapshot, target: &Path) {
    let report = restore(
        repo,
        snapshot,
        &RestoreOptions::new(target),
        Control::silent(),
    )
    .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

fn set_mtime(path: &Path, seconds: i64) {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds as u64);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A tree with every kind of entry the format handles.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("jobs/1/logs")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(
        root.join("jobs/1/logs/build.log"),
        b"INFO ok\n".repeat(5000),
    )
    .unwrap();
    fs::write(root.join("jobs/1/empty"), b"").unwrap();
    fs::write(root.join("jobs/1/random.bin"), pseudo_random(300_000, 1)).unwrap();
    fs::write(root.join("jobs/1/copy.bin"), pseudo_random(300_000, 1)).unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"jobs/bad-\xff\xfe")),
        b"x",
    )
    .unwrap();
    std::os::unix::fs::symlink("1/logs/build.log", root.join("jobs/latest.log")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::hard_link(
        root.join("jobs/1/logs/build.log"),
        root.join("jobs/hard.log"),
    )
    .unwrap();
    // Sparse: a hole, data, a hole, spread over several chunks.
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(5 * CHUNK + 17).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"middle", 2 * CHUNK + 3).unwrap();
    drop(sparse);
    fs::set_permissions(
        root.join("jobs/1/random.bin"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(root.join("jobs/1"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::lchown(root.join("jobs/1/empty"), Some(1234), Some(5678)).unwrap();
    set_mtime(&root.join("jobs/1/random.bin"), 1_600_000_000);
}

/// Everything about a tree that a restore must reproduce, by relative path.
fn describe(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut inodes = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let content = if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else if meta.file_type().is_symlink() {
                format!("-> {:?}", fs::read_link(&path).unwrap())
            } else {
                let first = inodes.entry(meta.ino()).or_insert_with(|| relative.clone());
                format!(
                    "{} link-group {:?}",
                    blake3::hash(&fs::read(&path).unwrap()),
                    first
                )
            };
            let mode = if meta.file_type().is_symlink() {
                0
            } else {
                meta.mode() & 0o7777
            };
            let mtime = if meta.is_dir() {
                0
            } else {
                meta.mtime_nsec() + meta.mtime() * 1_000_000_000
            };
            out.insert(
                relative,
                format!(
                    "{content} mode {mode:o} owner {}:{} mtime {mtime}",
                    meta.uid(),
                    meta.gid()
                ),
            );
        }
    }
    out
}

fn manifest_entries(repo: &Repository, snapshot: &Snapshot) -> Vec<Entry> {
    ManifestReader::open(
        repo.backend().as_ref(),
        &snapshot.manifest,
        snapshot.manifest_blake3,
    )
    .unwrap()
    .collect::<Result<_>>()
    .unwrap()
}

#[test]
fn round_trip_reproduces_content_and_metadata() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let report = run_backup(&repo, source.path()).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let stats = &report.snapshot.stats;
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.symlinks, 2);
    // The two identical 300 kB files share their full chunks, which are deduplicated.
    assert!(
        stats.bytes_stored < 300_000 + 150_000,
        "stored {}",
        stats.bytes_stored
    );

    restore_to(&repo, &report.snapshot, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));
    // Holes stay holes.
    let sparse = fs::metadata(target.path().join("sparse.img")).unwrap();
    assert!(
        sparse.blocks() * 512 < 2 * CHUNK,
        "{} blocks",
        sparse.blocks()
    );

    let verified = verify(
        &repo,
        &report.snapshot,
        &VerifyOptions::default(),
        Control::silent(),
    )
    .unwrap();
    assert!(verified.damaged.is_empty(), "{:?}", verified.damaged);
    assert_eq!(verified.files_checked, 5, "files with content");
}

/// Build outputs repeat their bytes at shifted offsets (a rebuilt crate, binaries linking the
/// same code): bytes inserted at the front of a large file leave its later chunks as they
/// were, so the new version stores little more than the insertion.
#[test]
fn content_moved_by_an_insertion_is_stored_once() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let content = pseudo_random(3 << 20, 11);
    let file = source.path().join("libcrate.rlib");
    fs::write(&file, &content).unwrap();
    let repo = open_repo(repo_dir.path());
    run_backup(&repo, source.path()).unwrap();
    let mut rebuilt = pseudo_random(777, 12);
    rebuilt.extend_from_slice(&content);
    fs::write(&file, &rebuilt).unwrap();
    let report = run_backup(&repo, source.path()).unwrap();
    let stored = report.snapshot.stats.bytes_stored;
    // The insertion, the chunk it falls in, and the one the second piece starts with.
    assert!(stored < 4 * CHUNK, "stored {stored} of {}", rebuilt.len());
    let target = tempfile::tempdir().unwrap();
    restore_to(&repo, &report.snapshot, target.path());
    assert!(fs::read(target.path().join("libcrate.rlib")).unwrap() == rebuilt);
}

/// Identical large files read at the same moment by several workers (two builds of a crate
/// side by side) are stored once: the worker that finds the content claimed waits for it.
#[test]
fn twins_read_side_by_side_are_stored_once() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let content = pseudo_random(1 << 20, 13);
    for twin in 0..8 {
        fs::write(source.path().join(format!("twin-{twin}.bin")), &content).unwrap();
    }
    let repo = open_repo(repo_dir.path());
    let mut options = BackupOptions::new(source.path());
    options.workers = 4;
    let report = backup(&repo, &options, Control::silent()).unwrap();
    // Random bytes are stored raw: one copy is the whole file.
    assert_eq!(report.snapshot.stats.bytes_stored, content.len() as u64);
}

/// Consecutive versions of a package repeat small files (a LICENSE, a build script): each
/// content is stored once however many folders hold it, and every copy restores and verifies.
#[test]
fn small_files_repeated_across_folders_are_stored_once() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let license = pseudo_random(20_000, 7);
    for version in 0..50 {
        let folder = source.path().join(format!("crate-1.{version}.0"));
        fs::create_dir(&folder).unwrap();
        fs::write(folder.join("LICENSE"), &license).unwrap();
        fs::write(folder.join("lib.rs"), pseudo_random(3_000, version)).unwrap();
    }
    let repo = open_repo(repo_dir.path());
    // (Several workers: one that finds the content claimed by another waits for it.)
    let report = run_backup(&repo, source.path()).unwrap();
    // 50 distinct lib.rs of 3,000 bytes, and the LICENSE once (random bytes: stored raw).
    assert_eq!(report.snapshot.stats.bytes_stored, 50 * 3_000 + 20_000);

    restore_to(&repo, &report.snapshot, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));
    let verified = verify_now(&repo, &report.snapshot);
    assert!(verified.damaged.is_empty(), "{:?}", verified.damaged);
    assert_eq!(verified.files_checked, 100);
}

/// Large files are read around the page cache in pieces that are large and start block-aligned,
/// and through it otherwise; a restore writes them around it whatever their content-defined
/// chunks (which end anywhere). A `chunk_size` of 64 KiB makes two pieces (the second aligned,
/// the chunks 4 to 64 KiB), 100,000 bytes two (the second unaligned: buffered), 2 MiB and
/// 1,500,000 bytes one (a direct read past the file's end). Every way must give the same exact
/// file, with its odd length, its hole, and no padding left behind.
#[test]
fn large_files_round_trip_with_direct_and_buffered_io() {
    let source = tempfile::tempdir().unwrap();
    let mut large = pseudo_random(1 << 20, 3);
    large.extend(vec![0; 256 * 1024]);
    large.extend(b"INFO compiled\n".repeat(140_000));
    large.truncate(large.len() - 5);
    fs::write(source.path().join("large.img"), &large).unwrap();
    for chunk_size in [CHUNK, 100_000, 2 << 20, 1_500_000] {
        let (repo_dir, target) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(repo_dir.path()).unwrap());
        let config = RepoConfig {
            chunk_size,
            ..small_config()
        };
        let repo = Repository::open_or_init(backend, config).unwrap();
        let snapshot = run_backup(&repo, source.path()).unwrap().snapshot;
        restore_to(&repo, &snapshot, target.path());
        let restored = target.path().join("large.img");
        assert!(
            fs::read(&restored).unwrap() == large,
            "chunk size {chunk_size}"
        );
        assert_eq!(describe(source.path()), describe(target.path()));
        let allocated = fs::metadata(&restored).unwrap().blocks() * 512;
        assert!(
            allocated < large.len() as u64 - 128 * 1024,
            "the hole was written: {allocated} bytes allocated"
        );
    }
}

#[test]
fn incremental_backup_reads_only_new_and_changed_files() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    assert_eq!(
        first.stats.files_read, 5,
        "every non-empty file except the hard link"
    );

    let unchanged = run_backup(&repo, source.path()).unwrap().snapshot;
    assert_eq!(unchanged.stats.files_read, 0);
    assert_eq!(unchanged.stats.bytes_stored, 0);
    assert_eq!(unchanged.parent.as_deref(), Some(first.id.as_str()));

    fs::write(
        source.path().join("jobs/1/random.bin"),
        pseudo_random(300_000, 2),
    )
    .unwrap();
    fs::write(source.path().join("jobs/new.txt"), b"new").unwrap();
    fs::remove_file(source.path().join("jobs/1/copy.bin")).unwrap();
    let changed = run_backup(&repo, source.path()).unwrap().snapshot;
    assert_eq!(changed.stats.files_read, 2);
    assert_eq!(changed.stats.bytes_read, 300_003);
    let paths: Vec<Vec<u8>> = manifest_entries(&repo, &changed)
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(!paths.contains(&b"jobs/1/copy.bin".to_vec()));
    assert!(paths.contains(&b"jobs/new.txt".to_vec()));

    let target = tempfile::tempdir().unwrap();
    restore_to(&repo, &changed, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));
}

/// A backend that fails every write after the first `allowed` ones, like a process killed there;
/// with `throttled_streams`, every stream it opens fails after a few bytes the way an S3 reader
/// whose ranged GET is throttled does; with `gather`, its batches of reads wait for each other.
struct CrashingBackend {
    inner: LocalBackend,
    allowed: usize,
    writes: AtomicUsize,
    on_write: Mutex<Option<Box<dyn FnMut() + Send>>>,
    throttled_streams: bool,
    gather: Option<Gather>,
}

/// Batches of reads that wait, until `wanted` of them are in progress together (once) or for
/// two seconds, like GETs that take long; counts the most ever in progress together.
struct Gather {
    wanted: usize,
    state: Mutex<(usize, usize, bool)>,
    changed: std::sync::Condvar,
}

impl Gather {
    fn new(wanted: usize) -> Self {
        Self {
            wanted,
            state: Mutex::new((0, 0, false)),
            changed: std::sync::Condvar::new(),
        }
    }

    fn enter(&self) {
        let mut state = self.state.lock().unwrap();
        let (inside, most, met) = &mut *state;
        *inside += 1;
        *most = (*most).max(*inside);
        if *inside >= self.wanted {
            *met = true;
            self.changed.notify_all();
        }
        let timeout = std::time::Duration::from_secs(2);
        drop(
            self.changed
                .wait_timeout_while(state, timeout, |(_, _, met)| !*met),
        );
    }

    fn leave(&self) {
        self.state.lock().unwrap().0 -= 1;
    }

    fn most(&self) -> usize {
        self.state.lock().unwrap().1
    }
}

impl std::fmt::Debug for CrashingBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashingBackend")
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl CrashingBackend {
    fn wrap(dir: &Path, allowed: usize) -> Self {
        Self {
            inner: LocalBackend::new(dir).unwrap(),
            allowed,
            writes: AtomicUsize::new(0),
            on_write: Mutex::new(None),
            throttled_streams: false,
            gather: None,
        }
    }
    fn write(&self, name: &str) -> Result<()> {
        if let Some(hook) = self.on_write.lock().unwrap().as_mut() {
            hook();
        }
        if self.writes.fetch_add(1, Ordering::SeqCst) >= self.allowed {
            return Err(Error::Backend {
                name: name.into(),
                source: std::io::Error::other("simulated crash"),
                transient: true,
            });
        }
        Ok(())
    }
}

impl Backend for CrashingBackend {
    fn staging_dir(&self) -> &Path {
        self.inner.staging_dir()
    }
    fn put_file(&self, name: &str, staged: &Path) -> Result<()> {
        self.write(name)?;
        self.inner.put_file(name, staged)
    }
    fn put_bytes(&self, name: &str, data: &[u8]) -> Result<()> {
        self.write(name)?;
        self.inner.put_bytes(name, data)
    }
    fn get(&self, name: &str) -> Result<Vec<u8>> {
        self.inner.get(name)
    }
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.get_range(name, offset, len)
    }
    fn read_ranges(&self, ranges: &[(String, u64, u64)], into: &mut [u8]) -> Vec<Result<()>> {
        let Some(gather) = &self.gather else {
            return self.inner.read_ranges(ranges, into);
        };
        gather.enter();
        let results = self.inner.read_ranges(ranges, into);
        gather.leave();
        results
    }
    fn open(&self, name: &str) -> Result<Box<dyn std::io::Read + Send>> {
        let stream = self.inner.open(name)?;
        if !self.throttled_streams {
            return Ok(stream);
        }
        let throttled = Error::Backend {
            name: name.into(),
            source: std::io::Error::other("GetObject failed: SlowDown"),
            transient: true,
        };
        let failing = std::io::Read::chain(
            std::io::Read::take(stream, 16),
            FailingRead(Some(throttled)),
        );
        Ok(Box::new(failing))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix)
    }
    fn exists(&self, name: &str) -> Result<bool> {
        self.inner.exists(name)
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name)
    }
    fn protect(&self, names: &[String], time: jiff::Timestamp) -> Result<usize> {
        self.inner.protect(names, time)
    }
    fn lock(&self, name: &str) -> Result<Lock> {
        self.inner.lock(name)
    }
    fn collect_leftovers(&self, max_age: std::time::Duration, dry_run: bool) -> Leftovers {
        self.inner.collect_leftovers(max_age, dry_run)
    }
}

/// A stream that fails with `.0` (as the S3 reader does, an engine error inside an I/O error).
struct FailingRead(Option<Error>);

impl std::io::Read for FailingRead {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other(
            self.0.take().unwrap_or(Error::Invalid("read again".into())),
        ))
    }
}

#[test]
fn small_files_waiting_for_their_reads_do_not_count_as_open_files() {
    // The bug: a file of one piece (most small files), which the coordinating thread holds no
    // descriptor for, counted against the 256 files a restore may hold open, so no more than 4
    // jobs of 64 small files were ever in flight whatever the workers: a restore from S3 spent
    // half its time waiting on its GETs.
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    for i in 0..2000 {
        fs::write(
            source.path().join(format!("f{i:04}")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    let snapshot = run_backup(&open_repo(repo_dir.path()), source.path())
        .unwrap()
        .snapshot;
    let mut gathering = CrashingBackend::wrap(repo_dir.path(), usize::MAX);
    gathering.gather = Some(Gather::new(6));
    let gathering = Arc::new(gathering);
    let backend: Arc<dyn Backend> = gathering.clone();
    let repo = Repository::open_or_init(backend, small_config()).unwrap();
    let mut options = RestoreOptions::new(target.path());
    options.workers = 8;
    let report = restore(&repo, &snapshot, &options, Control::silent()).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(describe(source.path()), describe(target.path()));
    let most = gathering.gather.as_ref().unwrap().most();
    assert!(most >= 6, "at most {most} batches of reads were in flight");
}

#[test]
fn a_throttled_read_in_the_middle_of_a_manifest_is_not_called_corruption() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let snapshot = run_backup(&open_repo(repo_dir.path()), source.path())
        .unwrap()
        .snapshot;
    let mut backend = CrashingBackend::wrap(repo_dir.path(), usize::MAX);
    backend.throttled_streams = true;
    let failure = ManifestReader::open(&backend, &snapshot.manifest, snapshot.manifest_blake3)
        .and_then(|entries| entries.collect::<Result<Vec<Entry>>>())
        .unwrap_err();
    assert!(
        matches!(
            failure,
            Error::Backend {
                transient: true,
                ..
            }
        ),
        "a retry would read it whole: {failure:?}"
    );
}

#[test]
fn a_crash_at_any_write_leaves_earlier_snapshots_intact() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    fs::write(
        source.path().join("jobs/1/random.bin"),
        pseudo_random(900_000, 3),
    )
    .unwrap();
    fs::write(
        source.path().join("jobs/more.bin"),
        pseudo_random(200_000, 4),
    )
    .unwrap();

    let mut crashes = 0;
    for allowed in 0.. {
        let crashing: Arc<dyn Backend> = Arc::new(CrashingBackend::wrap(repo_dir.path(), allowed));
        let crashing_repo = Repository::open(crashing).unwrap();
        match run_backup(&crashing_repo, source.path()) {
            Err(_) => crashes += 1,
            Ok(_) => break,
        }
        let snapshots = snapshot::list(repo.backend().as_ref()).unwrap();
        assert_eq!(
            snapshots,
            std::slice::from_ref(&first),
            "after a crash at write {allowed}"
        );
        let check = verify(&repo, &first, &VerifyOptions::default(), Control::silent()).unwrap();
        assert!(check.damaged.is_empty());
    }
    assert!(
        crashes >= 4,
        "the backup has several writes: packs, indexes, manifest, snapshot"
    );

    let snapshots = snapshot::list(repo.backend().as_ref()).unwrap();
    assert_eq!(snapshots.len(), 2);
    let latest = snapshots.last().unwrap();
    let target = tempfile::tempdir().unwrap();
    restore_to(&repo, latest, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));

    // The crashed attempts left unreferenced packs; prune removes them and nothing else.
    let options = PruneOptions {
        retention: Retention::default(),
        source: None,
        dry_run: false,
        min_age: std::time::Duration::ZERO,
        leftover_age: std::time::Duration::ZERO,
    };
    let pruned = prune(&repo, &options, Control::silent()).unwrap();
    assert!(!pruned.deleted_objects.is_empty());
    assert!(pruned.forgotten.is_empty());
    for snapshot in snapshot::list(repo.backend().as_ref()).unwrap() {
        let check = verify(
            &repo,
            &snapshot,
            &VerifyOptions::default(),
            Control::silent(),
        )
        .unwrap();
        assert!(check.damaged.is_empty(), "{:?}", check.damaged);
    }
}

#[test]
fn a_file_changing_while_read_is_reread_then_reported_torn() {
    for (changes, expect_torn) in [(1, false), (usize::MAX, true)] {
        let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let growing = source.path().join("growing.log");
        fs::write(&growing, b"line\n").unwrap();
        let config = RepoConfig {
            pack_size: 1, // every blob seals a pack: one backend write per file read
            ..small_config()
        };
        let backend = CrashingBackend::wrap(repo_dir.path(), usize::MAX);
        let path = growing.clone();
        let mut left = changes;
        *backend.on_write.lock().unwrap() = Some(Box::new(move || {
            if left > 0 && path.exists() {
                left -= 1;
                let mut content = fs::read(&path).unwrap();
                content.extend_from_slice(b"more\n");
                fs::write(&path, content).unwrap();
            }
        }));
        let backend: Arc<dyn Backend> = Arc::new(backend);
        let repo = Repository::open_or_init(backend, config).unwrap();
        let mut options = BackupOptions::new(source.path());
        options.workers = 1;
        let report = backup(&repo, &options, Control::silent()).unwrap();
        let entry = manifest_entries(&repo, &report.snapshot).pop().unwrap();
        assert_eq!(entry.path, b"growing.log");
        assert_eq!(entry.torn, expect_torn);
        assert_eq!(report.snapshot.torn.len(), usize::from(expect_torn));
        if !expect_torn {
            // The re-read stored the version that no longer changed.
            assert_eq!(entry.size, fs::metadata(&growing).unwrap().len());
            assert_eq!(report.snapshot.stats.files_read, 1);
        }
    }
}

#[test]
fn verify_names_the_damaged_files() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let snapshot = run_backup(&repo, source.path()).unwrap().snapshot;
    let entries = manifest_entries(&repo, &snapshot);
    let log = entries
        .iter()
        .find(|e| e.path == b"jobs/1/logs/build.log")
        .unwrap();
    let blob = &log.chunks[0];
    let pack_path: PathBuf = repo_dir.path().join(pack_object(&blob.pack));
    let mut bytes = fs::read(&pack_path).unwrap();
    bytes[blob.offset as usize + 5] ^= 0x40;
    fs::write(&pack_path, bytes).unwrap();

    let report = verify(
        &repo,
        &snapshot,
        &VerifyOptions::default(),
        Control::silent(),
    )
    .unwrap();
    let damaged: Vec<&str> = report.damaged.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(damaged, ["jobs/1/logs/build.log"]);

    // A missing pack names every file with data in it.
    let sparse = entries.iter().find(|e| e.path == b"sparse.img").unwrap();
    let sparse_pack = &sparse.chunks[0].pack;
    let sharing: Vec<String> = entries
        .iter()
        .filter(|e| e.chunks.iter().any(|c| &c.pack == sparse_pack))
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect();
    fs::remove_file(repo_dir.path().join(pack_object(sparse_pack))).unwrap();
    let report = verify(
        &repo,
        &snapshot,
        &VerifyOptions::default(),
        Control::silent(),
    )
    .unwrap();
    for path in &sharing {
        assert!(
            report.damaged.iter().any(|d| &d.path == path),
            "{path} not named"
        );
    }

    // A damaged file is not restored under its name.
    let target = tempfile::tempdir().unwrap();
    let restored = restore(
        &repo,
        &snapshot,
        &RestoreOptions::new(target.path()),
        Control::silent(),
    )
    .unwrap();
    assert!(
        restored
            .failed
            .iter()
            .any(|f| f.path.ends_with("build.log"))
    );
    assert!(!target.path().join("jobs/1/logs/build.log").exists());
}

#[test]
fn restore_keeps_newer_files_and_handles_sub_paths() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let snapshot = run_backup(&repo, source.path()).unwrap().snapshot;

    let mut options = RestoreOptions::new(target.path());
    options.subpath = b"jobs/1/logs".to_vec();
    restore(&repo, &snapshot, &options, Control::silent()).unwrap();
    let restored: Vec<_> = describe(target.path()).into_keys().collect();
    assert_eq!(
        restored,
        [
            b"jobs".to_vec(),
            b"jobs/1".to_vec(),
            b"jobs/1/logs".to_vec(),
            b"jobs/1/logs/build.log".to_vec()
        ]
    );

    let log = target.path().join("jobs/1/logs/build.log");
    fs::write(&log, b"edited after the backup").unwrap();
    let report = restore(&repo, &snapshot, &options, Control::silent()).unwrap();
    assert_eq!(report.kept_newer.len(), 1);
    assert_eq!(fs::read(&log).unwrap(), b"edited after the backup");
    options.force = true;
    let report = restore(&repo, &snapshot, &options, Control::silent()).unwrap();
    assert!(report.kept_newer.is_empty());
    assert_eq!(
        fs::read(&log).unwrap(),
        fs::read(source.path().join("jobs/1/logs/build.log")).unwrap()
    );
    // Identical files are not rewritten.
    let report = restore(&repo, &snapshot, &options, Control::silent()).unwrap();
    assert_eq!(report.unchanged, 1);
}

#[test]
fn an_emptied_source_is_refused_after_a_full_snapshot() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    run_backup(&repo, source.path()).unwrap();
    for entry in fs::read_dir(source.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(path).unwrap();
        } else {
            fs::remove_file(path).unwrap();
        }
    }
    let err = run_backup(&repo, source.path()).unwrap_err();
    assert!(matches!(err, Error::Mount(_)), "{err}");
    assert_eq!(snapshot::list(repo.backend().as_ref()).unwrap().len(), 1);
    let mut options = BackupOptions::new(source.path());
    options.allow_empty = true;
    backup(&repo, &options, Control::silent()).unwrap();
}

#[test]
fn prune_keeps_by_retention_and_deletes_only_unreferenced_data() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    for round in 0..3u64 {
        fs::write(
            source.path().join("jobs/round.bin"),
            pseudo_random(100_000, 10 + round),
        )
        .unwrap();
        run_backup(&repo, source.path()).unwrap();
    }
    let before = snapshot::list(repo.backend().as_ref()).unwrap();
    let mut options = PruneOptions {
        dry_run: true,
        ..keep_last_one()
    };
    let dry = prune(&repo, &options, Control::silent()).unwrap();
    assert_eq!(dry.forgotten.len(), 2);
    assert!(
        !dry.deleted_objects.is_empty(),
        "the old round.bin data would go"
    );
    assert_eq!(
        snapshot::list(repo.backend().as_ref()).unwrap(),
        before,
        "dry run changes nothing"
    );

    options.dry_run = false;
    let done = prune(&repo, &options, Control::silent()).unwrap();
    assert_eq!(done.forgotten, dry.forgotten);
    assert_eq!(done.deleted_objects, dry.deleted_objects);
    let after = snapshot::list(repo.backend().as_ref()).unwrap();
    assert_eq!(after, [before[2].clone()]);
    let target = tempfile::tempdir().unwrap();
    restore_to(&repo, &after[0], target.path());
    assert_eq!(describe(source.path()), describe(target.path()));

    options.retention = Retention {
        keep_last: Some(0),
        ..Retention::default()
    };
    assert!(matches!(
        prune(&repo, &options, Control::silent()),
        Err(Error::Invalid(_))
    ));
}

/// Verify with every pack judged, however young.
fn verify_now(repo: &Repository, snapshot: &Snapshot) -> VerifyReport {
    let options = VerifyOptions {
        grace: std::time::Duration::ZERO,
        ..VerifyOptions::default()
    };
    verify(repo, snapshot, &options, Control::silent()).unwrap()
}

/// An index object as JSON, to edit.
fn read_index_json(path: &Path) -> serde_json::Value {
    serde_json::to_value(decode_index(&fs::read(path).unwrap()).unwrap()).unwrap()
}

/// Writes an edited index back as the pack writer would.
fn write_index_json(path: &Path, index: serde_json::Value) {
    fs::write(
        path,
        encode_index(&serde_json::from_value::<Vec<BlobRef>>(index).unwrap()),
    )
    .unwrap();
}

fn objects_of(findings: &[backplan_plugin_nfs_objects::index::Finding]) -> Vec<&str> {
    findings.iter().map(|f| f.object.as_str()).collect()
}

#[test]
fn a_backup_after_a_pack_was_deleted_stores_its_content_again_and_never_references_it() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    let entries = manifest_entries(&repo, &first);
    let random = entries
        .iter()
        .find(|e| e.path == b"jobs/1/random.bin")
        .unwrap();
    let lost = random.chunks[0].pack.clone();
    fs::remove_file(repo_dir.path().join(pack_object(&lost))).unwrap();
    // New content equal to some of the lost data, under a new path: the index offers it.
    fs::write(
        source.path().join("jobs/again.bin"),
        pseudo_random(300_000, 1),
    )
    .unwrap();

    let report = run_backup(&repo, source.path()).unwrap();
    let second = &report.snapshot;
    for entry in manifest_entries(&repo, second) {
        assert!(
            entry.chunks.iter().all(|c| c.pack != lost),
            "{} references the deleted pack",
            String::from_utf8_lossy(&entry.path)
        );
    }
    let found = objects_of(&report.findings);
    assert!(found.contains(&pack_object(&lost).as_str()), "{found:?}");
    assert!(found.contains(&index_object(&lost).as_str()), "{found:?}");
    assert!(
        second.stats.files_read > 1,
        "unchanged files of the lost pack are read again"
    );
    restore_to(&repo, second, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));

    let check = verify_now(&repo, second);
    assert!(check.damaged.is_empty(), "{:?}", check.damaged);
    assert_eq!(objects_of(&check.inconsistent), [index_object(&lost)]);
    assert!(check.inconsistent[0].problem.contains("which is missing"));
    assert!(!verify_now(&repo, &first).damaged.is_empty());
}

#[test]
fn a_backup_after_an_index_offset_was_corrupted_does_not_copy_it() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let content = pseudo_random(4 * CHUNK as usize, 5);
    fs::write(source.path().join("big.bin"), &content).unwrap();
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    let chunk = manifest_entries(&repo, &first).pop().unwrap().chunks[1].clone();
    // Shift the blob's entry by one byte: the range still lies inside the pack.
    let index_path = repo_dir.path().join(index_object(&chunk.pack));
    let mut index = read_index_json(&index_path);
    let entry = index
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["offset"] == chunk.offset)
        .unwrap();
    entry["offset"] = (chunk.offset + 1).into();
    write_index_json(&index_path, index);
    fs::write(source.path().join("copy.bin"), &content).unwrap();

    let report = run_backup(&repo, source.path()).unwrap();
    let check = verify_now(&repo, &report.snapshot);
    assert!(check.damaged.is_empty(), "{:?}", check.damaged);
    assert_eq!(
        objects_of(&report.findings),
        [index_object(&chunk.pack)],
        "{:?}",
        report.findings
    );
    assert_eq!(objects_of(&check.inconsistent), [index_object(&chunk.pack)]);
    restore_to(&repo, &report.snapshot, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));
}

#[test]
fn verify_reports_a_lost_index_a_dangling_index_and_orphaned_packs() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let snapshot = run_backup(&repo, source.path()).unwrap().snapshot;
    assert!(verify_now(&repo, &snapshot).is_sound());
    let used = manifest_entries(&repo, &snapshot)
        .into_iter()
        .find(|e| !e.chunks.is_empty())
        .unwrap()
        .chunks[0]
        .pack
        .clone();
    fs::remove_file(repo_dir.path().join(index_object(&used))).unwrap();
    let unused = "ab".repeat(16);
    fs::create_dir_all(repo_dir.path().join("data/ab")).unwrap();
    fs::write(repo_dir.path().join(pack_object(&unused)), b"left over").unwrap();
    let vanished = "cd".repeat(16);
    fs::write(repo_dir.path().join(index_object(&vanished)), b"[]").unwrap();

    let check = verify_now(&repo, &snapshot);
    assert!(check.damaged.is_empty(), "the data itself is intact");
    assert_eq!(
        objects_of(&check.inconsistent),
        [pack_object(&used), index_object(&vanished)]
    );
    assert!(check.inconsistent[0].problem.contains("has no index"));
    assert_eq!(objects_of(&check.orphans), [pack_object(&unused)]);
    // Young packs may be a running backup's: not judged within the grace period.
    let patient = verify(
        &repo,
        &snapshot,
        &VerifyOptions::default(),
        Control::silent(),
    )
    .unwrap();
    assert_eq!(objects_of(&patient.inconsistent), [index_object(&vanished)]);
    assert!(patient.orphans.is_empty());
}

#[test]
fn leftovers_of_killed_runs_are_removed_by_the_next_backup_and_reported_by_prune() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let tmp = repo_dir.path().join("tmp");
    // Named before writers were named, untouched since 2020: judged by age.
    let old = tmp.join("0123456789abcdef0123456789abcdef.pack");
    fs::write(&old, vec![7; 1000]).unwrap();
    set_mtime(&old, 1_600_000_000);
    let report = run_backup(&repo, source.path()).unwrap();
    assert_eq!(
        report.leftovers,
        Leftovers {
            files: 1,
            bytes: 1000
        }
    );
    assert!(!old.exists());

    // Named by a writer that could not tell who it was: judged by age.
    let young = tmp.join("unknown.0123456789abcdef0123456789abcdef.manifest");
    fs::write(&young, b"0123456789").unwrap();
    let live = repo.backend().staging_file(".pack");
    fs::write(&live, b"being written").unwrap();
    let mut options = PruneOptions {
        retention: Retention::default(),
        source: None,
        dry_run: true,
        min_age: std::time::Duration::ZERO,
        leftover_age: std::time::Duration::ZERO,
    };
    let dry = prune(&repo, &options, Control::silent()).unwrap();
    let expected = Leftovers {
        files: 1,
        bytes: 10,
    };
    assert_eq!(dry.leftovers, expected);
    assert!(young.exists());
    options.dry_run = false;
    assert_eq!(
        prune(&repo, &options, Control::silent()).unwrap().leftovers,
        expected
    );
    assert!(!young.exists());
    assert!(live.exists(), "a live writer's file is never taken");
}

#[test]
fn a_backup_whose_parent_manifest_is_corrupt_reads_every_file_again() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    // The same entries compressed otherwise: every line parses, only the digest differs. The
    // last entry (sparse.img) is gone from the source, so the walk never reads to the end.
    let path = repo_dir.path().join(&first.manifest);
    let lines = zstd::decode_all(&fs::read(&path).unwrap()[..]).unwrap();
    fs::write(&path, zstd::encode_all(&lines[..], 19).unwrap()).unwrap();
    fs::remove_file(source.path().join("sparse.img")).unwrap();

    let report = run_backup(&repo, source.path()).unwrap();
    assert_eq!(objects_of(&report.findings), [first.manifest.as_str()]);
    let second = &report.snapshot;
    assert_eq!(second.parent, None, "nothing was taken over from it");
    assert_eq!(second.stats.files_reused, 0);
    assert_eq!(second.stats.files_read, first.stats.files_read - 1);
    assert!(verify_now(&repo, second).is_sound());
    restore_to(&repo, second, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));
}

#[test]
fn verify_reports_an_index_that_lists_the_wrong_blob_where_the_snapshot_reads_another() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::write(
        source.path().join("big.bin"),
        pseudo_random(4 * CHUNK as usize, 8),
    )
    .unwrap();
    let repo = open_repo(repo_dir.path());
    let mut options = BackupOptions::new(source.path());
    options.workers = 1;
    let snapshot = backup(&repo, &options, Control::silent()).unwrap().snapshot;
    let pack = manifest_entries(&repo, &snapshot).pop().unwrap().chunks[0]
        .pack
        .clone();
    // Two blobs of the same length trade ids: the index still covers its pack exactly.
    let index_path = repo_dir.path().join(index_object(&pack));
    let mut index = read_index_json(&index_path);
    let entries = index.as_array_mut().unwrap();
    let first_id = entries[0]["id"].clone();
    entries[0]["id"] = entries[1]["id"].clone();
    entries[1]["id"] = first_id;
    write_index_json(&index_path, index);

    let check = verify_now(&repo, &snapshot);
    assert!(check.damaged.is_empty());
    assert_eq!(objects_of(&check.inconsistent), [index_object(&pack)]);
    assert!(check.inconsistent[0].problem.contains("does not list blob"));
}

/// Forget all but the latest snapshot, however young its objects.
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
fn a_backup_that_changes_nothing_copies_the_parent_manifest() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    let second = run_backup(&repo, source.path()).unwrap().snapshot;
    assert_ne!(second.manifest, first.manifest, "each snapshot has its own");
    assert_eq!(second.manifest_blake3, first.manifest_blake3);
    let inode = |s: &Snapshot| {
        fs::metadata(repo_dir.path().join(&s.manifest))
            .unwrap()
            .ino()
    };
    assert_eq!(
        inode(&second),
        inode(&first),
        "a hard link: no byte written again"
    );
    assert_eq!(second.stats.files, first.stats.files);
    assert_eq!(second.stats.files_reused, first.stats.files_read);

    // The parent forgotten, its manifest deleted by name: the copy stays whole.
    let pruned = prune(&repo, &keep_last_one(), Control::silent()).unwrap();
    assert_eq!(pruned.forgotten, std::slice::from_ref(&first.id));
    assert!(!repo_dir.path().join(&first.manifest).exists());
    assert!(verify_now(&repo, &second).is_sound());
    restore_to(&repo, &second, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));
}

/// What a test does to a source tree.
type Change = fn(&Path);

#[test]
fn a_backup_alike_its_parent_up_to_a_change_writes_the_whole_manifest() {
    // Walk order: "", dangling, empty-dir, jobs, jobs/1, jobs/1/copy.bin, jobs/1/empty,
    // jobs/1/logs, jobs/1/logs/build.log, jobs/1/random.bin, jobs/bad-…, jobs/hard.log,
    // jobs/latest.log, sparse.img. Each change makes the manifests differ at another place;
    // (change, files read by the backup after it).
    let changes: [(&str, Change, u64); 5] = [
        (
            "a file added to the root: the root's entry is the first to differ",
            |root| fs::write(root.join("aaa.txt"), b"new").unwrap(),
            1,
        ),
        (
            "a file removed from a folder: that folder's entry differs",
            |root| fs::remove_file(root.join("jobs/1/copy.bin")).unwrap(),
            0,
        ),
        (
            "a file in the middle rewritten",
            |root| fs::write(root.join("jobs/1/random.bin"), pseudo_random(300_000, 7)).unwrap(),
            1,
        ),
        (
            "the last entry rewritten",
            |root| fs::write(root.join("sparse.img"), b"no longer sparse").unwrap(),
            1,
        ),
        (
            "a folder's permissions changed",
            |root| {
                fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o700))
                    .unwrap()
            },
            0,
        ),
    ];
    for (change, apply, read) in changes {
        let (source, repo_dir, target) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        build_tree(source.path());
        let repo = open_repo(repo_dir.path());
        let first = run_backup(&repo, source.path()).unwrap().snapshot;
        apply(source.path());
        let second = run_backup(&repo, source.path()).unwrap().snapshot;
        assert_ne!(second.manifest_blake3, first.manifest_blake3, "{change}");
        assert_eq!(
            second.stats.files_read, read,
            "{change}: the files after the change are still taken over"
        );
        // Alone in the repository, the snapshot must hold the tree as it now is.
        prune(&repo, &keep_last_one(), Control::silent()).unwrap();
        assert!(verify_now(&repo, &second).is_sound(), "{change}");
        restore_to(&repo, &second, target.path());
        assert_eq!(describe(source.path()), describe(target.path()), "{change}");
    }
}

#[test]
fn entries_of_the_parent_past_the_end_of_the_walk_are_left_out() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    // A parent listing one entry more, last in walk order, that the walk will not find
    // although nothing before it changed (as when the walk skips an unreadable path).
    let mut entries = manifest_entries(&repo, &first);
    let mut gone = entries.last().unwrap().clone();
    gone.path = b"zzz-gone".to_vec();
    entries.push(gone);
    let staged = repo.backend().staging_file(".manifest");
    let mut writer = ManifestWriter::create(&staged).unwrap();
    for entry in &entries {
        writer.push(entry).unwrap();
    }
    let written = writer.finish().unwrap();
    let longer = Snapshot {
        id: format!("{}-longer", first.id),
        time: first.time + jiff::SignedDuration::from_secs(1),
        manifest: "manifests/longer.jsonl.zst".into(),
        manifest_blake3: written.digest,
        ..first.clone()
    };
    repo.backend()
        .put_file(&longer.manifest, &written.staged)
        .unwrap();
    snapshot::publish(repo.backend().as_ref(), &longer).unwrap();

    let second = run_backup(&repo, source.path()).unwrap().snapshot;
    assert_eq!(second.parent.as_deref(), Some(longer.id.as_str()));
    assert_eq!(second.stats.files_read, 0);
    assert_eq!(
        manifest_entries(&repo, &second),
        manifest_entries(&repo, &first)
    );
    restore_to(&repo, &second, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));
}

#[test]
fn an_unchanged_backup_over_a_corrupt_parent_manifest_does_not_copy_it() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_tree(source.path());
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    // Every line parses, every entry is the tree's: only the digest tells.
    let path = repo_dir.path().join(&first.manifest);
    let lines = zstd::decode_all(&fs::read(&path).unwrap()[..]).unwrap();
    fs::write(&path, zstd::encode_all(&lines[..], 19).unwrap()).unwrap();

    let report = run_backup(&repo, source.path()).unwrap();
    assert_eq!(objects_of(&report.findings), [first.manifest.as_str()]);
    let second = &report.snapshot;
    assert_ne!(second.manifest_blake3, first.manifest_blake3);
    assert_ne!(
        fs::metadata(repo_dir.path().join(&second.manifest))
            .unwrap()
            .ino(),
        fs::metadata(&path).unwrap().ino()
    );
    assert!(verify_now(&repo, second).is_sound());
}

/// `files` small logs of one made-up vocabulary (paths and hex ids, none alike), and one random
/// file: a tree a dictionary is trained on.
fn write_logs(root: &Path, files: usize) {
    fs::create_dir_all(root.join("logs")).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    let words: Vec<String> = (0..3000)
        .map(|i| format!("src/{}/{:x}.rs", i % 41, rng.u64(..)))
        .collect();
    for n in 0..files {
        let text: Vec<&str> = (0..1200)
            .map(|_| words[rng.usize(..words.len())].as_str())
            .collect();
        fs::write(root.join(format!("logs/{n:04}.log")), text.join("\n")).unwrap();
    }
    fs::write(root.join("noise.bin"), pseudo_random(200_000, 8)).unwrap();
}

fn dictionary_objects(repo_dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(repo_dir.join("dictionaries")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn similar_small_files_are_stored_with_one_dictionary_and_restored() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_logs(source.path(), 300);
    let repo = open_repo(repo_dir.path());
    let first = run_backup(&repo, source.path()).unwrap().snapshot;
    assert_eq!(dictionary_objects(repo_dir.path()).len(), 1);

    let plain_dir = tempfile::tempdir().unwrap();
    let plain = open_repo(plain_dir.path());
    let options = BackupOptions {
        dictionary: false,
        ..BackupOptions::new(source.path())
    };
    let without = backup(&plain, &options, Control::silent())
        .unwrap()
        .snapshot;
    assert!(dictionary_objects(plain_dir.path()).is_empty());
    assert!(
        first.stats.bytes_stored * 10 < without.stats.bytes_stored * 9,
        "{} with a dictionary, {} without",
        first.stats.bytes_stored,
        without.stats.bytes_stored
    );

    // The next backup compresses with the same dictionary; both restore and verify.
    write_logs(&source.path().join("more"), 50);
    let second = run_backup(&repo, source.path()).unwrap().snapshot;
    assert_eq!(dictionary_objects(repo_dir.path()).len(), 1);
    restore_to(&repo, &second, target.path());
    assert_eq!(describe(source.path()), describe(target.path()));
    for snapshot in [&first, &second] {
        let report = verify_now(&repo, snapshot);
        assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    }
}

#[test]
fn a_repository_made_without_dictionaries_never_has_one() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_logs(source.path(), 300);
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(repo_dir.path()).unwrap());
    let config = RepoConfig {
        dictionaries: false,
        ..small_config()
    };
    let repo = Repository::open_or_init(backend, config).unwrap();
    run_backup(&repo, source.path()).unwrap();
    assert!(dictionary_objects(repo_dir.path()).is_empty());
    // Its config does not mention them, so binaries older than dictionaries still open it.
    let config = fs::read_to_string(repo_dir.path().join("config.json")).unwrap();
    assert!(!config.contains("dictionaries"), "{config}");
}

#[test]
fn a_lost_dictionary_names_the_files_compressed_with_it_and_spares_the_rest() {
    let (source, repo_dir, target) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write_logs(source.path(), 100);
    let repo = open_repo(repo_dir.path());
    let snapshot = run_backup(&repo, source.path()).unwrap().snapshot;
    let [dictionary] = &dictionary_objects(repo_dir.path())[..] else {
        panic!("one dictionary expected");
    };
    fs::remove_file(dictionary).unwrap();

    let repo = open_repo(repo_dir.path());
    let report = verify_now(&repo, &snapshot);
    assert_eq!(report.damaged.len(), 100, "{:?}", report.damaged);
    assert!(
        report
            .damaged
            .iter()
            .all(|d| d.path.starts_with("logs/")
                && d.reason.contains("dictionary that cannot be read")),
        "{:?}",
        report.damaged
    );
    let restored = restore(
        &repo,
        &snapshot,
        &RestoreOptions::new(target.path()),
        Control::silent(),
    )
    .unwrap();
    assert_eq!(restored.failed.len(), 100);
    assert_eq!(
        fs::read(target.path().join("noise.bin")).unwrap(),
        pseudo_random(200_000, 8)
    );
}

/// Regression: a source that gave no dictionary was sampled again by every later backup (a walk
/// and up to 4 MiB read, every night, for the same answer).
#[test]
fn a_source_that_gave_no_dictionary_is_not_sampled_again() {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for n in 0..50 {
        fs::write(
            source.path().join(format!("{n}.bin")),
            pseudo_random(9000, n),
        )
        .unwrap();
    }
    let repo = open_repo(repo_dir.path());
    run_backup(&repo, source.path()).unwrap();
    assert!(dictionary_objects(repo_dir.path()).is_empty());
    write_logs(source.path(), 100);
    run_backup(&repo, source.path()).unwrap();
    assert!(dictionary_objects(repo_dir.path()).is_empty());
    // The first backup of another source into the repository trains one.
    let other = tempfile::tempdir().unwrap();
    write_logs(other.path(), 100);
    run_backup(&repo, other.path()).unwrap();
    assert_eq!(dictionary_objects(repo_dir.path()).len(), 1);
}
