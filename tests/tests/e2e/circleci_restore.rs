//! The whole CircleCI restore, the way its guide describes it, through the real binary and
//! every built-in plugin it needs: the Services machine's AMI (against the local AWS endpoint),
//! the host identity and fix-ups (on a fake root), the artifact tree, the in-flight builds.
//!
//! Backup takes the plan's `after` order; the restore takes `restore_after`: launch from the
//! AMI, stop the app, rewrite the old addresses with the new instance's, reset nomad, put the
//! artifacts back at the same path, start the app, delete the builds that were in flight.

use std::path::{Path, PathBuf};

use backplan_e2e::{LocalAws, Sandbox};
use serde_json::Value;

/// A running "Services" instance in a fresh VPC; returns its id and private address.
fn services_instance(aws: &LocalAws) -> (String, String) {
    let made = aws.boto(
        "base = ec2.register_image(Name='base', RootDeviceName='/dev/sda1')['ImageId']\n\
         vpc = ec2.create_vpc(CidrBlock='10.8.0.0/16')['Vpc']['VpcId']\n\
         subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='10.8.1.0/24')['Subnet']['SubnetId']\n\
         i = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType='m5.xlarge',\n\
             SubnetId=subnet)['Instances'][0]\n\
         out({'id': i['InstanceId'], 'ip': i['PrivateIpAddress']})\n",
    );
    (
        made["id"].as_str().unwrap().to_owned(),
        made["ip"].as_str().unwrap().to_owned(),
    )
}

/// The Services machine's files under a fake root: Replicated's configuration naming
/// `old_ip`, nomad state, and an artifact tree.
fn fake_root(root: &Path, old_ip: &str) {
    let write = |path: &str, text: &str| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "etc/default/replicated",
        &format!(
            "PRIVATE_ADDRESS={old_ip}\nREPLICATED_OPTS=\"-e DAEMON_ENDPOINT={old_ip}:9879\"\n"
        ),
    );
    write(
        "etc/default/replicated-operator",
        &format!("PRIVATE_ADDRESS={old_ip}\n"),
    );
    write("opt/nomad/data/state", "old machine");
    write("data/artifacts/builds/7/report.txt", "build 7 passed\n");
    write("data/artifacts/caches/deps.tar", "cache bytes");
}

fn circleci_plan(sandbox: &Sandbox, instance: &str, root: &Path) -> String {
    let log = root.join("app.log");
    let console = root.join("console.log");
    let host_config = |tasks: &str| {
        format!(
            r#"root = "{root}"
use_imds = false
private_ip = "${{steps.machine.outputs.private_ip}}"
restore_tasks = [{tasks}]
stop_command = ["sh", "-c", "echo stop >> {log}"]
restart_command = []
start_command = ["sh", "-c", "echo start >> {log}"]"#,
            root = root.display(),
            log = log.display()
        )
    };
    let text = format!(
        r#"[plan]
name = "circleci"
retries = 0

[[steps]]
id = "machine"
plugin = "ebs"
[steps.config]
instance = "{instance}"
poll_interval = "100ms"
wait_timeout = "2m"

[[steps]]
id = "host"
plugin = "services-host"
after = ["machine"]
[steps.config]
{host}

[[steps]]
id = "artifacts"
plugin = "nfs-objects"
restore_after = ["host"]
[steps.config]
source = "{root}/data/artifacts"
repository = "${{state.dir}}/repositories/artifacts"

[[steps]]
id = "app-start"
plugin = "services-host"
after = ["host"]
restore_after = ["artifacts"]
[steps.config]
{start}

[[steps]]
id = "in-flight-builds"
plugin = "build-cleanup"
restore_after = ["app-start"]
[steps.config]
running_command = ["printf", "https://ci.example.com/gh/acme/api/7\n"]
console_command = ["sh", "-c", "cat > {console}"]
"#,
        host = host_config(r#""stop-app", "rewrite-addresses", "reset-nomad""#),
        start = host_config(r#""start-app""#),
        root = root.display(),
        console = console.display(),
    );
    sandbox
        .write("circleci.toml", &text)
        .to_str()
        .unwrap()
        .to_owned()
}

fn step<'r>(record: &'r Value, id: &str) -> &'r Value {
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id}: {record:#}"))
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap()
}

#[test]
fn a_recorded_backup_is_restored_in_circlecis_order_onto_a_new_instance() {
    let aws = LocalAws::start(&["--pending", "1"]);
    let (instance, old_ip) = services_instance(&aws);
    let sandbox = Sandbox::new();
    let root: PathBuf = sandbox.path().join("root");
    fake_root(&root, &old_ip);
    let plan = circleci_plan(&sandbox, &instance, &root);

    let backup = sandbox.run_on(&aws, &["--json", "run", &plan]);
    let record = backup.expect_code(0).json();
    assert_eq!(
        step(&record, "host")["record"]["private_ip"],
        old_ip.as_str()
    );
    assert_eq!(
        step(&record, "in-flight-builds")["record"]["builds"][0]["url"],
        "https://ci.example.com/gh/acme/api/7"
    );

    // The machine is lost: a new one comes from the AMI; the artifact disk comes back empty.
    std::fs::remove_dir_all(root.join("data/artifacts")).unwrap();
    std::fs::create_dir_all(root.join("data/artifacts")).unwrap();

    let restore = sandbox.run_on(
        &aws,
        &[
            "--json",
            "restore",
            &plan,
            "--run",
            "latest",
            "-o",
            "delete=true",
        ],
    );
    let record = restore.expect_code(0).json();
    let order: Vec<&str> = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "machine",
            "host",
            "artifacts",
            "app-start",
            "in-flight-builds"
        ]
    );
    let launched = &step(&record, "machine")["outputs"];
    let new_ip = launched["private_ip"].as_str().unwrap();
    assert!(!new_ip.is_empty() && new_ip != old_ip, "{launched:#}");
    let state = aws.boto(&format!(
        "out(ec2.describe_instances(InstanceIds=['{}'])['Reservations'][0]['Instances'][0]['State']['Name'])",
        launched["instance_id"].as_str().unwrap()
    ));
    assert_eq!(state, "running");

    // The host fix-ups used the new instance's address.
    assert_eq!(
        read(&root, "etc/default/replicated"),
        format!("PRIVATE_ADDRESS={new_ip}\nREPLICATED_OPTS=\"-e DAEMON_ENDPOINT={new_ip}:9879\"\n")
    );
    assert_eq!(
        read(&root, "etc/default/replicated-operator.backplan-orig"),
        format!("PRIVATE_ADDRESS={old_ip}\n")
    );
    assert!(!root.join("opt/nomad").exists());
    assert_eq!(read(&root, "app.log"), "stop\nstart\n");
    // The artifacts are back at the same path.
    assert_eq!(
        read(&root, "data/artifacts/builds/7/report.txt"),
        "build 7 passed\n"
    );
    assert_eq!(read(&root, "data/artifacts/caches/deps.tar"), "cache bytes");
    // And the build that was in flight is deleted through the console.
    assert_eq!(
        read(&root, "console.log"),
        "(admin/delete-build \"https://ci.example.com/gh/acme/api/7\")\n"
    );
}
