//! Restores the way CircleCI documents them: the plan's restore order, and restore drills.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backplan_e2e::{HttpStandIn, Sandbox};
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

/// One exec step, `machine`, whose restore "launches" a machine and prints where it answers:
/// `{"private_ip": "127.0.0.1", "port": PORT}` as its outputs.
fn launching_plan(sandbox: &Sandbox, port: u16) -> String {
    let outputs = format!(r#"{{\"private_ip\": \"127.0.0.1\", \"port\": {port}}}"#);
    let plan = format!(
        r#"[plan]
name = "launching"

[[steps]]
id = "machine"
plugin = "exec"
[steps.config]
command = ["echo", "{{}}"]
restore_command = ["sh", "-c", "echo '{outputs}'"]
outputs = "json"
"#
    );
    let path = sandbox.write("launching.toml", &plan);
    path.to_str().unwrap().to_owned()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn a_drill_whose_url_answers_after_two_503s_records_the_200_and_marks_the_backup_verified() {
    let sandbox = Sandbox::new();
    let restored = HttpStandIn::start(&[503, 503, 200]);
    let plan = launching_plan(&sandbox, port_of(&restored.url));
    let backup = sandbox.run(["--json", "run", &plan]);
    let backup_id = backup.expect_code(0).json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let health = "http://${steps.machine.outputs.private_ip}:${steps.machine.outputs.port}/healthz";
    let drill = sandbox.run([
        "--json",
        "drill",
        &plan,
        "--step",
        "machine",
        "--health",
        health,
        "--health-interval",
        "10ms",
    ]);
    let record = drill.expect_code(0).json();
    assert_eq!(record["status"], "Succeeded", "{record:#}");
    let outcome = &record["drill"];
    assert_eq!(outcome["healthy"], true, "{outcome:#}");
    assert_eq!(
        outcome["health_target"],
        format!("{}/healthz", restored.url),
        "the references are resolved in the record"
    );
    assert_eq!(outcome["health_status"], 200);
    assert_eq!(outcome["health_expected"], "200-299");
    assert!(outcome.get("health_insecure").is_none(), "{outcome:#}");
    assert!(outcome["time_to_recovery_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(outcome["teardown"][0]["step"], "machine");
    let requests: Vec<String> = restored.seen().into_iter().map(|s| s.line).collect();
    assert_eq!(requests, ["GET /healthz HTTP/1.1"; 3]);

    let shown = sandbox.run(["--json", "runs", "show", &plan, &backup_id]);
    let verified = &shown.expect_code(0).json()["verified"];
    assert_eq!(verified["by_run"], record["run_id"], "{verified:#}");
}

#[test]
fn a_drill_whose_url_keeps_answering_404_fails_and_is_torn_down_all_the_same() {
    let sandbox = Sandbox::new();
    let plan = ordered_plan(&sandbox);
    let backup = sandbox.run(["--json", "run", &plan]);
    let backup_id = backup.expect_code(0).json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let restored = HttpStandIn::start(&[404]);
    let health = format!("{}/healthz", restored.url);

    let drill = sandbox.run([
        "--json",
        "drill",
        &plan,
        "--step",
        "machine",
        "--health",
        &health,
        "--health-status",
        "200",
        "--health-timeout",
        "500ms",
        "--health-interval",
        "10ms",
    ]);
    let record = drill.expect_code(1).json();
    assert_eq!(record["status"], "Failed", "{record:#}");
    let outcome = &record["drill"];
    assert_eq!(outcome["healthy"], false);
    assert_eq!(outcome["health_status"], 404);
    assert_eq!(outcome["health_expected"], "200");
    assert!(outcome["time_to_recovery_secs"].is_null());
    let why = outcome["health_error"].as_str().unwrap();
    assert!(
        why.contains(&health) && why.contains("did not answer 200"),
        "{why}"
    );
    assert!(why.contains("answered 404"), "{why}");
    assert!(restored.seen().len() > 1, "it kept asking");
    assert_eq!(outcome["teardown"][0]["step"], "machine", "{outcome:#}");
    assert_eq!(outcome["teardown"][0]["ok"], true);

    let shown = sandbox.run(["--json", "runs", "show", &plan, &backup_id]);
    assert!(shown.expect_code(0).json()["verified"].is_null());
}

#[test]
fn sigterm_while_a_drill_waits_for_its_url_ends_the_wait_and_still_tears_down() {
    let sandbox = Sandbox::new();
    let plan = ordered_plan(&sandbox);
    sandbox.run(["--json", "run", &plan]).expect_code(0);
    let restored = HttpStandIn::start(&[503]);
    let health = format!("{}/healthz", restored.url);
    // After the first 503 it would wait an hour before asking again.
    let mut drill = sandbox
        .cmd(["drill", &plan, "--step", "machine", "--health", &health])
        .args(["--health-interval", "1h", "--health-timeout", "2h"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while restored.seen().is_empty() {
        assert!(Instant::now() < deadline, "the drill never asked");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args(["-TERM", &drill.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopping = Instant::now();
    while drill.try_wait().unwrap().is_none() {
        if stopping.elapsed() > Duration::from_secs(20) {
            drill.kill().unwrap();
            panic!("the wait went on after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = drill.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");

    let record = sandbox.records("ordered").pop().unwrap();
    assert_eq!(record["kind"], "drill");
    assert_eq!(record["interrupted"], true, "{record:#}");
    let outcome = &record["drill"];
    let why = outcome["health_error"].as_str().unwrap();
    assert!(why.contains("cancelled while waiting"), "{why}");
    assert_eq!(outcome["health_status"], 503);
    assert_eq!(outcome["teardown"][0]["step"], "machine", "{outcome:#}");
}

#[test]
fn a_health_check_that_could_never_pass_is_a_usage_error_and_nothing_runs() {
    let sandbox = Sandbox::new();
    let plan = ordered_plan(&sandbox);
    sandbox.run(["--json", "run", &plan]).expect_code(0);
    let cases: [(&[&str], &str); 9] = [
        (&["--health", "10.0.0.5"], "no port"),
        (&["--health", "10.0.0.5:99999"], "from 1 to 65535"),
        (&["--health", "http:///healthz"], "no host"),
        (&["--health", "ftp://10.0.0.5/"], "neither HOST:PORT nor"),
        (&["--health", "${steps.machine.ip}:80"], "unknown reference"),
        (
            &["--health", "http://10.0.0.5/", "--health-status", "600"],
            "from 100 to 599",
        ),
        (
            &["--health", "10.0.0.5:80", "--health-status", "200"],
            "only an http",
        ),
        (
            &["--health", "http://10.0.0.5/", "--health-insecure"],
            "only to an https",
        ),
        (
            &["--health", "10.0.0.5:80", "--health-timeout", "0s"],
            "more than 0",
        ),
    ];
    for (health, why) in cases {
        let mut args = vec!["--json", "drill", &plan, "--step", "machine"];
        args.extend_from_slice(health);
        let drill = sandbox.run(&args);
        drill.expect_code(2);
        assert!(
            drill.stderr().contains(why),
            "{health:?}: {}",
            drill.stderr()
        );
    }
    assert_eq!(sandbox.records("ordered").len(), 1, "only the backup ran");
    assert!(
        !sandbox.path().join("order.log").exists(),
        "nothing was restored"
    );
}

/// `openssl s_server` on loopback with a fresh self-signed certificate, answering every GET
/// with 200: a restored machine's https. Stopped when dropped.
struct SelfSignedHttps {
    server: Child,
    url: String,
}

impl SelfSignedHttps {
    fn start(dir: &Path) -> SelfSignedHttps {
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=restored",
            ])
            .args(["-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the https drill tests need `openssl` on the PATH");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mut server = Command::new("openssl")
            .args(["s_server", "-www", "-accept", "127.0.0.1:0", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        // It prints `ACCEPT 127.0.0.1:PORT` once it listens; the rest is drained.
        let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
        let address = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("ACCEPT ").map(str::to_owned))
            .expect("openssl s_server says where it listens");
        std::thread::spawn(move || lines.for_each(drop));
        SelfSignedHttps {
            server,
            url: format!("https://{address}/health"),
        }
    }
}

impl Drop for SelfSignedHttps {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn an_https_drill_verifies_the_certificate_unless_told_to_accept_any() {
    let sandbox = Sandbox::new();
    let plan = ordered_plan(&sandbox);
    sandbox.run(["--json", "run", &plan]).expect_code(0);
    let restored = SelfSignedHttps::start(sandbox.path());
    let drill = |extra: &[&str]| {
        let mut args = vec!["--json", "drill", &plan, "--step", "machine"];
        args.extend_from_slice(&["--health", &restored.url, "--health-interval", "10ms"]);
        args.extend_from_slice(extra);
        sandbox.run(&args)
    };

    // An untrusted certificate ends the wait at once: it would not become trusted by waiting.
    let started = Instant::now();
    let verified = drill(&["--health-timeout", "2m"]);
    let outcome = &verified.expect_code(1).json()["drill"];
    assert!(started.elapsed() < Duration::from_secs(60), "it waited");
    assert_eq!(outcome["healthy"], false, "{outcome:#}");
    let why = outcome["health_error"].as_str().unwrap();
    assert!(why.contains("certificate is not trusted"), "{why}");
    assert!(why.contains("--health-insecure"), "{why}");
    assert!(
        outcome["health_status"].is_null(),
        "nothing answered over a trusted connection"
    );
    assert_eq!(outcome["teardown"][0]["step"], "machine");

    let insecure = drill(&["--health-insecure"]);
    let record = insecure.expect_code(0).json();
    let outcome = &record["drill"];
    assert_eq!(outcome["healthy"], true, "{outcome:#}");
    assert_eq!(outcome["health_status"], 200);
    assert_eq!(outcome["health_insecure"], true, "the record says so");
}

// ---------------------------------------------------------------------------------------------
// services-host: the fix-ups on the new machine, against a fake root

const DEBIAN_REPLICATED: &str = "RELEASE_CHANNEL=stable\nPRIVATE_ADDRESS=10.0.0.5\nSKIP_OPERATOR_INSTALL=0\nREPLICATED_OPTS=\"-e DAEMON_ENDPOINT=10.0.0.5:9879 -e NODENAME=54.1.2.3\"\n";
const DEBIAN_OPERATOR: &str = "PRIVATE_ADDRESS=10.0.0.5\nDAEMON_ENDPOINT=10.0.0.5:9879\nPUBLIC_ADDRESS=54.1.2.3\nOTHER=10.0.0.55\n";

/// A fake root with the Debian layout (`/etc/default`) or the RHEL one (`/etc/sysconfig`),
/// nomad state, and a plan whose app commands append to `app.log` in the root.
fn services_host_plan(sandbox: &Sandbox, layout: &str) -> (String, std::path::PathBuf) {
    let root = sandbox.path().join("root");
    std::fs::create_dir_all(root.join(format!("etc/{layout}"))).unwrap();
    std::fs::write(
        root.join(format!("etc/{layout}/replicated")),
        DEBIAN_REPLICATED,
    )
    .unwrap();
    std::fs::write(
        root.join(format!("etc/{layout}/replicated-operator")),
        DEBIAN_OPERATOR,
    )
    .unwrap();
    std::fs::create_dir_all(root.join("opt/nomad/data/alloc")).unwrap();
    std::fs::write(root.join("opt/nomad/data/alloc/state"), "old machine").unwrap();
    let log = root.join("app.log");
    let plan = sandbox.write(
        "host.toml",
        &format!(
            r#"[plan]
name = "host"

[[steps]]
id = "host"
plugin = "services-host"
[steps.config]
root = "{root}"
private_ip = "10.0.0.5"
public_ip = "54.1.2.3"
use_imds = false
stop_command = ["sh", "-c", "echo stop >> {log}"]
restart_command = []
start_command = ["sh", "-c", "echo start >> {log}"]
"#,
            root = root.display(),
            log = log.display()
        ),
    );
    (plan.to_str().unwrap().to_owned(), root)
}

fn restore_host(sandbox: &Sandbox, plan: &str, extra: &[&str]) -> backplan_e2e::Outcome {
    let mut args = vec![
        "--json",
        "restore",
        plan,
        "--run",
        "latest",
        "-o",
        "private_ip=10.0.9.9",
        "-o",
        "public_ip=3.3.3.3",
    ];
    args.extend_from_slice(extra);
    sandbox.run(args)
}

#[test]
fn services_host_records_the_identity_and_rewrites_after_showing_a_diff() {
    let sandbox = Sandbox::new();
    let (plan, root) = services_host_plan(&sandbox, "default");
    let backup = sandbox.run(["--json", "run", &plan]);
    let record = backup.expect_code(0).json();
    let identity = &record["steps"][0]["record"];
    assert_eq!(identity["private_ip"], "10.0.0.5", "{identity:#}");
    assert_eq!(identity["public_ip"], "54.1.2.3");
    let files = identity["files"].as_array().unwrap();
    let present: Vec<&str> = files
        .iter()
        .filter(|f| f["exists"] == true)
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        present,
        [
            "/etc/default/replicated",
            "/etc/default/replicated-operator"
        ]
    );

    // Dry run: the diff of every replacement, nothing changed, nothing run.
    let dry = restore_host(&sandbox, &plan, &["--dry-run"]);
    let step = &dry.expect_code(0).json()["steps"][0];
    let diff = step["record"]["diff"].as_str().unwrap();
    assert!(
        diff.contains(
            "/etc/default/replicated:2\n- PRIVATE_ADDRESS=10.0.0.5\n+ PRIVATE_ADDRESS=10.0.9.9\n"
        ),
        "{diff}"
    );
    assert!(diff.contains("+ PUBLIC_ADDRESS=3.3.3.3"), "{diff}");
    let operator = root.join("etc/default/replicated-operator");
    assert_eq!(std::fs::read_to_string(&operator).unwrap(), DEBIAN_OPERATOR);
    assert!(root.join("opt/nomad").exists());
    assert!(!root.join("app.log").exists());

    // The real thing, in the documented order.
    let real = restore_host(&sandbox, &plan, &[]);
    let step = &real.expect_code(0).json()["steps"][0];
    assert_eq!(
        std::fs::read_to_string(&operator).unwrap(),
        "PRIVATE_ADDRESS=10.0.9.9\nDAEMON_ENDPOINT=10.0.9.9:9879\nPUBLIC_ADDRESS=3.3.3.3\nOTHER=10.0.0.55\n"
    );
    let replicated = std::fs::read_to_string(root.join("etc/default/replicated")).unwrap();
    assert!(replicated.contains("DAEMON_ENDPOINT=10.0.9.9:9879 -e NODENAME=3.3.3.3"));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/default/replicated-operator.backplan-orig"))
            .unwrap(),
        DEBIAN_OPERATOR,
        "the original is kept"
    );
    assert!(!root.join("opt/nomad").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("app.log")).unwrap(),
        "stop\nstart\n"
    );
    let tasks: Vec<&str> = step["record"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tasks[0].starts_with("stop-app"), "{tasks:?}");
    assert!(
        tasks[1].starts_with("rewrite-addresses: 6 replacement(s) in 2 file(s)"),
        "{tasks:?}"
    );
    assert!(tasks[2].starts_with("reset-nomad: removed"), "{tasks:?}");
    assert!(tasks[3].starts_with("start-app"), "{tasks:?}");
    assert_eq!(step["outputs"]["private_ip"], "10.0.9.9");

    // Twice: no file changes the second time, originals untouched.
    let before = std::fs::metadata(&operator).unwrap().modified().unwrap();
    let again = restore_host(&sandbox, &plan, &[]);
    let step = &again.expect_code(0).json()["steps"][0];
    assert_eq!(
        step["record"]["files"].as_array().unwrap().len(),
        0,
        "{step:#}"
    );
    assert_eq!(step["record"]["diff"], "");
    assert_eq!(
        std::fs::metadata(&operator).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/default/replicated-operator.backplan-orig"))
            .unwrap(),
        DEBIAN_OPERATOR
    );
}

#[test]
fn services_host_handles_the_rhel_layout_and_reports_missing_files() {
    let sandbox = Sandbox::new();
    let (plan, root) = services_host_plan(&sandbox, "sysconfig");
    sandbox.run(["run", &plan]).expect_code(0);
    let restore = restore_host(&sandbox, &plan, &[]);
    let step = &restore.expect_code(0).json()["steps"][0];
    let replicated = std::fs::read_to_string(root.join("etc/sysconfig/replicated")).unwrap();
    assert!(replicated.contains("PRIVATE_ADDRESS=10.0.9.9"));
    let warnings = step["warnings"].to_string();
    assert!(warnings.contains("/etc/default/replicated"), "{warnings}");
}

#[test]
fn services_host_stops_on_an_unreadable_file_with_nothing_rewritten() {
    let sandbox = Sandbox::new();
    let (plan, root) = services_host_plan(&sandbox, "default");
    sandbox.run(["run", &plan]).expect_code(0);
    // A folder where a configuration file should be: unreadable as a file, even by root.
    std::fs::create_dir_all(root.join("etc/sysconfig/replicated")).unwrap();
    let restore = restore_host(&sandbox, &plan, &[]);
    let record = restore.expect_code(1).json();
    let error = &record["steps"][0]["error"];
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("etc/sysconfig/replicated"), "{message}");
    assert!(message.contains("no file was rewritten"), "{message}");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/default/replicated-operator")).unwrap(),
        DEBIAN_OPERATOR
    );
    assert!(
        !root
            .join("etc/default/replicated-operator.backplan-orig")
            .exists()
    );
}

// ---------------------------------------------------------------------------------------------
// build-cleanup: in-flight builds against a local stand-in for the CircleCI API

/// Serves `recent-builds` like CircleCI's v1.1 API: two unfinished builds among finished ones.
/// Answers 401 unless the `Circle-Token` header carries `secret-token`. Records each request's
/// first line.
fn fake_circleci_api() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let host = base.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if line.to_ascii_lowercase().starts_with("circle-token:") {
                    authorized = line.trim_end().ends_with(": secret-token");
                }
            }
            log.lock().unwrap().push(first.trim().to_owned());
            let build = |num: u32, lifecycle: &str| {
                format!(
                    r#"{{"build_url": "{host}/gh/acme/api/{num}", "build_num": {num}, "lifecycle": "{lifecycle}", "status": "{lifecycle}"}}"#
                )
            };
            let builds = [
                (1045, "running"),
                (1044, "finished"),
                (1043, "queued"),
                (1042, "finished"),
            ];
            // `GET /api/v1.1/project/github/acme/api/NUM`: one build; anything else the list.
            let one = builds
                .iter()
                .find(|(num, _)| first.contains(&format!("/project/github/acme/api/{num} ")));
            let body = match one {
                Some((num, lifecycle)) => build(*num, lifecycle),
                None => format!(
                    "[{}]",
                    builds
                        .map(|(num, lifecycle)| build(num, lifecycle))
                        .join(",")
                ),
            };
            let (status, body) = if authorized {
                ("200 OK", body)
            } else {
                (
                    "401 Unauthorized",
                    r#"{"message": "You must log in first."}"#.to_owned(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, seen)
}

fn build_cleanup_plan(sandbox: &Sandbox, api: &str) -> String {
    let console_log = sandbox.path().join("console.log");
    sandbox
        .write(
            "builds.toml",
            &format!(
                r#"[plan]
name = "builds"

[[steps]]
id = "builds"
plugin = "build-cleanup"
[steps.config]
api_url = "{api}"
token_env = "TEST_CIRCLE_TOKEN"
console_command = ["sh", "-c", "cat > {log}; echo deleted"]
"#,
                log = console_log.display()
            ),
        )
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn build_cleanup_records_in_flight_builds_and_deletes_exactly_those() {
    let sandbox = Sandbox::new();
    let (api, seen) = fake_circleci_api();
    let plan = build_cleanup_plan(&sandbox, &api);
    let mut backup = sandbox.cmd(["--json", "run", &plan]);
    backup.env("TEST_CIRCLE_TOKEN", "secret-token");
    let backup = backplan_e2e::Outcome(backup.output().unwrap());
    let record = backup.expect_code(0).json();
    let builds = &record["steps"][0]["record"]["builds"];
    assert_eq!(builds.as_array().unwrap().len(), 2, "{builds:#}");
    assert_eq!(builds[0]["url"], format!("{api}/gh/acme/api/1045"));
    assert_eq!(builds[1]["lifecycle"], "queued");
    assert!(seen.lock().unwrap()[0].contains("/api/v1.1/recent-builds?limit=100"));
    assert!(!backup.stdout().contains("secret-token"));
    assert!(!backup.stderr().contains("secret-token"));

    // Without `delete`: the lines, nothing fed to the console.
    let listed = sandbox.run(["--json", "restore", &plan, "--run", "latest"]);
    let step = &listed.expect_code(0).json()["steps"][0];
    let expected = [
        format!("(admin/delete-build \"{api}/gh/acme/api/1045\")"),
        format!("(admin/delete-build \"{api}/gh/acme/api/1043\")"),
    ];
    assert_eq!(step["record"]["lines"][0], expected[0].as_str());
    assert_eq!(step["record"]["deleted"], false);
    assert!(!sandbox.path().join("console.log").exists());

    // Asked to delete: the API confirms both still unfinished; exactly those lines reach the
    // console.
    let mut deleted = sandbox.cmd([
        "--json",
        "restore",
        &plan,
        "--run",
        "latest",
        "-o",
        "delete=true",
    ]);
    deleted.env("TEST_CIRCLE_TOKEN", "secret-token");
    let deleted = backplan_e2e::Outcome(deleted.output().unwrap());
    let step = &deleted.expect_code(0).json()["steps"][0];
    assert_eq!(step["record"]["deleted"], true, "{step:#}");
    assert_eq!(step["record"]["console_output"], "deleted\n");
    let fed = std::fs::read_to_string(sandbox.path().join("console.log")).unwrap();
    assert_eq!(fed, format!("{}\n{}\n", expected[0], expected[1]));
}

#[test]
fn build_cleanup_with_a_bad_token_fails_clearly_and_records_no_success() {
    let sandbox = Sandbox::new();
    let (api, _) = fake_circleci_api();
    let plan = build_cleanup_plan(&sandbox, &api);
    let mut backup = sandbox.cmd(["--json", "run", &plan]);
    backup.env("TEST_CIRCLE_TOKEN", "wrong-token");
    let backup = backplan_e2e::Outcome(backup.output().unwrap());
    let record = backup.expect_code(1).json();
    let message = record["steps"][0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("HTTP 401"), "{message}");
    assert!(!backup.stdout().contains("wrong-token"));

    let no_token = sandbox.run(["plan", "check", &plan]);
    no_token.expect_code(78);
    assert!(
        no_token.stdout().contains("TEST_CIRCLE_TOKEN"),
        "{}",
        no_token.stdout()
    );
}

// ---------------------------------------------------------------------------------------------
// nfs-objects: restoring into a folder that already holds things

/// A plan backing up `source` into a local repository in the sandbox.
fn artifacts_plan(sandbox: &Sandbox, source: &std::path::Path) -> String {
    let repository = sandbox.path().join("repo");
    let path = sandbox.write(
        "artifacts.toml",
        &format!(
            "[plan]\nname = \"artifacts\"\n\n[[steps]]\nid = \"artifacts\"\n\
             plugin = \"nfs-objects\"\n[steps.config]\nsource = \"{}\"\nrepository = \"{}\"\n",
            source.display(),
            repository.display()
        ),
    );
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_symlink_planted_in_the_restore_target_is_never_written_through() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    std::fs::create_dir_all(source.join("sub")).unwrap();
    std::fs::write(source.join("sub/a.txt"), "from the backup\n").unwrap();
    let plan = artifacts_plan(&sandbox, &source);
    sandbox.run(["--json", "run", &plan]).expect_code(0);

    let (target, outside) = (
        sandbox.path().join("drill"),
        sandbox.path().join("elsewhere"),
    );
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, target.join("sub")).unwrap();
    let option = format!("target={}", target.display());
    let restore = |extra: &[&str]| {
        let mut args = vec!["--json", "restore", &plan, "--run", "latest", "-o", &option];
        args.extend_from_slice(extra);
        sandbox.run(args)
    };

    let refused = restore(&[]);
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "written through the link"
    );
    let error = &refused.expect_code(1).json()["steps"][0]["error"];
    let text = error.to_string();
    assert!(text.contains("could not be restored"), "{error:#}");
    assert!(
        text.contains("sub: a symlink is in the way (use force to replace it)"),
        "{error:#}"
    );

    // --force replaces the link itself with the real folder.
    restore(&["--force"]).expect_code(0);
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    assert!(
        std::fs::symlink_metadata(target.join("sub"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read_to_string(target.join("sub/a.txt")).unwrap(),
        "from the backup\n"
    );

    // An empty target is a configuration error, not the working folder.
    let empty = sandbox.run([
        "--json", "restore", &plan, "--run", "latest", "-o", "target=",
    ]);
    empty.expect_code(78);
    let said = format!("{}{}", empty.stdout(), empty.stderr());
    assert!(said.contains("option target is empty"), "{said}");
    assert!(!sandbox.path().join("sub").exists());
}

// ---------------------------------------------------------------------------------------------
// build-cleanup: the API is asked again before each delete

/// A CircleCI API stand-in whose builds' lifecycles the test changes as it goes: `recent-builds`
/// lists them all, `project/github/acme/api/NUM` answers one. Answers only the token
/// `secret-token`; keeps each request's first line.
struct CircleciApi {
    url: String,
    lifecycles: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u32, String>>>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CircleciApi {
    fn start(builds: &[(u32, &str)]) -> CircleciApi {
        use std::io::{BufRead, BufReader, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lifecycles = std::sync::Arc::new(std::sync::Mutex::new(
            builds
                .iter()
                .map(|(n, l)| (*n, (*l).to_owned()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (state, log, host) = (lifecycles.clone(), seen.clone(), url.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if line.to_ascii_lowercase().starts_with("circle-token:") {
                        authorized = line.trim_end().ends_with(": secret-token");
                    }
                }
                log.lock().unwrap().push(first.trim().to_owned());
                let builds = state.lock().unwrap().clone();
                let build = |num: u32, lifecycle: &str| {
                    format!(
                        r#"{{"build_url": "{host}/gh/acme/api/{num}", "build_num": {num}, "lifecycle": "{lifecycle}"}}"#
                    )
                };
                let path = first.split(' ').nth(1).unwrap_or_default();
                let one = path
                    .strip_prefix("/api/v1.1/project/github/acme/api/")
                    .and_then(|n| n.parse::<u32>().ok());
                let (status, body) = match one {
                    _ if !authorized => ("401 Unauthorized", "{}".to_owned()),
                    Some(num) => match builds.get(&num) {
                        Some(lifecycle) => ("200 OK", build(num, lifecycle)),
                        None => (
                            "404 Not Found",
                            r#"{"message": "Build not found"}"#.to_owned(),
                        ),
                    },
                    None => (
                        "200 OK",
                        format!(
                            "[{}]",
                            builds
                                .iter()
                                .rev()
                                .map(|(n, l)| build(*n, l))
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    ),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        CircleciApi {
            url,
            lifecycles,
            seen,
        }
    }

    fn set(&self, build: u32, lifecycle: &str) {
        self.lifecycles
            .lock()
            .unwrap()
            .insert(build, lifecycle.to_owned());
    }
}

#[test]
fn a_build_that_finished_between_backup_and_restore_is_not_deleted() {
    let sandbox = Sandbox::new();
    let api = CircleciApi::start(&[(7, "running"), (8, "queued"), (9, "finished")]);
    let plan = build_cleanup_plan(&sandbox, &api.url);
    let with_token = |args: &[&str]| {
        let mut cmd = sandbox.cmd(args);
        cmd.env("TEST_CIRCLE_TOKEN", "secret-token");
        backplan_e2e::Outcome(cmd.output().unwrap())
    };
    let backup = with_token(&["--json", "run", &plan]).expect_code(0).json();
    let recorded = &backup["steps"][0]["record"]["builds"];
    assert_eq!(recorded.as_array().unwrap().len(), 2, "{recorded:#}");

    // Build 7 finishes after the backup; 8 is still stuck in the queue.
    api.set(7, "finished");
    let finished = format!("{}/gh/acme/api/7", api.url);
    let stuck = format!("(admin/delete-build \"{}/gh/acme/api/8\")", api.url);

    // Deleting without the token is refused by the check, before anything runs.
    let refused = sandbox.run([
        "--json",
        "restore",
        &plan,
        "--run",
        "latest",
        "-o",
        "delete=true",
    ]);
    refused.expect_code(78);
    assert!(
        refused.stdout().contains("TEST_CIRCLE_TOKEN"),
        "{}",
        refused.stdout()
    );
    assert!(!sandbox.path().join("console.log").exists());

    let dry = with_token(&["--json", "restore", &plan, "--run", "latest", "--dry-run"]);
    let step = dry.expect_code(0).json()["steps"][0].clone();
    assert_eq!(
        step["record"]["lines"],
        serde_json::json!([stuck]),
        "{step:#}"
    );

    let restored = with_token(&[
        "--json",
        "restore",
        &plan,
        "--run",
        "latest",
        "-o",
        "delete=true",
    ]);
    let step = restored.expect_code(0).json()["steps"][0].clone();
    let fed = std::fs::read_to_string(sandbox.path().join("console.log")).unwrap();
    assert_eq!(fed, format!("{stuck}\n"), "only the build still unfinished");
    let record = &step["record"];
    assert_eq!(record["deleted"], true);
    assert_eq!(record["rechecked"], true);
    assert_eq!(record["skipped"][0]["url"], finished.as_str(), "{record:#}");
    assert!(
        record["skipped"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("finished since the backup (lifecycle finished)"),
        "{record:#}"
    );
    let summary = step["summary"].as_str().unwrap();
    assert!(
        summary.contains("deleted 1 build(s)")
            && summary.contains(&format!("skipped 1: {finished}")),
        "{summary}"
    );
    let asked = api.seen.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .any(|l| l.starts_with("GET /api/v1.1/project/github/acme/api/7 ")),
        "{asked:#?}"
    );
}

#[test]
fn plan_check_warns_when_the_build_list_is_not_taken_right_before_the_ami() {
    let sandbox = Sandbox::new();
    let plan = |ami_after: &str| {
        let path = sandbox.write(
            "moment.toml",
            &format!(
                "[plan]\nname = \"moment\"\n\
                 [[steps]]\nid = \"builds\"\nplugin = \"build-cleanup\"\n\
                 [steps.config]\nrunning_command = [\"true\"]\n\
                 [[steps]]\nid = \"ami\"\nplugin = \"ebs\"\nafter = [{ami_after}]\n\
                 [steps.config]\ninstance = \"i-0123456789abcdef0\"\nregion = \"us-east-1\"\n"
            ),
        );
        path.to_str().unwrap().to_owned()
    };
    let warned = |path: &str| {
        let out = sandbox.run(["--json", "plan", "check", path]).json();
        out["checks"][0]["warnings"].to_string()
    };
    assert!(warned(&plan("")).contains("no ebs step runs right after `builds`"));
    assert_eq!(
        warned(&plan("\"builds\"")),
        "null",
        "the shipped order warns nothing"
    );
}
