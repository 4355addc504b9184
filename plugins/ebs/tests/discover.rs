//! `discover` in-process (the SDK's harness, the real ABI) against a private local AWS endpoint:
//! the records it rebuilds from tags are the ones the backups returned, whatever the mode, with
//! copies, an image pruned in its own region, and an image made before backups carried the
//! machine's facts.
//!
//! One test function on purpose: the plugin reads the standard AWS variables from the process
//! environment, which is set once here, before any thread of this test binary could read it.

use backplan_e2e::LocalAws;
use backplan_plugin_ebs::plugin_descriptor;
use backplan_plugin_sdk::testing::Harness;
use backplan_plugin_sdk::{Action, Discovered, ErrorKind, Request, StepOutput};
use serde_json::{Value, json};

fn request(harness: &Harness, action: Action, config: &Value, step: &str, run: &str) -> Request {
    let mut request = harness.request(action, config.clone());
    request.plan = "svc".into();
    request.step_id = step.into();
    request.run_id = run.into();
    request
}

fn discover(harness: &Harness, config: &Value, step: &str) -> (Discovered, StepOutput) {
    let out = harness
        .run_request(&request(harness, Action::Discover, config, step, "rebuild"))
        .unwrap();
    (serde_json::from_value(out.record.clone()).unwrap(), out)
}

/// The backup of run `run` among those found.
#[track_caller]
fn of<'d>(found: &'d Discovered, run: &str) -> &'d backplan_plugin_sdk::DiscoveredBackup {
    found
        .backups
        .iter()
        .find(|b| b.run_id == run)
        .unwrap_or_else(|| panic!("run {run} was not found: {found:#?}"))
}

/// Asserts that `found` gives back exactly what `made` returned.
#[track_caller]
fn same(found: &backplan_plugin_sdk::DiscoveredBackup, made: &StepOutput) {
    assert_eq!(found.record, made.record);
    assert_eq!(found.outputs, made.outputs);
    assert_eq!(
        (found.bytes, &found.summary),
        (made.bytes, &made.summary),
        "{found:#?}"
    );
}

#[test]
fn discover_rebuilds_from_tags_the_records_the_backups_returned() {
    let aws = LocalAws::start(&[]);
    for (key, value) in aws.env() {
        // SAFETY: set before the plugin (or any other thread of this single-test binary) runs.
        unsafe { std::env::set_var(key, value) };
    }
    // SAFETY: as above.
    unsafe { std::env::set_var("AWS_EC2_METADATA_DISABLED", "true") };
    // Three machines, so that no backup waits the 15 s EC2 asks between two snapshots of one
    // volume: one per run of the AMI step, one for the snapshots step.
    let made = aws.boto(
        r#"
iam = boto3.client('iam')
profile = iam.create_instance_profile(InstanceProfileName='services')['InstanceProfile']
base = ec2.register_image(Name='base', RootDeviceName='/dev/sda1')['ImageId']
vpc = ec2.create_vpc(CidrBlock='10.4.0.0/16')['Vpc']['VpcId']
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='10.4.1.0/24')['Subnet']['SubnetId']
sg = ec2.create_security_group(GroupName='services', Description='t', VpcId=vpc)['GroupId']
def machine():
    i = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType='m5.xlarge',
        SubnetId=subnet, SecurityGroupIds=[sg], KeyName='ops',
        IamInstanceProfile={'Arn': profile['Arn']})['Instances'][0]
    az = i['Placement']['AvailabilityZone']
    data = ec2.create_volume(AvailabilityZone=az, Size=20)['VolumeId']
    ec2.attach_volume(VolumeId=data, InstanceId=i['InstanceId'], Device='/dev/sdf')
    eip = ec2.allocate_address(Domain='vpc')
    ec2.associate_address(AllocationId=eip['AllocationId'], InstanceId=i['InstanceId'])
    return i['InstanceId']
out([machine(), machine(), machine()])
"#,
    );
    let machines: Vec<&str> = made
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let harness = Harness::new(plugin_descriptor());
    let ami = |instance: &str| {
        json!({"instance": instance, "poll_interval": "100ms", "wait_timeout": "1m",
            "copy_to": [{"region": "us-west-2"}], "tags": {"team": "platform"}})
    };
    let backup = |config: &Value, step: &str, run: &str| {
        harness
            .run_request(&request(&harness, Action::Backup, config, step, run))
            .unwrap()
    };
    let (first_run, second_run) = ("20260101T030000Z-aaaaaa", "20260102T030000Z-bbbbbb");
    let first = backup(&ami(machines[0]), "machine", first_run);
    let second = backup(&ami(machines[1]), "machine", second_run);
    let ami = ami(machines[0]);
    assert!(
        first.record["instance"]["iam_instance_profile_arn"].is_string()
            && first.record["instance"]["elastic_ip_allocation_id"].is_string(),
        "{:#}",
        first.record
    );
    let image = first.record["image_id"].as_str().unwrap().to_owned();
    let tags = aws.boto(&format!(
        "out(ec2.describe_images(ImageIds=['{image}'])['Images'][0]['Tags'])"
    ));
    let tags = tags.as_array().unwrap();
    assert!(tags.len() <= 50, "{tags:#?}");
    assert!(
        tags.iter()
            .all(|t| t["Value"].as_str().unwrap().chars().count() <= 256),
        "{tags:#?}"
    );

    let images =
        "out(sorted(i['ImageId'] for i in ec2.describe_images(Owners=['self'])['Images']))";
    let before = aws.boto(images);
    let (found, out) = discover(&harness, &ami, "machine");
    assert_eq!(aws.boto(images), before, "discover changed something");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let runs: Vec<(&str, &str)> = found
        .backups
        .iter()
        .map(|b| (b.run_id.as_str(), b.started_at.as_str()))
        .collect();
    assert_eq!(
        runs,
        [
            (first_run, "2026-01-01T03:00:00Z"),
            (second_run, "2026-01-02T03:00:00Z")
        ]
    );
    same(&found.backups[0], &first);
    same(&found.backups[1], &second);
    // Another step of the plan finds none of them.
    assert!(discover(&harness, &ami, "other").0.backups.is_empty());

    // The first run's image is pruned in its own region, its copy is kept: the copy is found.
    aws.script(&format!("ec2.deregister_image(ImageId='{image}')"));
    let (found, out) = discover(&harness, &ami, "machine");
    let pruned = of(&found, first_run);
    assert_eq!(pruned.record["image_id"], Value::Null);
    assert_eq!(pruned.record["copies"], first.record["copies"]);
    assert_eq!(pruned.record["instance"], first.record["instance"]);
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("only its copies remain")),
        "{:?}",
        out.warnings
    );
    same(of(&found, second_run), &second);

    // An image of this step made before backups carried the machine's facts.
    let old = aws.boto(&format!(
        "out(ec2.create_image(InstanceId='{}', Name='older', TagSpecifications=[{{'ResourceType': 'image', 'Tags': [\
             {{'Key': 'backplan:plan', 'Value': 'svc'}}, {{'Key': 'backplan:step', 'Value': 'machine'}},\
             {{'Key': 'backplan:run', 'Value': '20251201T030000Z-cccccc'}}]}}])['ImageId'])",
        machines[1]
    ));
    let (found, out) = discover(&harness, &ami, "machine");
    let older = of(&found, "20251201T030000Z-cccccc");
    assert_eq!(older.record["image_id"], old);
    assert_eq!(older.record["instance"]["instance_type"], "");
    assert!(
        out.warnings.iter().any(|w| w.contains("-o instance_type=")),
        "{:?}",
        out.warnings
    );
    let mut restore = request(&harness, Action::Restore, &ami, "machine", "restore-1");
    restore.record = Some(older.record.clone());
    let refused = harness.run_request(&restore).unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Config);
    assert!(
        refused.message.contains("names no instance type"),
        "{}",
        refused.message
    );

    // Snapshots mode: one backup per run, both volumes.
    let disks = json!({"instance": machines[2], "mode": "snapshots", "volumes": "all",
        "poll_interval": "100ms", "wait_timeout": "1m"});
    let made = backup(&disks, "disks", first_run);
    let (found, _) = discover(&harness, &disks, "disks");
    assert_eq!(found.backups.len(), 1);
    assert_eq!(
        found.backups[0].record["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    same(&found.backups[0], &made);
}
