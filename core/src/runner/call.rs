//! The one place a plugin call is built: for checks, for the steps of a run, for a drill's
//! teardown. It looks the plugin up, fills the request (ids, options, the step's record from the
//! backup acted on, its history, its inputs), resolves the config's references, and says why a
//! step does not run when it does not.
//!
//! Lookups the calls need over and over (the source run's steps, every earlier backup's steps)
//! are indexed once per run, so building a call costs the size of what it carries, not of the
//! whole catalog.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backplan_plugin_sdk::host::PluginRef;
use backplan_plugin_sdk::{
    Action, ErrorKind, HistoryEntry, Outputs, PlanStep, PluginError, Request,
};
use tokio_util::sync::CancellationToken;

use super::attempt::StepHooks;
use super::{Observer, RunRequest};
use crate::host::{HostedPlugin, PluginHost};
use crate::plan::refs::Scope;
use crate::plan::{Order, Plan, Step};
use crate::record::{RunKind, RunRecord, StepError, StepRecord, StepStatus};

/// Why a step's action is not called.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NotRun {
    /// It cannot run: unknown plugin, a config that does not resolve, no state folder.
    Failed(StepError),
    /// There is nothing for it to do; `error` says why when that is a problem (its backup did
    /// not succeed), `summary` when it is not (the plugin has no such action).
    Skipped {
        error: Option<StepError>,
        summary: String,
    },
}

impl NotRun {
    fn failed(error: PluginError) -> Self {
        NotRun::Failed(error.into())
    }

    /// Writes this outcome into the step's record.
    pub(super) fn record_into(self, entry: &mut StepRecord) {
        match self {
            NotRun::Failed(error) => {
                entry.status = StepStatus::Failed;
                entry.error = Some(error);
            }
            NotRun::Skipped { error, summary } => {
                entry.status = StepStatus::Skipped;
                entry.error = error;
                entry.summary = summary;
            }
        }
    }
}

/// A call ready to be made.
pub(crate) struct Call {
    pub plugin: PluginRef,
    pub request: Request,
}

/// For each step, the steps whose `after` names it.
fn next_steps(plan: &Plan) -> HashMap<&str, Vec<PlanStep>> {
    let mut next: HashMap<&str, Vec<PlanStep>> = HashMap::new();
    for step in &plan.steps {
        for before in &step.after {
            next.entry(before.as_str()).or_default().push(PlanStep {
                id: step.id.clone(),
                plugin: step.plugin.clone(),
                after: step.after.clone(),
            });
        }
    }
    next
}

/// Builds the calls of one run (or one check).
pub(crate) struct Calls<'r> {
    plan: &'r Plan,
    host: &'r PluginHost,
    state_root: &'r Path,
    observer: Arc<dyn Observer>,
    request: &'r RunRequest,
    run_id: String,
    source_steps: HashMap<&'r str, &'r StepRecord>,
    /// For each step, the steps that run directly after it in a backup (what `check` shows).
    next_steps: HashMap<&'r str, Vec<PlanStep>>,
    history: Vec<(&'r RunRecord, HashMap<&'r str, &'r StepRecord>)>,
}

impl<'r> Calls<'r> {
    pub(super) fn new(
        plan: &'r Plan,
        host: &'r PluginHost,
        state_root: &'r Path,
        observer: Arc<dyn Observer>,
        request: &'r RunRequest,
        run_id: &str,
    ) -> Self {
        let index = |run: &'r RunRecord| -> HashMap<&'r str, &'r StepRecord> {
            run.steps.iter().map(|s| (s.id.as_str(), s)).collect()
        };
        let history = if matches!(request.kind, RunKind::Backup | RunKind::Prune) {
            request
                .history
                .iter()
                .filter(|r| r.kind == RunKind::Backup && !r.dry_run)
                .map(|r| (r, index(r)))
                .collect()
        } else {
            Vec::new()
        };
        Calls {
            plan,
            host,
            state_root,
            observer,
            request,
            run_id: run_id.to_owned(),
            source_steps: request.source.as_ref().map(index).unwrap_or_default(),
            next_steps: next_steps(plan),
            history,
        }
    }

    /// A scope for references in this run, with no outputs yet.
    pub(super) fn scope(&self) -> Scope {
        Scope {
            run_id: self.run_id.clone(),
            plan_name: self.plan.name.clone(),
            plan_dir: self.plan.dir.to_string_lossy().into_owned(),
            state_dir: self.state_root.to_string_lossy().into_owned(),
            outputs: BTreeMap::new(),
            keep_step_references: false,
        }
    }

    /// The callbacks of one call of `step`, cancelled by `cancel`.
    pub(super) fn hooks(&self, step: &Step, cancel: CancellationToken) -> Arc<StepHooks> {
        Arc::new(StepHooks {
            step: step.id.clone(),
            plugin: step.plugin.clone(),
            observer: self.observer.clone(),
            cancel,
        })
    }

    fn plugin(&self, step: &Step) -> Result<&'r HostedPlugin, NotRun> {
        self.host.get(&step.plugin).ok_or_else(|| {
            NotRun::failed(PluginError::config(format!(
                "unknown plugin `{}`",
                step.plugin
            )))
        })
    }

    fn state_dir(&self, step: &Step) -> PathBuf {
        self.state_root
            .join(&self.plan.name)
            .join("steps")
            .join(&step.id)
    }

    /// The request for `action` of `step` with its config resolved in `scope`.
    fn request(&self, step: &Step, action: Action, scope: &Scope) -> Result<Request, NotRun> {
        let config = scope
            .resolve_config(&step.config)
            .map_err(|message| NotRun::failed(PluginError::config(message)))?;
        let source = self.request.source.as_ref();
        Ok(Request {
            action,
            plan: self.plan.name.clone(),
            run_id: self.run_id.clone(),
            step_id: step.id.clone(),
            config,
            inputs: BTreeMap::new(),
            source_run_id: source.map(|s| s.run_id.clone()),
            record: self
                .source_steps
                .get(step.id.as_str())
                .map(|s| s.record.clone()),
            history: Vec::new(),
            check_for: None,
            dry_run: self.request.dry_run,
            force: self.request.force,
            options: self.options(),
            state_dir: Some(self.state_dir(step).to_string_lossy().into_owned()),
            next_steps: Vec::new(),
        })
    }

    /// The request's options, and in a drill `drill = true` (set here, so `-o drill=false`
    /// cannot make a drill look like a restore to a plugin that guards production).
    fn options(&self) -> serde_json::Value {
        let mut options = self.request.options.clone();
        if self.request.kind == RunKind::Drill {
            if !options.is_object() {
                options = serde_json::Value::Object(Default::default());
            }
            options["drill"] = serde_json::Value::Bool(true);
        }
        options
    }

    /// A `check` (or `permissions`) call: made before anything runs, references to other
    /// steps' outputs left as written.
    pub(super) fn check(&self, step: &Step, action: Action, scope: &Scope) -> Result<Call, NotRun> {
        let plugin = self.plugin(step)?.plugin;
        let mut request = self.request(step, action, scope)?;
        request.check_for = (action == Action::Check).then(|| self.request.kind.action());
        if action == Action::Check {
            request.next_steps = self
                .next_steps
                .get(step.id.as_str())
                .cloned()
                .unwrap_or_default();
        }
        Ok(Call { plugin, request })
    }

    /// The call of a step in the run's graph, or why it does not run. `scope` holds the outputs
    /// of every step so far.
    pub(super) fn step(&self, step: &Step, scope: &Scope) -> Result<Call, NotRun> {
        let action = self.request.kind.action();
        let hosted = self.plugin(step)?;
        if !hosted.supports(action) {
            return Err(NotRun::Skipped {
                error: None,
                summary: format!("plugin `{}` has nothing to {action}", step.plugin),
            });
        }
        if let Some(source) = &self.request.source {
            match self.source_steps.get(step.id.as_str()) {
                Some(s) if s.status == StepStatus::Succeeded => {}
                // A rebuilt catalog could not find what this plugin keeps nothing of: its
                // restore is called without a record (services-host takes the old addresses
                // from its options instead).
                Some(s)
                    if source.rebuilt.is_some()
                        && s.status == StepStatus::Skipped
                        && s.error.is_none() => {}
                Some(s) => {
                    return Err(NotRun::Skipped {
                        error: Some(StepError {
                            kind: ErrorKind::Permanent,
                            message: format!(
                                "its backup in run {} did not succeed ({:?})",
                                source.run_id, s.status
                            ),
                            detail: None,
                        }),
                        summary: String::new(),
                    });
                }
                None => {
                    return Err(NotRun::Skipped {
                        error: None,
                        summary: format!("run {} has no backup of this step", source.run_id),
                    });
                }
            }
        }
        let state_dir = self.state_dir(step);
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            NotRun::failed(PluginError::permanent(format!(
                "cannot create the state folder {}: {e}",
                state_dir.display()
            )))
        })?;
        let mut request = self.request(step, action, scope)?;
        request.history = self.history_of(step);
        request.inputs = self.inputs_of(step, scope);
        Ok(Call {
            plugin: hosted.plugin,
            request,
        })
    }

    /// A drill's teardown of `step`, given what its restore returned.
    pub(super) fn teardown(
        &self,
        step: &Step,
        restored: &StepRecord,
        scope: &Scope,
    ) -> Result<Option<Call>, NotRun> {
        let hosted = self.plugin(step)?;
        if !hosted.supports(Action::Teardown) {
            return Ok(None);
        }
        let mut request = self.request(step, Action::Teardown, scope)?;
        request.record = Some(restored.record.clone());
        Ok(Some(Call {
            plugin: hosted.plugin,
            request,
        }))
    }

    /// Every earlier real backup in which this step succeeded, oldest first.
    fn history_of(&self, step: &Step) -> Vec<HistoryEntry> {
        self.history
            .iter()
            .filter_map(|(run, steps)| {
                let entry = steps.get(step.id.as_str())?;
                (entry.status == StepStatus::Succeeded).then(|| HistoryEntry {
                    run_id: run.run_id.clone(),
                    started_at: run.started_at.to_string(),
                    verified: run.verified.is_some(),
                    record: entry.record.clone(),
                })
            })
            .collect()
    }

    /// The outputs of the steps this one depends on (directly or not) that have any.
    fn inputs_of(&self, step: &Step, scope: &Scope) -> BTreeMap<String, Outputs> {
        if scope.outputs.is_empty() {
            return BTreeMap::new();
        }
        self.plan
            .ancestors(step, self.order())
            .into_iter()
            .filter_map(|a| scope.outputs.get(&a.id).map(|o| (a.id.clone(), o.clone())))
            .collect()
    }

    /// The outputs references may use before any step of this run finished: for verify and
    /// restore those of the backup acted on, then those given from an earlier run.
    pub(super) fn known_outputs(&self) -> BTreeMap<String, Outputs> {
        let mut outputs: BTreeMap<String, Outputs> = self
            .request
            .source
            .iter()
            .flat_map(|source| &source.steps)
            .filter(|s| s.status == StepStatus::Succeeded && !s.outputs.is_empty())
            .map(|s| (s.id.clone(), s.outputs.clone()))
            .collect();
        for (step, prior) in &self.request.prior_outputs {
            outputs
                .entry(step.clone())
                .or_default()
                .extend(prior.clone());
        }
        outputs
    }

    /// The order of this run.
    pub(super) fn order(&self) -> Order {
        self.request.kind.order()
    }
}
