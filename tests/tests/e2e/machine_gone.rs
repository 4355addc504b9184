//! "The Services machine is gone": the disaster the catalog in S3 and `catalog rebuild` exist
//! for, through the real binary against the local AWS endpoint.
//!
//! Machine A backs up the Services instance (an AMI; the instance has an instance profile) and
//! the artifact tree (into an S3 repository), with its catalog in S3; then A is lost, state
//! folder and artifacts. Machine B has only the plan file and credentials: it lists A's runs,
//! restores the machine (launched with the recorded instance profile, security groups and
//! subnet) and the artifacts byte-identical at the same path. Then the catalog itself is lost
//! (its whole prefix deleted): `catalog rebuild` recreates the record from the AMI's tags and
//! the repository's snapshot headers, and the same restore works from it again.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use backplan_e2e::{LocalAws, Sandbox};
use serde_json::Value;

/// The Services instance of a fixture account: an instance profile, a security group, a
/// subnet; returns its id, instance profile ARN, subnet and security group.
fn services(aws: &LocalAws) -> BTreeMap<String, String> {
    let made = aws.boto(
        "iam = boto3.client('iam')\n\
         iam.create_role(RoleName='services-role', AssumeRolePolicyDocument='{}')\n\
         profile = iam.create_instance_profile(InstanceProfileName='services')['InstanceProfile']\n\
         iam.add_role_to_instance_profile(InstanceProfileName='services', RoleName='services-role')\n\
         base = ec2.register_image(Name='base', RootDeviceName='/dev/sda1')['ImageId']\n\
         vpc = ec2.create_vpc(CidrBlock='10.6.0.0/16')['Vpc']['VpcId']\n\
         subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='10.6.1.0/24')['Subnet']['SubnetId']\n\
         sg = ec2.create_security_group(GroupName='services', Description='t', VpcId=vpc)['GroupId']\n\
         i = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType='m5.xlarge',\n\
             SubnetId=subnet, SecurityGroupIds=[sg], IamInstanceProfile={'Arn': profile['Arn']})['Instances'][0]\n\
         s3.create_bucket(Bucket='catalog')\n\
         s3.create_bucket(Bucket='backups')\n\
         out({'instance': i['InstanceId'], 'profile': profile['Arn'], 'subnet': subnet, 'sg': sg})\n",
    );
    serde_json::from_value(made).unwrap()
}

/// The plan, the same text on both machines: the artifacts live in `artifacts/` next to it.
fn plan(machine: &Sandbox, instance: &str) -> String {
    let text = format!(
        r#"[plan]
name = "services"
catalog = "s3://catalog/fleet"
retries = 0

[[steps]]
id = "machine"
plugin = "ebs"
[steps.config]
instance = "{instance}"
poll_interval = "100ms"
wait_timeout = "2m"

[[steps]]
id = "artifacts"
plugin = "nfs-objects"
[steps.config]
source = "${{plan.dir}}/artifacts"
repository = "s3://backups/services/artifacts"
"#
    );
    let path = machine.write("services.toml", &text);
    path.to_str().unwrap().to_owned()
}

/// Build artifacts: logs, a nested tree, an executable, a symlink, an empty folder, and a file
/// larger than one chunk.
fn artifacts(root: &Path) {
    fs::create_dir_all(root.join("builds/7/logs")).unwrap();
    fs::create_dir_all(root.join("caches/empty")).unwrap();
    for i in 0..20 {
        let log = format!("build 7 step {i}\n").repeat(100);
        fs::write(root.join(format!("builds/7/logs/step-{i}.log")), log).unwrap();
    }
    let big: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(root.join("caches/deps.tar"), big).unwrap();
    let tool = root.join("builds/7/run.sh");
    fs::write(&tool, "#!/bin/sh\nmake test\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("builds/7", root.join("latest")).unwrap();
}

/// Every entry under `root`: kind, permission bits, and a hash of the content or the link
/// target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let mut hash = DefaultHasher::new();
                fs::read(&path).unwrap().hash(&mut hash);
                format!("file {mode:o} {:x}", hash.finish())
            };
            out.insert(name, what);
        }
    }
    out
}

fn step<'r>(record: &'r Value, id: &str) -> &'r Value {
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id}: {record:#}"))
}

/// Restores the latest backup on `machine`, asserts the launched instance is the old one's
/// twin and the artifacts are back byte-identical; returns the new instance's id.
#[track_caller]
fn restore_and_check(
    machine: &Sandbox,
    aws: &LocalAws,
    plan: &str,
    old: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
) -> String {
    let artifacts = machine.path().join("artifacts");
    let _ = fs::remove_dir_all(&artifacts);
    fs::create_dir_all(&artifacts).unwrap();
    let restored = machine.run_on(aws, &["--json", "restore", plan, "--run", "latest"]);
    let restored = restored.expect_code(0).json();
    let new_id = step(&restored, "machine")["outputs"]["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_id, old["instance"]);
    let launched = aws.boto(&format!(
        "out(ec2.describe_instances(InstanceIds=['{new_id}'])['Reservations'][0]['Instances'][0])"
    ));
    assert_eq!(
        launched["IamInstanceProfile"]["Arn"],
        old["profile"].as_str(),
        "{launched:#}"
    );
    assert_eq!(launched["SubnetId"], old["subnet"].as_str());
    assert_eq!(launched["InstanceType"], "m5.xlarge");
    let groups: Vec<&str> = launched["SecurityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["GroupId"].as_str().unwrap())
        .collect();
    assert_eq!(groups, [old["sg"].as_str()]);
    assert_eq!(&tree(&artifacts), expected, "the artifacts differ");
    new_id
}

#[test]
fn the_services_machine_is_gone_and_then_its_catalog_too() {
    let aws = LocalAws::start(&[]);
    let old = services(&aws);

    // Machine A backs up, then is lost with its state folder and its artifacts.
    let machine_a = Sandbox::new();
    let plan_a = plan(&machine_a, &old["instance"]);
    artifacts(&machine_a.path().join("artifacts"));
    let expected = tree(&machine_a.path().join("artifacts"));
    let backup = machine_a.run_on(&aws, &["--json", "run", &plan_a]);
    let backup = backup.expect_code(0).json();
    let made = |id: &str| step(&backup, id)["record"].clone();
    assert_eq!(
        made("machine")["instance"]["iam_instance_profile_arn"],
        old["profile"].as_str()
    );
    drop(machine_a);

    // Machine B: a new, empty sandbox; only the plan file and credentials.
    let machine_b = Sandbox::new();
    let plan_b = plan(&machine_b, &old["instance"]);
    let runs = machine_b.run_on(&aws, &["--json", "runs", "list", &plan_b]);
    let runs = runs.expect_code(0).json();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");
    assert_eq!(runs[0]["run_id"], backup["run_id"]);
    let first = restore_and_check(&machine_b, &aws, &plan_b, &old, &expected);

    // The catalog is lost too: its whole prefix.
    aws.script(
        "for o in s3.list_objects_v2(Bucket='catalog', Prefix='fleet/')['Contents']:\n    \
         s3.delete_object(Bucket='catalog', Key=o['Key'])",
    );
    let empty = machine_b.run_on(&aws, &["--json", "runs", "list", &plan_b]);
    assert_eq!(empty.expect_code(0).json(), serde_json::json!([]));

    let rebuilt = machine_b.run_on(&aws, &["catalog", "rebuild", &plan_b]);
    let text = rebuilt.expect_code(0).stdout();
    assert!(text.contains("added 1 run records"), "{text}");
    assert!(text.contains(backup["run_id"].as_str().unwrap()), "{text}");
    let shown = machine_b.run_on(&aws, &["runs", "show", &plan_b, "latest"]);
    let shown = shown.expect_code(0).stdout();
    assert!(
        shown.contains("rebuilt on") && shown.contains("by `catalog rebuild`"),
        "{shown}"
    );
    let record = machine_b.run_on(&aws, &["--json", "runs", "show", &plan_b, "latest"]);
    let record = record.expect_code(0).json();
    assert_eq!(record["run_id"], backup["run_id"]);
    assert_eq!(record["status"], "Succeeded", "{record:#}");
    for id in ["machine", "artifacts"] {
        assert_eq!(
            step(&record, id)["record"],
            made(id),
            "the rebuilt record of {id} is not the one its backup returned"
        );
    }
    // Rebuilding again adds nothing.
    let again = machine_b.run_on(&aws, &["catalog", "rebuild", &plan_b]);
    assert!(
        again
            .expect_code(0)
            .stdout()
            .contains("added 0 run records"),
        "{}",
        again.stdout()
    );

    let second = restore_and_check(&machine_b, &aws, &plan_b, &old, &expected);
    assert_ne!(
        second, first,
        "a second restore run launches its own machine"
    );
}
