//! What a monitoring system reads: the metrics file written after every run, checked by
//! `promtool` and parsed back, and the shipped alert rules, checked and unit-tested by
//! `promtool` (installed by scripts/test-tools/install, which scripts/test runs).

use std::collections::BTreeMap;
use std::process::Command;

use backplan_e2e::{Sandbox, workspace_root};

fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is missing: run scripts/test-tools/install (scripts/test does)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// `name{labels} value` lines of the exposition format, by `name{labels}`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn every_run_writes_a_metrics_file_that_promtool_accepts() {
    let sandbox = Sandbox::new();
    let metrics = sandbox.path().join("textfile/backplan-t.prom");
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"t\"\nmetrics_file = \"{}\"\n\
             [[steps]]\nid = \"dump\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\n\
             [[steps]]\nid = \"upload\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"false\"]\n",
            metrics.display()
        ),
    );
    let plan = path.to_str().unwrap();
    sandbox.run(["run", plan]).expect_code(3);
    let text = std::fs::read_to_string(&metrics).expect("the metrics file was written");
    let checked = promtool(&["check", "metrics"], Some(&text));
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let first = samples(&text);
    assert_eq!(
        first[r#"backplan_last_run_success{plan="t",kind="backup"}"#],
        0.0
    );
    assert_eq!(
        first[r#"backplan_step_last_backup_success{plan="t",step="dump"}"#],
        1.0
    );
    assert_eq!(
        first[r#"backplan_step_last_backup_success{plan="t",step="upload"}"#],
        0.0
    );
    let dump_at = first[r#"backplan_step_last_success_timestamp_seconds{plan="t",step="dump"}"#];
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!((now - dump_at).abs() < 120.0, "{dump_at} vs {now}");
    assert!(
        !first.contains_key(
            r#"backplan_step_last_success_timestamp_seconds{plan="t",step="upload"}"#
        ),
        "a step that never succeeded has no success time"
    );
    // A verify that passes marks the backup verified: the next file says so.
    sandbox.run(["verify", plan]);
    let after = samples(&std::fs::read_to_string(&metrics).unwrap());
    assert!(after.contains_key(r#"backplan_last_run_timestamp_seconds{plan="t",kind="verify"}"#));
}

#[test]
fn the_shipped_alert_rules_are_valid_and_fire_as_documented() {
    let dir = workspace_root().join("examples/monitoring");
    for args in [
        ["check", "rules", "backplan.rules.yml"],
        ["test", "rules", "backplan.rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool is missing: run scripts/test-tools/install");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
