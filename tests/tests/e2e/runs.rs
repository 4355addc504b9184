//! Plans, runs, the catalog and the CLI, through the real binary with the built-in exec plugin.

use std::time::{Duration, Instant};

use backplan_e2e::Sandbox;
use serde_json::Value;

const CONFIG_ERROR: i32 = 78;

fn plan(sandbox: &Sandbox, body: &str) -> std::path::PathBuf {
    sandbox.write("plan.toml", &format!("[plan]\nname = \"t\"\n{body}"))
}

fn statuses(record: &Value) -> Vec<(String, String)> {
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn plan_errors_name_file_line_and_column_and_run_nothing() {
    let cases = [
        ("syntax", "[[steps]]\nid = = \"a\"\n", ":4:"),
        (
            "unknown key",
            "[[steps]]\nid = \"a\"\nplugin = \"exec\"\nafterr = []\n",
            ":6:1: unknown field `afterr`",
        ),
        (
            "wrong type",
            "[[steps]]\nid = \"a\"\nplugin = \"exec\"\nretries = \"many\"\n",
            ":6:11: invalid type",
        ),
        (
            "cycle",
            "[[steps]]\nid = \"a\"\nplugin = \"exec\"\nafter = [\"b\"]\n[[steps]]\nid = \"b\"\nplugin = \"exec\"\nafter = [\"a\"]\n",
            "cycle: a → b → a",
        ),
        (
            "unknown plugin",
            "[[steps]]\nid = \"a\"\nplugin = \"tape\"\n",
            ":5:10: unknown plugin `tape`",
        ),
        (
            "bad config",
            "[[steps]]\nid = \"a\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\ntimeout = 5\n",
            ":8:11: step `a`: config at `timeout`",
        ),
    ];
    for (what, body, expected) in cases {
        let sandbox = Sandbox::new();
        let path = plan(&sandbox, body);
        for command in [["plan", "check"], ["run", ""]] {
            let mut args = vec![command[0]];
            if !command[1].is_empty() {
                args.push(command[1]);
            }
            let out = sandbox.run(args.iter().copied().chain([path.to_str().unwrap()]));
            out.expect_code(CONFIG_ERROR);
            let stderr = out.stderr();
            assert!(stderr.contains("plan.toml:"), "{what}: {stderr}");
            assert!(
                stderr.contains(expected),
                "{what}: expected {expected:?} in\n{stderr}"
            );
        }
        assert!(
            sandbox.records("t").is_empty(),
            "{what}: a broken plan must not record a run"
        );
    }
    let sandbox = Sandbox::new();
    let out = sandbox.run(["run", "missing.toml"]);
    out.expect_code(CONFIG_ERROR);
    assert!(
        out.stderr().contains("missing.toml: cannot read the plan"),
        "{}",
        out.stderr()
    );
}

#[test]
fn outputs_flow_to_later_steps_and_everything_is_recorded() {
    let sandbox = Sandbox::new();
    let path = plan(
        &sandbox,
        r#"
[[steps]]
id = "launch"
plugin = "exec"
[steps.config]
command = ["echo", "{\"ip\": \"10.1.2.3\"}"]
outputs = "json"

[[steps]]
id = "fixup"
plugin = "exec"
after = ["launch"]
[steps.config]
command = ["sh", "-c", "echo \"$1 $BACKPLAN_STEP_ID\"", "sh", "new-ip=${steps.launch.outputs.ip}"]
"#,
    );
    let out = sandbox.run(["--json", "run", path.to_str().unwrap()]);
    out.expect_code(0);
    let record = out.json();
    assert_eq!(record["status"], "Succeeded");
    assert_eq!(record["kind"], "backup");
    assert!(
        record["plan"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let fixup = &record["steps"][1];
    assert_eq!(fixup["record"]["stdout"], "new-ip=10.1.2.3 fixup\n");
    assert_eq!(sandbox.records("t"), vec![record]);
}

#[test]
fn a_failed_step_skips_its_dependents_but_not_independent_branches() {
    let sandbox = Sandbox::new();
    let path = plan(
        &sandbox,
        r#"
[[steps]]
id = "broken"
plugin = "exec"
[steps.config]
command = ["sh", "-c", "echo disk full >&2; exit 4"]

[[steps]]
id = "after-broken"
plugin = "exec"
after = ["broken"]
[steps.config]
command = ["true"]

[[steps]]
id = "independent"
plugin = "exec"
[steps.config]
command = ["true"]
"#,
    );
    let out = sandbox.run(["--json", "run", path.to_str().unwrap()]);
    out.expect_code(3);
    let record = out.json();
    assert_eq!(record["status"], "PartiallyFailed");
    assert_eq!(
        statuses(&record),
        [
            ("broken".into(), "Failed".into()),
            ("after-broken".into(), "Skipped".into()),
            ("independent".into(), "Succeeded".into())
        ]
    );
    let error = &record["steps"][0]["error"];
    assert_eq!(error["message"], "`sh` exited with code 4");
    assert_eq!(error["detail"], "stderr: disk full");
    assert!(
        record["steps"][1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`broken` did not succeed")
    );
    assert_eq!(
        record["steps"][0]["attempts"], 1,
        "a permanent error is not retried"
    );
}

#[test]
fn retryable_failures_are_retried_with_backoff_until_they_pass() {
    let sandbox = Sandbox::new();
    let counter = sandbox.path().join("attempts");
    let path = plan(
        &sandbox,
        &format!(
            r#"
[[steps]]
id = "flaky"
plugin = "exec"
retries = 3
retry_delay = "100ms"
[steps.config]
command = ["sh", "-c", "echo x >> {0}; [ $(wc -l < {0}) -ge 3 ] || exit 75"]
retry_codes = [75]
"#,
            counter.display()
        ),
    );
    let out = sandbox.run(["--json", "run", path.to_str().unwrap()]);
    out.expect_code(0);
    assert_eq!(out.json()["steps"][0]["attempts"], 3);
}

#[test]
fn a_failing_check_stops_the_run_before_anything_is_touched() {
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("touched");
    let path = plan(
        &sandbox,
        &format!(
            r#"
[[steps]]
id = "would-touch"
plugin = "exec"
[steps.config]
command = ["touch", "{}"]

[[steps]]
id = "missing-tool"
plugin = "exec"
[steps.config]
command = ["no-such-program-backplan"]
"#,
            marker.display()
        ),
    );
    let out = sandbox.run(["--json", "run", path.to_str().unwrap()]);
    out.expect_code(CONFIG_ERROR);
    let record = out.json();
    assert_eq!(record["status"], "Failed");
    assert!(!marker.exists(), "a step ran although a check failed");
    assert!(
        record["steps"][1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not found on PATH")
    );
    assert_eq!(record["steps"][0]["status"], "Skipped");
}

#[test]
fn a_step_timeout_is_recorded_as_timed_out() {
    let sandbox = Sandbox::new();
    let path = plan(
        &sandbox,
        r#"
[[steps]]
id = "slow"
plugin = "exec"
timeout = "1s"
[steps.config]
command = ["sleep", "30"]
"#,
    );
    let started = Instant::now();
    let out = sandbox.run(["--json", "run", path.to_str().unwrap()]);
    out.expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(out.json()["steps"][0]["status"], "TimedOut");
}

#[test]
fn ctrl_c_cancels_cleanly_and_still_records_the_run() {
    let sandbox = Sandbox::new();
    let started_marker = sandbox.path().join("started");
    let path = plan(
        &sandbox,
        &format!(
            r#"
[[steps]]
id = "long"
plugin = "exec"
[steps.config]
command = ["sh", "-c", "touch {}; sleep 60"]

[[steps]]
id = "later"
plugin = "exec"
after = ["long"]
[steps.config]
command = ["true"]
"#,
            started_marker.display()
        ),
    );
    let child = sandbox
        .cmd(["--json", "run", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started_marker.exists() {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc_kill(child.id() as i32, 2) };
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cancellation took too long"
    );
    assert_eq!(output.status.code(), Some(130));
    let records = sandbox.records("t");
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["interrupted"], true);
    assert_eq!(
        statuses(record),
        [
            ("long".into(), "Cancelled".into()),
            ("later".into(), "Cancelled".into())
        ]
    );
    assert!(
        !sandbox.state_dir().join("catalog/t/lock").exists(),
        "the lock was not released"
    );
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

#[test]
fn a_second_run_of_the_same_plan_is_refused_and_loses_nothing() {
    let sandbox = Sandbox::new();
    let started_marker = sandbox.path().join("started");
    let path = plan(
        &sandbox,
        &format!(
            r#"
[[steps]]
id = "hold"
plugin = "exec"
[steps.config]
command = ["sh", "-c", "touch {}; sleep 3"]
"#,
            started_marker.display()
        ),
    );
    let first = sandbox
        .cmd(["--json", "run", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !started_marker.exists() {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = sandbox.run(["run", path.to_str().unwrap()]);
    second.expect_code(75);
    assert!(
        second.stderr().contains("already being run by pid"),
        "{}",
        second.stderr()
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0));
    let records = sandbox.records("t");
    assert_eq!(records.len(), 1, "the refused run must not write a record");
    assert_eq!(records[0]["status"], "Succeeded");
}

#[test]
fn verify_restore_and_prune_start_from_the_recorded_backup() {
    let sandbox = Sandbox::new();
    let out_dir = sandbox.path().join("restored");
    let path = plan(
        &sandbox,
        &format!(
            r#"
[[steps]]
id = "launch"
plugin = "exec"
[steps.config]
command = ["echo", "{{\"old_ip\": \"10.0.0.1\"}}"]
outputs = "json"
restore_command = ["echo", "{{\"new_ip\": \"10.0.0.2\"}}"]

[[steps]]
id = "rewrite"
plugin = "exec"
after = ["launch"]
[steps.config]
command = ["true"]
verify_command = ["sh", "-c", "test \"$0\" = 10.0.0.1", "${{steps.launch.outputs.old_ip}}"]
restore_command = ["sh", "-c", "mkdir -p {dir} && echo \"$0 -> $1 from $BACKPLAN_SOURCE_RUN_ID\" > {dir}/log", "${{steps.launch.outputs.old_ip}}", "${{steps.launch.outputs.new_ip}}"]
"#,
            dir = out_dir.display()
        ),
    );
    let path = path.to_str().unwrap();
    let backup = sandbox.run(["--json", "run", path]);
    backup.expect_code(0);
    let backup_id = backup.json()["run_id"].as_str().unwrap().to_owned();

    // outputs of the restore's launch step, mixed with the backup's own outputs
    let verify = sandbox.run(["--json", "verify", path]);
    verify.expect_code(0);
    assert_eq!(verify.json()["source_run"], backup_id.as_str());

    let dry = sandbox.run(["--json", "restore", path, "--run", "latest", "--dry-run"]);
    dry.expect_code(0);
    assert!(!out_dir.exists(), "a dry run changed something");
    assert!(
        dry.json()["steps"][1]["summary"]
            .as_str()
            .unwrap()
            .starts_with("would run")
    );

    // The launch from "an admin machine", then the rest "on the new host".
    sandbox
        .run(["restore", path, "--run", &backup_id, "--step", "launch"])
        .expect_code(0);
    sandbox
        .run(["restore", path, "--run", &backup_id, "--step", "rewrite"])
        .expect_code(0);
    let log = std::fs::read_to_string(out_dir.join("log")).unwrap();
    assert_eq!(log, format!("10.0.0.1 -> 10.0.0.2 from {backup_id}\n"));

    let list = sandbox.run(["--json", "runs", "list", path]);
    let runs = list.json();
    let backup_entry = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == backup_id.as_str())
        .unwrap();
    assert_eq!(
        backup_entry["verified"], true,
        "a passing verify marks the backup verified"
    );

    let prune = sandbox.run(["--json", "prune", path, "--dry-run"]);
    prune.expect_code(0);
    assert_eq!(prune.json()["kind"], "prune");
}

#[test]
fn plan_show_runs_show_plugins_and_completions() {
    let sandbox = Sandbox::new();
    let path = plan(
        &sandbox,
        "[[steps]]\nid = \"a\"\nplugin = \"exec\"\n[[steps]]\nid = \"b\"\nplugin = \"exec\"\nafter = [\"a\"]\n",
    );
    let path = path.to_str().unwrap();
    let show = sandbox.run(["--json", "plan", "show", path]);
    show.expect_code(0);
    let levels: Vec<_> = show.json()["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["level"].as_u64().unwrap())
        .collect();
    assert_eq!(levels, [0, 1]);
    let human = sandbox.run(["plan", "show", path]);
    assert!(
        human.stdout().contains("  stage 2:\n    b "),
        "{}",
        human.stdout()
    );

    sandbox.run(["run", path]).expect_code(0);
    let shown = sandbox.run(["--json", "runs", "show", path, "latest"]);
    shown.expect_code(0);
    assert_eq!(shown.json()["status"], "Succeeded");
    sandbox
        .run(["runs", "show", path, "no-such-run"])
        .expect_code(1);

    let plugins = sandbox.run(["--json", "plugins", "list"]);
    assert!(
        plugins
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "exec")
    );
    let info = sandbox.run(["--json", "plugins", "info", "exec"]);
    assert!(info.json()["config_schema"]["properties"]["command"].is_object());

    let completions = sandbox.run(["completions", "bash"]);
    completions.expect_code(0);
    assert!(completions.stdout().contains("backplan"));
}

#[test]
fn the_shipped_example_plans_are_valid() {
    let root = backplan_e2e::workspace_root().join("examples/plans");
    let sandbox = Sandbox::new();
    let mut seen = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            seen += 1;
            let out = sandbox.run(["plan", "check", path.to_str().unwrap()]);
            out.expect_code(0);
        }
    }
    assert!(seen > 0);
}

#[test]
fn the_local_example_backs_up_verifies_and_restores() {
    let sandbox = Sandbox::new();
    let plan = backplan_e2e::workspace_root().join("examples/plans/local.toml");
    let plan = plan.to_str().unwrap();
    let run = sandbox.run(["--json", "run", plan]);
    run.expect_code(0);
    sandbox.run(["verify", plan]).expect_code(0);
    // Restored into a drill folder: the example's source tree stays untouched.
    let target = sandbox.path().join("restored");
    let target_option = format!("target={}", target.display());
    let restore = sandbox.run([
        "--json",
        "restore",
        plan,
        "--run",
        "latest",
        "-o",
        target_option.as_str(),
    ]);
    restore.expect_code(0);
    let record = &restore.json()["steps"][1]["record"];
    assert_eq!(record["files"], 2, "{record:#}");
    let source = backplan_e2e::workspace_root().join("examples/demo-artifacts");
    for file in ["builds/1042/report.txt", "caches/deps-v1.txt"] {
        assert_eq!(
            std::fs::read(target.join(file)).unwrap(),
            std::fs::read(source.join(file)).unwrap(),
            "{file}"
        );
    }
}
