//! Encrypted repositories (format version 2) through the engine, on real temporary folders:
//! round trips, deduplication, incremental backups, prune and verify as in version 1, with no
//! byte of the source readable in the repository.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use backplan_plugin_nfs_objects::backend::{Backend, LocalBackend};
use backplan_plugin_nfs_objects::backup::{BackupOptions, backup};
use backplan_plugin_nfs_objects::control::Control;
use backplan_plugin_nfs_objects::error::Error;
use backplan_plugin_nfs_objects::keyring::{Kek, TEST_KDF_VARIABLE};
use backplan_plugin_nfs_objects::prune::{PruneOptions, Retention, prune};
use backplan_plugin_nfs_objects::repo::{RepoConfig, Repository};
use backplan_plugin_nfs_objects::restore::{RestoreOptions, restore};
use backplan_plugin_nfs_objects::verify::{VerifyOptions, verify};

const MARKER: &[u8] = b"in-process-marker-5b1e0d";

fn passphrase(text: &str) -> Kek {
    // SAFETY: every test of this binary sets the same value before any key is made.
    unsafe { std::env::set_var(TEST_KDF_VARIABLE, "1") };
    Kek::Passphrase {
        passphrase: text.as_bytes().to_vec(),
        from: "passphrase in $TEST".into(),
    }
}

fn config() -> RepoConfig {
    RepoConfig {
        chunk_size: 64 << 10,
        pack_size: 256 << 10,
        ..RepoConfig::default()
    }
}

fn backend(dir: &Path) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::new(dir).unwrap())
}

fn tree(root: &Path) {
    fs::create_dir_all(root.join("a")).unwrap();
    let mut log = Vec::new();
    for i in 0..3000 {
        log.extend_from_slice(format!("line {i} ").as_bytes());
        log.extend_from_slice(MARKER);
        log.push(b'\n');
    }
    fs::write(root.join("a/log.txt"), &log).unwrap();
    let mut rng = fastrand::Rng::with_seed(4);
    let noise: Vec<u8> = (0..500_000).map(|_| rng.u8(..)).collect();
    fs::write(root.join("a/noise.bin"), &noise).unwrap();
    fs::write(root.join("a/copy.bin"), &noise).unwrap();
    // Small logs alike, which a dictionary is trained on (it holds their words: sealed too).
    fs::create_dir_all(root.join("logs")).unwrap();
    let words: Vec<String> = (0..2000)
        .map(|i| format!("step-{:x}", rng.u64(..) >> (i % 40)))
        .collect();
    for n in 0..100 {
        let mut text = Vec::new();
        for _ in 0..400 {
            text.extend_from_slice(words[rng.usize(..words.len())].as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(MARKER);
        fs::write(root.join(format!("logs/{n}.log")), text).unwrap();
    }
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

/// Every file of `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(folder) = stack.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_encrypted_repository_round_trips_deduplicates_and_hides_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let (source, repo_dir) = (dir.path().join("src"), dir.path().join("repo"));
    tree(&source);
    let kek = passphrase("p");
    let repo = Repository::open_or_init_with(backend(&repo_dir), config(), Some(&kek)).unwrap();
    assert!(repo.config().is_encrypted());
    let first = backup(&repo, &BackupOptions::new(&source), Control::silent()).unwrap();
    // The copy's full chunks are deduplicated (its last, short chunk is not tracked): far less
    // than the 1 MB of the two copies is stored.
    let stored = first.snapshot.stats.bytes_stored;
    assert!(stored < 700_000, "{stored}");

    assert!(
        files(&repo_dir)
            .iter()
            .any(|(name, _)| name.starts_with("dictionaries/")),
        "a dictionary was trained"
    );
    for (name, bytes) in files(&repo_dir) {
        assert!(!bytes.windows(MARKER.len()).any(|w| w == MARKER), "{name}");
        let plain = name == "config.json" || name.starts_with("keys/");
        let json = bytes.windows(9).any(|w| w == b"\"source\":");
        assert!(plain || !json, "{name} is plain JSON");
    }

    fs::write(source.join("a/new.txt"), "new").unwrap();
    let repo = Repository::open_with(backend(&repo_dir), Some(&kek)).unwrap();
    let second = backup(&repo, &BackupOptions::new(&source), Control::silent()).unwrap();
    assert_eq!(second.snapshot.stats.files_read, 1, "incremental");

    let target = dir.path().join("out");
    let report = restore(
        &repo,
        &second.snapshot,
        &RestoreOptions::new(&target),
        Control::silent(),
    )
    .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(files(&target), files(&source));
    // A second restore over the same files compares them under the keyed ids.
    let again = restore(
        &repo,
        &second.snapshot,
        &RestoreOptions::new(&target),
        Control::silent(),
    )
    .unwrap();
    assert_eq!(again.unchanged, 104, "{again:?}");

    let options = VerifyOptions {
        grace: std::time::Duration::ZERO,
        ..VerifyOptions::default()
    };
    let verified = verify(&repo, &second.snapshot, &options, Control::silent()).unwrap();
    assert!(verified.is_sound(), "{verified:?}");

    let pruned = prune(&repo, &keep_last_one(), Control::silent()).unwrap();
    assert_eq!(pruned.forgotten.len(), 1, "{pruned:?}");
    let verified = verify(&repo, &second.snapshot, &options, Control::silent()).unwrap();
    assert!(verified.is_sound(), "{verified:?}");
}

#[test]
fn an_encrypted_repository_is_refused_without_its_key_and_a_plaintext_one_with_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let kek = passphrase("p");
    let encrypted = dir.path().join("enc");
    Repository::open_or_init_with(backend(&encrypted), config(), Some(&kek)).unwrap();
    let err = Repository::open(backend(&encrypted)).unwrap_err();
    assert!(matches!(err, Error::Encryption(_)), "{err}");
    let err = Repository::open_with(backend(&encrypted), Some(&passphrase("q"))).unwrap_err();
    assert!(err.to_string().contains("wrong passphrase"), "{err}");

    let plain = dir.path().join("plain");
    Repository::open_or_init(backend(&plain), config()).unwrap();
    let before = files(&plain);
    let err = Repository::open_or_init_with(backend(&plain), config(), Some(&kek)).unwrap_err();
    assert!(err.to_string().contains("not encrypted"), "{err}");
    assert_eq!(files(&plain), before);
}

#[test]
fn a_creation_killed_between_its_config_and_its_key_is_completed_by_the_next_backup() {
    let dir = tempfile::tempdir().unwrap();
    let (source, repo_dir) = (dir.path().join("src"), dir.path().join("repo"));
    tree(&source);
    let kek = passphrase("p");
    Repository::open_or_init_with(backend(&repo_dir), config(), Some(&kek)).unwrap();
    for key in fs::read_dir(repo_dir.join("keys")).unwrap() {
        fs::remove_file(key.unwrap().path()).unwrap();
    }
    let err = Repository::open_with(backend(&repo_dir), Some(&kek)).unwrap_err();
    assert!(err.to_string().contains("holds no key"), "{err}");
    let repo = Repository::open_or_init_with(backend(&repo_dir), config(), Some(&kek)).unwrap();
    backup(&repo, &BackupOptions::new(&source), Control::silent()).unwrap();
    let reopened = Repository::open_with(backend(&repo_dir), Some(&kek)).unwrap();
    assert_eq!(reopened.key_id(), repo.key_id());

    // Once anything is sealed, a repository that lost its keys stays unopenable: never a new
    // key over data that the old one sealed.
    for key in fs::read_dir(repo_dir.join("keys")).unwrap() {
        fs::remove_file(key.unwrap().path()).unwrap();
    }
    let err = Repository::open_or_init_with(backend(&repo_dir), config(), Some(&kek)).unwrap_err();
    assert!(err.to_string().contains("holds no key"), "{err}");
}

#[test]
fn an_unchanged_backup_seals_its_copy_of_the_parent_manifest_under_its_own_name() {
    let dir = tempfile::tempdir().unwrap();
    let (source, repo_dir) = (dir.path().join("src"), dir.path().join("repo"));
    tree(&source);
    let kek = passphrase("p");
    let repo = Repository::open_or_init_with(backend(&repo_dir), config(), Some(&kek)).unwrap();
    let first = backup(&repo, &BackupOptions::new(&source), Control::silent())
        .unwrap()
        .snapshot;
    let second = backup(&repo, &BackupOptions::new(&source), Control::silent())
        .unwrap()
        .snapshot;
    assert_eq!(
        second.manifest_blake3, first.manifest_blake3,
        "the same manifest"
    );
    let sealed = |name: &str| fs::read(repo_dir.join(name)).unwrap();
    assert_ne!(
        sealed(&first.manifest),
        sealed(&second.manifest),
        "sealed again under the copy's own name, not hard-linked"
    );

    prune(&repo, &keep_last_one(), Control::silent()).unwrap();
    let target = dir.path().join("out");
    let report = restore(
        &repo,
        &second,
        &RestoreOptions::new(&target),
        Control::silent(),
    )
    .unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(files(&target), files(&source));
}
