//! `backplan status` for monitors, against catalogs whose records are backdated.

use backplan_e2e::Sandbox;
use serde_json::{Value, json};

fn plan(sandbox: &Sandbox) -> String {
    let path = sandbox.write(
        "plan.toml",
        "[plan]\nname = \"t\"\n[[steps]]\nid = \"dump\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\n",
    );
    path.to_str().unwrap().to_owned()
}

/// Writes a backup record `hours_ago`, its step ending `step_status`.
fn backup(sandbox: &Sandbox, id: &str, hours_ago: i64, step_status: &str, verified: bool) {
    let started = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(hours_ago);
    let status = if step_status == "Succeeded" {
        "Succeeded"
    } else {
        "Failed"
    };
    let mut record = json!({
        "format": 1, "run_id": id, "kind": "backup",
        "plan": {"name": "t", "digest": "sha256:0", "path": "/p"},
        "started_at": started.to_string(), "finished_at": started.to_string(),
        "status": status,
        "steps": [{"id": "dump", "plugin": "exec", "status": step_status}],
    });
    if verified {
        record["verified"] = json!({"at": started.to_string(), "by_run": "v"});
    }
    sandbox.write(
        &format!("state/catalog/t/runs/{id}.json"),
        &serde_json::to_string(&record).unwrap(),
    );
}

fn status(sandbox: &Sandbox, plan: &str) -> (i32, Value) {
    let out = sandbox.run(["--json", "status", plan]);
    (out.code(), out.json())
}

#[test]
fn status_exit_codes_follow_the_monitoring_convention() {
    // Fresh and verified.
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    backup(&sandbox, "20260101T000000Z-000001", 3, "Succeeded", true);
    let (code, report) = status(&sandbox, &path);
    assert_eq!(
        (code, report["level"].as_str()),
        (0, Some("OK")),
        "{report}"
    );

    // Fresh, never verified: a warning.
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    backup(&sandbox, "20260101T000000Z-000001", 3, "Succeeded", false);
    let (code, report) = status(&sandbox, &path);
    assert_eq!(code, 1, "{report}");
    assert!(
        report["line"]
            .as_str()
            .unwrap()
            .contains("no verified backup"),
        "{report}"
    );

    // The last run failed, the one before is still fresh: a warning.
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    backup(&sandbox, "20260101T000000Z-000001", 5, "Succeeded", true);
    backup(&sandbox, "20260101T000000Z-000002", 1, "Failed", false);
    let (code, report) = status(&sandbox, &path);
    assert_eq!(code, 1, "{report}");
    assert!(
        report["line"].as_str().unwrap().contains("ended Failed"),
        "{report}"
    );

    // Stale: critical, and the pager line says how old.
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    backup(&sandbox, "20260101T000000Z-000001", 30, "Succeeded", true);
    let (code, report) = status(&sandbox, &path);
    assert_eq!(code, 2, "{report}");
    assert!(
        report["line"]
            .as_str()
            .unwrap()
            .contains("last backed up 1day 6h ago"),
        "{report}"
    );
    let out = sandbox.run(["status", &path, "--max-age", "2d"]);
    assert_eq!(out.code(), 0, "{}", out.stdout());

    // Nothing recorded yet: critical.
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    let (code, _) = status(&sandbox, &path);
    assert_eq!(code, 2);

    // A plan that cannot be read: unknown, still one line.
    let out = sandbox.run(["status", "/nonexistent/plan.toml"]);
    assert_eq!(out.code(), 3);
    assert!(
        out.stdout().starts_with("backplan UNKNOWN: "),
        "{}",
        out.stdout()
    );
}
