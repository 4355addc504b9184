//! The plugin through the SDK's in-process harness (the real ABI), as the runner drives it.

use std::fs;
use std::path::Path;

use backplan_plugin_nfs_objects::plugin::plugin_descriptor;
use backplan_plugin_sdk::testing::Harness;
use backplan_plugin_sdk::{Action, ErrorKind};
use serde_json::json;

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
fn an_s3_repository_asks_for_its_bucket_and_prefix_only() {
    let harness = Harness::new(plugin_descriptor());
    let s3 = json!({"source": "/data", "repository": "s3://art/ci/artifacts"});
    let asked = harness.run(Action::Permissions, s3).unwrap().record;
    let statements = asked["aws_iam_statements"].as_array().unwrap();
    assert_eq!(statements[0]["Resource"], "arn:aws:s3:::art");
    assert_eq!(statements[1]["Resource"], "arn:aws:s3:::art/ci/artifacts/*");
    assert!(statements[1]["Action"].to_string().contains("s3:PutObject"));

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
