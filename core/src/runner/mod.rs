//! The runner: checks every step, then runs the plan's graph, and records it all.
//!
//! A run goes in two phases. First `check` of every selected step (concurrently); if any fails,
//! nothing else is touched and the run is recorded as Failed with each check's reason. Then the
//! graph: [`scheduler`] decides which step starts or is skipped (a pure state machine over the
//! steps' states), [`call`] builds every plugin call (checks, steps, a drill's teardown) in one
//! place, and [`attempt`] runs a step's attempts with its timeout and retries. The record is
//! written when the run starts, as steps finish ([`saver`] coalesces quick ones), and at the end.
//!
//! Cancellation (Ctrl-C, SIGTERM, or a lock taken over because this run was judged dead) raises
//! every running step's flag, starts nothing new, waits a grace period for running steps to stop,
//! and still records the run, as Cancelled. The plan's lock is held for the whole run and
//! refreshed every [`HEARTBEAT`]; a run that finds records left "Running" by a dead process
//! marks them interrupted.

mod attempt;
mod call;
mod drill;
pub mod saver;
pub mod scheduler;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backplan_plugin_sdk::{
    Action, Discovered, ErrorKind, KeyOperation, Level, Outputs, PluginError, Progress, StepOutput,
};
use jiff::Timestamp;
use serde_json::Value;
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

pub use attempt::{STOP_GRACE, backoff};
use attempt::{StepJob, attempt};
use call::{Calls, NotRun};
pub use drill::DrillSpec;
use saver::RecordSaver;
use scheduler::{Decision, Scheduler};

use crate::catalog::{Catalog, CatalogError, HEARTBEAT, LockGuard};
use crate::host::PluginHost;
use crate::notify::{Message, Notifier, notify_all};
use crate::plan::{Plan, Step};
use crate::record::{
    PlanInfo, RECORD_FORMAT, RunKind, RunRecord, RunStatus, StepError, StepRecord, StepStatus,
    new_run_id,
};

/// What a caller sees while a run goes on. Every method has a do-nothing default.
pub trait Observer: Send + Sync {
    /// The checks are starting.
    fn checks_started(&self, steps: usize) {
        let _ = steps;
    }
    /// An attempt of a step started.
    fn step_started(&self, step: &str, attempt: u32) {
        let _ = (step, attempt);
    }
    /// A step reported progress.
    fn step_progress(&self, step: &str, progress: &Progress) {
        let _ = (step, progress);
    }
    /// A step logged something (it also goes to `tracing`).
    fn step_log(&self, step: &str, level: Level, message: &str) {
        let _ = (step, level, message);
    }
    /// A step will be retried after `delay`.
    fn step_retrying(&self, step: &str, attempt: u32, delay: Duration, error: &PluginError) {
        let _ = (step, attempt, delay, error);
    }
    /// A step is over.
    fn step_finished(&self, step: &StepRecord) {
        let _ = step;
    }
}

/// An observer that shows nothing (logs still reach `tracing`).
#[derive(Debug, Default)]
pub struct Quiet;
impl Observer for Quiet {}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Backup, verify, restore, prune or drill.
    pub kind: RunKind,
    /// Ask plugins to show, not change.
    pub dry_run: bool,
    /// Let plugins override safety refusals.
    pub force: bool,
    /// Free-form options handed to every plugin.
    pub options: Value,
    /// Run only these steps (empty: all).
    pub only_steps: Vec<String>,
    /// Verify and restore: the backup run to act on.
    pub source: Option<RunRecord>,
    /// Backup and prune: every backup run in the catalog, oldest first.
    pub history: Vec<RunRecord>,
    /// Outputs of steps left out by `only_steps`, from an earlier run (e.g. the launch of a
    /// restore done from another machine).
    pub prior_outputs: BTreeMap<String, Outputs>,
    /// Drills: what must answer before the restored steps are torn down.
    pub drill: Option<DrillSpec>,
}

impl RunRequest {
    /// A request of this kind with defaults for everything else.
    pub fn new(kind: RunKind) -> Self {
        RunRequest {
            kind,
            dry_run: false,
            force: false,
            options: Value::Null,
            only_steps: Vec::new(),
            source: None,
            history: Vec::new(),
            prior_outputs: BTreeMap::new(),
            drill: None,
        }
    }
}

/// Why a run could not happen at all (a run that happened and failed is a [`RunRecord`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The catalog could not be written or locked.
    #[error(transparent)]
    Catalog(Box<CatalogError>),
    /// `--step` named a step the plan does not have.
    #[error("the plan has no step `{0}`")]
    UnknownStep(String),
}

impl From<CatalogError> for RunError {
    fn from(error: CatalogError) -> Self {
        RunError::Catalog(Box::new(error))
    }
}

/// The result of the check phase for one step.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The step.
    pub step: String,
    /// What its plugin said.
    pub result: Result<StepOutput, StepError>,
}

/// What [`Runner::discover`] found: every step's backups, and the steps whose discovery failed.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// Every selected step, with what it found.
    pub found: Vec<crate::rebuild::Found>,
    /// The steps whose plugin could discover but failed, and why.
    pub failed: Vec<(String, StepError)>,
}

/// Runs plans. Cheap to build; one per command.
pub struct Runner<'a> {
    plan: &'a Plan,
    host: &'a PluginHost,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    state_root: PathBuf,
    grace: Duration,
    heartbeat: Duration,
    notifier: Option<Arc<dyn Notifier>>,
}

impl std::fmt::Debug for Runner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("plan", &self.plan.name)
            .finish()
    }
}

impl<'a> Runner<'a> {
    /// A runner for `plan` using `host`'s plugins. `state_root` holds per-step state folders.
    pub fn new(plan: &'a Plan, host: &'a PluginHost, state_root: PathBuf) -> Self {
        Runner {
            plan,
            host,
            observer: Arc::new(Quiet),
            cancel: CancellationToken::new(),
            state_root,
            grace: STOP_GRACE,
            heartbeat: HEARTBEAT,
            notifier: None,
        }
    }

    /// How often the plan's lock is refreshed (default [`HEARTBEAT`]).
    pub fn heartbeat_every(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Tells the plan's `[[notify]]` entries about each run through `notifier`.
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// How long a timed-out or cancelled step may take to stop before it is abandoned
    /// (default [`STOP_GRACE`]).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Shows progress through `observer`.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Stops the run when `cancel` is cancelled (wire it to Ctrl-C and SIGTERM).
    pub fn cancel_token(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The selected steps in the run's order.
    fn selected(&self, request: &RunRequest) -> Result<Vec<&'a Step>, RunError> {
        for id in &request.only_steps {
            if self.plan.step(id).is_none() {
                return Err(RunError::UnknownStep(id.clone()));
            }
        }
        Ok(self
            .plan
            .steps_in(request.kind.order())
            .into_iter()
            .filter(|s| request.only_steps.is_empty() || request.only_steps.contains(&s.id))
            .collect())
    }

    fn calls<'r>(&'r self, request: &'r RunRequest, run_id: &str) -> Calls<'r> {
        Calls::new(
            self.plan,
            self.host,
            &self.state_root,
            self.observer.clone(),
            request,
            run_id,
        )
    }

    /// Runs `check` of the selected steps, concurrently. Changes nothing.
    pub async fn check(&self, request: &RunRequest) -> Result<Vec<CheckResult>, RunError> {
        let steps = self.selected(request)?;
        let run_id = new_run_id();
        Ok(self
            .ask_each(&self.calls(request, &run_id), &steps, Action::Check)
            .await)
    }

    /// Asks every selected step which cloud permissions its configuration needs.
    pub async fn permissions(&self, request: &RunRequest) -> Result<Vec<CheckResult>, RunError> {
        let steps = self.selected(request)?;
        let run_id = new_run_id();
        Ok(self
            .ask_each(&self.calls(request, &run_id), &steps, Action::Permissions)
            .await)
    }

    /// Asks one step to list, add or remove the keys that open its encrypted backups
    /// (`backplan keys`). A step whose plugin has no keys is a config error naming it.
    pub async fn keys(
        &self,
        step: &str,
        operation: &KeyOperation,
    ) -> Result<CheckResult, RunError> {
        let Some(found) = self.plan.step(step) else {
            return Err(RunError::UnknownStep(step.to_owned()));
        };
        if !self
            .host
            .get(&found.plugin)
            .is_some_and(|p| p.supports(Action::Keys))
        {
            return Ok(CheckResult {
                step: step.to_owned(),
                result: Err(StepError::from(PluginError::config(format!(
                    "step `{step}`: plugin `{}` keeps no keys (its backups are not encrypted)",
                    found.plugin
                )))),
            });
        }
        let mut request = RunRequest::new(RunKind::Backup);
        request.only_steps = vec![step.to_owned()];
        request.options = serde_json::to_value(operation).expect("a key operation encodes");
        let run_id = new_run_id();
        let mut answers = self
            .ask_each(&self.calls(&request, &run_id), &[found], Action::Keys)
            .await;
        Ok(answers.remove(0))
    }

    /// Asks every step whose plugin can `discover` which backups it finds, concurrently;
    /// changes nothing. Steps whose plugins cannot are listed as such.
    pub async fn discover(&self) -> Result<Discovery, RunError> {
        let request = RunRequest::new(RunKind::Backup);
        let steps = self.selected(&request)?;
        let can = |step: &Step| {
            self.host
                .get(&step.plugin)
                .is_some_and(|p| p.supports(Action::Discover))
        };
        let able: Vec<&Step> = steps.iter().copied().filter(|s| can(s)).collect();
        let run_id = new_run_id();
        let answers = self
            .ask_each(&self.calls(&request, &run_id), &able, Action::Discover)
            .await;
        let mut discovery = Discovery::default();
        for step in steps {
            let mut found = crate::rebuild::Found {
                step: step.id.clone(),
                plugin: step.plugin.clone(),
                version: self
                    .host
                    .get(&step.plugin)
                    .map(|p| p.description.version.clone())
                    .unwrap_or_default(),
                can_discover: can(step),
                backups: Vec::new(),
                summary: String::new(),
                warnings: Vec::new(),
            };
            match answers
                .iter()
                .find(|a| a.step == step.id)
                .map(|a| &a.result)
            {
                Some(Ok(output)) => {
                    found.summary = output.summary.clone();
                    found.warnings = output.warnings.clone();
                    match serde_json::from_value::<Discovered>(output.record.clone()) {
                        Ok(discovered) => found.backups = discovered.backups,
                        Err(e) => discovery.failed.push((
                            step.id.clone(),
                            StepError::from(PluginError::new(
                                ErrorKind::Internal,
                                format!("the plugin's discover answer is unreadable: {e}"),
                            )),
                        )),
                    }
                }
                Some(Err(error)) => discovery.failed.push((step.id.clone(), error.clone())),
                None => {}
            }
            discovery.found.push(found);
        }
        Ok(discovery)
    }

    /// Calls a side-effect-free action (`check`, `permissions`) of every step, concurrently,
    /// before any output exists. Every step gets a result, in the order given.
    async fn ask_each(
        &self,
        calls: &Calls<'_>,
        steps: &[&Step],
        action: Action,
    ) -> Vec<CheckResult> {
        self.observer.checks_started(steps.len());
        let mut scope = calls.scope();
        scope.keep_step_references = true;
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.plan.concurrency));
        let mut results: Vec<Option<Result<StepOutput, StepError>>> = vec![None; steps.len()];
        let mut tasks = JoinSet::new();
        let mut task_step = HashMap::new();
        for (index, step) in steps.iter().enumerate() {
            let call = match calls.check(step, action, &scope) {
                Ok(call) => call,
                Err(NotRun::Failed(error)) => {
                    results[index] = Some(Err(error));
                    continue;
                }
                Err(NotRun::Skipped { summary, .. }) => {
                    results[index] = Some(Ok(StepOutput::new(summary)));
                    continue;
                }
            };
            let hooks = calls.hooks(step, self.cancel.child_token());
            let permit = semaphore.clone();
            let (timeout, grace) = (step.policy.timeout, self.grace);
            let handle = tasks.spawn(async move {
                let _permit = permit.acquire_owned().await;
                attempt(call.plugin, call.request, hooks, timeout, grace)
                    .await
                    .into_result(action.as_str(), timeout)
                    .map_err(StepError::from)
            });
            task_step.insert(handle.id(), index);
        }
        while let Some(joined) = tasks.join_next_with_id().await {
            let (id, result) = match joined {
                Ok((id, result)) => (id, result),
                Err(join) => (join.id(), Err(task_failed(&join))),
            };
            results[task_step[&id]] = Some(result);
        }
        steps
            .iter()
            .zip(results)
            .map(|(step, result)| CheckResult {
                step: step.id.clone(),
                result: result.expect("every step has a result"),
            })
            .collect()
    }

    fn new_record(&self, request: &RunRequest, steps: &[&Step]) -> RunRecord {
        RunRecord {
            format: RECORD_FORMAT,
            run_id: new_run_id(),
            kind: request.kind,
            plan: PlanInfo {
                name: self.plan.name.clone(),
                digest: self.plan.digest.clone(),
                path: self.plan.path.to_string_lossy().into_owned(),
            },
            source_run: request.source.as_ref().map(|s| s.run_id.clone()),
            started_at: Timestamp::now(),
            finished_at: None,
            status: RunStatus::Running,
            interrupted: false,
            dry_run: request.dry_run,
            host: crate::catalog::hostname(),
            backplan_version: env!("CARGO_PKG_VERSION").to_owned(),
            verified: None,
            drill: None,
            stopped_because: None,
            rebuilt: None,
            notifications: Vec::new(),
            steps: steps
                .iter()
                .map(|s| {
                    let version = self
                        .host
                        .get(&s.plugin)
                        .map_or("", |p| p.description.version.as_str());
                    StepRecord::pending(&s.id, &s.plugin, version)
                })
                .collect(),
        }
    }

    /// Takes the plan's lock, checks every step, runs the graph and records it all in `catalog`.
    /// A verify or drill that proves its backup usable marks it verified, under the same lock.
    pub async fn run(
        &self,
        catalog: &Catalog,
        request: &RunRequest,
    ) -> Result<RunRecord, RunError> {
        let steps = self.selected(request)?;
        let mut record = self.new_record(request, &steps);
        let lock = Arc::new(catalog.lock(&record.run_id)?);
        let heartbeat = Heartbeat::start(lock.clone(), self.cancel.clone(), self.heartbeat);
        let mut saver = RecordSaver::new(catalog);
        saver.save(&record)?;
        for dead in catalog.settle_dead_runs(&lock)? {
            tracing::warn!(
                "run {dead} was left running by a process that is gone: marked interrupted"
            );
        }
        let calls = self.calls(request, &record.run_id);

        let checks = self.ask_each(&calls, &steps, Action::Check).await;
        let cancelled = self.cancel.is_cancelled();
        if cancelled || checks.iter().any(|c| c.result.is_err()) {
            record_failed_checks(&mut record, &checks, cancelled);
        } else {
            self.run_graph(&mut saver, &calls, &steps, &mut record)
                .await?;
            if let Some(spec) = request
                .drill
                .as_ref()
                .filter(|_| request.kind == RunKind::Drill)
            {
                record.drill = Some(self.finish_drill(spec, &calls, &steps, &record).await);
            }
            record.interrupted = self.cancel.is_cancelled();
            record.conclude();
        }
        if heartbeat.lost() {
            record.stopped_because = Some(LOCK_LOST.to_owned());
        }
        self.notify(&mut record).await;
        saver.save(&record)?;
        let verifiable = |plugin: &str| {
            self.host
                .get(plugin)
                .is_some_and(|p| p.supports(Action::Verify))
        };
        if let Some(source) = &request.source
            && proves_usable(&record, self.plan, verifiable)
        {
            catalog.mark_verified(&source.run_id, &record.run_id)?;
        }
        heartbeat.stop();
        if let Err(error) = lock.release() {
            tracing::warn!("could not release the plan's lock: {error}");
        }
        Ok(record)
    }

    /// Tells the plan's `[[notify]]` entries about the finished `record` (not for dry runs),
    /// and keeps what became of each delivery in it.
    async fn notify(&self, record: &mut RunRecord) {
        let Some(notifier) = self.notifier.clone() else {
            return;
        };
        if self.plan.notify.is_empty() || record.dry_run {
            return;
        }
        let specs = self.plan.notify.clone();
        let message = Message::of_run(record);
        let deliveries =
            tokio::task::spawn_blocking(move || notify_all(&*notifier, &specs, &message)).await;
        record.notifications = deliveries.unwrap_or_default();
    }

    async fn run_graph(
        &self,
        saver: &mut RecordSaver<'_>,
        calls: &Calls<'_>,
        steps: &[&'a Step],
        record: &mut RunRecord,
    ) -> Result<(), RunError> {
        let position: HashMap<&str, usize> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        let deps = steps
            .iter()
            .map(|s| {
                s.deps(calls.order())
                    .iter()
                    .filter_map(|d| position.get(d.as_str()).copied())
                    .collect()
            })
            .collect();
        let when = steps.iter().map(|s| s.when).collect();
        let mut schedule = Scheduler::with_when(deps, when, self.plan.concurrency);
        let mut scope = calls.scope();
        scope.outputs = calls.known_outputs();
        let mut running: JoinSet<StepRecord> = JoinSet::new();
        let mut task_step = HashMap::new();
        loop {
            while let Some(decision) = schedule.decide() {
                match decision {
                    Decision::Skip { step, because } => {
                        let entry = &mut record.steps[step];
                        entry.status = StepStatus::Skipped;
                        entry.error = Some(StepError {
                            kind: ErrorKind::Permanent,
                            message: format!("not run: `{}` did not succeed", steps[because].id),
                            detail: None,
                        });
                        self.observer.step_finished(entry);
                    }
                    Decision::Cancel(step) => not_started(&mut record.steps[step]),
                    Decision::NotNeeded(step) => {
                        let entry = &mut record.steps[step];
                        entry.status = StepStatus::Skipped;
                        entry.summary = "not needed: every step it runs after succeeded".into();
                        self.observer.step_finished(entry);
                    }
                    Decision::Start(i) => match calls.step(steps[i], &scope) {
                        Err(not_run) => {
                            not_run.record_into(&mut record.steps[i]);
                            schedule.finished(i, false);
                            self.observer.step_finished(&record.steps[i]);
                        }
                        Ok(call) => {
                            let entry = &mut record.steps[i];
                            entry.status = StepStatus::Running;
                            entry.started_at = Some(Timestamp::now());
                            // A step that runs whatever happened still runs after a stop: it
                            // gets its own token (its timeout still holds).
                            let cancel = if schedule.is_stopped() {
                                CancellationToken::new()
                            } else {
                                self.cancel.clone()
                            };
                            let job = StepJob {
                                step: steps[i].id.clone(),
                                plugin_name: steps[i].plugin.clone(),
                                observer: self.observer.clone(),
                                cancel,
                                policy: steps[i].policy,
                                grace: self.grace,
                            };
                            let entry = entry.clone();
                            let handle = running.spawn(async move {
                                job.run(call.plugin, call.request, entry).await
                            });
                            task_step.insert(handle.id(), i);
                        }
                    },
                }
            }
            saver.changed(record)?;
            if schedule.running() == 0 {
                break;
            }
            tokio::select! {
                Some(joined) = running.join_next_with_id() => {
                    let (i, finished) = match joined {
                        Ok((id, finished)) => (task_step[&id], finished),
                        Err(join) => {
                            let i = task_step[&join.id()];
                            let mut entry = record.steps[i].clone();
                            entry.status = StepStatus::Failed;
                            entry.finished_at = Some(Timestamp::now());
                            entry.error = Some(task_failed(&join));
                            (i, entry)
                        }
                    };
                    let succeeded = finished.status == StepStatus::Succeeded;
                    if succeeded && !finished.outputs.is_empty() {
                        scope
                            .outputs
                            .entry(finished.id.clone())
                            .or_default()
                            .extend(finished.outputs.clone());
                    }
                    schedule.finished(i, succeeded);
                    self.observer.step_finished(&finished);
                    record.steps[i] = finished;
                }
                () = self.cancel.cancelled(), if !schedule.is_stopped() => {
                    tracing::warn!("cancelled: waiting for running steps to stop");
                    schedule.stop();
                }
                () = saver.wait_due(), if saver.pending() => {
                    saver.save(record)?;
                }
            }
        }
        for i in schedule.unstarted() {
            not_started(&mut record.steps[i]);
        }
        Ok(())
    }
}

/// Records a step the cancelled run never started.
fn not_started(entry: &mut StepRecord) {
    entry.status = StepStatus::Cancelled;
    entry.error = Some(StepError::from(PluginError::new(
        ErrorKind::Cancelled,
        "not started: the run was cancelled",
    )));
}

/// Records the outcome of a check phase that did not all pass (or was cancelled): failed checks
/// as failed steps, the other steps as not run.
fn record_failed_checks(record: &mut RunRecord, checks: &[CheckResult], cancelled: bool) {
    for (step, check) in record.steps.iter_mut().zip(checks) {
        match &check.result {
            Err(error) if !(cancelled && error.kind == ErrorKind::Cancelled) => {
                step.status = StepStatus::Failed;
                step.error = Some(StepError {
                    message: format!("check failed: {}", error.message),
                    ..error.clone()
                });
            }
            _ if cancelled => {
                step.status = StepStatus::Cancelled;
                step.error = Some(StepError::from(PluginError::cancelled()));
                if let Some(error) = &mut step.error {
                    error.message = "not started: the run was cancelled during the checks".into();
                }
            }
            _ => {
                step.status = StepStatus::Skipped;
                step.error = Some(StepError {
                    kind: ErrorKind::Cancelled,
                    message: "not run: the checks did not all pass".into(),
                    detail: None,
                });
            }
        }
    }
    record.interrupted = cancelled;
    record.conclude();
    if !cancelled {
        record.status = RunStatus::Failed;
    }
}

/// Whether a verify or drill run proves the backup it acted on usable: a real drill that
/// succeeded (its restored system answered), or a verify of every step of the plan in which
/// every step whose plugin can verify (`verifiable(plugin)`) passed. Steps whose plugins have
/// nothing to verify (services-host, build-cleanup) are not applicable, not a blocker.
pub fn proves_usable(record: &RunRecord, plan: &Plan, verifiable: impl Fn(&str) -> bool) -> bool {
    if record.status != RunStatus::Succeeded || record.dry_run {
        return false;
    }
    match record.kind {
        RunKind::Drill => true,
        RunKind::Verify => {
            record.steps.len() == plan.steps.len()
                && record.steps.iter().all(|s| {
                    s.status == StepStatus::Succeeded
                        || (s.status == StepStatus::Skipped && !verifiable(&s.plugin))
                })
        }
        RunKind::Backup | RunKind::Restore | RunKind::Prune => false,
    }
}

fn task_failed(join: &tokio::task::JoinError) -> StepError {
    StepError::from(PluginError::new(
        ErrorKind::Internal,
        format!("the runner's task for this step failed: {join}"),
    ))
}

/// Why a run whose lock was taken over stopped, as its record says.
pub const LOCK_LOST: &str =
    "another process took the plan's lock over (it judged this run dead): stopped";

/// Refreshes the plan's lock while the run goes on; cancels the run if the lock was taken over.
struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl Heartbeat {
    fn start(lock: Arc<LockGuard>, cancel: CancellationToken, every: Duration) -> Self {
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await; // the first tick is now; the lock was just written
            loop {
                tick.tick().await;
                let lock = lock.clone();
                match tokio::task::spawn_blocking(move || lock.refresh()).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        tracing::error!("{LOCK_LOST}");
                        flag.store(true, std::sync::atomic::Ordering::SeqCst);
                        cancel.cancel();
                        return;
                    }
                    Ok(Err(error)) => tracing::warn!("could not refresh the plan's lock: {error}"),
                    Err(_) => return,
                }
            }
        });
        Heartbeat { task, lost }
    }

    /// Whether the lock was found taken over.
    fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
