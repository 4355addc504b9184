//! Restores the way CircleCI documents them: the plan's restore order, and restore drills.

use std::net::TcpListener;

use backplan_e2e::Sandbox;
use serde_json::Value;

/// Four exec steps; each restore appends its id to `order.log`. In a restore, the host fix-up
/// runs before the artifacts and the app starts last, which is not the backup's order.
fn ordered_plan(sandbox: &Sandbox) -> String {
    let log = sandbox.path().join("order.log");
    let step = |id: &str, extra: &str| {
        format!(
            r#"
[[steps]]
id = "{id}"
plugin = "exec"
{extra}
[steps.config]
command = ["true"]
restore_command = ["sh", "-c", "echo {id} >> {log}"]
"#,
            log = log.display()
        )
    };
    let body = [
        step("machine", ""),
        step("artifacts", r#"restore_after = ["host-stop"]"#),
        step("host-stop", r#"after = ["machine"]"#),
        step(
            "host-start",
            "after = [\"machine\"]\nrestore_after = [\"artifacts\"]",
        ),
    ]
    .concat();
    let path = sandbox.write("plan.toml", &format!("[plan]\nname = \"ordered\"\n{body}"));
    path.to_str().unwrap().to_owned()
}

fn ids(record: &Value) -> Vec<String> {
    record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_restore_runs_in_the_plans_restore_order() {
    let sandbox = Sandbox::new();
    let plan = ordered_plan(&sandbox);
    let backup = sandbox.run(["--json", "run", &plan]);
    assert_eq!(
        ids(&backup.expect_code(0).json()),
        ["machine", "artifacts", "host-stop", "host-start"]
    );
    let restore = sandbox.run(["--json", "restore", &plan, "--run", "latest"]);
    assert_eq!(
        ids(&restore.expect_code(0).json()),
        ["machine", "host-stop", "artifacts", "host-start"]
    );
    let log = std::fs::read_to_string(sandbox.path().join("order.log")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["machine", "host-stop", "artifacts", "host-start"]
    );
}

#[test]
fn a_drill_that_answers_is_timed_torn_down_and_marks_the_backup_verified() {
    let sandbox = Sandbox::new();
    let plan = ordered_plan(&sandbox);
    let backup = sandbox.run(["--json", "run", &plan]);
    let backup_id = backup.expect_code(0).json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let health = listener.local_addr().unwrap().to_string();

    let drill = sandbox.run([
        "--json", "drill", &plan, "--step", "machine", "--health", &health,
    ]);
    let record = drill.expect_code(0).json();
    assert_eq!(record["kind"], "drill", "{record:#}");
    assert_eq!(record["status"], "Succeeded");
    assert_eq!(ids(&record), ["machine"]);
    let outcome = &record["drill"];
    assert_eq!(outcome["healthy"], true, "{outcome:#}");
    assert_eq!(outcome["health_target"], health.as_str());
    assert!(outcome["time_to_recovery_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!(outcome["teardown"][0]["step"], "machine");
    assert_eq!(outcome["teardown"][0]["ok"], true);

    let shown = sandbox.run(["--json", "runs", "show", &plan, &backup_id]);
    let verified = &shown.expect_code(0).json()["verified"];
    assert_eq!(verified["by_run"], record["run_id"], "{verified:#}");
}

#[test]
fn a_drill_that_never_answers_fails_and_proves_nothing() {
    let sandbox = Sandbox::new();
    let plan = ordered_plan(&sandbox);
    let backup = sandbox.run(["--json", "run", &plan]);
    let backup_id = backup.expect_code(0).json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A port that was free a moment ago: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();

    let drill = sandbox.run([
        "--json",
        "drill",
        &plan,
        "--step",
        "machine",
        "--health",
        &closed,
        "--health-timeout",
        "1s",
    ]);
    let record = drill.expect_code(1).json();
    assert_eq!(record["status"], "Failed", "{record:#}");
    let outcome = &record["drill"];
    assert_eq!(outcome["healthy"], false);
    let why = outcome["health_error"].as_str().unwrap();
    assert!(why.contains(&closed), "{why}");
    // Torn down all the same.
    assert_eq!(outcome["teardown"][0]["ok"], true, "{outcome:#}");

    let shown = sandbox.run(["--json", "runs", "show", &plan, &backup_id]);
    assert!(shown.expect_code(0).json()["verified"].is_null());
}
