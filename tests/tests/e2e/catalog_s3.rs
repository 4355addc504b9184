//! The catalog in S3 against the local endpoint: the lock contract in process, and through the
//! binary a second machine that sees the first's runs, simultaneous runs of one plan on two
//! "machines", a killed holder, and catalogs that are refused before anything runs.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use backplan_catalog_s3::S3Store;
use backplan_core::catalog::CatalogStore;
use backplan_core::catalog::lock::{LockOwner, STALE_AFTER, acquire, conformance};
use backplan_e2e::{LocalAws, Sandbox};

const CHILD: &str = "BACKPLAN_E2E_S3_LOCK_CONTRACT";

fn bucket(aws: &LocalAws, name: &str) {
    aws.script(&format!("s3.create_bucket(Bucket='{name}')"));
}

/// Runs the core's lock conformance suite against the S3 lock on a local endpoint started with
/// `options`, in a child process (`test`, this test's own name) whose environment points the
/// SDK at it. The lock is released by a conditional PutObject of a marker, never a delete.
fn lock_contract(test: &str, options: &[&str]) {
    if std::env::var_os(CHILD).is_some() {
        let location = || {
            let plan = format!("p{:08x}", fastrand_u32());
            let store = S3Store::open("locks", "contract", &plan).expect("open the S3 catalog");
            move || store.lock()
        };
        conformance::check_all(location);
        // A released lock is an object holding the marker: of many takers, one wins there too.
        let released = location();
        let (guard, _) = acquire(
            released(),
            LockOwner::this_process("before"),
            SystemTime::now(),
            STALE_AFTER,
        )
        .unwrap();
        assert!(guard.release().unwrap());
        conformance::one_of_many_simultaneous_takers_wins(released, 16);
        return;
    }
    let aws = LocalAws::start(options);
    bucket(&aws, "locks");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([test, "--exact", "--nocapture"]);
    aws.apply(&mut child).env(CHILD, "1");
    let out = child.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
}

#[test]
fn the_s3_lock_passes_the_lock_contract() {
    lock_contract("catalog_s3::the_s3_lock_passes_the_lock_contract", &[]);
}

#[test]
fn the_s3_lock_passes_the_lock_contract_on_moto_s3() {
    lock_contract(
        "catalog_s3::the_s3_lock_passes_the_lock_contract_on_moto_s3",
        &["--s3", "moto"],
    );
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id()
}

/// A plan of `name` with its catalog in `s3://catalog/fleet`: one exec step running `command`.
fn plan(sandbox: &Sandbox, name: &str, command: &str) -> String {
    let path = sandbox.write(
        &format!("{name}.toml"),
        &format!(
            "[plan]\nname = \"{name}\"\ncatalog = \"s3://catalog/fleet\"\n\
             [[steps]]\nid = \"dump\"\nplugin = \"exec\"\n[steps.config]\n\
             command = [\"sh\", \"-c\", {command:?}]\nrestore_command = [\"true\"]\n"
        ),
    );
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_second_machine_sees_the_runs_and_restores_from_the_s3_catalog() {
    let aws = LocalAws::start(&[]);
    bucket(&aws, "catalog");
    let machine_a = Sandbox::new();
    let path_a = plan(&machine_a, "services", "echo dumped");
    let backup = machine_a
        .run_on(&aws, &["--json", "run", &path_a])
        .expect_code(0)
        .json();
    assert!(
        !machine_a.state_dir().join("catalog").exists(),
        "the records went to the local folder"
    );
    // Machine B: an empty state folder, the plan file and credentials only.
    let machine_b = Sandbox::new();
    let path_b = plan(&machine_b, "services", "echo dumped");
    let listed = machine_b.run_on(&aws, &["--json", "runs", "list", &path_b]);
    let runs = listed.expect_code(0).json();
    assert_eq!(runs[0]["run_id"], backup["run_id"]);
    let shown = machine_b.run_on(&aws, &["--json", "runs", "show", &path_b, "latest"]);
    assert_eq!(
        shown.expect_code(0).json()["steps"][0]["status"],
        "Succeeded"
    );
    let restore = machine_b.run_on(&aws, &["--json", "restore", &path_b, "--run", "latest"]);
    let restore = restore.expect_code(0).json();
    assert_eq!(restore["source_run"], backup["run_id"]);
    // Another plan shares the bucket with its own folder and lock.
    let other = plan(&machine_b, "builders", "true");
    machine_b.run_on(&aws, &["run", &other]).expect_code(0);
    let keys = aws
        .script("out(sorted(o['Key'] for o in s3.list_objects_v2(Bucket='catalog')['Contents']))");
    assert!(
        keys.contains("fleet/services/runs/") && keys.contains("fleet/builders/runs/"),
        "{keys}"
    );
    let lock = aws.script(
        "print(s3.get_object(Bucket='catalog', Key='fleet/services/lock')['Body'].read().decode())",
    );
    assert_eq!(
        lock.trim(),
        r#"{"released": true}"#,
        "the lock was left held"
    );
}

#[test]
fn runs_release_the_s3_lock_and_probe_without_deleting_anything() {
    let aws = LocalAws::start(&[]);
    bucket(&aws, "catalog");
    // Versioned, so that a delete would leave a delete marker to find.
    aws.script(
        "s3.put_bucket_versioning(Bucket='catalog', VersioningConfiguration={'Status': 'Enabled'})",
    );
    let sandbox = Sandbox::new();
    let path = plan(&sandbox, "services", "echo dumped");
    let objects = || {
        aws.boto(
            "out(sorted(o['Key'] for o in s3.list_objects_v2(Bucket='catalog', \
             Prefix='fleet/services/')['Contents'] if not o['Key'].startswith('fleet/services/runs/')))",
        )
    };
    let lock = || {
        aws.script(
            "print(s3.get_object(Bucket='catalog', Key='fleet/services/lock')['Body'].read().decode())",
        )
    };
    sandbox.run_on(&aws, &["run", &path]).expect_code(0);
    assert_eq!(lock().trim(), r#"{"released": true}"#);
    let after_one = objects();
    // The next run takes the released lock over (If-Match), and releases it the same way.
    sandbox.run_on(&aws, &["run", &path]).expect_code(0);
    sandbox.run_on(&aws, &["verify", &path]).expect_code(0);
    assert_eq!(lock().trim(), r#"{"released": true}"#);
    assert_eq!(
        objects(),
        serde_json::json!([
            "fleet/services/lock",
            "fleet/services/probe/conditional-write"
        ]),
        "a probe per run, or no lock: something was deleted or left"
    );
    assert_eq!(objects(), after_one);
    // A role that cannot delete would have failed on none of it: nothing was deleted.
    let deleted = aws.boto(
        "v = s3.list_object_versions(Bucket='catalog', Prefix='fleet/services/')\n\
         out(len(v.get('DeleteMarkers', [])))",
    );
    assert_eq!(deleted, 0);
    let runs = sandbox.run_on(&aws, &["--json", "runs", "list", &path]);
    assert_eq!(runs.expect_code(0).json().as_array().unwrap().len(), 3);
}

fn start(sandbox: &Sandbox, aws: &LocalAws, plan: &str) -> Child {
    let mut cmd = sandbox.cmd(["run", plan]);
    aws.apply(&mut cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_machines_starting_one_plan_at_once_are_one_run_and_a_killed_holders_lock_is_taken_once() {
    let aws = LocalAws::start(&[]);
    bucket(&aws, "catalog");
    let (one, two) = (Sandbox::new(), Sandbox::new());
    let marker = one.path().join("started");
    let command = format!("touch {}; sleep 1", marker.display());
    let (path_one, path_two) = (plan(&one, "svc", &command), plan(&two, "svc", &command));
    for _ in 0..3 {
        let contenders = [start(&one, &aws, &path_one), start(&two, &aws, &path_two)];
        let codes: Vec<i32> = contenders
            .into_iter()
            .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
            .collect();
        let mut sorted = codes.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 75], "exit codes {codes:?}");
    }
    // The holder is killed; its process is provably gone on this machine, so exactly one of two
    // new contenders takes the lock over.
    let _ = std::fs::remove_file(&marker);
    let slow = plan(
        &one,
        "svc",
        &format!("touch {}; sleep 60", marker.display()),
    );
    let mut holder = start(&one, &aws, &slow);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the holder never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let quick = plan(&two, "svc", "sleep 1");
    let contenders = [start(&two, &aws, &quick), start(&two, &aws, &quick)];
    let outputs: Vec<_> = contenders
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut codes: Vec<i32> = outputs.iter().map(|o| o.status.code().unwrap()).collect();
    codes.sort();
    assert_eq!(codes, [0, 75]);
    let reclaimed = outputs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("reclaimed the lock"))
        .count();
    assert_eq!(reclaimed, 1);
    let listed = two
        .run_on(&aws, &["--json", "runs", "list", &quick])
        .expect_code(0)
        .json();
    let statuses: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "Interrupted").count(),
        1,
        "{statuses:?}"
    );
}

#[test]
fn a_missing_bucket_or_a_prefix_holding_something_else_is_a_plan_error_and_nothing_runs() {
    let aws = LocalAws::start(&[]);
    let sandbox = Sandbox::new();
    let path = plan(&sandbox, "svc", "touch ran");
    let out = sandbox.run_on(&aws, &["run", &path]);
    out.expect_code(78);
    assert!(
        out.stderr()
            .contains("svc.toml:3:11: the catalog bucket catalog does not exist"),
        "{}",
        out.stderr()
    );
    assert!(!sandbox.path().join("ran").exists());
    bucket(&aws, "catalog");
    aws.script("s3.put_object(Bucket='catalog', Key='fleet/svc/artifacts/build.tar', Body=b'x')");
    for args in [vec!["run", &path], vec!["plan", "check", &path]] {
        let out = sandbox.run_on(&aws, &args);
        out.expect_code(78);
        assert!(
            out.stderr().contains("not part of a backplan catalog"),
            "{}",
            out.stderr()
        );
    }
    assert!(!sandbox.path().join("ran").exists());
    let keys = aws
        .script("out(sorted(o['Key'] for o in s3.list_objects_v2(Bucket='catalog')['Contents']))");
    assert_eq!(
        keys.trim(),
        r#"["fleet/svc/artifacts/build.tar"]"#,
        "the foreign prefix was touched"
    );
}

#[test]
fn thousands_of_records_are_listed_across_pages() {
    if std::env::var_os(CHILD).is_some() {
        let store = S3Store::open("catalog", "many", "p").unwrap();
        for i in 0..1100 {
            store
                .put_record(&format!("20260101T000000Z-{i:06}"), b"{}")
                .unwrap();
        }
        assert_eq!(store.record_ids().unwrap().len(), 1100);
        return;
    }
    let aws = LocalAws::start(&[]);
    bucket(&aws, "catalog");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args([
        "catalog_s3::thousands_of_records_are_listed_across_pages",
        "--exact",
        "--nocapture",
    ]);
    aws.apply(&mut child).env(CHILD, "1");
    let out = child.output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_server_that_ignores_conditional_writes_is_refused_before_anything_runs() {
    let aws = LocalAws::start(&[]);
    bucket(&aws, "catalog");
    // The fault proxy in front of the S3 endpoint forwards every request without its
    // conditions: what an S3-compatible server that ignores them looks like.
    let sandbox = Sandbox::new();
    let port_file = sandbox.path().join("proxy.port");
    let mut proxy = aws
        .python()
        .arg(backplan_e2e::workspace_root().join("scripts/local-aws/fault_proxy.py"))
        .args([
            "--target",
            aws.var("AWS_ENDPOINT_URL_S3"),
            "-p",
            "0",
            "--port-file",
        ])
        .arg(&port_file)
        .args([
            "--drop-header",
            "If-None-Match",
            "--drop-header",
            "If-Match",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file)
            && !text.trim().is_empty()
        {
            break text.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "the proxy never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let path = plan(&sandbox, "svc", "touch ran");
    for args in [["plan", "check"], ["run", "--no-progress"]] {
        let mut cmd = sandbox.cmd(args.iter().copied().chain([path.as_str()]));
        aws.apply(&mut cmd)
            .env("AWS_ENDPOINT_URL_S3", format!("http://127.0.0.1:{port}"));
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(stderr.contains("ignores conditional writes"), "{stderr}");
    }
    assert!(!sandbox.path().join("ran").exists());
    let _ = proxy.kill();
    let _ = proxy.wait();
}
