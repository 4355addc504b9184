//! The fix-ups against a fake root where a symlink stands in place of what they change: a
//! configuration file, the folder it is in, or the nomad folder. Nothing is ever changed through
//! the link, and the error names it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use backplan_plugin_sdk::testing::Harness;
use backplan_plugin_sdk::{Action, ErrorKind, PluginError};
use backplan_plugin_services_host::plugin_descriptor;
use serde_json::{Value, json};

const REPLICATED: &str = "PRIVATE_ADDRESS=10.0.0.5\n";
const OPERATOR: &str = "PRIVATE_ADDRESS=10.0.0.5\nDAEMON_ENDPOINT=10.0.0.5:9879\n";

/// A fake root with both configuration files and nomad state, and the step's config.
fn fake_root(root: &Path, tasks: &[&str]) -> Value {
    fs::create_dir_all(root.join("etc/default")).unwrap();
    fs::write(root.join("etc/default/replicated"), REPLICATED).unwrap();
    fs::write(root.join("etc/default/replicated-operator"), OPERATOR).unwrap();
    fs::create_dir_all(root.join("opt/nomad/data")).unwrap();
    fs::write(root.join("opt/nomad/data/state"), "old machine").unwrap();
    json!({
        "root": root,
        "private_ip": "10.0.0.5",
        "use_imds": false,
        "restore_tasks": tasks,
        "stop_command": ["true"],
        "restart_command": [],
        "start_command": ["true"],
    })
}

/// Backs up, then checks and runs a restore to 10.0.9.9; the check's and the restore's errors.
fn restore(harness: &Harness, config: &Value) -> (PluginError, PluginError) {
    let backup = harness.run(Action::Backup, config.clone()).unwrap();
    let mut check = harness.request(Action::Check, config.clone());
    check.check_for = Some(Action::Restore);
    let checked = harness.run_request(&check).unwrap_err();
    let mut request = harness.request(Action::Restore, config.clone());
    request.record = Some(backup.record);
    request.options = json!({"private_ip": "10.0.9.9"});
    let restored = harness.run_request(&request).unwrap_err();
    (checked, restored)
}

#[test]
fn a_symlinked_configuration_file_is_never_written_through() {
    let (root, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = fake_root(root.path(), &["rewrite-addresses"]);
    let real = elsewhere.path().join("replicated");
    fs::write(&real, REPLICATED).unwrap();
    let link = root.path().join("etc/default/replicated");
    fs::remove_file(&link).unwrap();
    symlink(&real, &link).unwrap();
    let harness = Harness::new(plugin_descriptor());

    let backup = harness.run(Action::Backup, config.clone()).unwrap();
    assert!(
        backup
            .warnings
            .iter()
            .any(|w| w.contains("is a symbolic link")),
        "{:?}",
        backup.warnings
    );
    let (checked, restored) = restore(&harness, &config);
    assert_eq!(checked.kind, ErrorKind::Config, "{checked:?}");
    assert_eq!(restored.kind, ErrorKind::Permanent, "{restored:?}");
    for message in [&checked.message, &restored.message] {
        assert!(
            message.contains(&format!(
                "{} is a symbolic link (to {})",
                link.display(),
                real.display()
            )),
            "{message}"
        );
    }
    assert!(
        restored.message.contains("no file was rewritten"),
        "{}",
        restored.message
    );
    assert_eq!(fs::read_to_string(&real).unwrap(), REPLICATED);
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    assert_eq!(
        fs::read_to_string(root.path().join("etc/default/replicated-operator")).unwrap(),
        OPERATOR,
        "the other file is not rewritten either"
    );
    assert!(
        !root
            .path()
            .join("etc/default/replicated.backplan-orig")
            .exists()
    );
    assert!(!elsewhere.path().join("replicated.backplan-orig").exists());
}

#[test]
fn a_symlinked_configuration_folder_is_never_written_through() {
    let (root, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = fake_root(root.path(), &["rewrite-addresses"]);
    fs::write(elsewhere.path().join("replicated"), REPLICATED).unwrap();
    fs::remove_dir_all(root.path().join("etc/default")).unwrap();
    symlink(elsewhere.path(), root.path().join("etc/default")).unwrap();
    let harness = Harness::new(plugin_descriptor());

    let (checked, restored) = restore(&harness, &config);
    for message in [&checked.message, &restored.message] {
        assert!(message.contains("default is a symbolic link"), "{message}");
    }
    assert_eq!(
        fs::read_to_string(elsewhere.path().join("replicated")).unwrap(),
        REPLICATED
    );
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 1);
}

#[test]
fn a_symlinked_nomad_folder_is_not_removed_through() {
    for linked in ["opt/nomad", "opt"] {
        let (root, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let config = fake_root(root.path(), &["reset-nomad"]);
        let moved = elsewhere.path().join("moved");
        fs::rename(root.path().join(linked), &moved).unwrap();
        symlink(&moved, root.path().join(linked)).unwrap();
        let harness = Harness::new(plugin_descriptor());

        let (checked, restored) = restore(&harness, &config);
        assert_eq!(checked.kind, ErrorKind::Config, "{checked:?}");
        for message in [&checked.message, &restored.message] {
            assert!(
                message.contains(&format!(
                    "{linked} is a symbolic link (to {})",
                    moved.display()
                )),
                "{message}"
            );
        }
        let state = if linked == "opt" {
            moved.join("nomad/data/state")
        } else {
            moved.join("data/state")
        };
        assert_eq!(
            fs::read_to_string(state).unwrap(),
            "old machine",
            "{linked}"
        );
        assert!(
            fs::symlink_metadata(root.path().join(linked))
                .unwrap()
                .is_symlink()
        );
    }
}
