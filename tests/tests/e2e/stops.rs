//! Runs that start together, and runs that are stopped: the plan's lock under a real race of
//! processes, SIGTERM as systemd sends it, SIGKILL, and a closed stdout.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use backplan_e2e::Sandbox;
use serde_json::Value;

const BUSY: i32 = 75;

fn plan(sandbox: &Sandbox, body: &str) -> PathBuf {
    sandbox.write("plan.toml", &format!("[plan]\nname = \"t\"\n{body}"))
}

/// A plan whose one step touches `marker` and then sleeps `seconds`.
fn holding_plan(sandbox: &Sandbox, marker: &Path, seconds: f64) -> PathBuf {
    plan(
        sandbox,
        &format!(
            "[[steps]]\nid = \"hold\"\nplugin = \"exec\"\n[steps.config]\n\
             command = [\"sh\", \"-c\", \"touch {}; sleep {seconds}\"]\n",
            marker.display()
        ),
    )
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, number: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc_kill(child.id() as i32, number) };
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

#[test]
fn many_simultaneous_runs_of_one_plan_are_exactly_one_run_every_time() {
    // It used to be two in 8 of 30 trials: the second saw the first's lock before its owner was
    // written into it, judged it stale and "reclaimed" it.
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("started");
    let path = holding_plan(&sandbox, &marker, 0.6);
    let bin = backplan_e2e::backplan_bin();
    for trial in 0..8 {
        let go = sandbox.path().join(format!("go-{trial}"));
        let contenders: Vec<Child> = (0..8)
            .map(|_| {
                // Each contender spins until `go` exists, so all of them start at one instant.
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "while [ ! -e '{}' ]; do :; done; exec '{}' run '{}'",
                        go.display(),
                        bin.display(),
                        path.display()
                    ))
                    .env("BACKPLAN_STATE_DIR", sandbox.state_dir())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(&go, b"").unwrap();
        let outputs: Vec<_> = contenders
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let codes: Vec<i32> = outputs.iter().map(|o| o.status.code().unwrap()).collect();
        assert_eq!(
            codes.iter().filter(|&&c| c == 0).count(),
            1,
            "trial {trial}: exit codes {codes:?}"
        );
        assert!(
            codes.iter().all(|&c| c == 0 || c == BUSY),
            "trial {trial}: exit codes {codes:?}"
        );
        for output in &outputs {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !stderr.contains("reclaimed the lock"),
                "trial {trial}: {stderr}"
            );
        }
    }
    let records = sandbox.records("t");
    assert_eq!(records.len(), 8, "one record per trial");
    assert!(records.iter().all(|r| r["status"] == "Succeeded"));
}

#[test]
fn sigterm_stops_a_backup_like_ctrl_c_and_releases_the_lock() {
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("started");
    let path = holding_plan(&sandbox, &marker, 60.0);
    let child = sandbox
        .cmd(["--json", "run", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&marker);
    signal(&child, 15);
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopping took too long"
    );
    assert_eq!(
        output.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records = sandbox.records("t");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "Cancelled");
    assert_eq!(records[0]["steps"][0]["status"], "Cancelled");
    assert!(
        !sandbox.state_dir().join("catalog/t/lock").exists(),
        "the lock was not released"
    );
    std::fs::remove_file(&marker).unwrap();
    let short = holding_plan(&sandbox, &marker, 0.0);
    sandbox.run(["run", short.to_str().unwrap()]).expect_code(0);
}

#[test]
fn a_killed_run_shows_as_interrupted_and_the_next_run_records_it_so() {
    let sandbox = Sandbox::new();
    let marker = sandbox.path().join("started");
    let path = holding_plan(&sandbox, &marker, 60.0);
    let mut child = sandbox
        .cmd(["run", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&marker);
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = sandbox.records("t");
    assert_eq!(
        killed[0]["status"], "Running",
        "the record as the kill left it"
    );
    let listed = sandbox.run(["--json", "runs", "list", path.to_str().unwrap()]);
    listed.expect_code(0);
    assert_eq!(listed.json()[0]["status"], "Interrupted");
    std::fs::remove_file(&marker).unwrap();
    let short = holding_plan(&sandbox, &marker, 0.0);
    let next = sandbox.run(["run", short.to_str().unwrap()]);
    next.expect_code(0);
    let records = sandbox.records("t");
    assert_eq!(records[0]["status"], "Interrupted");
    assert_eq!(records[0]["steps"][0]["status"], "Cancelled");
    assert_eq!(records[1]["status"], "Succeeded");
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    // `backplan runs list PLAN | head -1` used to panic with a broken pipe (exit 101).
    let sandbox = Sandbox::new();
    let mut body = String::new();
    for i in 0..3000 {
        body.push_str(&format!(
            "[[steps]]\nid = \"s{i}\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\n"
        ));
    }
    let path = plan(&sandbox, &body);
    let mut child = sandbox
        .cmd(["plan", "show", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_option_without_a_value_is_a_usage_error() {
    let sandbox = Sandbox::new();
    let path = plan(
        &sandbox,
        "[[steps]]\nid = \"a\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\n",
    );
    for bad in ["novalue", "=x"] {
        let out = sandbox.run(["run", path.to_str().unwrap(), "-o", bad]);
        out.expect_code(2);
        assert!(out.stderr().contains("KEY"), "{}", out.stderr());
    }
    assert!(
        sandbox.records("t").is_empty(),
        "a usage error ran something"
    );
}

#[test]
fn absurd_numbers_and_empty_paths_in_a_plan_are_errors_at_their_line() {
    let cases = [
        (
            "concurrency = 9223372036854775807",
            ":3:15: concurrency must be between 1 and 256",
        ),
        ("catalog = \"\"", ":3:11: the catalog must not be empty"),
        (
            "timeout = \"999999h\"",
            ":3:11: \"999999h\" is longer than the most allowed",
        ),
    ];
    for (line, expected) in cases {
        let sandbox = Sandbox::new();
        let path = sandbox.write(
            "plan.toml",
            &format!(
                "[plan]\nname = \"t\"\n{line}\n[[steps]]\nid = \"a\"\nplugin = \"exec\"\n\
                 [steps.config]\ncommand = [\"true\"]\n"
            ),
        );
        let out = sandbox.run(["run", path.to_str().unwrap()]);
        out.expect_code(78);
        assert!(out.stderr().contains(expected), "{line}: {}", out.stderr());
        assert!(sandbox.records("t").is_empty());
    }
}

#[test]
fn errors_under_json_are_json_on_stdout() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(["--json", "plan", "check", "/nonexistent/plan.toml"]);
    out.expect_code(78);
    let report: Value = out.json();
    assert_eq!(report["exit_code"], 78);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/plan.toml"),
        "{report}"
    );
}
