//! Plans cannot exhaust the machine, and empty values are errors: every plugin's config schema
//! bounds its numbers and refuses empty strings, so `plan check` names the value's line and
//! column before anything runs; what a schema cannot say (durations, variable names, URLs) the
//! plugin's `check` refuses. None of these plans reach AWS: they fail before any call.

use backplan_e2e::Sandbox;

const CONFIG_ERROR: i32 = 78;
/// The lines of the plan before the step's config table.
const HEADER: &str = "[plan]\nname = \"t\"\n[[steps]]\nid = \"a\"\n";

/// A bad value: its config line, the text the error must point at, and its config key.
struct Bad {
    line: &'static str,
    at: &'static str,
    key: &'static str,
}

const fn bad(line: &'static str, at: &'static str, key: &'static str) -> Bad {
    Bad { line, at, key }
}

/// The plan of one `plugin` step whose config is `lines`.
fn plan(plugin: &str, lines: &[&str]) -> String {
    format!(
        "{HEADER}plugin = \"{plugin}\"\n[steps.config]\n{}\n",
        lines.join("\n")
    )
}

#[test]
fn absurd_numbers_and_empty_strings_are_refused_at_their_line_and_column_for_every_plugin() {
    let cases: [(&str, Vec<Bad>); 5] = [
        (
            "ebs",
            vec![
                bad("instance = \"\"", "\"\"", "instance"),
                bad("region = \"\"", "\"\"", "region"),
                bad("copy_to = [{ region = \"\" }]", "\"\"", "copy_to.0.region"),
                bad("launch = { key_name = \"\" }", "\"\"", "launch.key_name"),
                bad("wait_timeout = \"\"", "\"\"", "wait_timeout"),
            ],
        ),
        (
            "s3-verify",
            vec![
                bad("bucket = \"\"", "\"\"", "bucket"),
                bad("concurrency = 9223372036854775807", "9223", "concurrency"),
                bad("max_drop_percent = 1e9", "1e9", "max_drop_percent"),
                bad("sample = { count = 9223372036854775807 }", "{", "sample"),
                bad(
                    "replication = { pending_hours = 9999999999 }",
                    "9999",
                    "replication.pending_hours",
                ),
                bad("prefixes = [\"a/\", \"\"]", "\"\"", "prefixes.1"),
            ],
        ),
        (
            "exec",
            vec![
                bad("command = [\"\", \"-x\"]", "[", "command"),
                bad(
                    "capture_bytes = 9223372036854775807",
                    "9223",
                    "capture_bytes",
                ),
                bad("success_codes = [0, 1000]", "1000", "success_codes.1"),
                bad("retry_codes = [-1]", "-1", "retry_codes.0"),
                bad("timeout = \"\"", "\"\"", "timeout"),
                bad("cwd = \"\"", "\"\"", "cwd"),
            ],
        ),
        (
            "build-cleanup",
            vec![
                bad("token_env = \"\"", "\"\"", "token_env"),
                bad("pages = 4294967295", "4294", "pages"),
                bad("running_command = []", "[]", "running_command"),
                bad("console_command = [\"\"]", "\"\"", "console_command.0"),
            ],
        ),
        (
            "services-host",
            vec![
                bad("nomad_dir = \"\"", "\"\"", "nomad_dir"),
                bad("root = \"\"", "\"\"", "root"),
                bad("stop_command = []", "[]", "stop_command"),
                bad("config_files = [\"\"]", "\"\"", "config_files.0"),
                bad("private_ip = \"\"", "\"\"", "private_ip"),
            ],
        ),
    ];
    let first_line = HEADER.lines().count() + 3;
    for (plugin, bads) in cases {
        let lines: Vec<&str> = bads.iter().map(|b| b.line).collect();
        let sandbox = Sandbox::new();
        let path = sandbox.write("plan.toml", &plan(plugin, &lines));
        let path = path.to_str().unwrap();
        for command in [&["plan", "check"][..], &["run"]] {
            let out = sandbox.run(command.iter().copied().chain([path]));
            out.expect_code(CONFIG_ERROR);
            let stderr = out.stderr();
            for (n, bad) in bads.iter().enumerate() {
                let line = first_line + n;
                let column = bad.line.find(bad.at).unwrap() + 1;
                let expected = format!(
                    "plan.toml:{line}:{column}: step `a`: config at `{}`",
                    bad.key
                );
                assert!(
                    stderr.contains(&expected),
                    "{plugin}: expected {expected:?} in\n{stderr}"
                );
            }
        }
        assert!(
            sandbox.records("t").is_empty(),
            "{plugin}: a refused plan must not record a run"
        );
    }
}

#[test]
fn durations_names_and_addresses_a_schema_cannot_bound_are_refused_by_check() {
    for (plugin, lines, says) in [
        (
            "ebs",
            &["instance = \"i-0abc\"", "wait_timeout = \"1000years\""][..],
            "wait_timeout = \"1000years\" is longer than the most allowed, 30days",
        ),
        (
            "ebs",
            &["instance = \"i-0abc\"", "poll_interval = \"0s\""],
            "poll_interval must be more than 0",
        ),
        (
            "ebs",
            &["instance = \"i-0abc\"", "tags = { \" \" = \"x\" }"],
            "a tag key is 1 to 128 characters",
        ),
        (
            "exec",
            &["command = [\"true\"]", "timeout = \"0s\""],
            "the command would be killed at once",
        ),
        (
            "exec",
            &["command = [\"true\"]", "timeout = \"90days\""],
            "longer than the most allowed, 30days",
        ),
        (
            "exec",
            &["command = [\"true\"]", "env = { \"A=B\" = \"x\" }"],
            "env has the variable name \"A=B\"",
        ),
        (
            "build-cleanup",
            &["api_url = \"circleci.example.com\""],
            "is not an http(s) address",
        ),
    ] {
        let sandbox = Sandbox::new();
        let path = sandbox.write("plan.toml", &plan(plugin, lines));
        let out = sandbox.run(["plan", "check", path.to_str().unwrap()]);
        out.expect_code(CONFIG_ERROR);
        let text = format!("{}{}", out.stdout(), out.stderr());
        assert!(
            text.contains(says),
            "{plugin} {lines:?}: expected {says:?} in\n{text}"
        );
    }
}
