//! The ebs plugin through the real binary against a private local AWS endpoint (moto, patched:
//! images and snapshots stay `pending` for a few describes, a volume tag makes its snapshot fail,
//! a proxy injects throttling).
//!
//! Fixtures (VPC, subnet, security group, the "Services" instance) are made with boto3 through
//! the wire protocol, the way a user's account looks; assertions about AWS state are read back
//! the same way. Every test starts its own endpoint, so they run in parallel without seeing each
//! other's images.

use std::net::TcpListener;

use backplan_e2e::{LocalAws, Outcome, Sandbox};
use serde_json::Value;

const FAILED: i32 = 1;

/// The Services machine of a fixture account.
struct Machine {
    instance_id: String,
    private_ip: String,
    /// Its volume ids, root first.
    volumes: Vec<String>,
}

/// A VPC with a running instance named `circleci-services` with a root and a data volume; with
/// `failing`, its volumes carry the tag that makes their snapshots end in `error`.
fn machine(aws: &LocalAws, failing: bool) -> Machine {
    let volume_tags = if failing {
        "[{'ResourceType': 'volume', 'Tags': [{'Key': 'backplan-test-fail', 'Value': 'snapshot'}]}]"
    } else {
        "[]"
    };
    let made = aws.boto(&format!(
            "base = ec2.register_image(Name='base', RootDeviceName='/dev/sda1')['ImageId']\n\
             vpc = ec2.create_vpc(CidrBlock='10.7.0.0/16')['Vpc']['VpcId']\n\
             subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='10.7.1.0/24')['Subnet']['SubnetId']\n\
             sg = ec2.create_security_group(GroupName='services', Description='t', VpcId=vpc)['GroupId']\n\
             i = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType='m5.xlarge',\n\
                 SubnetId=subnet, SecurityGroupIds=[sg], KeyName='ops',\n\
                 TagSpecifications=[{{'ResourceType': 'instance', 'Tags': [{{'Key': 'Name', 'Value': 'circleci-services'}}]}}] + {volume_tags},\n\
             )['Instances'][0]\n\
             az = i['Placement']['AvailabilityZone']\n\
             data = ec2.create_volume(AvailabilityZone=az, Size=20, TagSpecifications={volume_tags})['VolumeId']\n\
             ec2.attach_volume(VolumeId=data, InstanceId=i['InstanceId'], Device='/dev/sdf')\n\
             d = ec2.describe_instances(InstanceIds=[i['InstanceId']])['Reservations'][0]['Instances'][0]\n\
             vols = [m['Ebs']['VolumeId'] for m in sorted(d['BlockDeviceMappings'], key=lambda m: m['DeviceName'] != d['RootDeviceName'])]\n\
             out({{'id': d['InstanceId'], 'ip': d['PrivateIpAddress'], 'volumes': vols}})\n"
        ),
    );
    let volumes: Vec<String> = made["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(volumes.len(), 2, "the fixture needs two volumes: {made}");
    Machine {
        instance_id: made["id"].as_str().unwrap().to_owned(),
        private_ip: made["ip"].as_str().unwrap().to_owned(),
        volumes,
    }
}

/// A plan `svc` with one ebs step `machine` whose config table is `config` (fast polling).
fn plan(sandbox: &Sandbox, config: &str) -> String {
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"svc\"\nretries = 0\n\n[[steps]]\nid = \"machine\"\nplugin = \"ebs\"\n\
             [steps.config]\npoll_interval = \"100ms\"\nwait_timeout = \"2m\"\n{config}"
        ),
    );
    path.to_str().unwrap().to_owned()
}

fn only_step(run: &Value) -> &Value {
    let steps = run["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{run:#}");
    &steps[0]
}

/// Backs up with `--json` and returns the step's entry of the run record.
fn backup(sandbox: &Sandbox, aws: &LocalAws, plan: &str) -> Value {
    let out = sandbox.run_on(aws, &["--json", "run", plan]);
    only_step(&out.expect_code(0).json()).clone()
}

fn image(aws: &LocalAws, region: &str, id: &str) -> Value {
    aws.boto(&format!(
        "c = boto3.client('ec2', region_name='{region}')\n\
             out(c.describe_images(Filters=[{{'Name': 'image-id', 'Values': ['{id}']}}])['Images'])"
    ))
}

fn tag<'v>(resource: &'v Value, key: &str) -> Option<&'v str> {
    resource["Tags"]
        .as_array()?
        .iter()
        .find(|t| t["Key"] == key)
        .and_then(|t| t["Value"].as_str())
}

#[test]
fn an_ami_backup_waits_until_available_and_records_the_instance() {
    let aws = LocalAws::start(&["--pending", "3"]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        "instance_tags = { Name = \"circleci-services\" }\ntags = { team = \"platform\" }\n",
    );
    let out = sandbox.run_on(&aws, &["--json", "-v", "run", &plan]);
    let run_record = out.expect_code(0).json();
    let step = only_step(&run_record);
    assert_eq!(step["status"], "Succeeded", "{step:#}");
    let record = &step["record"];
    let image_id = record["image_id"].as_str().expect("image_id");
    assert_eq!(step["outputs"]["image_id"], image_id);
    assert_eq!(step["outputs"]["instance_id"], machine.instance_id.as_str());
    let instance = &record["instance"];
    assert_eq!(instance["instance_id"], machine.instance_id.as_str());
    assert_eq!(instance["instance_type"], "m5.xlarge");
    assert_eq!(instance["private_ip"], machine.private_ip.as_str());
    assert_eq!(instance["key_name"], "ops");
    for key in ["subnet_id", "vpc_id", "availability_zone", "hostname"] {
        assert!(instance[key].is_string(), "{key} missing: {instance:#}");
    }
    assert_eq!(instance["security_group_ids"].as_array().unwrap().len(), 1);
    let snapshots = record["snapshots"].as_array().unwrap();
    assert_eq!(snapshots.len(), 2, "one snapshot per volume: {record:#}");
    let volumes: Vec<&str> = snapshots
        .iter()
        .map(|s| s["volume_id"].as_str().unwrap())
        .collect();
    assert!(volumes.contains(&machine.volumes[0].as_str()), "{record:#}");
    assert_eq!(record["region"], "us-east-1");

    // In AWS: available (moto kept it pending for 3 describes), tagged, snapshots completed.
    let found = &image(&aws, "us-east-1", image_id)[0];
    assert_eq!(found["State"], "available");
    assert_eq!(tag(found, "backplan:plan"), Some("svc"));
    assert_eq!(tag(found, "backplan:step"), Some("machine"));
    assert_eq!(tag(found, "backplan:run"), run_record["run_id"].as_str());
    assert_eq!(tag(found, "team"), Some("platform"));
    // Progress was reported while it was pending.
    assert!(out.stderr().contains("snapshots"), "{}", out.stderr());

    sandbox.run_on(&aws, &["verify", &plan]).expect_code(0);
}

#[test]
fn snapshots_mode_snapshots_each_volume_and_verify_names_a_deleted_one() {
    let aws = LocalAws::start(&["--pending", "2"]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!(
            "instance = \"{}\"\nmode = \"snapshots\"\nvolumes = \"all\"\n",
            machine.instance_id
        ),
    );
    let step = backup(&sandbox, &aws, &plan);
    let record = &step["record"];
    assert_eq!(record["mode"], "snapshots");
    assert_eq!(step["outputs"]["image_id"], "");
    let snapshots = record["snapshots"].as_array().unwrap();
    let volumes: Vec<&str> = snapshots
        .iter()
        .map(|s| s["volume_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        volumes,
        machine
            .volumes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    sandbox.run_on(&aws, &["verify", &plan]).expect_code(0);

    let gone = snapshots[1]["snapshot_id"].as_str().unwrap();
    aws.boto(&format!("ec2.delete_snapshot(SnapshotId='{gone}')"));
    let out = sandbox.run_on(&aws, &["verify", &plan]);
    out.expect_code(FAILED);
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        text.contains(&format!("snapshot {gone}")) && text.contains("no longer exists"),
        "{text}"
    );
    assert!(
        text.contains(&machine.volumes[1]),
        "the volume is named too: {text}"
    );
}

#[test]
fn a_failing_snapshot_fails_the_backup_with_aws_reason() {
    let aws = LocalAws::start(&["--pending", "2"]);
    let machine = machine(&aws, true);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!("instance = \"{}\"\n", machine.instance_id),
    );
    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    out.expect_code(FAILED);
    let step = only_step(&out.json()).clone();
    assert_eq!(step["status"], "Failed", "{step:#}");
    let error = step["error"].to_string();
    assert!(
        error.contains("failed") && error.contains("injected"),
        "AWS's reason: {error}"
    );
    assert_eq!(
        step["attempts"], 1,
        "a permanent error is not retried: {step:#}"
    );
}

#[test]
fn a_failed_backup_deletes_nothing_and_leaves_what_it_made_tagged_for_prune() {
    // The backup role cannot deregister or delete: a failed backup must not need to.
    let aws = LocalAws::start(&[
        "--pending",
        "1",
        "--faults",
        "DeregisterImage:denied:*,DeleteSnapshot:denied:*",
    ]);
    let machine = machine(&aws, true);
    for mode in ["ami", "snapshots"] {
        let sandbox = Sandbox::new();
        let plan = plan(
            &sandbox,
            &format!(
                "instance = \"{}\"\nmode = \"{mode}\"\n",
                machine.instance_id
            ),
        );
        let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
        out.expect_code(FAILED);
        let step = only_step(&out.json()).clone();
        let error = step["error"].to_string();
        assert!(error.contains("injected"), "{mode}: AWS's reason: {error}");
        assert!(!error.contains("Unauthorized"), "{mode}: {error}");
    }
    let faults = aws.boto(&format!(
        "import urllib.request\n\
             out(json.load(urllib.request.urlopen('{}/__faults')))",
        aws.var("BACKPLAN_FAULT_PROXY_URL")
    ));
    for call in ["CreateImage", "CreateSnapshot"] {
        assert!(
            faults["seen"][call].as_u64().unwrap_or(0) > 0,
            "the proxy did not see {call}: {faults:#}"
        );
    }
    for call in ["DeregisterImage", "DeleteSnapshot"] {
        assert!(
            faults["seen"][call].as_u64().unwrap_or(0) == 0,
            "a failed backup called {call}: {faults:#}"
        );
    }
    let left = aws.boto(
        "out(len(ec2.describe_snapshots(OwnerIds=['self'], Filters=[{'Name': 'tag:backplan:plan', 'Values': ['svc']}])['Snapshots']))",
    );
    assert!(
        left.as_u64().unwrap() > 0,
        "what the failed backups made is gone"
    );
}

#[test]
fn throttled_calls_are_retried_until_they_pass() {
    // Five throttled CreateImage calls outlast the SDK's 4 attempts; the plugin's own retry
    // gets through. A 500 on DescribeImages is retried too.
    let aws = LocalAws::start(&["--faults", "CreateImage:throttle:5,DescribeImages:500:1"]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!("instance = \"{}\"\n", machine.instance_id),
    );
    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    let step = only_step(&out.expect_code(0).json()).clone();
    assert_eq!(step["attempts"], 1, "retried inside the step: {step:#}");
    assert!(
        out.stderr().contains("RequestLimitExceeded"),
        "{}",
        out.stderr()
    );
    let faults = aws.boto(&format!(
        "import urllib.request\n\
             out(json.load(urllib.request.urlopen('{}/__faults')))",
        aws.var("BACKPLAN_FAULT_PROXY_URL")
    ));
    assert!(faults.to_string().contains("CreateImage"), "{faults:#}");
    let images = aws.boto("out(ec2.describe_images(Owners=['self'], Filters=[{'Name': 'tag:backplan:step', 'Values': ['machine']}])['Images'])",
    );
    assert_eq!(
        images.as_array().unwrap().len(),
        1,
        "one image, however many retries"
    );
}

#[test]
fn the_ami_is_copied_to_another_region_and_pruned_there_by_its_own_rules() {
    let aws = LocalAws::start(&["--pending", "2"]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!(
            "instance = \"{}\"\nretention = {{ keep_last = 2 }}\n\
             copy_to = [{{ region = \"us-west-2\", retention = {{ keep_last = 1 }} }}]\n",
            machine.instance_id
        ),
    );
    let step = backup(&sandbox, &aws, &plan);
    let copies = step["record"]["copies"].as_array().expect("copies");
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["region"], "us-west-2");
    let copy_id = copies[0]["image_id"].as_str().unwrap();
    assert_ne!(Some(copy_id), step["record"]["image_id"].as_str());
    let found = &image(&aws, "us-west-2", copy_id)[0];
    assert_eq!(found["State"], "available");
    assert_eq!(tag(found, "backplan:plan"), Some("svc"));
    assert_eq!(tag(found, "backplan:step"), Some("machine"));
    assert!(!copies[0]["snapshot_ids"].as_array().unwrap().is_empty());

    // Disaster recovery: restore from the copy.
    let dry = sandbox.run_on(
        &aws,
        &[
            "--json",
            "restore",
            &plan,
            "--run",
            "latest",
            "--dry-run",
            "-o",
            "region=us-west-2",
        ],
    );
    let summary = only_step(&dry.expect_code(0).json())["summary"].to_string();
    assert!(
        summary.contains(copy_id) && summary.contains("us-west-2"),
        "{summary}"
    );

    // A second backup; then us-east-1 keeps both (keep_last = 2), us-west-2 the newest copy.
    let main_first = step["record"]["image_id"].as_str().unwrap().to_owned();
    let copy_first = copy_id.to_owned();
    let second = backup(&sandbox, &aws, &plan);
    let copy_second = second["record"]["copies"][0]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Verify checks the copies too (and marks the latest backup verified).
    sandbox.run_on(&aws, &["verify", &plan]).expect_code(0);
    sandbox.run_on(&aws, &["prune", &plan]).expect_code(0);
    assert_eq!(
        image(&aws, "us-east-1", &main_first)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(
        image(&aws, "us-west-2", &copy_first)
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        image(&aws, "us-west-2", &copy_second)
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn restore_launches_from_the_ami_and_a_drill_terminates_it() {
    let aws = LocalAws::start(&["--pending", "1"]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!("instance = \"{}\"\n", machine.instance_id),
    );
    let backed_up = backup(&sandbox, &aws, &plan);
    let image_id = backed_up["record"]["image_id"].as_str().unwrap().to_owned();

    let dry = sandbox.run_on(
        &aws,
        &["--json", "restore", &plan, "--run", "latest", "--dry-run"],
    );
    let dry_step = only_step(&dry.expect_code(0).json()).clone();
    assert!(
        dry_step["summary"]
            .as_str()
            .unwrap()
            .contains("would launch instance type m5.xlarge"),
        "{dry_step:#}"
    );

    let restored = sandbox.run_on(
        &aws,
        &[
            "--json",
            "restore",
            &plan,
            "--run",
            "latest",
            "-o",
            "instance_type=m5.2xlarge",
        ],
    );
    let step = only_step(&restored.expect_code(0).json()).clone();
    let outputs = &step["outputs"];
    let new_id = outputs["instance_id"].as_str().unwrap();
    assert_ne!(new_id, machine.instance_id);
    assert_eq!(outputs["image_id"], image_id.as_str());
    assert_eq!(outputs["old_private_ip"], machine.private_ip.as_str());
    assert!(
        outputs["old_hostname"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{outputs:#}"
    );
    assert!(
        outputs["private_ip"]
            .as_str()
            .is_some_and(|ip| !ip.is_empty() && ip != machine.private_ip)
    );
    assert!(
        outputs["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "{outputs:#}"
    );
    assert!(
        outputs["public_ip"].is_string(),
        "public_ip is always a string: {outputs:#}"
    );
    let launched = aws.boto(&format!(
        "out(ec2.describe_instances(InstanceIds=['{new_id}'])['Reservations'][0]['Instances'][0])"
    ));
    assert_eq!(launched["State"]["Name"], "running");
    assert_eq!(launched["ImageId"], image_id.as_str());
    assert_eq!(launched["InstanceType"], "m5.2xlarge");
    assert_eq!(
        launched["SubnetId"],
        backed_up["record"]["instance"]["subnet_id"]
    );
    assert_eq!(
        tag(&launched, "backplan:restored-from"),
        step_source(&sandbox).as_deref()
    );

    // A drill: restore, health check, teardown terminates what it launched. The fixture has
    // only the production subnet, so the drill is let into it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let health = listener.local_addr().unwrap().to_string();
    let drill = sandbox.run_on(
        &aws,
        &[
            "--json",
            "drill",
            &plan,
            "--step",
            "machine",
            "--health",
            &health,
            "-o",
            "allow_production_subnet=true",
        ],
    );
    let record = drill.expect_code(0).json();
    assert_eq!(record["drill"]["teardown"][0]["ok"], true, "{record:#}");
    let drilled = only_step(&record)["outputs"]["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let state = aws.boto(&format!(
            "out(ec2.describe_instances(InstanceIds=['{drilled}'])['Reservations'][0]['Instances'][0]['State']['Name'])"
        ),
    );
    assert_eq!(state, "terminated");
}

/// The run id of the latest backup.
fn step_source(sandbox: &Sandbox) -> Option<String> {
    sandbox
        .records("svc")
        .iter()
        .rev()
        .find(|r| r["kind"] == "backup")
        .and_then(|r| r["run_id"].as_str().map(str::to_owned))
}

#[test]
fn prune_keeps_the_newest_and_never_the_newest_verified() {
    let aws = LocalAws::start(&[]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!(
            "instance = \"{}\"\nretention = {{ keep_last = 1 }}\n",
            machine.instance_id
        ),
    );
    // Three backups (the plugin keeps 15 s between snapshots of a volume); the first is verified.
    let first = backup(&sandbox, &aws, &plan)["record"]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    sandbox.run_on(&aws, &["verify", &plan]).expect_code(0);
    let second = backup(&sandbox, &aws, &plan)["record"]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let third = backup(&sandbox, &aws, &plan)["record"]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unrelated = aws.boto(&format!(
        "out(ec2.create_image(InstanceId='{}', Name='by-hand', NoReboot=True)['ImageId'])",
        machine.instance_id
    ));

    let dry = sandbox.run_on(&aws, &["--json", "prune", &plan, "--dry-run"]);
    let summary = only_step(&dry.expect_code(0).json())["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        summary.contains("would delete 1") && summary.contains(&second),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("newest verified {first}")),
        "{summary}"
    );
    assert_eq!(
        image(&aws, "us-east-1", &second).as_array().unwrap().len(),
        1,
        "dry run deletes nothing"
    );

    sandbox.run_on(&aws, &["prune", &plan]).expect_code(0);
    assert!(
        image(&aws, "us-east-1", &second)
            .as_array()
            .unwrap()
            .is_empty(),
        "{second} is deregistered"
    );
    for kept in [&first, &third, unrelated.as_str().unwrap()] {
        assert_eq!(
            image(&aws, "us-east-1", kept).as_array().unwrap().len(),
            1,
            "{kept} is kept"
        );
    }
}

/// A stand-in for the instance metadata service (IMDSv2): a token for a PUT, then the instance
/// id for a GET that presents it. Answers until the test ends; returns its URL.
fn fake_imds(instance_id: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let instance_id = instance_id.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.to_ascii_lowercase());
            }
            let first = head.first().cloned().unwrap_or_default();
            let has_token = head
                .iter()
                .any(|h| h.starts_with("x-aws-ec2-metadata-token: backplan-token"));
            let (status, extra, body) = if first.starts_with("put /latest/api/token") {
                (
                    "200 OK",
                    "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                    "backplan-token".to_owned(),
                )
            } else if first.starts_with("get /latest/meta-data/instance-id") && has_token {
                ("200 OK", "", instance_id.clone())
            } else {
                ("401 Unauthorized", "", String::new())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn check_finds_self_through_imds_and_probes_permissions_with_dry_run() {
    let aws = LocalAws::start(&[]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(&sandbox, "instance = \"self\"\n");
    let mut cmd = sandbox.cmd(["--json", "plan", "check", &plan]);
    aws.apply(&mut cmd).env(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        fake_imds(&machine.instance_id),
    );
    let out = Outcome(cmd.output().unwrap());
    let text = out.expect_code(0).stdout();
    assert!(text.contains(&machine.instance_id), "{text}");
    assert!(
        text.contains("allowed: DescribeImages, CreateImage"),
        "{text}"
    );
}

#[test]
fn instance_tags_must_match_exactly_one_running_instance() {
    let aws = LocalAws::start(&[]);
    let first = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        "instance_tags = { Name = \"circleci-services\" }\n",
    );
    sandbox
        .run_on(&aws, &["plan", "check", &plan])
        .expect_code(0);
    let second = machine(&aws, false);
    let out = sandbox.run_on(&aws, &["plan", "check", &plan]);
    assert_ne!(out.code(), 0);
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(text.contains("exactly one running instance"), "{text}");
    assert!(
        text.contains(&first.instance_id) && text.contains(&second.instance_id),
        "{text}"
    );
}

#[test]
fn a_backup_that_outlasts_wait_timeout_fails_as_retryable() {
    let aws = LocalAws::start(&["--pending", "1000"]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"svc\"\nretries = 0\n\n[[steps]]\nid = \"machine\"\nplugin = \"ebs\"\n\
             [steps.config]\ninstance = \"{}\"\npoll_interval = \"100ms\"\nwait_timeout = \"1s\"\n",
            machine.instance_id
        ),
    );
    let out = sandbox.run_on(&aws, &["--json", "run", path.to_str().unwrap()]);
    out.expect_code(FAILED);
    let step = only_step(&out.json()).clone();
    let error = step["error"].to_string();
    assert!(
        error.contains("did not finish within wait_timeout"),
        "{error}"
    );
    assert!(error.contains("transient"), "a timeout may pass: {step:#}");
}

#[test]
fn the_shipped_services_plan_is_valid_and_lists_its_permissions() {
    let sandbox = Sandbox::new();
    let path = backplan_e2e::workspace_root().join("examples/plans/aws/services.toml");
    let path = path.to_str().unwrap();
    sandbox.run(["plan", "show", path]).expect_code(0);
    let permissions = sandbox.run(["--json", "plan", "permissions", path]);
    let text = permissions.expect_code(0).stdout();
    for action in ["ec2:CreateImage", "ec2:CopyImage", "ec2:RunInstances"] {
        assert!(text.contains(action), "{action} missing:\n{text}");
    }
    // Its catalog is in S3: the policy grants the plan's folder there.
    assert!(
        text.contains("arn:aws:s3:::circleci-backups-usw2/backplan/circleci-services/*"),
        "{text}"
    );
}

#[test]
fn throttling_that_never_stops_ends_in_a_retryable_error() {
    let aws = LocalAws::start(&["--faults", "CreateImage:throttle:*"]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!("instance = \"{}\"\n", machine.instance_id),
    );
    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    out.expect_code(FAILED);
    let step = only_step(&out.json()).clone();
    let error = step["error"].to_string();
    assert!(
        error.contains("transient") && error.contains("RequestLimitExceeded"),
        "{step:#}"
    );
}

#[test]
fn snapshot_retention_works_per_run_by_tag() {
    let aws = LocalAws::start(&[]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!(
            "instance = \"{}\"\nmode = \"snapshots\"\nretention = {{ keep_last = 1 }}\n",
            machine.instance_id
        ),
    );
    let ids = |step: &Value| -> Vec<String> {
        step["record"]["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["snapshot_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let old = ids(&backup(&sandbox, &aws, &plan));
    let new = ids(&backup(&sandbox, &aws, &plan));
    sandbox.run_on(&aws, &["prune", &plan]).expect_code(0);
    let left = aws.boto(
        "out(sorted(s['SnapshotId'] for s in ec2.describe_snapshots(OwnerIds=['self'], \
         Filters=[{'Name': 'tag:backplan:plan', 'Values': ['svc']}])['Snapshots']))",
    );
    let mut expected = new.clone();
    expected.sort();
    assert_eq!(left, serde_json::json!(expected), "old run {old:?} pruned");
}

// ---------------------------------------------------------------------------------------------
// The machine a restore launches works like the old one; drills stay out of production.

/// A Services machine the way a real one runs: in a subnet with a security group, with an
/// instance profile (role `circleci-services-role` in profile `circleci-services`) and an
/// Elastic IP. The VPC has a second, test subnet for drills.
struct Production {
    instance_id: String,
    private_ip: String,
    subnet_id: String,
    test_subnet_id: String,
    security_group_id: String,
    profile_arn: String,
    allocation_id: String,
    elastic_ip: String,
}

fn production(aws: &LocalAws) -> Production {
    let made = aws.boto(
        "iam = boto3.client('iam')\n\
         iam.create_role(RoleName='circleci-services-role', AssumeRolePolicyDocument='{}')\n\
         profile = iam.create_instance_profile(InstanceProfileName='circleci-services')['InstanceProfile']\n\
         iam.add_role_to_instance_profile(InstanceProfileName='circleci-services', RoleName='circleci-services-role')\n\
         base = ec2.register_image(Name='base', RootDeviceName='/dev/sda1')['ImageId']\n\
         vpc = ec2.create_vpc(CidrBlock='10.9.0.0/16')['Vpc']['VpcId']\n\
         subnet = ec2.create_subnet(VpcId=vpc, CidrBlock='10.9.1.0/24')['Subnet']['SubnetId']\n\
         test = ec2.create_subnet(VpcId=vpc, CidrBlock='10.9.2.0/24')['Subnet']['SubnetId']\n\
         sg = ec2.create_security_group(GroupName='services', Description='t', VpcId=vpc)['GroupId']\n\
         i = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType='m5.xlarge',\n\
             SubnetId=subnet, SecurityGroupIds=[sg], IamInstanceProfile={'Arn': profile['Arn']})['Instances'][0]\n\
         eip = ec2.allocate_address(Domain='vpc')\n\
         ec2.associate_address(AllocationId=eip['AllocationId'], InstanceId=i['InstanceId'])\n\
         out({'id': i['InstanceId'], 'ip': i['PrivateIpAddress'], 'subnet': subnet, 'test': test,\n\
              'sg': sg, 'profile': profile['Arn'], 'alloc': eip['AllocationId'], 'eip': eip['PublicIp']})\n",
    );
    let text = |key: &str| made[key].as_str().unwrap().to_owned();
    Production {
        instance_id: text("id"),
        private_ip: text("ip"),
        subnet_id: text("subnet"),
        test_subnet_id: text("test"),
        security_group_id: text("sg"),
        profile_arn: text("profile"),
        allocation_id: text("alloc"),
        elastic_ip: text("eip"),
    }
}

/// Instance `id` as DescribeInstances tells it.
fn described(aws: &LocalAws, id: &str) -> Value {
    aws.boto(&format!(
        "out(ec2.describe_instances(InstanceIds=['{id}'])['Reservations'][0]['Instances'][0])"
    ))
}

/// The ids of the instances restores launched (tagged `backplan:restored-from`).
fn restored_instances(aws: &LocalAws) -> Vec<String> {
    let ids = aws.boto(
        "out([i['InstanceId'] for r in ec2.describe_instances(Filters=[{'Name': 'tag-key', \
         'Values': ['backplan:restored-from']}])['Reservations'] for i in r['Instances']])",
    );
    serde_json::from_value(ids).unwrap()
}

/// The instance Elastic IP `allocation` is associated with (empty if none).
fn elastic_ip_holder(aws: &LocalAws, allocation: &str) -> String {
    aws.boto(&format!(
        "out(ec2.describe_addresses(AllocationIds=['{allocation}'])['Addresses'][0].get('InstanceId') or '')"
    ))
    .as_str()
    .unwrap()
    .to_owned()
}

#[test]
fn restore_launches_with_the_old_instance_profile_security_groups_and_subnet() {
    let aws = LocalAws::start(&[]);
    let old = production(&aws);
    let sandbox = Sandbox::new();
    let plan = plan(&sandbox, &format!("instance = \"{}\"\n", old.instance_id));

    // `plan check` names the profile whose role `plan permissions` cannot know.
    let check = sandbox.run_on(&aws, &["plan", "check", &plan]);
    let text = check.expect_code(0).stdout();
    assert!(
        text.contains(&old.profile_arn) && text.contains("launch.iam_role_arn"),
        "{text}"
    );

    let record = &backup(&sandbox, &aws, &plan)["record"]["instance"];
    assert_eq!(record["iam_instance_profile_arn"], old.profile_arn.as_str());
    assert_eq!(
        record["elastic_ip_allocation_id"],
        old.allocation_id.as_str()
    );

    let restored = sandbox.run_on(&aws, &["--json", "restore", &plan, "--run", "latest"]);
    let step = only_step(&restored.expect_code(0).json()).clone();
    let new_id = step["outputs"]["instance_id"].as_str().unwrap().to_owned();
    let launched = described(&aws, &new_id);
    assert_eq!(
        launched["IamInstanceProfile"]["Arn"],
        old.profile_arn.as_str(),
        "{launched:#}"
    );
    assert_eq!(launched["SubnetId"], old.subnet_id.as_str());
    let groups: Vec<&str> = launched["SecurityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["GroupId"].as_str().unwrap())
        .collect();
    assert_eq!(groups, [old.security_group_id.as_str()]);
    assert_eq!(
        step["record"]["iam_instance_profile"],
        old.profile_arn.as_str()
    );
    // Without reuse asked for, the old machine keeps its addresses.
    assert_ne!(launched["PrivateIpAddress"], old.private_ip.as_str());
    assert_eq!(elastic_ip_holder(&aws, &old.allocation_id), old.instance_id);
}

#[test]
fn with_address_reuse_the_elastic_ip_moves_and_the_private_ip_waits_for_the_old_machine_to_go() {
    let aws = LocalAws::start(&[]);
    let old = production(&aws);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!(
            "instance = \"{}\"\nlaunch = {{ reuse_private_ip = true, reuse_elastic_ip = true }}\n",
            old.instance_id
        ),
    );
    backup(&sandbox, &aws, &plan);

    // The old machine still runs: its private IP is taken, so nothing is launched.
    let refused = sandbox.run_on(&aws, &["--json", "restore", &plan, "--run", "latest"]);
    refused.expect_code(78);
    let error = only_step(&refused.json())["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(&format!("{} is still in use", old.private_ip))
            && error.contains(&old.instance_id),
        "{error}"
    );
    assert!(restored_instances(&aws).is_empty(), "nothing was launched");

    // The Elastic IP alone moves away from the old machine, still running, to the new one.
    let moved = sandbox.run_on(
        &aws,
        &[
            "--json",
            "restore",
            &plan,
            "--run",
            "latest",
            "-o",
            "reuse_private_ip=false",
        ],
    );
    let step = only_step(&moved.expect_code(0).json()).clone();
    let first = step["outputs"]["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(elastic_ip_holder(&aws, &old.allocation_id), first);
    assert_eq!(step["outputs"]["public_ip"], old.elastic_ip.as_str());
    assert_eq!(
        step["outputs"]["old_public_ip"],
        old.elastic_ip.as_str(),
        "{step:#}"
    );

    // The old machine is gone: the next restore gets its private IP and the Elastic IP.
    aws.boto(&format!(
        "ec2.terminate_instances(InstanceIds=['{}'])",
        old.instance_id
    ));
    let restored = sandbox.run_on(&aws, &["--json", "restore", &plan, "--run", "latest"]);
    let step = only_step(&restored.expect_code(0).json()).clone();
    let new_id = step["outputs"]["instance_id"].as_str().unwrap().to_owned();
    let launched = described(&aws, &new_id);
    assert_eq!(launched["PrivateIpAddress"], old.private_ip.as_str());
    assert_eq!(launched["SubnetId"], old.subnet_id.as_str());
    assert_eq!(launched["PublicIpAddress"], old.elastic_ip.as_str());
    assert_eq!(elastic_ip_holder(&aws, &old.allocation_id), new_id);
    assert_eq!(step["outputs"]["private_ip"], old.private_ip.as_str());
    assert_eq!(step["record"]["reused_private_ip"], old.private_ip.as_str());
}

#[test]
fn a_drill_never_launches_into_the_production_subnet_by_accident() {
    let aws = LocalAws::start(&[]);
    let old = production(&aws);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!(
            "instance = \"{}\"\nlaunch = {{ reuse_elastic_ip = true }}\n",
            old.instance_id
        ),
    );
    backup(&sandbox, &aws, &plan);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let health = listener.local_addr().unwrap().to_string();
    // `backplan drill` tells the plugin it is a drill (`drill = true` in its options), even
    // against `-o drill=false`.
    let drill = |extra: &[&str]| -> Outcome {
        let mut args = vec![
            "--json",
            "drill",
            &plan,
            "--step",
            "machine",
            "--health",
            &health,
            "-o",
            "drill=false",
        ];
        args.extend_from_slice(extra);
        sandbox.run_on(&aws, &args)
    };

    let refused = drill(&[]);
    refused.expect_code(78);
    let error = only_step(&refused.json())["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(&format!(
            "{}, the subnet of the backed-up instance {}",
            old.subnet_id, old.instance_id
        )) && error.contains("-o subnet_id=")
            && error.contains("allow_production_subnet"),
        "{error}"
    );
    assert!(restored_instances(&aws).is_empty(), "nothing was launched");

    // Into a test subnet: launched there, checked, torn down; production keeps its Elastic IP.
    let subnet = format!("subnet_id={}", old.test_subnet_id);
    let record = drill(&["-o", &subnet]).expect_code(0).json();
    let step = only_step(&record).clone();
    let drilled = described(&aws, step["outputs"]["instance_id"].as_str().unwrap());
    assert_eq!(drilled["SubnetId"], old.test_subnet_id.as_str());
    assert_eq!(drilled["State"]["Name"], "terminated");
    assert_eq!(elastic_ip_holder(&aws, &old.allocation_id), old.instance_id);
    assert!(
        step["warnings"].to_string().contains("not applied"),
        "the skipped address reuse is said: {step:#}"
    );

    // Asked for explicitly, the production subnet is allowed.
    let record = drill(&["--allow-production-subnet"]).expect_code(0).json();
    let drilled = described(
        &aws,
        only_step(&record)["outputs"]["instance_id"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(drilled["SubnetId"], old.subnet_id.as_str());
    assert_eq!(elastic_ip_holder(&aws, &old.allocation_id), old.instance_id);
}

#[test]
fn a_denied_create_image_is_a_configuration_error_naming_the_call_and_not_retried() {
    // check's DryRun probe passes; the backup's own CreateImage is refused by IAM.
    let aws = LocalAws::start(&["--faults", "CreateImage:pass:1,CreateImage:denied:*"]);
    let machine = machine(&aws, false);
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"svc\"\nretries = 2\nretry_delay = \"1s\"\n\n[[steps]]\nid = \"machine\"\n\
             plugin = \"ebs\"\n[steps.config]\ninstance = \"{}\"\npoll_interval = \"100ms\"\n",
            machine.instance_id
        ),
    );
    let out = sandbox.run_on(&aws, &["--json", "run", path.to_str().unwrap()]);
    out.expect_code(78);
    let step = only_step(&out.json()).clone();
    let message = step["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("ec2:CreateImage was refused")
            && message.contains("UnauthorizedOperation"),
        "{step:#}"
    );
    assert_eq!(step["error"]["kind"], "config", "{step:#}");
    assert_eq!(step["attempts"], 1, "not retried by the runner: {step:#}");
    let faults = aws.boto(&format!(
        "import urllib.request\n\
         out(json.load(urllib.request.urlopen('{}/__faults')))",
        aws.var("BACKPLAN_FAULT_PROXY_URL")
    ));
    assert_eq!(
        faults["seen"]["CreateImage"], 2,
        "the probe, then one call: nobody retried it: {faults:#}"
    );
}

#[test]
fn the_shipped_services_plan_lists_the_builds_right_before_the_ami_and_may_pass_its_role() {
    let sandbox = Sandbox::new();
    let path = backplan_e2e::workspace_root().join("examples/plans/aws/services.toml");
    let path = path.to_str().unwrap();
    let shown = sandbox
        .run(["--json", "plan", "show", path])
        .expect_code(0)
        .json();
    let step = |id: &str| {
        shown["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}: {shown:#}"))
            .clone()
    };
    let ami = step("services-ami");
    assert_eq!(
        ami["after"],
        serde_json::json!(["in-flight-builds"]),
        "{ami:#}"
    );
    assert_eq!(
        ami["restore_after"],
        serde_json::json!([]),
        "the machine comes first"
    );
    assert_eq!(ami["restore_level"], 0);
    assert_eq!(step("in-flight-builds")["after"], serde_json::json!([]));
    let permissions = sandbox.run(["--json", "plan", "permissions", path]);
    let policy = permissions.expect_code(0).json();
    let pass_role = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Action"] == serde_json::json!(["iam:PassRole"]))
        .unwrap_or_else(|| panic!("no iam:PassRole: {policy:#}"));
    assert_eq!(
        pass_role["Condition"]["StringEquals"]["iam:PassedToService"],
        "ec2.amazonaws.com"
    );
}

#[test]
fn a_lost_catalog_is_rebuilt_from_the_tags_and_a_region_that_lost_the_image_restores_from_the_copy()
{
    let aws = LocalAws::start(&[]);
    let old = production(&aws);
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        &format!(
            "instance = \"{}\"\ncopy_to = [{{ region = \"us-west-2\" }}]\n",
            old.instance_id
        ),
    );
    let made = backup(&sandbox, &aws, &plan);
    let image_id = made["record"]["image_id"].as_str().unwrap().to_owned();
    let copy_id = made["record"]["copies"][0]["image_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let found = &image(&aws, "us-east-1", &image_id)[0];
    assert!(tag(found, "backplan:machine").is_some(), "{found:#}");

    // The catalog is lost: the record comes back from the image's tags, as it was.
    std::fs::remove_dir_all(sandbox.state_dir().join("catalog")).unwrap();
    sandbox
        .run_on(&aws, &["catalog", "rebuild", &plan])
        .expect_code(0);
    let shown = sandbox.run_on(&aws, &["--json", "runs", "show", &plan, "latest"]);
    let rebuilt = only_step(&shown.expect_code(0).json()).clone();
    assert_eq!(rebuilt["record"], made["record"]);
    assert_eq!(rebuilt["outputs"], made["outputs"]);

    // Catalog and image both lost (the region's outage took the image): the copy is found and
    // launched in its region, with the old instance profile.
    std::fs::remove_dir_all(sandbox.state_dir().join("catalog")).unwrap();
    aws.script(&format!("ec2.deregister_image(ImageId='{image_id}')"));
    let out = sandbox.run_on(&aws, &["catalog", "rebuild", &plan]);
    assert!(out.expect_code(0).stdout().contains("added 1 run records"));
    let restored = sandbox.run_on(
        &aws,
        &[
            "--json",
            "restore",
            &plan,
            "--run",
            "latest",
            "-o",
            "region=us-west-2",
        ],
    );
    let step = only_step(&restored.expect_code(0).json()).clone();
    assert_eq!(step["outputs"]["image_id"], copy_id.as_str());
    let launched = aws.boto(&format!(
        "out(west.describe_instances(InstanceIds=['{}'])['Reservations'][0]['Instances'][0])",
        step["outputs"]["instance_id"].as_str().unwrap()
    ));
    assert_eq!(launched["ImageId"], copy_id.as_str());
    assert_eq!(
        launched["IamInstanceProfile"]["Arn"],
        old.profile_arn.as_str(),
        "{launched:#}"
    );
}
