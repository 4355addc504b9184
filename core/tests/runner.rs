//! The runner's rules, in process and in milliseconds: a scripted plugin registered as a
//! built-in (it fails a given number of times, sleeps, ignores cancellation, panics) runs real
//! plans through the real runner, catalog and lock, and each test asserts the exact outcome.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use backplan_core::catalog::Catalog;
use backplan_core::host::PluginHost;
use backplan_core::plan::Plan;
use backplan_core::record::{RunKind, RunRecord, RunStatus, StepStatus};
use backplan_core::runner::{CancellationToken, RunError, RunRequest, Runner};
use backplan_plugin_sdk::schemars::JsonSchema;
use backplan_plugin_sdk::{
    Action, Context, ErrorKind, Plugin, PluginError, PluginResult, StepOutput, declare_plugin,
};
use serde::Deserialize;

/// What the scripted plugin does, per step.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "backplan_plugin_sdk::schemars")]
#[serde(deny_unknown_fields, default)]
struct Script {
    /// Fail this many attempts before succeeding.
    fail_times: u32,
    /// The kind of those failures: "transient" (default) or "permanent".
    fail_kind: Option<String>,
    /// Sleep this long in each attempt (polling the cancellation flag unless `ignore_cancel`).
    sleep_ms: u64,
    /// Sleep this long in `check`.
    check_sleep_ms: u64,
    /// Sleep without looking at the cancellation flag.
    ignore_cancel: bool,
    /// Panic in the action.
    panic: bool,
    /// An output to publish: `key=value`.
    output: Option<String>,
    /// The run ids `discover` finds backups of.
    discovers: Vec<String>,
}

/// One attempt the scripted plugin saw.
#[derive(Debug, Clone)]
struct Seen {
    step: String,
    action: Action,
    started: Instant,
    ended: Instant,
    inputs: Vec<String>,
}

/// Every attempt, by plan name (each test uses its own plan name; tests run in parallel).
fn journal() -> &'static Mutex<HashMap<String, Vec<Seen>>> {
    static JOURNAL: OnceLock<Mutex<HashMap<String, Vec<Seen>>>> = OnceLock::new();
    JOURNAL.get_or_init(Default::default)
}

fn seen(plan: &str) -> Vec<Seen> {
    journal()
        .lock()
        .unwrap()
        .get(plan)
        .cloned()
        .unwrap_or_default()
}

/// (plan, step, action): whose attempts are counted.
type AttemptKey = (String, String, Action);

#[derive(Default)]
struct Scripted;

impl Scripted {
    fn act(&self, ctx: &Context, script: &Script) -> PluginResult<StepOutput> {
        let request = ctx.request();
        let started = Instant::now();
        let attempt = {
            static ATTEMPTS: OnceLock<Mutex<HashMap<AttemptKey, u32>>> = OnceLock::new();
            let mut attempts = ATTEMPTS.get_or_init(Default::default).lock().unwrap();
            let key = (
                request.plan.clone(),
                request.step_id.clone(),
                request.action,
            );
            let count = attempts.entry(key).or_default();
            *count += 1;
            *count - 1
        };
        let sleep = Duration::from_millis(if request.action == Action::Check {
            script.check_sleep_ms
        } else {
            script.sleep_ms
        });
        let result = (|| {
            if request.action != Action::Check && script.panic {
                panic!("scripted panic");
            }
            let deadline = Instant::now() + sleep;
            while Instant::now() < deadline {
                if !script.ignore_cancel {
                    ctx.check_cancelled()?;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if request.action != Action::Check && attempt < script.fail_times {
                let kind = match script.fail_kind.as_deref() {
                    Some("permanent") => ErrorKind::Permanent,
                    _ => ErrorKind::Transient,
                };
                return Err(PluginError::new(
                    kind,
                    format!("scripted failure {attempt}"),
                ));
            }
            let mut output = StepOutput::new(format!("{} done", request.action));
            if let Some((key, value)) = script.output.as_deref().and_then(|o| o.split_once('=')) {
                output = output.output(key, value);
            }
            Ok(output)
        })();
        journal()
            .lock()
            .unwrap()
            .entry(request.plan.clone())
            .or_default()
            .push(Seen {
                step: request.step_id.clone(),
                action: request.action,
                started,
                ended: Instant::now(),
                inputs: request.inputs.keys().cloned().collect(),
            });
        result
    }
}

impl Plugin for Scripted {
    type Config = Script;
    const NAME: &'static str = "scripted";
    const SUMMARY: &'static str = "Does what its config says, for the runner's tests.";
    const ACTIONS: &'static [Action] = &[
        Action::Check,
        Action::Backup,
        Action::Verify,
        Action::Restore,
        Action::Discover,
    ];

    fn check(&self, ctx: &Context, script: &Script) -> PluginResult<StepOutput> {
        self.act(ctx, script)
    }
    fn backup(&self, ctx: &Context, script: &Script) -> PluginResult<StepOutput> {
        self.act(ctx, script)
    }
    fn verify(&self, ctx: &Context, script: &Script) -> PluginResult<StepOutput> {
        self.act(ctx, script)
    }
    fn restore(&self, ctx: &Context, script: &Script) -> PluginResult<StepOutput> {
        self.act(ctx, script)
    }
    fn discover(&self, _: &Context, script: &Script) -> PluginResult<StepOutput> {
        let backups = script
            .discovers
            .iter()
            .map(|run| backplan_plugin_sdk::DiscoveredBackup {
                run_id: run.clone(),
                started_at: String::new(),
                record: serde_json::json!({"made_by": run}),
                outputs: Default::default(),
                bytes: 1,
                summary: "found again".into(),
            })
            .collect();
        Ok(StepOutput::new("discovered").record(backplan_plugin_sdk::Discovered { backups }))
    }
}

declare_plugin!(Scripted);

/// A plugin that backs up and restores, and has nothing to verify or discover (as services-host
/// has nothing to verify or discover).
mod backup_only {
    use backplan_plugin_sdk::{Action, Plugin, declare_plugin};

    #[derive(Default)]
    pub(crate) struct BackupOnly;

    impl Plugin for BackupOnly {
        type Config = serde_json::Value;
        const NAME: &'static str = "backup-only";
        const SUMMARY: &'static str = "Backs up nothing, verifies nothing.";
        const ACTIONS: &'static [Action] = &[Action::Check, Action::Backup, Action::Restore];

        fn restore(
            &self,
            ctx: &backplan_plugin_sdk::Context,
            _: &serde_json::Value,
        ) -> backplan_plugin_sdk::PluginResult<backplan_plugin_sdk::StepOutput> {
            let without = ctx.request().record.as_ref().is_none_or(|r| r.is_null());
            Ok(backplan_plugin_sdk::StepOutput::new(if without {
                "restored without a record"
            } else {
                "restored from its record"
            }))
        }

        fn backup(
            &self,
            _: &backplan_plugin_sdk::Context,
            _: &serde_json::Value,
        ) -> backplan_plugin_sdk::PluginResult<backplan_plugin_sdk::StepOutput> {
            Ok(backplan_plugin_sdk::StepOutput::new("nothing to keep"))
        }
    }

    declare_plugin!(BackupOnly);
}

/// A plan, its host, a catalog and a state folder in a temp dir.
struct Bench {
    dir: tempfile::TempDir,
    plan: Plan,
    host: PluginHost,
}

impl Bench {
    fn new(name: &str, steps: &str) -> Self {
        Self::with_header(name, "concurrency = 4\nretry_delay = \"1ms\"", steps)
    }

    fn with_header(name: &str, header: &str, steps: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[plan]\nname = \"{name}\"\n{header}\n{steps}");
        let plan = Plan::parse(&dir.path().join("plan.toml"), text).unwrap();
        let mut host = PluginHost::new();
        host.register_builtin(plugin_descriptor()).unwrap();
        host.register_builtin(backup_only::plugin_descriptor())
            .unwrap();
        plan.check_configs(&host).unwrap();
        Bench { dir, plan, host }
    }

    fn catalog(&self) -> Catalog {
        Catalog::open(&self.dir.path().join("catalog"), &self.plan.name).unwrap()
    }

    fn runner(&self) -> Runner<'_> {
        Runner::new(&self.plan, &self.host, self.dir.path().join("state"))
            .stop_grace(Duration::from_millis(100))
    }

    async fn run(&self, request: RunRequest) -> RunRecord {
        self.runner().run(&self.catalog(), &request).await.unwrap()
    }

    async fn backup(&self) -> RunRecord {
        self.run(RunRequest::new(RunKind::Backup)).await
    }

    /// A backup whose run is cancelled (as by Ctrl-C) `after` it started.
    async fn backup_cancelled_after(&self, after: Duration) -> RunRecord {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            trigger.cancel();
        });
        self.runner()
            .cancel_token(cancel)
            .run(&self.catalog(), &RunRequest::new(RunKind::Backup))
            .await
            .unwrap()
    }
}

fn statuses(record: &RunRecord) -> Vec<(&str, StepStatus)> {
    record
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.status))
        .collect()
}

fn step(id: &str, extra: &str) -> String {
    format!("[[steps]]\nid = \"{id}\"\nplugin = \"scripted\"\n{extra}\n")
}

#[tokio::test]
async fn a_transient_failure_is_retried_until_it_succeeds() {
    let bench = Bench::new(
        "retry-ok",
        &step("a", "retries = 2\n[steps.config]\nfail_times = 2"),
    );
    let record = bench.backup().await;
    assert_eq!(statuses(&record), [("a", StepStatus::Succeeded)]);
    assert_eq!(record.steps[0].attempts, 3);
    assert_eq!(record.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn retries_stop_at_the_limit() {
    let bench = Bench::new(
        "retry-limit",
        &step("a", "retries = 2\n[steps.config]\nfail_times = 9"),
    );
    let record = bench.backup().await;
    assert_eq!(statuses(&record), [("a", StepStatus::Failed)]);
    assert_eq!(record.steps[0].attempts, 3);
    assert_eq!(record.status, RunStatus::Failed);
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried() {
    let bench = Bench::new(
        "permanent",
        &step(
            "a",
            "retries = 5\n[steps.config]\nfail_times = 1\nfail_kind = \"permanent\"",
        ),
    );
    let record = bench.backup().await;
    assert_eq!(record.steps[0].attempts, 1);
    assert_eq!(
        record.steps[0].error.as_ref().unwrap().kind,
        ErrorKind::Permanent
    );
}

#[tokio::test]
async fn retries_back_off_exponentially() {
    let bench = Bench::with_header(
        "backoff",
        "retry_delay = \"40ms\"",
        &step("a", "retries = 2\n[steps.config]\nfail_times = 2"),
    );
    bench.backup().await;
    let attempts: Vec<Seen> = seen("backoff")
        .into_iter()
        .filter(|s| s.action == Action::Backup)
        .collect();
    assert_eq!(attempts.len(), 3);
    let gap = |i: usize| attempts[i + 1].started - attempts[i].ended;
    // Equal jitter: between half and all of 40 ms, then of 80 ms.
    assert!(gap(0) >= Duration::from_millis(20), "{:?}", gap(0));
    assert!(gap(1) >= Duration::from_millis(40), "{:?}", gap(1));
}

#[tokio::test]
async fn an_attempt_that_runs_out_of_time_is_timed_out_and_not_retried_forever() {
    let bench = Bench::new(
        "timeout",
        &step(
            "a",
            "timeout = \"50ms\"\nretries = 0\n[steps.config]\nsleep_ms = 5000",
        ),
    );
    let started = Instant::now();
    let record = bench.backup().await;
    assert_eq!(statuses(&record), [("a", StepStatus::TimedOut)]);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the plugin was not stopped"
    );
}

#[tokio::test]
async fn a_plugin_that_ignores_cancellation_is_abandoned_after_the_grace_period() {
    let bench = Bench::new(
        "ignores-cancel",
        &step(
            "a",
            "timeout = \"30ms\"\nretries = 0\n[steps.config]\nsleep_ms = 1500\nignore_cancel = true",
        ),
    );
    let started = Instant::now();
    let record = bench.backup().await;
    assert_eq!(statuses(&record), [("a", StepStatus::TimedOut)]);
    // 30 ms timeout + 100 ms grace, far below the plugin's 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_panicking_plugin_fails_its_step_and_the_run_goes_on() {
    let bench = Bench::new(
        "panic",
        &(step("a", "[steps.config]\npanic = true") + &step("b", "")),
    );
    let record = bench.backup().await;
    assert_eq!(
        statuses(&record),
        [("a", StepStatus::Failed), ("b", StepStatus::Succeeded)]
    );
    let error = record.steps[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Internal);
    assert!(error.message.contains("panic"), "{}", error.message);
    assert_eq!(record.status, RunStatus::PartiallyFailed);
}

#[tokio::test]
async fn a_failed_step_skips_its_dependents_transitively_but_not_independent_branches() {
    let bench = Bench::new(
        "skips",
        &(step(
            "a",
            "[steps.config]\nfail_times = 1\nfail_kind = \"permanent\"",
        ) + &step("b", "after = [\"a\"]")
            + &step("c", "after = [\"b\"]")
            + &step("d", "")),
    );
    let record = bench.backup().await;
    assert_eq!(
        statuses(&record),
        [
            ("a", StepStatus::Failed),
            ("b", StepStatus::Skipped),
            ("c", StepStatus::Skipped),
            ("d", StepStatus::Succeeded),
        ]
    );
    assert_eq!(
        record.steps[2].error.as_ref().unwrap().message,
        "not run: `b` did not succeed"
    );
    let ran: Vec<String> = seen("skips")
        .into_iter()
        .filter(|s| s.action == Action::Backup)
        .map(|s| s.step)
        .collect();
    assert!(!ran.contains(&"b".to_owned()) && !ran.contains(&"c".to_owned()));
}

#[tokio::test]
async fn independent_steps_overlap_up_to_the_concurrency_and_never_beyond() {
    let steps = step("a", "[steps.config]\nsleep_ms = 150")
        + &step("b", "[steps.config]\nsleep_ms = 150")
        + &step("c", "[steps.config]\nsleep_ms = 150");
    for (name, concurrency, most) in [("overlap-2", 2, 2), ("overlap-1", 1, 1)] {
        let bench = Bench::with_header(name, &format!("concurrency = {concurrency}"), &steps);
        bench.backup().await;
        let attempts: Vec<Seen> = seen(name)
            .into_iter()
            .filter(|s| s.action == Action::Backup)
            .collect();
        let at_once = |t: Instant| {
            attempts
                .iter()
                .filter(|s| s.started <= t && t < s.ended)
                .count()
        };
        let peak = attempts.iter().map(|s| at_once(s.started)).max().unwrap();
        assert_eq!(peak, most, "{name}: {peak} ran at once");
    }
}

#[tokio::test]
async fn a_restore_takes_the_restore_order_and_sees_its_ancestors_outputs() {
    let bench = Bench::new(
        "restore-order",
        &(step("machine", "[steps.config]\noutput = \"ip=10.0.0.9\"")
            + &step("artifacts", "restore_after = [\"host\"]")
            + &step("host", "after = [\"machine\"]")
            + &step(
                "app",
                "after = [\"machine\"]\nrestore_after = [\"artifacts\"]",
            )),
    );
    let backup = bench.backup().await;
    assert_eq!(backup.status, RunStatus::Succeeded);
    let mut request = RunRequest::new(RunKind::Restore);
    request.source = Some(backup);
    let restore = bench.run(request).await;
    let order: Vec<&str> = restore.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(order, ["machine", "host", "artifacts", "app"]);
    let restored: Vec<Seen> = seen("restore-order")
        .into_iter()
        .filter(|s| s.action == Action::Restore)
        .collect();
    let started: Vec<&str> = restored.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(started, ["machine", "host", "artifacts", "app"]);
    let app = restored.iter().find(|s| s.step == "app").unwrap();
    assert_eq!(
        app.inputs,
        ["machine"],
        "only ancestors with outputs are inputs"
    );
}

#[tokio::test]
async fn cancelling_a_run_stops_running_steps_and_starts_nothing_more() {
    let bench = Bench::new(
        "cancel",
        &(step("long", "[steps.config]\nsleep_ms = 5000") + &step("later", "after = [\"long\"]")),
    );
    let record = bench
        .backup_cancelled_after(Duration::from_millis(100))
        .await;
    assert_eq!(
        statuses(&record),
        [
            ("long", StepStatus::Cancelled),
            ("later", StepStatus::Cancelled)
        ]
    );
    assert_eq!(record.status, RunStatus::Cancelled);
    assert!(record.interrupted);
    assert_eq!(
        bench.catalog().live_run(),
        None,
        "the lock was not released"
    );
}

#[tokio::test]
async fn cancelling_during_passing_checks_records_the_steps_as_cancelled() {
    // It used to record every step as "the checks did not all pass".
    let bench = Bench::new(
        "cancel-checks",
        &(step("a", "[steps.config]\ncheck_sleep_ms = 3000") + &step("b", "")),
    );
    let record = bench
        .backup_cancelled_after(Duration::from_millis(100))
        .await;
    assert_eq!(
        statuses(&record),
        [("a", StepStatus::Cancelled), ("b", StepStatus::Cancelled)]
    );
    for step in &record.steps {
        let message = &step.error.as_ref().unwrap().message;
        assert!(!message.contains("did not all pass"), "{message}");
    }
    assert_eq!(record.status, RunStatus::Cancelled);
}

#[tokio::test]
async fn a_step_whose_plugin_is_unknown_is_in_the_check_results() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[plan]\nname = \"unknown\"\n{}[[steps]]\nid = \"b\"\nplugin = \"nosuch\"\n",
        step("a", "")
    );
    let plan = Plan::parse(&dir.path().join("plan.toml"), text).unwrap();
    let mut host = PluginHost::new();
    host.register_builtin(plugin_descriptor()).unwrap();
    let results = Runner::new(&plan, &host, dir.path().to_owned())
        .check(&RunRequest::new(RunKind::Backup))
        .await
        .unwrap();
    let steps: Vec<&str> = results.iter().map(|c| c.step.as_str()).collect();
    assert_eq!(steps, ["a", "b"]);
    let error = results[1].result.as_ref().unwrap_err();
    assert_eq!(error.kind, ErrorKind::Config);
    assert!(
        error.message.contains("unknown plugin `nosuch`"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_second_run_of_a_plan_is_refused_while_the_first_holds_the_lock() {
    let bench = Bench::new("busy", &step("a", "[steps.config]\nsleep_ms = 400"));
    let catalog = bench.catalog();
    let first = bench.runner();
    let request = RunRequest::new(RunKind::Backup);
    let (first, second) = tokio::join!(first.run(&catalog, &request), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bench.runner().run(&catalog, &request).await
    });
    assert_eq!(first.unwrap().status, RunStatus::Succeeded);
    assert!(
        matches!(second, Err(RunError::Catalog(ref e)) if e.to_string().contains("already being run")),
        "{second:?}"
    );
}

#[tokio::test]
async fn a_run_left_running_by_a_dead_process_is_marked_interrupted_by_the_next() {
    let bench = Bench::new("dead-run", &step("a", ""));
    let mut dead = bench.backup().await;
    dead.run_id = "20200101T000000Z-000000".into();
    dead.status = RunStatus::Running;
    dead.steps[0].status = StepStatus::Running;
    bench.catalog().save(&dead).unwrap();
    let (now, _) = bench.catalog().list_now().unwrap();
    let shown = now.iter().find(|r| r.run_id == dead.run_id).unwrap();
    assert_eq!(shown.status, RunStatus::Interrupted, "runs list shows it");
    bench.backup().await;
    let stored = bench.catalog().load(&dead.run_id).unwrap();
    assert_eq!(stored.status, RunStatus::Interrupted);
    assert_eq!(stored.steps[0].status, StepStatus::Cancelled);
}

#[tokio::test]
async fn a_verify_of_every_step_marks_its_backup_verified_and_a_partial_one_does_not() {
    let bench = Bench::new("verified", &(step("a", "") + &step("b", "")));
    let backup = bench.backup().await;
    let on = |kind, only: &[&str]| {
        let mut request = RunRequest::new(kind);
        request.source = Some(backup.clone());
        request.only_steps = only.iter().map(|s| s.to_string()).collect();
        request
    };
    let verified = || bench.catalog().load(&backup.run_id).unwrap().verified;
    bench.run(on(RunKind::Restore, &[])).await;
    assert!(verified().is_none(), "a restore is not a verification");
    bench.run(on(RunKind::Verify, &["a"])).await;
    assert!(verified().is_none(), "half a verify is not a verification");
    let verify = bench.run(on(RunKind::Verify, &[])).await;
    assert_eq!(verified().unwrap().by_run, verify.run_id);
}

#[tokio::test]
async fn an_always_step_runs_after_a_failed_dependency_and_an_ordinary_one_is_skipped() {
    let bench = Bench::new(
        "always",
        &(step("stop-app", "")
            + &step(
                "ami",
                "after = [\"stop-app\"]\n[steps.config]\nfail_times = 1\nfail_kind = \"permanent\"",
            )
            + &step("upload", "after = [\"ami\"]")
            + &step("start-app", "after = [\"ami\"]\nwhen = \"always\"")
            + &step("page", "after = [\"ami\"]\nwhen = \"on-failure\"")
            + &step("all-good", "after = [\"stop-app\"]\nwhen = \"on-failure\"")),
    );
    let record = bench.backup().await;
    assert_eq!(
        statuses(&record),
        [
            ("stop-app", StepStatus::Succeeded),
            ("ami", StepStatus::Failed),
            ("upload", StepStatus::Skipped),
            ("start-app", StepStatus::Succeeded),
            ("page", StepStatus::Succeeded),
            ("all-good", StepStatus::Skipped),
        ]
    );
    assert!(record.steps[5].error.is_none(), "not needed is no failure");
    assert_eq!(record.status, RunStatus::PartiallyFailed);
}

#[tokio::test]
async fn an_always_step_runs_when_the_run_is_cancelled_after_what_it_follows_stopped() {
    let bench = Bench::new(
        "always-cancel",
        &(step("stop-app", "[steps.config]\nsleep_ms = 5000")
            + &step("ami", "after = [\"stop-app\"]")
            + &step("start-app", "after = [\"ami\"]\nwhen = \"always\"")),
    );
    let record = bench
        .backup_cancelled_after(Duration::from_millis(100))
        .await;
    assert_eq!(
        statuses(&record),
        [
            ("stop-app", StepStatus::Cancelled),
            ("ami", StepStatus::Cancelled),
            ("start-app", StepStatus::Succeeded),
        ]
    );
    let attempts = seen("always-cancel");
    let stop = attempts
        .iter()
        .find(|s| s.step == "stop-app" && s.action == Action::Backup);
    let start = attempts
        .iter()
        .find(|s| s.step == "start-app" && s.action == Action::Backup);
    assert!(
        start.unwrap().started >= stop.unwrap().ended,
        "start-app ran before stop-app ended"
    );
    assert_eq!(record.status, RunStatus::Cancelled);
}

#[tokio::test]
async fn a_step_whose_plugin_cannot_verify_does_not_block_the_verification() {
    // The shipped services plan (ebs, services-host, nfs-objects, ...) could never be marked
    // verified by `verify`: services-host has nothing to verify.
    let bench = Bench::new(
        "not-applicable",
        &(step("a", "") + "[[steps]]\nid = \"host\"\nplugin = \"backup-only\"\n"),
    );
    let backup = bench.backup().await;
    let mut request = RunRequest::new(RunKind::Verify);
    request.source = Some(backup.clone());
    let verify = bench.run(request).await;
    assert_eq!(
        statuses(&verify),
        [("a", StepStatus::Succeeded), ("host", StepStatus::Skipped)]
    );
    let stored = bench.catalog().load(&backup.run_id).unwrap();
    assert_eq!(stored.verified.unwrap().by_run, verify.run_id);
}

#[tokio::test]
async fn discover_asks_the_steps_that_can_and_the_rebuilt_records_restore() {
    let bench = Bench::new(
        "discover",
        &(step(
            "ami",
            "[steps.config]\ndiscovers = [\"20260101T030000Z-aaaaaa\", \"20260102T030000Z-bbbbbb\"]",
        ) + "[[steps]]\nid = \"host\"\nplugin = \"backup-only\"\n"),
    );
    let discovery = bench.runner().discover().await.unwrap();
    assert!(discovery.failed.is_empty(), "{:?}", discovery.failed);
    assert_eq!(discovery.found.len(), 2);
    assert!(discovery.found[0].can_discover && !discovery.found[1].can_discover);
    let records =
        backplan_core::rebuild::records(&bench.plan, &discovery.found, jiff::Timestamp::now());
    assert_eq!(records.len(), 2);
    for record in &records {
        bench.catalog().save(record).unwrap();
    }
    let latest = bench.catalog().backup("latest").unwrap();
    assert_eq!(latest.run_id, "20260102T030000Z-bbbbbb");
    let mut request = RunRequest::new(RunKind::Restore);
    request.source = Some(latest);
    let restore = bench.run(request).await;
    assert_eq!(
        statuses(&restore),
        [
            ("ami", StepStatus::Succeeded),
            ("host", StepStatus::Succeeded)
        ],
        "a step with nothing to rediscover is restored without its record"
    );
    assert_eq!(restore.steps[1].summary, "restored without a record");
}

#[tokio::test]
async fn a_run_whose_lock_is_taken_over_stops_cleanly_and_says_so() {
    let bench = Bench::new(
        "lock-lost",
        &(step("long", "[steps.config]\nsleep_ms = 5000") + &step("later", "after = [\"long\"]")),
    );
    let catalog = bench.catalog();
    let lock = bench.dir.path().join("catalog/lock-lost/lock");
    let thief = async {
        // Once the run holds the lock, another process "judges it dead" and takes it over.
        while !lock.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut owner: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
        owner["run_id"] = "the-thief".into();
        let stolen = bench.dir.path().join("stolen");
        std::fs::write(&stolen, serde_json::to_vec(&owner).unwrap()).unwrap();
        std::fs::rename(&stolen, &lock).unwrap();
    };
    let request = RunRequest::new(RunKind::Backup);
    let runner = bench.runner().heartbeat_every(Duration::from_millis(30));
    let run = runner.run(&catalog, &request);
    let (record, ()) = tokio::join!(run, thief);
    let record = record.unwrap();
    assert_eq!(record.status, RunStatus::Cancelled);
    assert_eq!(
        statuses(&record),
        [
            ("long", StepStatus::Cancelled),
            ("later", StepStatus::Cancelled)
        ]
    );
    assert_eq!(
        record.stopped_because.as_deref(),
        Some(backplan_core::runner::LOCK_LOST)
    );
    let owner: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
    assert_eq!(
        owner["run_id"], "the-thief",
        "the loser released the winner's lock"
    );
}

#[tokio::test]
async fn thousands_of_quick_steps_run_with_linear_record_writes() {
    // A 2,000-step run took 32 s when the whole record was rewritten after every step (the
    // 10,000-step figure is in bench/runner).
    let steps: String = (0..2_000)
        .map(|i| {
            if i == 0 {
                step("s0", "")
            } else {
                step(&format!("s{i}"), &format!("after = [\"s{}\"]", i - 1))
            }
        })
        .collect();
    let bench = Bench::new("thousands", &steps);
    let started = Instant::now();
    let record = bench.backup().await;
    assert_eq!(record.status, RunStatus::Succeeded);
    assert_eq!(record.steps.len(), 2_000);
    let stored = bench.catalog().load(&record.run_id).unwrap();
    assert!(
        stored
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded)
    );
    eprintln!("2,000 steps ran in {:?}", started.elapsed());
}
