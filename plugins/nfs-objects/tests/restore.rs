//! Restore into a target that already holds things, some of them hostile: links planted where
//! the snapshot's entries go, files that look restored but are not, requests that name no folder.
//! Nothing may ever be written outside the target, nor through a link.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;

use backplan_plugin_nfs_objects::backend::{Backend, LocalBackend};
use backplan_plugin_nfs_objects::backup::{BackupOptions, backup};
use backplan_plugin_nfs_objects::control::Control;
use backplan_plugin_nfs_objects::error::{Error, Result};
use backplan_plugin_nfs_objects::manifest::{Entry, Kind, ManifestReader, ManifestWriter};
use backplan_plugin_nfs_objects::plugin::plugin_descriptor;
use backplan_plugin_nfs_objects::repo::{RepoConfig, Repository};
use backplan_plugin_nfs_objects::restore::{RestoreOptions, RestoreReport, restore};
use backplan_plugin_nfs_objects::snapshot::Snapshot;
use backplan_plugin_sdk::testing::Harness;
use backplan_plugin_sdk::{Action, ErrorKind};
use serde_json::json;

const CHUNK: u64 = 64 * 1024;

fn open_repo(dir: &Path) -> Repository {
    let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir).unwrap());
    let config = RepoConfig {
        chunk_size: CHUNK,
        pack_size: 256 * 1024,
        ..RepoConfig::default()
    };
    Repository::open_or_init(backend, config).unwrap()
}

/// A source tree, a repository and a snapshot of the tree.
struct Fixture {
    source: tempfile::TempDir,
    _repo_dir: tempfile::TempDir,
    repo: Repository,
    snapshot: Snapshot,
}

/// A repository holding one snapshot of the tree `build` makes.
fn snapshot_of(build: impl FnOnce(&Path)) -> Fixture {
    let (source, repo_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build(source.path());
    let repo = open_repo(repo_dir.path());
    let report = backup(&repo, &BackupOptions::new(source.path()), Control::silent()).unwrap();
    Fixture {
        source,
        _repo_dir: repo_dir,
        repo,
        snapshot: report.snapshot,
    }
}

fn restore_with(
    repo: &Repository,
    snapshot: &Snapshot,
    target: &Path,
    change: impl FnOnce(&mut RestoreOptions),
) -> Result<RestoreReport> {
    let mut options = RestoreOptions::new(target);
    change(&mut options);
    restore(repo, snapshot, &options, Control::silent())
}

/// Every name under `dir`, with its content for files.
fn listing(dir: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let content = meta.is_file().then(|| fs::read(&path).unwrap());
        out.push((path.display().to_string(), content));
        if meta.is_dir() {
            out.extend(listing(&path));
        }
    }
    out.sort();
    out
}

fn mtime_ns(path: &Path) -> i64 {
    let meta = fs::symlink_metadata(path).unwrap();
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

fn set_mtime_ns(path: &Path, ns: i64) {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

fn failed_paths(report: &RestoreReport) -> Vec<String> {
    report
        .failed
        .iter()
        .map(|f| format!("{}: {}", f.path, f.reason))
        .collect()
}

#[test]
fn a_symlinked_folder_planted_in_the_target_is_never_written_through() {
    let Fixture {
        _repo_dir,
        repo,
        snapshot,
        ..
    } = snapshot_of(|root| {
        fs::create_dir(root.join("sub")).unwrap();
        fs::set_permissions(root.join("sub"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("sub/a.txt"), b"from the backup").unwrap();
        fs::create_dir(root.join("sub/deeper")).unwrap();
        fs::write(root.join("sub/deeper/b.txt"), b"deeper").unwrap();
    });
    let (target, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::set_permissions(outside.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let outside_mtime = mtime_ns(outside.path());
    symlink(outside.path(), target.path().join("sub")).unwrap();

    let report = restore_with(&repo, &snapshot, target.path(), |_| {}).unwrap();
    assert!(
        listing(outside.path()).is_empty(),
        "{:?}",
        listing(outside.path())
    );
    let failed = failed_paths(&report);
    assert!(
        failed
            .iter()
            .any(|f| f.ends_with("/sub: a symlink is in the way (use force to replace it)")),
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .any(|f| f.contains("sub/a.txt: sub is a symlink, which is never followed")),
        "{failed:?}"
    );
    // Nor is the folder's metadata set through the link.
    let meta = fs::metadata(outside.path()).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(mtime_ns(outside.path()), outside_mtime);
    assert!(
        fs::symlink_metadata(target.path().join("sub"))
            .unwrap()
            .is_symlink()
    );

    // With force the link, not what it points to, is replaced by the real folder.
    let report = restore_with(&repo, &snapshot, target.path(), |o| o.force = true).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert!(listing(outside.path()).is_empty());
    let sub = fs::symlink_metadata(target.path().join("sub")).unwrap();
    assert!(sub.is_dir());
    assert_eq!(sub.mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read(target.path().join("sub/a.txt")).unwrap(),
        b"from the backup"
    );
    assert_eq!(
        fs::read(target.path().join("sub/deeper/b.txt")).unwrap(),
        b"deeper"
    );
}

#[test]
fn a_symlink_planted_where_a_file_goes_is_not_written_through() {
    let Fixture {
        source,
        _repo_dir,
        repo,
        snapshot,
    } = snapshot_of(|root| {
        fs::write(root.join("a.txt"), b"from the backup").unwrap();
        fs::write(root.join("same-size"), b"0123456789").unwrap();
    });
    let (target, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let victim = outside.path().join("victim");
    fs::write(&victim, b"not yours").unwrap();
    symlink(&victim, target.path().join("a.txt")).unwrap();
    // A link to a file with the entry's size and mtime is still a link.
    let lookalike = outside.path().join("lookalike");
    fs::write(&lookalike, b"9876543210").unwrap();
    set_mtime_ns(&lookalike, mtime_ns(&source.path().join("same-size")));
    symlink(&lookalike, target.path().join("same-size")).unwrap();

    let report = restore_with(&repo, &snapshot, target.path(), |_| {}).unwrap();
    let failed = failed_paths(&report);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed[0].ends_with("a.txt: a symlink is in the way (use force to replace it)"));
    assert_eq!(report.unchanged, 0);
    assert_eq!(fs::read(&victim).unwrap(), b"not yours");
    assert_eq!(fs::read(&lookalike).unwrap(), b"9876543210");

    for trust_metadata in [false, true] {
        let report = restore_with(&repo, &snapshot, target.path(), |o| {
            o.force = true;
            o.trust_metadata = trust_metadata;
        })
        .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        let restored = fs::symlink_metadata(target.path().join("a.txt")).unwrap();
        assert!(restored.is_file());
        assert_eq!(
            fs::read(target.path().join("a.txt")).unwrap(),
            b"from the backup"
        );
        assert_eq!(
            fs::read(target.path().join("same-size")).unwrap(),
            b"0123456789"
        );
        assert_eq!(fs::read(&victim).unwrap(), b"not yours");
        assert_eq!(fs::read(&lookalike).unwrap(), b"9876543210");
    }
}

/// `snapshot` with its manifest replaced by `entries` (in manifest order), as a crafted or
/// damaged repository could hold.
fn crafted(repo: &Repository, snapshot: &Snapshot, entries: &[Entry]) -> Snapshot {
    let backend = repo.backend();
    let staged = backend.staging_dir().join("crafted-manifest");
    let mut writer = ManifestWriter::create(&staged).unwrap();
    for entry in entries {
        writer.push(entry).unwrap();
    }
    let done = writer.finish().unwrap();
    let name = "manifests/crafted.jsonl.zst";
    backend.put_file(name, &done.staged).unwrap();
    Snapshot {
        manifest: name.into(),
        manifest_blake3: done.digest,
        ..snapshot.clone()
    }
}

fn entries(repo: &Repository, snapshot: &Snapshot) -> Vec<Entry> {
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
fn a_symlink_restored_earlier_is_not_followed_by_the_entries_under_its_name() {
    let Fixture {
        _repo_dir,
        repo,
        snapshot,
        ..
    } = snapshot_of(|root| {
        fs::write(root.join("a.txt"), b"payload").unwrap();
    });
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"secret").unwrap();
    let real = entries(&repo, &snapshot);
    let (root, file) = (&real[0], &real[1]);
    // `sub` is a symlink to the outside folder, then a file, a folder and a hard link "below"
    // it, and a hard link through it to a file outside: no valid snapshot has these.
    let mut link = root.clone();
    link.path = b"sub".to_vec();
    link.kind = Kind::Symlink;
    link.target = Some(outside.path().as_os_str().as_encoded_bytes().to_vec());
    let mut under = file.clone();
    under.path = b"sub/a.txt".to_vec();
    let mut folder = root.clone();
    folder.path = b"sub/folder".to_vec();
    let mut hardlink = file.clone();
    hardlink.path = b"sub/linked".to_vec();
    hardlink.kind = Kind::Hardlink;
    hardlink.chunks.clear();
    hardlink.target = Some(b"a.txt".to_vec());
    let mut stealer = hardlink.clone();
    stealer.path = b"taken".to_vec();
    stealer.target = Some(b"sub/secret".to_vec());
    let hostile = crafted(
        &repo,
        &snapshot,
        &[
            root.clone(),
            file.clone(),
            link,
            under,
            folder,
            hardlink,
            stealer,
        ],
    );

    for force in [false, true] {
        let target = tempfile::tempdir().unwrap();
        let report = restore_with(&repo, &hostile, target.path(), |o| o.force = force).unwrap();
        assert_eq!(
            listing(outside.path()),
            [(
                outside.path().join("secret").display().to_string(),
                Some(b"secret".to_vec())
            )],
            "force {force}"
        );
        let failed = failed_paths(&report);
        assert_eq!(failed.len(), 4, "{failed:?}");
        assert!(
            failed
                .iter()
                .all(|f| f.contains("sub is a symlink, which is never followed")),
            "{failed:?}"
        );
        assert!(!target.path().join("taken").exists());
        assert_eq!(fs::read(target.path().join("a.txt")).unwrap(), b"payload");
        assert!(
            fs::symlink_metadata(target.path().join("sub"))
                .unwrap()
                .is_symlink()
        );
    }

    // A path that climbs out is refused before anything is written.
    let mut climber = file.clone();
    climber.path = b"../escaped".to_vec();
    let escaping = crafted(&repo, &snapshot, &[root.clone(), climber]);
    let target = tempfile::tempdir().unwrap();
    let inner = target.path().join("inner");
    let err = restore_with(&repo, &escaping, &inner, |_| {}).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(!target.path().join("escaped").exists());
}

#[test]
fn hard_links_are_recreated_as_links() {
    let Fixture {
        _repo_dir,
        repo,
        snapshot,
        ..
    } = snapshot_of(|root| {
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/first"), b"shared bytes").unwrap();
        fs::hard_link(root.join("d/first"), root.join("second")).unwrap();
    });
    let target = tempfile::tempdir().unwrap();
    let report = restore_with(&repo, &snapshot, target.path(), |_| {}).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.hardlinks, 1);
    let first = fs::metadata(target.path().join("d/first")).unwrap();
    let second = fs::metadata(target.path().join("second")).unwrap();
    assert_eq!(first.ino(), second.ino());
    assert_eq!(
        fs::read(target.path().join("second")).unwrap(),
        b"shared bytes"
    );

    // Restored again: already linked, nothing changes.
    let report = restore_with(&repo, &snapshot, target.path(), |_| {}).unwrap();
    assert!(
        report.failed.is_empty() && report.kept_newer.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        fs::metadata(target.path().join("second")).unwrap().ino(),
        fs::metadata(target.path().join("d/first")).unwrap().ino()
    );
}

#[test]
fn a_newer_file_where_a_hard_link_goes_is_kept_unless_force() {
    let Fixture {
        _repo_dir,
        repo,
        snapshot,
        ..
    } = snapshot_of(|root| {
        fs::write(root.join("first"), b"shared bytes").unwrap();
        fs::hard_link(root.join("first"), root.join("second")).unwrap();
        set_mtime_ns(&root.join("first"), 1_600_000_000_000_000_000);
    });
    let target = tempfile::tempdir().unwrap();
    fs::write(target.path().join("second"), b"written after the backup").unwrap();

    let report = restore_with(&repo, &snapshot, target.path(), |_| {}).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.kept_newer.len(), 1, "{report:?}");
    assert!(report.kept_newer[0].ends_with("second"));
    assert_eq!(
        fs::read(target.path().join("second")).unwrap(),
        b"written after the backup"
    );

    let report = restore_with(&repo, &snapshot, target.path(), |o| o.force = true).unwrap();
    assert!(
        report.failed.is_empty() && report.kept_newer.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        fs::metadata(target.path().join("second")).unwrap().ino(),
        fs::metadata(target.path().join("first")).unwrap().ino()
    );
}

#[test]
fn a_file_with_the_snapshots_size_and_mtime_but_other_bytes_is_rewritten_unless_metadata_is_trusted()
 {
    let mut large = vec![7u8; 3 * CHUNK as usize + 100];
    let Fixture {
        source,
        _repo_dir,
        repo,
        snapshot,
    } = snapshot_of(|root| {
        fs::write(root.join("small.txt"), b"the right bytes").unwrap();
        fs::write(root.join("large.bin"), &large).unwrap();
        fs::write(root.join("kept.txt"), b"identical").unwrap();
    });
    let target = tempfile::tempdir().unwrap();
    let report = restore_with(&repo, &snapshot, target.path(), |_| {}).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.unchanged, 0);

    // Same size, same mtime, other bytes (in the last chunk, for the large file).
    let tamper = |name: &str, bytes: &[u8]| {
        let path = target.path().join(name);
        let mtime = mtime_ns(&path);
        fs::write(&path, bytes).unwrap();
        set_mtime_ns(&path, mtime);
    };
    tamper("small.txt", b"the wrong bytes");
    large[3 * CHUNK as usize + 50] = 8;
    tamper("large.bin", &large);

    let report =
        restore_with(&repo, &snapshot, target.path(), |o| o.trust_metadata = true).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.unchanged, 3, "trusted on size and mtime");
    assert_eq!(
        fs::read(target.path().join("small.txt")).unwrap(),
        b"the wrong bytes"
    );

    let report = restore_with(&repo, &snapshot, target.path(), |_| {}).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        report.unchanged, 1,
        "only kept.txt holds the snapshot's bytes"
    );
    for name in ["small.txt", "large.bin", "kept.txt"] {
        assert_eq!(
            fs::read(target.path().join(name)).unwrap(),
            fs::read(source.path().join(name)).unwrap(),
            "{name}"
        );
        assert_eq!(
            mtime_ns(&target.path().join(name)),
            mtime_ns(&source.path().join(name))
        );
    }

    // An unchanged file whose mode alone differs gets the snapshot's mode back.
    let kept = target.path().join("kept.txt");
    fs::set_permissions(&kept, fs::Permissions::from_mode(0o600)).unwrap();
    let report = restore_with(&repo, &snapshot, target.path(), |_| {}).unwrap();
    assert_eq!(report.unchanged, 3);
    assert_eq!(
        fs::metadata(&kept).unwrap().mode() & 0o7777,
        fs::metadata(source.path().join("kept.txt")).unwrap().mode() & 0o7777
    );
}

#[test]
fn an_empty_target_is_refused() {
    let Fixture {
        _repo_dir,
        repo,
        snapshot,
        ..
    } = snapshot_of(|root| {
        fs::write(root.join("a.txt"), b"x").unwrap();
    });
    let err = restore_with(&repo, &snapshot, Path::new(""), |_| {}).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert!(err.to_string().contains("target is empty"), "{err}");
    assert!(
        !Path::new("a.txt").exists(),
        "nothing written into the current folder"
    );
}

#[test]
fn a_sub_path_never_reaches_outside_the_target_and_may_name_a_file() {
    let Fixture {
        _repo_dir,
        repo,
        snapshot,
        ..
    } = snapshot_of(|root| {
        fs::create_dir_all(root.join("jobs/1")).unwrap();
        fs::write(root.join("jobs/1/out.log"), b"log").unwrap();
        fs::write(root.join("jobs/other"), b"other").unwrap();
    });
    let parent = tempfile::tempdir().unwrap();
    let target = parent.path().join("target");
    for bad in [&b"../escape"[..], b"jobs/../..", b"./jobs", b"jobs//1"] {
        let err =
            restore_with(&repo, &snapshot, &target, |o| o.subpath = bad.to_vec()).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }
    assert!(
        listing(parent.path()).is_empty(),
        "{:?}",
        listing(parent.path())
    );

    let err = restore_with(&repo, &snapshot, &target, |o| {
        o.subpath = b"jobs/2".to_vec()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("jobs/2 is not in snapshot"),
        "{err}"
    );
    assert!(listing(&target).is_empty(), "{:?}", listing(&target));

    let report = restore_with(&repo, &snapshot, &target, |o| {
        o.subpath = b"jobs/1/out.log".to_vec()
    })
    .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.files, 1);
    assert_eq!(fs::read(target.join("jobs/1/out.log")).unwrap(), b"log");
    assert!(!target.join("jobs/other").exists());
}

#[test]
fn empty_or_climbing_restore_options_are_configuration_errors() {
    let (source, repo_dir, drill) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    fs::write(source.path().join("out.log"), b"built").unwrap();
    let harness = Harness::new(plugin_descriptor());
    let config = json!({"source": source.path(), "repository": repo_dir.path().join("repo")});
    let backup = harness.run(Action::Backup, config.clone()).unwrap();
    let target = drill.path().display().to_string();
    for (options, says) in [
        (json!({"target": ""}), "option target is empty"),
        (
            json!({"target": target, "path": ""}),
            "option path is empty",
        ),
        (
            json!({"target": target, "path": "../x"}),
            "must not contain",
        ),
        (
            json!({"target": target, "trust_metadata": "yes"}),
            "options",
        ),
    ] {
        for check in [true, false] {
            let mut request = harness.request(
                if check {
                    Action::Check
                } else {
                    Action::Restore
                },
                config.clone(),
            );
            if check {
                request.check_for = Some(Action::Restore);
                request.force = true;
            }
            request.record = Some(backup.record.clone());
            request.options = options.clone();
            let err = harness.run_request(&request).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Config, "{options}: {err:?}");
            assert!(err.message.contains(says), "{options}: {}", err.message);
        }
    }
    assert!(listing(drill.path()).is_empty());

    let empty_source = json!({"source": "", "repository": repo_dir.path().join("repo")});
    let mut request = harness.request(Action::Restore, empty_source);
    request.record = Some(backup.record.clone());
    request.force = true;
    let err = harness.run_request(&request).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config, "{err:?}");
    assert!(err.message.contains("source is empty"), "{}", err.message);

    let mut request = harness.request(Action::Restore, config);
    request.record = Some(backup.record);
    request.options = json!({"target": target, "path": "/", "trust_metadata": true});
    harness.run_request(&request).unwrap();
    assert_eq!(fs::read(drill.path().join("out.log")).unwrap(), b"built");
}
