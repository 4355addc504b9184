//! The plugin in-process (through the SDK's test harness and the real ABI) against a private
//! local AWS endpoint: what the binary cannot replay, such as a step retried with the same run
//! id, and the teardown safety refusal.
//!
//! One test function on purpose: the plugin reads the standard AWS variables from the process
//! environment, which is set once here, before any thread of this test binary could read it.

use backplan_e2e::LocalAws;
use backplan_plugin_ebs::plugin_descriptor;
use backplan_plugin_sdk::testing::Harness;
use backplan_plugin_sdk::{Action, ErrorKind, Request};
use serde_json::{Value, json};

fn request(harness: &Harness, action: Action, config: &Value, run: &str) -> Request {
    let mut request = harness.request(action, config.clone());
    request.plan = "lib".into();
    request.step_id = "machine".into();
    request.run_id = run.into();
    request
}

#[test]
fn retries_reuse_their_own_resources_and_teardown_only_terminates_what_it_launched() {
    let aws = LocalAws::start(&["--pending", "2"]);
    for (key, value) in aws.env() {
        // SAFETY: set before the plugin (or any other thread of this single-test binary) runs.
        unsafe { std::env::set_var(key, value) };
    }
    // SAFETY: as above.
    unsafe { std::env::set_var("AWS_EC2_METADATA_DISABLED", "true") };
    let instance = aws.boto("base = ec2.register_image(Name='base', RootDeviceName='/dev/sda1')['ImageId']\n\
         i = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType='t3.large')['Instances'][0]\n\
         out(i['InstanceId'])",
    );
    let instance = instance.as_str().unwrap().to_owned();
    let config = json!({"instance": instance, "poll_interval": "100ms", "wait_timeout": "1m"});
    let harness = Harness::new(plugin_descriptor());

    // Dry run: says what it would make, makes nothing.
    let mut dry = request(&harness, Action::Backup, &config, "run-1");
    dry.dry_run = true;
    let said = harness.run_request(&dry).unwrap();
    assert!(
        said.summary.contains("would make an AMI"),
        "{}",
        said.summary
    );
    let count = "out(len(ec2.describe_images(Owners=['self'], Filters=[{'Name': 'tag:backplan:plan', 'Values': ['lib']}])['Images']))";
    assert_eq!(aws.boto(count), 0);

    // The same run and step twice: one image.
    let first = harness
        .run_request(&request(&harness, Action::Backup, &config, "run-1"))
        .unwrap();
    let again = harness
        .run_request(&request(&harness, Action::Backup, &config, "run-1"))
        .unwrap();
    assert_eq!(first.outputs["image_id"], again.outputs["image_id"]);
    assert_eq!(first.record, again.record);
    assert_eq!(
        aws.boto(count),
        1,
        "a retried step must not make a second image"
    );
    assert!(
        harness
            .progress()
            .iter()
            .any(|p| p.unit == "percent" && p.done == 100)
    );

    // Check before a restore needs no source instance, only the recorded image.
    let mut check = request(&harness, Action::Check, &json!({}), "restore-1");
    check.check_for = Some(Action::Restore);
    check.record = Some(first.record.clone());
    let checked = harness.run_request(&check).unwrap();
    assert!(
        checked.summary.contains("RunInstances allowed"),
        "{}",
        checked.summary
    );

    // Restore twice in one run: one instance.
    let mut restore = request(&harness, Action::Restore, &config, "restore-1");
    restore.record = Some(first.record.clone());
    restore.source_run_id = Some("run-1".into());
    let launched = harness.run_request(&restore).unwrap();
    let relaunched = harness.run_request(&restore).unwrap();
    assert_eq!(
        launched.outputs["instance_id"],
        relaunched.outputs["instance_id"]
    );

    // Teardown refuses an instance backplan did not launch...
    let mut foreign = request(&harness, Action::Teardown, &config, "drill-1");
    foreign.record =
        Some(json!({"instance_id": instance, "region": "us-east-1", "image_id": "ami-x"}));
    let refused = harness.run_request(&foreign).unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Permanent);
    assert!(refused.message.contains("refusing"), "{}", refused.message);
    // ...and terminates the one it did.
    let mut teardown = request(&harness, Action::Teardown, &config, "drill-1");
    teardown.record = Some(launched.record.clone());
    let done = harness.run_request(&teardown).unwrap();
    assert!(done.summary.contains("terminated"), "{}", done.summary);
    let new_id = launched.outputs["instance_id"].as_str().unwrap();
    let state = aws.boto(&format!(
            "out(ec2.describe_instances(InstanceIds=['{new_id}'])['Reservations'][0]['Instances'][0]['State']['Name'])"
        ),
    );
    assert_eq!(state, "terminated");
    let source = aws.boto(&format!(
            "out(ec2.describe_instances(InstanceIds=['{instance}'])['Reservations'][0]['Instances'][0]['State']['Name'])"
        ),
    );
    assert_eq!(source, "running", "the backed-up instance is untouched");
}
