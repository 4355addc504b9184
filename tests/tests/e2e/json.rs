//! What `--json` prints, pinned as snapshot files (`snapshots/`), with what changes from run to
//! run (ids, times, digests, the sandbox's paths, the host) redacted. A change to the output a
//! script may parse shows up as a diff to review: `cargo insta review`, or run the tests with
//! `INSTA_UPDATE=always` and read `git diff`.

use backplan_e2e::Sandbox;
use insta::assert_json_snapshot;
use serde_json::Value;

fn plan(sandbox: &Sandbox) -> std::path::PathBuf {
    sandbox.write(
        "plan.toml",
        r#"[plan]
name = "json"
concurrency = 2

[[steps]]
id = "dump"
plugin = "exec"
[steps.config]
command = ["sh", "-c", "echo dumped"]
restore_command = ["true"]

[[steps]]
id = "upload"
plugin = "exec"
after = ["dump"]
[steps.config]
command = ["false"]

[[steps]]
id = "notify"
plugin = "exec"
after = ["upload"]
[steps.config]
command = ["true"]
"#,
    )
}

/// The sandbox's folder as `[sandbox]`, everywhere in `value`.
fn without_sandbox(value: Value, sandbox: &Sandbox) -> Value {
    let text = serde_json::to_string(&value).unwrap();
    let root = sandbox.path().to_string_lossy().into_owned();
    serde_json::from_str(&text.replace(&root, "[sandbox]")).unwrap()
}

#[test]
fn run_prints_its_record() {
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    let out = sandbox.run(["--json", "run", path.to_str().unwrap()]);
    out.expect_code(3);
    assert_json_snapshot!(without_sandbox(out.json(), &sandbox), {
        ".run_id" => "[run_id]",
        ".started_at" => "[time]",
        ".finished_at" => "[time]",
        ".host" => "[host]",
        ".backplan_version" => "[version]",
        ".plan.digest" => "[digest]",
        ".steps[].started_at" => "[time]",
        ".steps[].finished_at" => "[time]",
        ".steps[].record.duration_ms" => "[ms]",
        ".steps[].plugin_version" => "[version]",
        // "`sh` exited with code 0 in 0.0s": the time varies.
        ".steps[0].summary" => "[summary]",
    });
}

#[test]
fn runs_list_prints_one_object_per_run() {
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    sandbox.run(["run", path.to_str().unwrap()]).expect_code(3);
    let out = sandbox.run(["--json", "runs", "list", path.to_str().unwrap()]);
    out.expect_code(0);
    assert_json_snapshot!(out.json(), {
        "[].run_id" => "[run_id]",
        "[].started_at" => "[time]",
        "[].finished_at" => "[time]",
    });
}

#[test]
fn plan_show_prints_both_orders() {
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    let out = sandbox.run(["--json", "plan", "show", path.to_str().unwrap()]);
    out.expect_code(0);
    assert_json_snapshot!(out.json(), { ".digest" => "[digest]" });
}

#[test]
fn plan_check_prints_each_steps_check() {
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    let out = sandbox.run(["--json", "plan", "check", path.to_str().unwrap()]);
    out.expect_code(0);
    assert_json_snapshot!(out.json(), { ".digest" => "[digest]" });
}

#[test]
fn an_error_is_an_object_with_its_exit_code() {
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "plan.toml",
        "[plan]\nname = \"json\"\nconcurrency = 0\n[[steps]]\nid = \"a\"\nplugin = \"exec\"\n",
    );
    let out = sandbox.run(["--json", "plan", "check", path.to_str().unwrap()]);
    out.expect_code(78);
    assert_json_snapshot!(without_sandbox(out.json(), &sandbox));
}
