//! The plugin through the SDK's in-process harness (the real ABI), as the runner drives it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use backplan_plugin_nfs_objects::backend::LocalBackend;
use backplan_plugin_nfs_objects::backup::{BackupOptions, backup};
use backplan_plugin_nfs_objects::control::Control;
use backplan_plugin_nfs_objects::plugin::plugin_descriptor;
use backplan_plugin_nfs_objects::repo::Repository;
use backplan_plugin_sdk::testing::Harness;
use backplan_plugin_sdk::{Action, Discovered, ErrorKind, Request};
use serde_json::{Value, json};

#[test]
fn backup_verify_restore_prune_through_the_abi() {
    let (source, repo, drill) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    fs::create_dir(source.path().join("job")).unwrap();
    fs::write(source.path().join("job/out.log"), b"built\n".repeat(1000)).unwrap();
    let harness = Harness::new(plugin_descriptor());
    let config = json!({
        "source": source.path(),
        "repository": repo.path().join("repo"),
        "retention": {"keep_last": 1},
    });
    assert!(harness.describe().actions.contains(&Action::Prune));
    harness.run(Action::Check, config.clone()).unwrap();
    assert!(!repo.path().join("repo").exists(), "check changes nothing");

    let backup = harness.run(Action::Backup, config.clone()).unwrap();
    assert_eq!(backup.record["files"], 1);
    let snapshot = backup.record["snapshot"].as_str().unwrap().to_owned();
    assert_eq!(backup.outputs["snapshot"], snapshot);

    let mut verify = harness.request(Action::Verify, config.clone());
    verify.record = Some(backup.record.clone());
    harness.run_request(&verify).unwrap();

    let mut restore = harness.request(Action::Restore, config.clone());
    restore.record = Some(backup.record.clone());
    restore.options = json!({"target": drill.path()});
    harness.run_request(&restore).unwrap();
    assert_eq!(
        fs::read(drill.path().join("job/out.log")).unwrap(),
        fs::read(source.path().join("job/out.log")).unwrap()
    );

    harness.run(Action::Backup, config.clone()).unwrap();
    let mut prune = harness.request(Action::Prune, config.clone());
    prune.dry_run = true;
    let pruned = harness.run_request(&prune).unwrap();
    assert_eq!(pruned.record["forgotten"], json!([snapshot]));
    assert_eq!(pruned.record["dry_run"], true);
}

#[test]
fn an_nfs_source_that_is_not_mounted_is_refused() {
    let (source, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let harness = Harness::new(plugin_descriptor());
    let config = json!({"source": source.path(), "repository": repo.path(), "kind": "nfs"});
    for action in [Action::Check, Action::Backup] {
        let err = harness.run(action, config.clone()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent, "{err:?}");
        assert!(
            err.message.contains("is the volume mounted"),
            "{}",
            err.message
        );
    }
    assert!(
        fs::read_dir(repo.path()).unwrap().next().is_none(),
        "nothing written"
    );

    let typo = json!({"source": source.path(), "repository": repo.path(), "knd": "nfs"});
    let err = harness.run(Action::Check, typo).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config);
}

#[test]
fn a_prune_or_verify_from_a_machine_without_the_source_mounted_passes_its_check() {
    let (source, repo) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let harness = Harness::new(plugin_descriptor());
    let mounted = json!({"source": source.path(), "repository": repo.path().join("repo")});
    harness.run(Action::Backup, mounted).unwrap();
    // On the admin machine the artifact volume is not there at all.
    let elsewhere = json!({
        "source": source.path().join("not-mounted"), "repository": repo.path().join("repo"),
        "kind": "nfs",
    });
    for action in [Action::Prune, Action::Verify] {
        let mut check = harness.request(Action::Check, elsewhere.clone());
        check.check_for = Some(action);
        harness
            .run_request(&check)
            .unwrap_or_else(|e| panic!("check before {action}: {e:?}"));
    }
    let mut before_backup = harness.request(Action::Check, elsewhere);
    before_backup.check_for = Some(Action::Backup);
    assert!(harness.run_request(&before_backup).is_err());
}

#[test]
fn an_s3_repository_asks_for_its_bucket_and_prefix_only() {
    let harness = Harness::new(plugin_descriptor());
    let s3 = json!({"source": "/data", "repository": "s3://art/ci/artifacts"});
    let asked = harness.run(Action::Permissions, s3).unwrap().record;
    let statements = asked["aws_iam_statements"].as_array().unwrap();
    assert_eq!(statements[0]["Resource"], "arn:aws:s3:::art");
    assert_eq!(statements[1]["Resource"], "arn:aws:s3:::art/ci/artifacts/*");
    let roles = &asked["roles"];
    let actions = |role: &str| roles[role].to_string();
    assert!(actions("backup").contains("s3:PutObject"), "{asked:#}");
    assert!(
        actions("backup").contains("s3:PutObjectRetention"),
        "{asked:#}"
    );
    assert!(!actions("backup").contains("Delete"), "{asked:#}");
    assert!(actions("prune").contains("s3:DeleteObject"), "{asked:#}");
    assert!(!actions("restore").contains("Put") && !actions("restore").contains("Delete"));

    let local = json!({"source": "/data", "repository": "/var/backups/artifacts"});
    let none = harness.run(Action::Permissions, local).unwrap().record;
    assert!(none.get("aws_iam_statements").is_none(), "{none}");
}

#[test]
fn a_plan_that_would_back_up_its_own_repository_or_write_where_it_was_not_asked_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("data");
    fs::create_dir(&source).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&source, &link).unwrap();
    let harness = Harness::new(plugin_descriptor());
    let cases = [
        (
            json!({"repository": source.join("repo")}),
            "is inside source",
        ),
        (
            json!({"repository": link.join("new/../repo")}),
            "is inside source",
        ),
        (json!({"repository": dir.path()}), "is inside repository"),
        (json!({"repository": ""}), "must be an absolute path"),
        (
            json!({"repository": "backups/repo"}),
            "must be an absolute path",
        ),
        (json!({"source": "data"}), "must be an absolute path"),
        (
            json!({"retention": {"keep_last": 0, "keep_daily": 0}}),
            "keep nothing",
        ),
        (json!({"verify_fraction": 1.5}), "verify_fraction"),
    ];
    for (change, expected) in cases {
        let mut config = json!({
            "source": source,
            "repository": dir.path().join("elsewhere"),
        });
        for (key, value) in change.as_object().unwrap() {
            config[key] = value.clone();
        }
        for action in [Action::Check, Action::Backup] {
            let err = harness.run(action, config.clone()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Config, "{change}: {err:?}");
            assert!(err.message.contains(expected), "{change}: {}", err.message);
        }
        assert!(
            fs::read_dir(&source).unwrap().next().is_none(),
            "{change}: nothing written"
        );
        assert!(!dir.path().join("elsewhere").exists(), "{change}");
        assert!(!Path::new("tmp").exists() && !Path::new("config.json").exists());
    }
    let zero = json!({"source": source, "repository": dir.path().join("r"),
                      "retention": {"keep_last": 0}});
    let err = harness.run(Action::Prune, zero).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config, "{err:?}");
}

#[test]
fn a_first_backup_killed_before_it_wrote_its_config_does_not_make_the_folder_foreign() {
    let (source, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::write(source.path().join("a.txt"), b"a").unwrap();
    let repo = dir.path().join("repo");
    fs::create_dir_all(repo.join("tmp")).unwrap();
    // The staged config.json of the killed run (named as before writers were named).
    fs::write(repo.join("tmp/0123456789abcdef0123456789abcdef"), b"{}").unwrap();
    let harness = Harness::new(plugin_descriptor());
    let config = json!({"source": source.path(), "repository": repo});
    let checked = harness.run(Action::Check, config.clone()).unwrap();
    assert!(
        checked.summary.contains("will be created"),
        "{}",
        checked.summary
    );
    harness.run(Action::Backup, config.clone()).unwrap();

    // Anything else in it is someone else's.
    let other = dir.path().join("other");
    fs::create_dir_all(other.join("tmp")).unwrap();
    fs::write(other.join("tmp/notes.txt"), b"mine").unwrap();
    let config = json!({"source": source.path(), "repository": other});
    let err = harness.run(Action::Check, config).unwrap_err();
    assert!(
        err.message.contains("neither a repository nor empty"),
        "{}",
        err.message
    );
}

#[test]
fn a_dry_run_backup_writes_nothing() {
    let (source, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fs::write(source.path().join("a.txt"), b"a").unwrap();
    let repo = dir.path().join("repo");
    let harness = Harness::new(plugin_descriptor());
    let config = json!({"source": source.path(), "repository": repo});
    let mut dry = harness.request(Action::Backup, config.clone());
    dry.dry_run = true;
    let out = harness.run_request(&dry).unwrap();
    assert!(out.summary.contains("would back up"), "{}", out.summary);
    assert!(!repo.exists(), "nothing written");

    harness.run(Action::Backup, config).unwrap();
    let snapshots = || fs::read_dir(repo.join("snapshots")).unwrap().count();
    fs::write(source.path().join("b.txt"), b"b").unwrap();
    let out = harness.run_request(&dry).unwrap();
    assert!(
        out.summary.contains("changed since snapshot"),
        "{}",
        out.summary
    );
    assert_eq!(snapshots(), 1);
}

/// A request for `action` of step `step` of plan `plan` in run `run`.
fn in_run(
    harness: &Harness,
    action: Action,
    config: &Value,
    (plan, step, run): (&str, &str, &str),
) -> Request {
    let mut request = harness.request(action, config.clone());
    request.plan = plan.into();
    request.step_id = step.into();
    request.run_id = run.into();
    request
}

/// Every file and folder under `dir` with its size and mtime: what "changes nothing" compares.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                pending.push(entry.path());
            }
            found.insert(entry.path(), (meta.len(), meta.modified().unwrap()));
        }
    }
    found
}

#[test]
fn discover_gives_back_the_records_the_backups_returned_and_changes_nothing() {
    let (source, dir, drill) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let repo = dir.path().join("repo");
    let harness = Harness::new(plugin_descriptor());
    let config = json!({"source": source.path(), "repository": repo});
    let (first_run, second_run) = ("20260101T030000Z-aaaaaa", "20260102T030000Z-bbbbbb");
    fs::write(source.path().join("build.log"), b"first\n").unwrap();
    // A snapshot made before headers named their run, by the engine alone.
    let engine = Repository::open_or_init(
        Arc::new(LocalBackend::new(&repo).unwrap()),
        Default::default(),
    )
    .unwrap();
    backup(
        &engine,
        &BackupOptions::new(source.path()),
        Control::silent(),
    )
    .unwrap();
    let run = |who: (&str, &str, &str)| {
        harness
            .run_request(&in_run(&harness, Action::Backup, &config, who))
            .unwrap()
    };
    let first = run(("p", "files", first_run));
    fs::write(source.path().join("build.log"), b"second\n").unwrap();
    let second = run(("p", "files", second_run));
    run(("p", "other-step", second_run));
    run(("other-plan", "files", second_run));
    fs::write(
        repo.join("snapshots/20250101T000000Z-deadbeef.json"),
        b"{\"id\": ",
    )
    .unwrap();

    let before = listing(dir.path());
    let found = harness
        .run_request(&in_run(
            &harness,
            Action::Discover,
            &config,
            ("p", "files", "rebuild"),
        ))
        .unwrap();
    assert_eq!(
        listing(dir.path()),
        before,
        "discover changed the repository"
    );
    let discovered: Discovered = serde_json::from_value(found.record.clone()).unwrap();
    assert_eq!(discovered.backups.len(), 2, "{:#}", found.record);
    for (backup, made) in discovered.backups.iter().zip([&first, &second]) {
        assert_eq!(backup.record, made.record);
        assert_eq!(backup.outputs, made.outputs);
        assert_eq!((backup.bytes, &backup.summary), (made.bytes, &made.summary));
    }
    // A rebuilt start is known to the second its run id names (the snapshot's own time only
    // orders runs within that second), so each lies in its id's second.
    let runs: Vec<&str> = discovered
        .backups
        .iter()
        .map(|b| b.run_id.as_str())
        .collect();
    assert_eq!(runs, [first_run, second_run]);
    for (backup, second) in discovered
        .backups
        .iter()
        .zip(["2026-01-01T03:00:00Z", "2026-01-02T03:00:00Z"])
    {
        let started: jiff::Timestamp = backup.started_at.parse().unwrap();
        let second: jiff::Timestamp = second.parse().unwrap();
        assert!(
            started >= second && started < second + jiff::SignedDuration::from_secs(1),
            "{}: {started}",
            backup.run_id
        );
    }
    let warnings = found.warnings.join("\n");
    assert!(warnings.contains("1 snapshot(s) of"), "{warnings}");
    assert!(
        warnings.contains("snapshots/20250101T000000Z-deadbeef.json is corrupt"),
        "{warnings}"
    );

    // The rediscovered record of the first run restores the first run's files.
    let mut restore = harness.request(Action::Restore, config.clone());
    restore.record = Some(discovered.backups[0].record.clone());
    restore.options = json!({"target": drill.path()});
    harness.run_request(&restore).unwrap();
    assert_eq!(
        fs::read(drill.path().join("build.log")).unwrap(),
        b"first\n"
    );
}

#[test]
fn discovering_or_restoring_from_a_repository_that_is_not_there_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("not-mounted/repo");
    let harness = Harness::new(plugin_descriptor());
    let config = json!({"source": dir.path().join("data"), "repository": repo});
    let err = harness.run(Action::Discover, config.clone()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config, "{err:?}");
    assert!(
        err.message.contains(&*repo.to_string_lossy()) && err.message.contains("config.json"),
        "{}",
        err.message
    );
    let record = json!({"repository": repo, "snapshot": "20260101T000000Z-00000000",
        "source": dir.path().join("data"), "files": 1, "bytes": 1, "manifest_blake3": "00"});
    for action in [Action::Verify, Action::Restore] {
        let mut request = harness.request(action, config.clone());
        request.record = Some(record.clone());
        request.options = json!({"target": dir.path().join("drill")});
        let err = harness.run_request(&request).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config, "{action}: {err:?}");
    }
    assert!(
        !dir.path().join("not-mounted").exists(),
        "a folder was made where the repository should be"
    );
}

#[test]
fn a_repository_named_by_an_earlier_steps_output_cannot_be_rediscovered_and_says_so() {
    let harness = Harness::new(plugin_descriptor());
    let config = json!({"source": "/data", "repository": "${steps.mount.outputs.path}"});
    let err = harness.run(Action::Discover, config).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(err.message.contains("earlier step"), "{}", err.message);
}

#[test]
fn compression_dictionary_false_makes_a_repository_without_dictionaries() {
    let (source, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut rng = fastrand::Rng::with_seed(2);
    let words: Vec<String> = (0..3000)
        .map(|i| format!("crate-{i}-{:x}", rng.u64(..)))
        .collect();
    for n in 0..100 {
        let text: Vec<&str> = (0..800)
            .map(|_| words[rng.usize(..3000)].as_str())
            .collect();
        fs::write(source.path().join(format!("{n}.log")), text.join(" ")).unwrap();
    }
    let harness = Harness::new(plugin_descriptor());
    for (setting, repo) in [(Some(false), "plain"), (None, "default")] {
        let mut config = json!({"source": source.path(), "repository": dir.path().join(repo)});
        if let Some(setting) = setting {
            config["compression_dictionary"] = json!(setting);
        }
        harness.run(Action::Backup, config).unwrap();
    }
    let config =
        |repo: &str| fs::read_to_string(dir.path().join(repo).join("config.json")).unwrap();
    assert!(
        !config("plain").contains("dictionaries"),
        "{}",
        config("plain")
    );
    assert!(!dir.path().join("plain/dictionaries").exists());
    assert!(
        config("default").contains("\"dictionaries\": true"),
        "{}",
        config("default")
    );
    assert_eq!(
        fs::read_dir(dir.path().join("default/dictionaries"))
            .unwrap()
            .count(),
        1
    );
}
