//! A restore from a catalog rebuilt after the Services machine and its catalog were lost: the
//! rebuild finds nothing of services-host's (it keeps its record nowhere else), so its restore
//! runs without a record and takes the old addresses from its options.

use std::fs;

use backplan_plugin_sdk::testing::Harness;
use backplan_plugin_sdk::{Action, ErrorKind};
use backplan_plugin_services_host::plugin_descriptor;
use serde_json::{Value, json};

fn config(root: &std::path::Path) -> Value {
    fs::create_dir_all(root.join("etc/default")).unwrap();
    fs::write(
        root.join("etc/default/replicated"),
        "PRIVATE_ADDRESS=10.0.0.5\n",
    )
    .unwrap();
    json!({
        "root": root,
        "use_imds": false,
        "restore_tasks": ["rewrite-addresses"],
        "stop_command": ["true"],
        "restart_command": [],
        "start_command": ["true"],
    })
}

#[test]
fn a_restore_without_a_record_takes_the_old_addresses_from_its_options() {
    let root = tempfile::tempdir().unwrap();
    let config = config(root.path());
    let harness = Harness::new(plugin_descriptor());
    let mut request = harness.request(Action::Restore, config);
    request.record = Some(Value::Null);
    request.options = json!({"private_ip": "10.0.9.9"});
    let refused = harness.run_request(&request).unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Config);
    assert!(
        refused.message.contains("-o old_private_ip="),
        "{}",
        refused.message
    );
    assert_eq!(
        fs::read_to_string(root.path().join("etc/default/replicated")).unwrap(),
        "PRIVATE_ADDRESS=10.0.0.5\n",
        "nothing was rewritten"
    );

    request.options = json!({"private_ip": "10.0.9.9", "old_private_ip": "10.0.0.5"});
    harness.run_request(&request).unwrap();
    assert_eq!(
        fs::read_to_string(root.path().join("etc/default/replicated")).unwrap(),
        "PRIVATE_ADDRESS=10.0.9.9\n"
    );
}
