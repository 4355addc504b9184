//! One function per command. Each returns the process exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use backplan_core::catalog::{Catalog, CatalogError};
use backplan_core::exit;
use backplan_core::host::{HostError, PluginHost};
use backplan_core::plan::{Plan, PlanError};
use backplan_core::record::{RunKind, RunRecord, RunStatus, StepStatus};
use backplan_core::runner::{CancellationToken, DrillSpec, Observer, RunError, RunRequest, Runner};
use backplan_core::state;
use backplan_plugin_sdk::ErrorKind;
use clap::CommandFactory;
use indicatif::MultiProgress;
use serde_json::{Value, json};

use crate::args::{
    Cli, Command, DrillArgs, Global, PlanCommand, PluginsCommand, PruneArgs, RestoreArgs, RunArgs,
    RunsCommand, SourceArgs,
};
use crate::output;

/// The built-in plugins linked into this binary.
fn builtins() -> Vec<&'static backplan_plugin_sdk::abi::PluginDescriptor> {
    vec![
        backplan_plugin_build_cleanup::plugin_descriptor(),
        backplan_plugin_exec::plugin_descriptor(),
        backplan_plugin_ebs::plugin_descriptor(),
        backplan_plugin_nfs_objects::plugin_descriptor(),
        backplan_plugin_s3_verify::plugin_descriptor(),
        backplan_plugin_services_host::plugin_descriptor(),
    ]
}

struct Session {
    global: Global,
    state_root: PathBuf,
    observer: Arc<dyn Observer>,
}

pub async fn dispatch(cli: Cli) -> i32 {
    let bars =
        output::bars_wanted(cli.global.json, cli.global.no_progress).then(MultiProgress::new);
    output::init_logging(cli.global.verbose, cli.global.quiet, bars.clone());
    let observer: Arc<dyn Observer> = match bars {
        Some(bars) => Arc::new(output::BarObserver::new(bars)),
        None => Arc::new(output::LogObserver::default()),
    };
    let session = Session {
        state_root: state::state_root(cli.global.state_dir.as_deref()),
        global: cli.global,
        observer,
    };
    let result = match cli.command {
        Command::Run(args) => session.run(args).await,
        Command::Verify(args) => session.verify(args).await,
        Command::Restore(args) => session.restore(args).await,
        Command::Prune(args) => session.prune(args).await,
        Command::Drill(args) => session.drill(args).await,
        Command::Plan(PlanCommand::Check(args)) => session.plan_check(&args.plan).await,
        Command::Plan(PlanCommand::Show(args)) => session.plan_show(&args.plan),
        Command::Plan(PlanCommand::Permissions(args)) => session.plan_permissions(&args.plan).await,
        Command::Runs(RunsCommand::List(args)) => session.runs_list(&args.plan),
        Command::Runs(RunsCommand::Show { plan, run }) => session.runs_show(&plan.plan, &run),
        Command::Plugins(PluginsCommand::List { plan }) => session.plugins_list(plan.as_deref()),
        Command::Plugins(PluginsCommand::Info { name, plan }) => {
            session.plugins_info(&name, plan.as_deref())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "backplan",
                &mut std::io::stdout(),
            );
            Ok(exit::SUCCEEDED)
        }
    };
    result.unwrap_or_else(|error| {
        let code = exit_code_for(&error);
        eprintln!("error: {error:#}");
        code
    })
}

/// Maps an error that stopped a command to its exit code.
fn exit_code_for(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if cause.is::<PlanError>() || cause.is::<HostError>() {
            return exit::CONFIG;
        }
        if let Some(CatalogError::Busy { .. }) = cause.downcast_ref::<CatalogError>() {
            return exit::BUSY;
        }
        if let Some(RunError::Catalog(error)) = cause.downcast_ref::<RunError>()
            && matches!(**error, CatalogError::Busy { .. })
        {
            return exit::BUSY;
        }
        if let Some(RunError::UnknownStep(_)) = cause.downcast_ref::<RunError>() {
            return exit::CONFIG;
        }
    }
    exit::FAILED
}

/// Parses `KEY=VALUE` options; a VALUE that parses as JSON is taken as JSON.
/// Each step's stage: one below the deepest step it runs after (in backup or restore order).
fn levels(plan: &Plan, restoring: bool) -> BTreeMap<&str, usize> {
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    for step in plan.steps_for(restoring) {
        let depth = step
            .deps(restoring)
            .iter()
            .filter_map(|a| level.get(a.as_str()))
            .max()
            .map_or(0, |d| d + 1);
        level.insert(&step.id, depth);
    }
    level
}

fn parse_options(pairs: &[String]) -> anyhow::Result<Value> {
    if pairs.is_empty() {
        return Ok(Value::Null);
    }
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("option {pair:?} is not KEY=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        map.insert(key.to_owned(), value);
    }
    Ok(Value::Object(map))
}

/// Ctrl-C once: cancel cleanly (the run is still recorded). Twice: leave at once.
fn cancel_on_ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping: cancelling running steps (Ctrl-C again to quit at once)");
            cancel.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(exit::INTERRUPTED);
            }
        }
    });
    token
}

impl Session {
    /// Reads the plan, loads its plugins and checks every step's config against its schema.
    fn load(&self, path: &Path) -> anyhow::Result<(Plan, PluginHost)> {
        let plan = Plan::load(path)?;
        let host = self.host(Some(&plan))?;
        plan.check_configs(&host)?;
        Ok((plan, host))
    }

    fn host(&self, plan: Option<&Plan>) -> anyhow::Result<PluginHost> {
        let mut host = PluginHost::with_builtins(&builtins())?;
        for dir in &self.global.plugin_dirs {
            host.load_dir(dir)?;
        }
        if let Some(plan) = plan {
            host.load_for_plan(plan)?;
        }
        Ok(host)
    }

    fn catalog(&self, plan: &Plan) -> anyhow::Result<Catalog> {
        let dir = state::catalog_dir(plan, &self.state_root);
        Ok(Catalog::open(&dir, &plan.name)?)
    }

    fn runner<'a>(&self, plan: &'a Plan, host: &'a PluginHost) -> Runner<'a> {
        Runner::new(plan, host, self.state_root.clone())
            .observer(self.observer.clone())
            .cancel_token(cancel_on_ctrl_c())
    }

    /// Runs a request and reports it; returns the record for follow-up work.
    async fn execute(
        &self,
        plan: &Plan,
        host: &PluginHost,
        request: RunRequest,
    ) -> anyhow::Result<(RunRecord, i32)> {
        let catalog = self.catalog(plan)?;
        let record = self.runner(plan, host).run(&catalog, &request).await?;
        let path = catalog
            .root()
            .join("runs")
            .join(format!("{}.json", record.run_id));
        if self.global.json {
            println!("{}", serde_json::to_string_pretty(&record)?);
        } else {
            print!("{}", output::run_report(&record, &path));
        }
        let code = exit::for_run(&record);
        Ok((record, code))
    }

    async fn run(&self, args: RunArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let mut request = RunRequest::new(RunKind::Backup);
        request.dry_run = args.dry_run;
        request.only_steps = args.steps;
        request.options = parse_options(&args.options)?;
        request.history = self.catalog(&plan)?.list()?.0;
        Ok(self.execute(&plan, &host, request).await?.1)
    }

    /// The backup run `id` (or the latest one with a usable backup).
    fn source(&self, catalog: &Catalog, id: &str) -> anyhow::Result<RunRecord> {
        if id != "latest" {
            let record = catalog.load(id)?;
            if record.kind != RunKind::Backup {
                return Err(anyhow!("run {id} is a {:?} run, not a backup", record.kind));
            }
            return Ok(record);
        }
        let (records, _) = catalog.list()?;
        records
            .into_iter()
            .rev()
            .find(|r| {
                r.kind == RunKind::Backup
                    && !r.dry_run
                    && matches!(r.status, RunStatus::Succeeded | RunStatus::PartiallyFailed)
            })
            .ok_or_else(|| anyhow!("the catalog has no successful backup of plan yet"))
    }

    async fn verify(&self, args: SourceArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let catalog = self.catalog(&plan)?;
        let source = self.source(&catalog, &args.run)?;
        let mut request = RunRequest::new(RunKind::Verify);
        request.only_steps = args.steps;
        request.options = parse_options(&args.options)?;
        request.source = Some(source.clone());
        let (record, code) = self.execute(&plan, &host, request).await?;
        let verified_all = record.status == RunStatus::Succeeded
            && record.steps.len() == plan.steps.len()
            && record
                .steps
                .iter()
                .all(|s| s.status == StepStatus::Succeeded);
        if verified_all {
            catalog
                .mark_verified(&source.run_id, &record.run_id)
                .context("recording the verification")?;
        }
        Ok(code)
    }

    async fn restore(&self, args: RestoreArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let catalog = self.catalog(&plan)?;
        let source = self.source(&catalog, &args.run)?;
        let mut request = RunRequest::new(RunKind::Restore);
        request.dry_run = args.dry_run;
        request.force = args.force;
        request.options = parse_options(&args.options)?;
        if !args.steps.is_empty() {
            request.prior_outputs = earlier_restore_outputs(&catalog, &source.run_id, &args.steps)?;
        }
        request.only_steps = args.steps;
        request.source = Some(source);
        Ok(self.execute(&plan, &host, request).await?.1)
    }

    async fn drill(&self, args: DrillArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let catalog = self.catalog(&plan)?;
        let source = self.source(&catalog, &args.run)?;
        let mut request = RunRequest::new(RunKind::Drill);
        request.dry_run = args.dry_run;
        request.options = parse_options(&args.options)?;
        request.only_steps = args.steps;
        request.source = Some(source.clone());
        request.drill = Some(DrillSpec {
            health: args.health,
            health_timeout: args.health_timeout,
        });
        let (record, code) = self.execute(&plan, &host, request).await?;
        if record.status == RunStatus::Succeeded && !record.dry_run {
            catalog
                .mark_verified(&source.run_id, &record.run_id)
                .context("recording the verification")?;
        }
        Ok(code)
    }

    async fn prune(&self, args: PruneArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let catalog = self.catalog(&plan)?;
        let mut request = RunRequest::new(RunKind::Prune);
        request.dry_run = args.dry_run;
        request.only_steps = args.steps;
        request.history = catalog.list()?.0;
        Ok(self.execute(&plan, &host, request).await?.1)
    }

    async fn plan_check(&self, path: &Path) -> anyhow::Result<i32> {
        let (plan, host) = self.load(path)?;
        let results = self
            .runner(&plan, &host)
            .check(&RunRequest::new(RunKind::Backup))
            .await?;
        let failures: Vec<_> = results
            .iter()
            .filter_map(|c| c.result.as_ref().err())
            .collect();
        if self.global.json {
            let checks: Vec<Value> = results
                .iter()
                .map(|c| match &c.result {
                    Ok(output) => json!({"step": c.step, "ok": true, "summary": output.summary}),
                    Err(error) => json!({"step": c.step, "ok": false, "error": error}),
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"plan": plan.name, "digest": plan.digest, "checks": checks})
                )?
            );
        } else {
            println!("plan `{}` is valid ({} steps)", plan.name, plan.steps.len());
            print!("{}", output::check_report(&results));
        }
        Ok(if failures.is_empty() {
            exit::SUCCEEDED
        } else if failures.iter().all(|e| e.kind == ErrorKind::Config) {
            exit::CONFIG
        } else {
            exit::FAILED
        })
    }

    async fn plan_permissions(&self, path: &Path) -> anyhow::Result<i32> {
        let (plan, host) = self.load(path)?;
        let answers = self
            .runner(&plan, &host)
            .permissions(&RunRequest::new(RunKind::Backup))
            .await?;
        let mut statements: Vec<Value> = Vec::new();
        for answer in answers {
            let output = answer
                .result
                .map_err(|e| anyhow!("step `{}`: {e}", answer.step))?;
            let permissions: backplan_plugin_sdk::Permissions =
                serde_json::from_value(output.record).unwrap_or_default();
            for statement in permissions.aws_iam_statements {
                if !statements.contains(&statement) {
                    statements.push(statement);
                }
            }
        }
        let policy = json!({"Version": "2012-10-17", "Statement": statements});
        println!("{}", serde_json::to_string_pretty(&policy)?);
        Ok(exit::SUCCEEDED)
    }

    fn plan_show(&self, path: &Path) -> anyhow::Result<i32> {
        let (plan, host) = self.load(path)?;
        let backup_levels = levels(&plan, false);
        let restore_levels = levels(&plan, true);
        if self.global.json {
            let steps: Vec<Value> = plan
                .steps
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id,
                        "plugin": s.plugin,
                        "after": s.after,
                        "level": backup_levels[s.id.as_str()],
                        "restore_after": s.restore_after,
                        "restore_level": restore_levels[s.id.as_str()],
                        "config": s.config,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"plan": plan.name, "digest": plan.digest, "concurrency": plan.concurrency, "steps": steps})
                )?
            );
            return Ok(exit::SUCCEEDED);
        }
        println!(
            "plan `{}`: {} steps, up to {} at once",
            plan.name,
            plan.steps.len(),
            plan.concurrency
        );
        let same_order = plan.steps.iter().all(|s| s.after == s.restore_after);
        let orders: &[(bool, &str)] = if same_order {
            &[(false, "backup, verify, prune and restore")]
        } else {
            &[(false, "backup, verify and prune"), (true, "restore")]
        };
        for &(restoring, title) in orders {
            println!("{title}:");
            let level = if restoring {
                &restore_levels
            } else {
                &backup_levels
            };
            let depth = level.values().max().copied().unwrap_or(0);
            for d in 0..=depth {
                println!("  stage {}:", d + 1);
                for step in plan
                    .steps_for(restoring)
                    .into_iter()
                    .filter(|s| level[s.id.as_str()] == d)
                {
                    let origin = host
                        .get(&step.plugin)
                        .map(|p| p.origin.to_string())
                        .unwrap_or_default();
                    let deps = step.deps(restoring);
                    let after = if deps.is_empty() {
                        String::new()
                    } else {
                        format!("  after {}", deps.join(", "))
                    };
                    println!("    {:<20} {} ({origin}){after}", step.id, step.plugin);
                }
            }
        }
        Ok(exit::SUCCEEDED)
    }

    fn runs_list(&self, path: &Path) -> anyhow::Result<i32> {
        let plan = Plan::load(path)?;
        let catalog = self.catalog(&plan)?;
        let (records, problems) = catalog.list()?;
        for problem in &problems {
            tracing::warn!("{problem}");
        }
        if self.global.json {
            let runs: Vec<Value> = records
                .iter()
                .map(|r| {
                    json!({
                        "run_id": r.run_id, "kind": r.kind, "status": r.status,
                        "started_at": r.started_at, "finished_at": r.finished_at,
                        "dry_run": r.dry_run, "verified": r.verified.is_some(),
                        "source_run": r.source_run,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&runs)?);
            return Ok(exit::SUCCEEDED);
        }
        if records.is_empty() {
            println!(
                "no runs recorded for plan `{}` in {}",
                plan.name,
                catalog.root().display()
            );
        }
        for r in &records {
            let ok = r
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Succeeded)
                .count();
            let bytes: u64 = r.steps.iter().map(|s| s.bytes).sum();
            println!(
                "{:<26} {:<8} {:<16} {ok}/{} steps  {bytes:>12} B{}{}",
                r.run_id,
                format!("{:?}", r.kind).to_lowercase(),
                format!("{:?}", r.status),
                r.steps.len(),
                if r.verified.is_some() {
                    "  verified"
                } else {
                    ""
                },
                if r.dry_run { "  dry-run" } else { "" },
            );
        }
        Ok(exit::SUCCEEDED)
    }

    fn runs_show(&self, path: &Path, run: &str) -> anyhow::Result<i32> {
        let plan = Plan::load(path)?;
        let catalog = self.catalog(&plan)?;
        let record = if run == "latest" {
            catalog
                .list()?
                .0
                .pop()
                .ok_or_else(|| anyhow!("no runs recorded yet"))?
        } else {
            catalog.load(run)?
        };
        if self.global.json {
            println!("{}", serde_json::to_string_pretty(&record)?);
        } else {
            let path = catalog
                .root()
                .join("runs")
                .join(format!("{}.json", record.run_id));
            print!("{}", output::run_report(&record, &path));
        }
        Ok(exit::SUCCEEDED)
    }

    fn plugins_list(&self, plan: Option<&Path>) -> anyhow::Result<i32> {
        let plan = plan.map(Plan::load).transpose()?;
        let host = self.host(plan.as_ref())?;
        if self.global.json {
            let list: Vec<Value> = host
                .iter()
                .map(|p| json!({"name": p.description.name, "version": p.description.version, "origin": p.origin.to_string(), "actions": p.description.actions, "summary": p.description.summary}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            for p in host.iter() {
                println!(
                    "{:<14} {:<8} {:<10} {}",
                    p.description.name, p.description.version, p.origin, p.description.summary
                );
            }
        }
        Ok(exit::SUCCEEDED)
    }

    fn plugins_info(&self, name: &str, plan: Option<&Path>) -> anyhow::Result<i32> {
        let plan = plan.map(Plan::load).transpose()?;
        let host = self.host(plan.as_ref())?;
        let plugin = host
            .get(name)
            .ok_or_else(|| anyhow!("no plugin `{name}` (see `backplan plugins list`)"))?;
        let d = &plugin.description;
        if self.global.json {
            println!("{}", serde_json::to_string_pretty(d)?);
        } else {
            let actions: Vec<&str> = d.actions.iter().map(|a| a.as_str()).collect();
            println!(
                "{} {} ({})\n{}\nactions: {}\n",
                d.name,
                d.version,
                plugin.origin,
                d.summary,
                actions.join(", ")
            );
            if !d.docs.is_empty() {
                println!("{}\n", d.docs.trim_end());
            }
            println!(
                "config schema:\n{}",
                serde_json::to_string_pretty(&d.config_schema)?
            );
        }
        Ok(exit::SUCCEEDED)
    }
}

/// Outputs of the steps *not* selected, from the latest restore of the same backup, so that
/// e.g. the new host's addresses found by the launch step reach the steps run on the new host.
fn earlier_restore_outputs(
    catalog: &Catalog,
    source: &str,
    selected: &[String],
) -> anyhow::Result<BTreeMap<String, backplan_plugin_sdk::Outputs>> {
    let mut outputs = BTreeMap::new();
    for run in catalog.list()?.0 {
        if run.kind != RunKind::Restore || run.source_run.as_deref() != Some(source) || run.dry_run
        {
            continue;
        }
        for step in run.steps {
            if step.status == StepStatus::Succeeded && !selected.contains(&step.id) {
                outputs.insert(step.id, step.outputs);
            }
        }
    }
    Ok(outputs)
}
