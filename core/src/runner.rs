//! The runner: checks every step, then runs the plan's graph.
//!
//! A run goes in two phases. First `check` of every selected step (concurrently); if any fails,
//! nothing else is touched and the run is recorded as Failed with each check's reason. Then the
//! graph: a step starts when the steps it runs `after` have succeeded, at most `concurrency` at
//! once; a step whose dependency did not succeed is skipped with that reason, while independent
//! branches go on (the run ends PartiallyFailed). Each attempt runs on a blocking thread with the
//! step's timeout; a retryable error is tried again after an exponential backoff with jitter.
//!
//! Cancellation (Ctrl-C) raises every running step's flag, starts nothing new, waits a grace
//! period for running steps to stop, and still records the run, marked interrupted. The record
//! is written when the run starts and after every step, so even a killed process leaves a
//! record of what it finished.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backplan_plugin_sdk::abi::{HostHooks, PluginRef};
use backplan_plugin_sdk::{
    Action, ErrorKind, HistoryEntry, Level, Outputs, PluginError, Progress, Request, Response,
    StepOutput,
};
use jiff::Timestamp;
use serde_json::Value;
use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogError, HEARTBEAT, LockGuard};
use crate::host::PluginHost;
use crate::plan::refs::Scope;
use crate::plan::{Plan, Step};
use crate::record::{
    PlanInfo, RECORD_FORMAT, RunKind, RunRecord, RunStatus, StepError, StepRecord, StepStatus,
    new_run_id,
};

mod drill;
pub use drill::DrillSpec;

/// How long a timed-out or cancelled step may take to stop before it is abandoned.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The longest delay between retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

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

/// Runs plans. Cheap to build; one per command.
pub struct Runner<'a> {
    plan: &'a Plan,
    host: &'a PluginHost,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    state_root: PathBuf,
}

impl std::fmt::Debug for Runner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("plan", &self.plan.name)
            .finish()
    }
}

/// The host side of one step's callbacks: logs to tracing and the observer, progress to the
/// observer, cancellation from the step's token.
struct StepHooks {
    step: String,
    plugin: String,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
}

impl HostHooks for StepHooks {
    fn log(&self, level: Level, message: &str) {
        let (step, plugin) = (&self.step, &self.plugin);
        match level {
            Level::Trace => tracing::trace!(target: "backplan::plugin", step, plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "backplan::plugin", step, plugin, "{message}"),
            Level::Info => tracing::info!(target: "backplan::plugin", step, plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "backplan::plugin", step, plugin, "{message}"),
            Level::Error => tracing::error!(target: "backplan::plugin", step, plugin, "{message}"),
        }
        self.observer.step_log(step, level, message);
    }

    fn progress(&self, progress: Progress) {
        self.observer.step_progress(&self.step, &progress);
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// How one attempt ended.
enum Attempt {
    Done(StepOutput),
    Failed(PluginError),
    TimedOut,
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
        }
    }

    /// Shows progress through `observer`.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Stops the run when `cancel` is cancelled (wire it to Ctrl-C).
    pub fn cancel_token(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    fn selected(&self, request: &RunRequest) -> Result<Vec<&'a Step>, RunError> {
        for id in &request.only_steps {
            if self.plan.step(id).is_none() {
                return Err(RunError::UnknownStep(id.clone()));
            }
        }
        Ok(self
            .plan
            .steps_for(request.kind.restores())
            .into_iter()
            .filter(|s| request.only_steps.is_empty() || request.only_steps.contains(&s.id))
            .collect())
    }

    fn base_request(&self, step: &Step, action: Action, run_id: &str, req: &RunRequest) -> Request {
        let state_dir = self
            .state_root
            .join(&self.plan.name)
            .join("steps")
            .join(&step.id);
        Request {
            action,
            plan: self.plan.name.clone(),
            run_id: run_id.to_owned(),
            step_id: step.id.clone(),
            config: step.config.clone(),
            inputs: BTreeMap::new(),
            source_run_id: req.source.as_ref().map(|s| s.run_id.clone()),
            record: req
                .source
                .as_ref()
                .and_then(|s| s.step(&step.id))
                .map(|s| s.record.clone()),
            history: Vec::new(),
            check_for: None,
            dry_run: req.dry_run,
            force: req.force,
            options: req.options.clone(),
            state_dir: Some(state_dir.to_string_lossy().into_owned()),
        }
    }

    fn scope(&self, run_id: &str) -> Scope {
        Scope {
            run_id: run_id.to_owned(),
            plan_name: self.plan.name.clone(),
            plan_dir: self.plan.dir.to_string_lossy().into_owned(),
            state_dir: self.state_root.to_string_lossy().into_owned(),
            outputs: BTreeMap::new(),
            keep_step_references: false,
        }
    }

    /// Runs `check` of the selected steps, concurrently. Changes nothing.
    pub async fn check(&self, request: &RunRequest) -> Result<Vec<CheckResult>, RunError> {
        self.ask_each(request, Action::Check).await
    }

    /// Asks every selected step which cloud permissions its configuration needs.
    pub async fn permissions(&self, request: &RunRequest) -> Result<Vec<CheckResult>, RunError> {
        self.ask_each(request, Action::Permissions).await
    }

    /// Calls a side-effect-free action (`check`, `permissions`) of every selected step,
    /// concurrently, before any output exists.
    async fn ask_each(
        &self,
        request: &RunRequest,
        action: Action,
    ) -> Result<Vec<CheckResult>, RunError> {
        let run_id = new_run_id();
        let steps = self.selected(request)?;
        self.observer.checks_started(steps.len());
        let mut scope = self.scope(&run_id);
        scope.keep_step_references = true;
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.plan.concurrency));
        let mut tasks = JoinSet::new();
        for (index, step) in steps.iter().enumerate() {
            let Some(hosted) = self.host.get(&step.plugin) else {
                continue;
            };
            let mut call = self.base_request(step, action, &run_id, request);
            call.check_for = (action == Action::Check).then(|| request.kind.action());
            let hooks = self.hooks(step, self.cancel.child_token());
            let plugin = hosted.plugin;
            let permit = semaphore.clone();
            let config = scope.resolve_config(&step.config);
            let timeout = step.policy.timeout;
            tasks.spawn(async move {
                let _permit = permit.acquire_owned().await;
                let result = match config {
                    Err(message) => Err(StepError::from(PluginError::config(message))),
                    Ok(config) => {
                        call.config = config;
                        match attempt(plugin, call, hooks, timeout).await {
                            Attempt::Done(output) => Ok(output),
                            Attempt::Failed(error) => Err(error.into()),
                            Attempt::TimedOut => Err(StepError::from(PluginError::transient(
                                format!("{action} did not finish in time"),
                            ))),
                        }
                    }
                };
                (index, result)
            });
        }
        let mut results: Vec<Option<CheckResult>> = vec![None; steps.len()];
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, result)) = joined {
                results[index] = Some(CheckResult {
                    step: steps[index].id.clone(),
                    result,
                });
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    fn hooks(&self, step: &Step, cancel: CancellationToken) -> Arc<StepHooks> {
        Arc::new(StepHooks {
            step: step.id.clone(),
            plugin: step.plugin.clone(),
            observer: self.observer.clone(),
            cancel,
        })
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
    pub async fn run(
        &self,
        catalog: &Catalog,
        request: &RunRequest,
    ) -> Result<RunRecord, RunError> {
        let steps = self.selected(request)?;
        let mut record = self.new_record(request, &steps);
        let lock = catalog.lock(&record.run_id)?;
        let heartbeat = spawn_heartbeat(lock);
        catalog.save(&record)?;

        let checks = self.check(request).await?;
        let failed_checks: Vec<&CheckResult> =
            checks.iter().filter(|c| c.result.is_err()).collect();
        if !failed_checks.is_empty() || self.cancel.is_cancelled() {
            for step in &mut record.steps {
                match checks.iter().find(|c| c.step == step.id).map(|c| &c.result) {
                    Some(Err(error)) => {
                        step.status = StepStatus::Failed;
                        step.error = Some(StepError {
                            message: format!("check failed: {}", error.message),
                            ..error.clone()
                        });
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
            record.interrupted = self.cancel.is_cancelled();
            record.conclude();
            record.status = RunStatus::Failed;
            catalog.save(&record)?;
            heartbeat.abort();
            return Ok(record);
        }

        self.run_graph(catalog, request, &steps, &mut record)
            .await?;
        if let Some(spec) = request
            .drill
            .as_ref()
            .filter(|_| request.kind == RunKind::Drill)
        {
            record.drill = Some(self.finish_drill(spec, request, &steps, &record).await);
        }
        record.interrupted = self.cancel.is_cancelled();
        record.conclude();
        catalog.save(&record)?;
        heartbeat.abort();
        Ok(record)
    }

    /// The request a step's action gets, or the reason it does not run.
    fn prepare(
        &self,
        step: &Step,
        record: &RunRecord,
        request: &RunRequest,
        outputs: &BTreeMap<String, Outputs>,
    ) -> Result<Request, (StepStatus, Option<StepError>, String)> {
        let action = request.kind.action();
        let Some(hosted) = self.host.get(&step.plugin) else {
            return Err((
                StepStatus::Failed,
                Some(PluginError::config(format!("unknown plugin `{}`", step.plugin)).into()),
                String::new(),
            ));
        };
        if !hosted.supports(action) {
            return Err((
                StepStatus::Skipped,
                None,
                format!("plugin `{}` has nothing to {action}", step.plugin),
            ));
        }
        if let Some(source) = &request.source {
            match source.step(&step.id) {
                Some(s) if s.status == StepStatus::Succeeded => {}
                Some(s) => {
                    return Err((
                        StepStatus::Skipped,
                        Some(StepError {
                            kind: ErrorKind::Permanent,
                            message: format!(
                                "its backup in run {} did not succeed ({:?})",
                                source.run_id, s.status
                            ),
                            detail: None,
                        }),
                        String::new(),
                    ));
                }
                None => {
                    return Err((
                        StepStatus::Skipped,
                        None,
                        format!("run {} has no backup of this step", source.run_id),
                    ));
                }
            }
        }
        let mut call = self.base_request(step, action, &record.run_id, request);
        if let Some(dir) = &call.state_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                (
                    StepStatus::Failed,
                    Some(
                        PluginError::permanent(format!(
                            "cannot create the state folder {dir}: {e}"
                        ))
                        .into(),
                    ),
                    String::new(),
                )
            })?;
        }
        if matches!(request.kind, RunKind::Backup | RunKind::Prune) {
            call.history = request
                .history
                .iter()
                .filter(|r| r.has_backup_of(&step.id))
                .map(|r| HistoryEntry {
                    run_id: r.run_id.clone(),
                    started_at: r.started_at.to_string(),
                    verified: r.verified.is_some(),
                    record: r
                        .step(&step.id)
                        .map(|s| s.record.clone())
                        .unwrap_or_default(),
                })
                .collect();
        }
        call.inputs = step
            .ancestors_for(request.kind.restores())
            .iter()
            .filter_map(|a| outputs.get(a).map(|o| (a.clone(), o.clone())))
            .collect();
        let mut scope = self.scope(&record.run_id);
        scope.outputs = outputs.clone();
        call.config = scope.resolve_config(&step.config).map_err(|message| {
            (
                StepStatus::Failed,
                Some(PluginError::config(message).into()),
                String::new(),
            )
        })?;
        Ok(call)
    }

    async fn run_graph(
        &self,
        catalog: &Catalog,
        request: &RunRequest,
        steps: &[&'a Step],
        record: &mut RunRecord,
    ) -> Result<(), RunError> {
        let selected: BTreeSet<&str> = steps.iter().map(|s| s.id.as_str()).collect();
        // References resolve to this run's outputs; for verify and restore, a step that has not
        // produced new ones still offers those of the backup it acts on.
        let mut outputs: BTreeMap<String, Outputs> = request
            .source
            .iter()
            .flat_map(|source| &source.steps)
            .filter(|s| s.status == StepStatus::Succeeded)
            .map(|s| (s.id.clone(), s.outputs.clone()))
            .collect();
        for (step, prior) in &request.prior_outputs {
            outputs
                .entry(step.clone())
                .or_default()
                .extend(prior.clone());
        }
        let mut waiting: Vec<usize> = (0..steps.len()).collect();
        let mut running: JoinSet<(usize, StepRecord)> = JoinSet::new();
        let mut interrupted = false;

        loop {
            if !interrupted {
                let mut still_waiting = Vec::new();
                for i in waiting {
                    let step = steps[i];
                    let deps: Vec<&StepRecord> = step
                        .deps(request.kind.restores())
                        .iter()
                        .filter(|d| selected.contains(d.as_str()))
                        .filter_map(|d| record.step(d))
                        .collect();
                    if deps.iter().any(|d| !d.status.is_final())
                        || running.len() >= self.plan.concurrency
                    {
                        still_waiting.push(i);
                        continue;
                    }
                    if let Some(bad) = deps.iter().find(|d| d.status != StepStatus::Succeeded) {
                        let message = format!("not run: `{}` did not succeed", bad.id);
                        let entry = &mut record.steps[i];
                        entry.status = StepStatus::Skipped;
                        entry.error = Some(StepError {
                            kind: ErrorKind::Permanent,
                            message,
                            detail: None,
                        });
                        self.observer.step_finished(entry);
                        continue;
                    }
                    match self.prepare(step, record, request, &outputs) {
                        Err((status, error, summary)) => {
                            let entry = &mut record.steps[i];
                            entry.status = status;
                            entry.error = error;
                            entry.summary = summary;
                            self.observer.step_finished(entry);
                        }
                        Ok(call) => {
                            let plugin = self.host.get(&step.plugin).expect("prepared").plugin;
                            let mut entry = record.steps[i].clone();
                            entry.status = StepStatus::Running;
                            entry.started_at = Some(Timestamp::now());
                            record.steps[i] = entry.clone();
                            let hooks_source = StepJob {
                                step: step.id.clone(),
                                plugin_name: step.plugin.clone(),
                                observer: self.observer.clone(),
                                cancel: self.cancel.clone(),
                                policy: step.policy,
                            };
                            running.spawn(async move {
                                (i, hooks_source.run(plugin, call, entry).await)
                            });
                        }
                    }
                }
                waiting = still_waiting;
                catalog.save(record)?;
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                joined = running.join_next() => {
                    if let Some(Ok((i, finished))) = joined {
                        if finished.status == StepStatus::Succeeded {
                            outputs
                                .entry(finished.id.clone())
                                .or_default()
                                .extend(finished.outputs.clone());
                        }
                        self.observer.step_finished(&finished);
                        record.steps[i] = finished;
                        catalog.save(record)?;
                    }
                }
                () = self.cancel.cancelled(), if !interrupted => {
                    interrupted = true;
                    tracing::warn!("cancelled: waiting for running steps to stop");
                }
            }
        }
        for i in waiting {
            let entry = &mut record.steps[i];
            entry.status = StepStatus::Cancelled;
            entry.error = Some(StepError::from(PluginError::new(
                ErrorKind::Cancelled,
                "not started: the run was cancelled",
            )));
        }
        Ok(())
    }
}

/// Everything one step's attempts need, owned, so it can run on its own task.
struct StepJob {
    step: String,
    plugin_name: String,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    policy: crate::plan::StepPolicy,
}

impl StepJob {
    async fn run(self, plugin: PluginRef, call: Request, mut entry: StepRecord) -> StepRecord {
        let retries = self.policy.retries;
        let mut attempt_no = 0;
        loop {
            attempt_no += 1;
            entry.attempts = attempt_no;
            self.observer.step_started(&self.step, attempt_no);
            let hooks = Arc::new(StepHooks {
                step: self.step.clone(),
                plugin: self.plugin_name.clone(),
                observer: self.observer.clone(),
                cancel: self.cancel.child_token(),
            });
            let outcome = attempt(plugin, call.clone(), hooks, self.policy.timeout).await;
            entry.finished_at = Some(Timestamp::now());
            match outcome {
                Attempt::Done(output) => {
                    entry.status = StepStatus::Succeeded;
                    entry.summary = output.summary;
                    entry.record = output.record;
                    entry.outputs = output.outputs;
                    entry.bytes = output.bytes;
                    entry.warnings = output.warnings;
                    entry.error = None;
                    return entry;
                }
                Attempt::TimedOut => {
                    entry.status = StepStatus::TimedOut;
                    entry.error = Some(StepError {
                        kind: ErrorKind::Transient,
                        message: format!(
                            "timed out after {}",
                            humantime::format_duration(self.policy.timeout)
                        ),
                        detail: None,
                    });
                    return entry;
                }
                Attempt::Failed(error) => {
                    let cancelled =
                        self.cancel.is_cancelled() || error.kind == ErrorKind::Cancelled;
                    if error.is_retryable() && attempt_no <= retries && !cancelled {
                        let delay = backoff(self.policy.retry_delay, attempt_no);
                        tracing::warn!(step = %self.step, attempt = attempt_no, "{error}; retrying in {delay:?}");
                        self.observer
                            .step_retrying(&self.step, attempt_no, delay, &error);
                        tokio::select! {
                            () = tokio::time::sleep(delay) => continue,
                            () = self.cancel.cancelled() => {}
                        }
                    }
                    entry.status = if cancelled || self.cancel.is_cancelled() {
                        StepStatus::Cancelled
                    } else {
                        StepStatus::Failed
                    };
                    entry.error = Some(error.into());
                    return entry;
                }
            }
        }
    }
}

/// The delay before retry number `attempt` (1-based): `base · 2^(attempt-1)`, capped, with
/// "equal jitter" (between half and all of it) so that parallel retries spread out.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt - 1).min(16));
    let capped = exp.min(MAX_RETRY_DELAY);
    let half = capped / 2;
    half + half.mul_f64(fastrand::f64())
}

/// One call of a plugin on a blocking thread, bounded by `timeout`. On timeout or cancellation
/// the step's flag is raised and the plugin gets [`STOP_GRACE`] to return before it is abandoned.
async fn attempt(
    plugin: PluginRef,
    call: Request,
    hooks: Arc<StepHooks>,
    timeout: Duration,
) -> Attempt {
    let flag = hooks.cancel.clone();
    let mut task = tokio::task::spawn_blocking(move || plugin.invoke(&call, &*hooks));
    let finished = tokio::select! {
        joined = &mut task => Some(joined),
        () = tokio::time::sleep(timeout) => None,
        () = flag.cancelled() => None,
    };
    let timed_out = finished.is_none() && !flag.is_cancelled();
    let joined = match finished {
        Some(joined) => joined,
        None => {
            flag.cancel();
            match tokio::time::timeout(STOP_GRACE, &mut task).await {
                Ok(joined) if !timed_out => joined,
                _ if timed_out => return Attempt::TimedOut,
                _ => {
                    return Attempt::Failed(PluginError::new(
                        ErrorKind::Cancelled,
                        format!("cancelled; the plugin did not stop within {STOP_GRACE:?}"),
                    ));
                }
            }
        }
    };
    match joined {
        Ok(Ok(Response::Ok(output))) => Attempt::Done(output),
        Ok(Ok(Response::Error(error))) => Attempt::Failed(error),
        Ok(Err(abi)) => Attempt::Failed(PluginError::new(
            ErrorKind::Internal,
            format!("the plugin broke the protocol: {abi}"),
        )),
        Err(join) => Attempt::Failed(PluginError::new(
            ErrorKind::Internal,
            format!("the plugin's thread failed: {join}"),
        )),
    }
}

fn spawn_heartbeat(lock: LockGuard) -> HeartbeatHandle {
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            lock.heartbeat();
        }
    });
    HeartbeatHandle(handle)
}

/// Stops the heartbeat (and so releases the lock) when dropped or aborted.
struct HeartbeatHandle(tokio::task::JoinHandle<()>);

impl HeartbeatHandle {
    fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for HeartbeatHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_secs(2);
        for attempt in 1..=10 {
            let d = backoff(base, attempt);
            let full = (base * 2u32.pow(attempt - 1)).min(MAX_RETRY_DELAY);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        let samples: BTreeSet<_> = (0..20).map(|_| backoff(base, 3)).collect();
        assert!(samples.len() > 1, "no jitter");
    }
}
