//! Dynamic plugins, through the real dynamic-loading path: the third-party example plugin built
//! on its own, the built-in `exec` built again as a `cdylib` (parity with the linked-in one), the
//! host's refusals, and a plugin that misbehaves on purpose (`tests/fixtures/faulty-plugin`).
//!
//! Every library is copied into the test's sandbox (folder 0755, file 0644) before it is loaded,
//! so the tests do not depend on the umask `target/` was built with.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backplan_core::host::{Origin, PluginHost};
use backplan_core::plan::SchemaSource;
use backplan_e2e::{Fixture, Outcome, Sandbox, build_plugin};
use backplan_plugin_sdk::host::{HostHooks, PluginRef};
use backplan_plugin_sdk::{Action, Level, Progress, Request, Response};
use serde_json::{Value, json};

const CONFIG_ERROR: i32 = 78;

fn hello_lib() -> PathBuf {
    build_plugin(
        Fixture::Standalone("examples/hello-plugin/Cargo.toml"),
        "backplan_checksum_file",
    )
}

fn faulty_lib() -> PathBuf {
    build_plugin(
        Fixture::WorkspacePackage("backplan-faulty-plugin"),
        "backplan_faulty_plugin",
    )
}

fn exec_lib() -> PathBuf {
    build_plugin(
        Fixture::WorkspacePackage("backplan-exec-cdylib"),
        "backplan_exec_cdylib",
    )
}

/// Copies `lib` into `<sandbox>/<folder>/` with safe permissions and returns the copy.
fn install(sandbox: &Sandbox, lib: &Path, folder: &str) -> PathBuf {
    let dir = sandbox.path().join(folder);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(lib.file_name().unwrap());
    std::fs::copy(lib, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    copy
}

/// A path as a TOML string (a JSON string is a valid TOML basic string).
fn toml_str(path: &Path) -> String {
    serde_json::to_string(path.to_str().unwrap()).unwrap()
}

/// Runs `backplan args` with `BACKPLAN_FAULT` set to `fault` (or unset).
fn run_with(sandbox: &Sandbox, fault: Option<&str>, args: &[&str]) -> Outcome {
    let mut cmd = sandbox.cmd(args);
    match fault {
        Some(fault) => cmd.env("BACKPLAN_FAULT", fault),
        None => cmd.env_remove("BACKPLAN_FAULT"),
    };
    Outcome(cmd.output().expect("run backplan"))
}

fn only_step(record: &Value) -> &Value {
    let steps = record["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{record:#}");
    &steps[0]
}

// ---------------------------------------------------------------------------------------------
// The example third-party plugin

#[test]
fn the_example_plugin_built_standalone_backs_up_verifies_and_restores() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &hello_lib(), "plugins");
    let source = sandbox.write("data/app.conf", "listen = 10.0.0.12\n");
    let backups = sandbox.path().join("backups");
    let plan = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"hello\"\n\n[[plugins]]\npath = {}\n\n[[steps]]\nid = \"app-config\"\n\
             plugin = \"checksum-file\"\n[steps.config]\nsource = {}\ndestination = {}\n",
            toml_str(&lib),
            toml_str(&source),
            toml_str(&backups)
        ),
    );
    let plan = plan.to_str().unwrap();

    // Listed with where it came from, described with its schema.
    let listed = sandbox.run(["plugins", "list", "--plan", plan, "--json"]);
    let listed = listed.expect_code(0).json();
    let entry = |name: &str| -> Value {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not listed: {listed:#}"))
    };
    assert_eq!(entry("checksum-file")["origin"], lib.to_str().unwrap());
    assert_eq!(entry("exec")["origin"], "built-in");

    let info = sandbox.run(["plugins", "info", "checksum-file", "--plan", plan, "--json"]);
    let info = info.expect_code(0).json();
    assert_eq!(info["name"], "checksum-file");
    let schema = &info["config_schema"];
    assert!(schema["properties"]["source"].is_object(), "{schema:#}");
    assert!(
        schema["properties"]["destination"].is_object(),
        "{schema:#}"
    );
    assert_eq!(schema["additionalProperties"], false, "{schema:#}");
    let actions: Vec<&str> = info["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for action in ["backup", "verify", "restore"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    assert!(!info["sdk_version"].as_str().unwrap().is_empty());

    let checked = sandbox.run(["plan", "check", plan, "--json"]);
    let checked = checked.expect_code(0).json();
    assert_eq!(checked["checks"][0]["ok"], true, "{checked:#}");

    // Backup.
    let run = sandbox.run(["run", plan, "--json"]).expect_code(0).json();
    assert_eq!(run["status"], "Succeeded", "{run:#}");
    let step = only_step(&run);
    assert_eq!(step["status"], "Succeeded");
    assert_eq!(step["bytes"], 19);
    let record = &step["record"];
    let sha256 = record["sha256"].as_str().unwrap();
    assert_eq!(sha256.len(), 64, "{record:#}");
    assert_eq!(step["outputs"]["sha256"], sha256);
    assert_eq!(
        sha256,
        backplan_core::digest::sha256_hex(b"listen = 10.0.0.12\n")
    );
    let copy = PathBuf::from(record["copy"].as_str().unwrap());
    assert!(copy.starts_with(&backups), "{}", copy.display());
    assert_eq!(std::fs::read(&copy).unwrap(), b"listen = 10.0.0.12\n");
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    // Verify.
    let verified = sandbox
        .run(["verify", plan, "--json"])
        .expect_code(0)
        .json();
    assert_eq!(verified["kind"], "verify");
    assert_eq!(verified["status"], "Succeeded", "{verified:#}");

    // Restore where it came from, after it was lost.
    std::fs::remove_file(&source).unwrap();
    let restored = sandbox.run(["restore", plan, "--run", &run_id, "--json"]);
    let restored = restored.expect_code(0).json();
    assert_eq!(restored["status"], "Succeeded", "{restored:#}");
    assert_eq!(std::fs::read(&source).unwrap(), b"listen = 10.0.0.12\n");

    // A changed file is not overwritten without --force.
    std::fs::write(&source, "edited since\n").unwrap();
    let refused = sandbox.run(["restore", plan, "--run", &run_id, "--json"]);
    let refused = refused.expect_code(1).json();
    let message = only_step(&refused)["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("refusing to overwrite"), "{message}");
    assert_eq!(std::fs::read(&source).unwrap(), b"edited since\n");
    let forced = sandbox.run(["restore", plan, "--run", &run_id, "--force", "--json"]);
    forced.expect_code(0);
    assert_eq!(std::fs::read(&source).unwrap(), b"listen = 10.0.0.12\n");

    // A damaged copy fails verify with the plugin's own words.
    std::fs::write(&copy, "tampered\n").unwrap();
    let failed = sandbox.run(["verify", plan, "--run", &run_id, "--json"]);
    let failed = failed.expect_code(1).json();
    let step = only_step(&failed);
    assert_eq!(step["status"], "Failed");
    let message = step["error"]["message"].as_str().unwrap();
    assert!(message.contains("checksum mismatch"), "{message}");

    // backup, verify, restore ×3, verify: every run is recorded.
    let kinds: Vec<String> = sandbox
        .records("hello")
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "backup", "restore", "restore", "restore", "verify", "verify"
        ],
        "{kinds:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Parity: the built-in exec plugin, linked in and loaded as a cdylib

/// Host hooks that remember what the plugin said.
#[derive(Default)]
struct Recorder {
    logs: Mutex<Vec<(Level, String)>>,
    progress: Mutex<Vec<Progress>>,
}

impl HostHooks for Recorder {
    fn log(&self, level: Level, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_owned()));
    }
    fn progress(&self, progress: Progress) {
        self.progress.lock().unwrap().push(progress);
    }
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// A request as the runner would build it (through JSON, so new fields keep their defaults).
fn request(action: Action, config: Value, dry_run: bool) -> Request {
    serde_json::from_value(json!({
        "action": action,
        "plan": "parity",
        "run_id": "20260101T000000Z-parity",
        "step_id": "hook",
        "config": config,
        "dry_run": dry_run,
    }))
    .unwrap()
}

/// Calls `plugin` and returns its answer and logs, without what legitimately differs between
/// two runs of the same command (durations).
fn call(plugin: PluginRef, request: &Request) -> (Value, Vec<String>) {
    let hooks = Recorder::default();
    let response = plugin.invoke(request, &hooks).expect("a protocol answer");
    let mut answer = serde_json::to_value(&response).unwrap();
    if let Response::Ok(_) = response {
        let ok = &mut answer["ok"];
        if let Some(record) = ok["record"].as_object_mut() {
            record.remove("duration_ms");
        }
        if let Some(summary) = ok["summary"].as_str() {
            let cut = summary.find(" in ").map_or(summary, |i| &summary[..i]);
            ok["summary"] = Value::String(cut.to_owned());
        }
    }
    let mut logs: Vec<String> = hooks
        .logs
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|(level, message)| format!("{level:?} {message}"))
        .collect();
    logs.sort();
    (answer, logs)
}

#[test]
fn exec_loaded_as_a_cdylib_behaves_like_the_linked_in_one() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &exec_lib(), "plugins");

    let mut linked = PluginHost::new();
    linked
        .register_builtin(backplan_plugin_exec::plugin_descriptor())
        .unwrap();
    let mut loaded = PluginHost::new();
    loaded.load_library(&lib, None).unwrap();
    let (a, b) = (linked.get("exec").unwrap(), loaded.get("exec").unwrap());
    assert_eq!(a.origin, Origin::Builtin);
    assert_eq!(b.origin, Origin::Library(lib.clone()));

    // Same description: name, version, summary, docs, actions, schema, SDK version.
    assert_eq!(a.description, b.description);
    assert_eq!(
        (a.plugin.name(), a.plugin.version()),
        (b.plugin.name(), b.plugin.version())
    );

    // The same schema verdicts on a plan's config.
    for config in [
        json!({"command": ["true"]}),
        json!({"comand": ["true"]}),
        json!({"command": ["true"], "timeout": 5}),
    ] {
        assert_eq!(
            linked.config_problems("exec", &config),
            loaded.config_problems("exec", &config),
            "{config}"
        );
    }

    let outputs_json = json!({
        "command": ["sh", "-c", "echo progress >&2; printf '{\"step\": \"%s\", \"n\": 42}' \"$BACKPLAN_STEP_ID\""],
        "outputs": "json",
        "env": {"GREETING": "hi"},
    });
    let cases: Vec<(&str, Request, &str)> = vec![
        (
            "check",
            request(Action::Check, outputs_json.clone(), false),
            "ok",
        ),
        (
            "success with outputs",
            request(Action::Backup, outputs_json.clone(), false),
            "ok",
        ),
        (
            "failure exit code",
            request(
                Action::Backup,
                json!({"command": ["sh", "-c", "echo boom >&2; exit 3"]}),
                false,
            ),
            "error",
        ),
        (
            "retryable exit code",
            request(
                Action::Backup,
                json!({"command": ["sh", "-c", "exit 75"], "retry_codes": [75]}),
                false,
            ),
            "error",
        ),
        (
            "dry run",
            request(
                Action::Backup,
                json!({"command": ["sh", "-c", "touch must-not-exist"]}),
                true,
            ),
            "ok",
        ),
        (
            "config error: unknown key",
            request(Action::Backup, json!({"comand": ["true"]}), false),
            "error",
        ),
        (
            "config error: a string without shell",
            request(Action::Backup, json!({"command": "echo hi"}), false),
            "error",
        ),
        (
            "check error: missing program",
            request(
                Action::Check,
                json!({"command": ["no-such-program-backplan"]}),
                false,
            ),
            "error",
        ),
        (
            "no verify command",
            request(Action::Verify, json!({"command": ["true"]}), false),
            "ok",
        ),
    ];
    for (what, request, expected) in cases {
        let (from_linked, linked_logs) = call(a.plugin, &request);
        let (from_loaded, loaded_logs) = call(b.plugin, &request);
        assert!(
            from_linked.get(expected).is_some(),
            "{what}: expected {expected}: {from_linked:#}"
        );
        assert_eq!(from_linked, from_loaded, "{what}");
        assert_eq!(linked_logs, loaded_logs, "{what}");
    }

    // Spot checks that the comparison compared something.
    let (answer, logs) = call(b.plugin, &request(Action::Backup, outputs_json, false));
    assert_eq!(answer["ok"]["outputs"]["step"], "hook", "{answer:#}");
    assert_eq!(answer["ok"]["outputs"]["n"], 42, "{answer:#}");
    assert!(logs.iter().any(|l| l.contains("progress")), "{logs:?}");
    let (answer, _) = call(
        b.plugin,
        &request(
            Action::Backup,
            json!({"command": ["sh", "-c", "echo boom >&2; exit 3"]}),
            false,
        ),
    );
    assert_eq!(answer["error"]["kind"], "permanent", "{answer:#}");
    assert_eq!(answer["error"]["detail"], "stderr: boom", "{answer:#}");
    let (answer, _) = call(
        b.plugin,
        &request(Action::Backup, json!({"comand": []}), false),
    );
    assert_eq!(answer["error"]["kind"], "config", "{answer:#}");
    assert!(!sandbox.path().join("must-not-exist").exists());
}

#[test]
fn a_second_plugin_named_exec_is_refused_naming_both() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &exec_lib(), "plugins");
    let plan = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"dup\"\n\n[[plugins]]\npath = {}\n\n[[steps]]\nid = \"a\"\n\
             plugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\n",
            toml_str(&lib)
        ),
    );
    let out = sandbox.run(["plan", "check", plan.to_str().unwrap()]);
    out.expect_code(CONFIG_ERROR);
    let stderr = out.stderr();
    assert!(stderr.contains("`exec`"), "{stderr}");
    assert!(stderr.contains("taken twice"), "{stderr}");
    assert!(stderr.contains(lib.to_str().unwrap()), "{stderr}");
    assert!(sandbox.records("dup").is_empty());

    // The same through a plugin folder.
    let plain = sandbox.write(
        "plain.toml",
        "[plan]\nname = \"plain\"\n\n[[steps]]\nid = \"a\"\nplugin = \"exec\"\n\
         [steps.config]\ncommand = [\"true\"]\n",
    );
    let dir = lib.parent().unwrap().to_str().unwrap();
    let out = sandbox.run(["--plugin-dir", dir, "run", plain.to_str().unwrap()]);
    out.expect_code(CONFIG_ERROR);
    assert!(
        out.stderr().contains(lib.to_str().unwrap()),
        "{}",
        out.stderr()
    );
    assert!(sandbox.records("plain").is_empty());
}

#[test]
fn a_plugin_that_does_not_split_its_permissions_by_role_is_named_when_backup_gets_its_delete() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "plugins");
    let plan = faulty_plan(&sandbox, &lib, None, "");
    let fault = Some("unsplit-permissions");
    let args = |role: &'static str| {
        [
            "--json",
            "plan",
            "permissions",
            plan.as_str(),
            "--role",
            role,
        ]
    };
    let backup = run_with(&sandbox, fault, &args("backup"));
    let policy = backup.expect_code(0).json();
    let text = policy.to_string();
    assert!(
        text.contains("s3:DeleteObject") && text.contains("s3:GetObject"),
        "every role gets all of an unsplit answer: {policy:#}"
    );
    let warned = backup.stderr();
    assert!(
        warned.contains("step `f`") && warned.contains("s3:DeleteObject"),
        "{warned}"
    );
    let prune = run_with(&sandbox, fault, &args("prune"));
    assert!(
        prune
            .expect_code(0)
            .json()
            .to_string()
            .contains("s3:DeleteObject")
    );
    assert!(
        !prune.stderr().contains("step `f`"),
        "prune may delete: {}",
        prune.stderr()
    );
    // Without that fault the plugin needs nothing, and nothing is said.
    let plain = run_with(&sandbox, None, &args("backup"));
    assert!(!plain.expect_code(0).stderr().contains("step `f`"));
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// A plan with one `faulty` step loaded from `lib` (pinned to `sha256` if given).
fn faulty_plan(sandbox: &Sandbox, lib: &Path, sha256: Option<&str>, step_extra: &str) -> String {
    let pin = sha256.map_or(String::new(), |s| format!("sha256 = \"{s}\"\n"));
    let plan = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"faulty\"\n\n[[plugins]]\npath = {}\n{pin}\n[[steps]]\nid = \"f\"\n\
             plugin = \"faulty\"\n{step_extra}",
            toml_str(lib)
        ),
    );
    plan.to_str().unwrap().to_owned()
}

/// `plan check` and `run` both refuse with exit code 78, naming `named` and saying `why`.
#[track_caller]
fn assert_refused(sandbox: &Sandbox, fault: Option<&str>, plan: &str, named: &Path, why: &str) {
    for command in ["plan check", "run"] {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push(plan);
        let out = run_with(sandbox, fault, &args);
        out.expect_code(CONFIG_ERROR);
        let stderr = out.stderr();
        assert!(
            stderr.contains(named.to_str().unwrap()),
            "{command}: {stderr}"
        );
        assert!(
            stderr.contains(why),
            "{command}: expected {why:?} in {stderr}"
        );
    }
    assert!(sandbox.records("faulty").is_empty(), "nothing may run");
}

#[test]
fn a_plugin_with_another_abi_version_is_refused() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "plugins");
    let plan = faulty_plan(&sandbox, &lib, None, "");
    assert_refused(&sandbox, Some("wrong-abi"), &plan, &lib, "ABI version 999");
    // The same library in its normal mode loads.
    run_with(&sandbox, None, &["plan", "check", &plan]).expect_code(0);
}

#[test]
fn a_group_writable_plugin_file_is_refused() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "plugins");
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o664)).unwrap();
    let plan = faulty_plan(&sandbox, &lib, None, "");
    assert_refused(&sandbox, None, &plan, &lib, "writable by group or others");
}

#[test]
fn a_plugin_in_a_folder_writable_by_others_is_refused() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "open");
    let folder = lib.parent().unwrap();
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o757)).unwrap();
    let plan = faulty_plan(&sandbox, &lib, None, "");
    assert_refused(&sandbox, None, &plan, &lib, "its folder");
    assert_refused(&sandbox, None, &plan, folder, "writable by group or others");
}

#[test]
fn a_sha256_pin_is_enforced() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "plugins");
    let wrong = "0".repeat(64);
    let plan = faulty_plan(&sandbox, &lib, Some(&wrong), "");
    assert_refused(&sandbox, None, &plan, &lib, &wrong);

    let digest = backplan_core::digest::sha256_hex(&std::fs::read(&lib).unwrap());
    for pin in [digest.clone(), format!("sha256:{}", digest.to_uppercase())] {
        let plan = faulty_plan(&sandbox, &lib, Some(&pin), "");
        run_with(&sandbox, None, &["plan", "check", &plan]).expect_code(0);
    }
}

#[test]
fn a_missing_plugin_file_is_refused() {
    let sandbox = Sandbox::new();
    let missing = sandbox.path().join("plugins/libnothing.so");
    let plan = faulty_plan(&sandbox, &missing, None, "");
    assert_refused(&sandbox, None, &plan, &missing, "libnothing.so");
}

// ---------------------------------------------------------------------------------------------
// Faults while running

#[test]
fn a_panicking_plugin_fails_its_step_and_leaves_earlier_records_alone() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "plugins");
    let plan = faulty_plan(&sandbox, &lib, None, "");

    let good = run_with(&sandbox, None, &["run", &plan, "--json"]);
    assert_eq!(good.expect_code(0).json()["status"], "Succeeded");
    let before = sandbox.records("faulty");
    assert_eq!(before.len(), 1);

    let out = run_with(&sandbox, Some("panic"), &["run", &plan, "--json"]);
    let record = out.expect_code(1).json();
    assert_eq!(record["status"], "Failed", "{record:#}");
    let step = only_step(&record);
    assert_eq!(step["status"], "Failed");
    assert_eq!(step["error"]["kind"], "internal");
    let message = step["error"]["message"].as_str().unwrap();
    assert!(message.contains("panicked"), "{message}");
    assert!(message.contains("on purpose"), "{message}");

    let after = sandbox.records("faulty");
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before[0], "the earlier record changed");
    assert!(after.iter().any(|r| r["run_id"] == record["run_id"]));

    // And the catalog is still usable afterwards.
    run_with(&sandbox, None, &["run", &plan]).expect_code(0);
    assert_eq!(sandbox.records("faulty").len(), 3);
}

#[test]
fn a_plugin_answering_invalid_json_fails_its_step_with_a_protocol_error() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "plugins");
    let plan = faulty_plan(&sandbox, &lib, None, "");

    let out = run_with(&sandbox, Some("invalid-json"), &["run", &plan, "--json"]);
    let record = out.expect_code(1).json();
    let step = only_step(&record);
    assert_eq!(step["status"], "Failed", "{record:#}");
    assert_eq!(step["error"]["kind"], "internal");
    let message = step["error"]["message"].as_str().unwrap();
    assert!(message.contains("protocol"), "{message}");
    assert_eq!(sandbox.records("faulty").len(), 1);
}

#[test]
fn a_step_that_outlives_its_timeout_is_timed_out_and_recorded() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "plugins");
    let plan = faulty_plan(
        &sandbox,
        &lib,
        None,
        "timeout = \"1s\"\n[steps.config]\nseconds = 60\n",
    );

    let started = Instant::now();
    let out = run_with(&sandbox, Some("slow"), &["run", &plan, "--json"]);
    let elapsed = started.elapsed();
    let record = out.expect_code(1).json();
    assert_eq!(record["status"], "Failed", "{record:#}");
    assert_eq!(only_step(&record)["status"], "TimedOut", "{record:#}");
    // The plugin stops as soon as it sees the flag: no need for the stop grace period.
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    let records = sandbox.records("faulty");
    assert_eq!(records.len(), 1);
    assert_eq!(only_step(&records[0])["status"], "TimedOut");
}

#[test]
fn a_plugin_ignoring_cancellation_is_abandoned_and_the_run_still_ends() {
    let sandbox = Sandbox::new();
    let lib = install(&sandbox, &faulty_lib(), "plugins");
    let plan = faulty_plan(&sandbox, &lib, None, "timeout = \"1s\"\n");

    let started = Instant::now();
    let out = run_with(&sandbox, Some("ignore-cancel"), &["run", &plan, "--json"]);
    let elapsed = started.elapsed();
    let record = out.expect_code(1).json();
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    assert_eq!(only_step(&record)["status"], "TimedOut", "{record:#}");
    let records = sandbox.records("faulty");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "Failed");
}
