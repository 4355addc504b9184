//! One function per command. Each returns the process exit code.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use backplan_catalog_s3::S3Store;
use backplan_core::catalog::{Catalog, CatalogError};
use backplan_core::exit;
use backplan_core::health;
use backplan_core::host::{HostError, PluginHost};
use backplan_core::notify;
use backplan_core::plan::{CatalogLocation, Order, Plan, PlanError, Step, When};
use backplan_core::record::{RunKind, RunRecord, StepStatus};
use backplan_core::runner::{DrillSpec, Observer, RunError, RunRequest, Runner};
use backplan_core::state;
use backplan_plugin_sdk::{ErrorKind, KeyOperation, KeySource, Keys, Role};
use clap::CommandFactory;
use indicatif::MultiProgress;
use serde_json::{Value, json};

use crate::args::{
    CatalogCommand, Cli, Command, DrillArgs, Global, KeyStepArgs, KeysCommand, NewKeySource,
    PermissionsArgs, PlanCommand, PluginsCommand, PruneArgs, RestoreArgs, RunArgs, RunsCommand,
    ScheduleArgs, SourceArgs, StatusArgs,
};
use crate::metrics;
use crate::notifier;
use crate::output;
use crate::schedule;
use crate::signals::Stop;
use crate::stdout::{out, outln};

/// A `keys` operation the step's plugin refused or failed.
#[derive(Debug)]
struct KeysFailed(backplan_core::record::StepError);

impl std::fmt::Display for KeysFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for KeysFailed {}

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
    stop: Stop,
}

pub(crate) async fn dispatch(cli: Cli) -> i32 {
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
        stop: Stop::on_signals(),
    };
    let json = session.global.json;
    let result = match cli.command {
        Command::Run(args) => session.run(args).await,
        Command::Verify(args) => session.verify(args).await,
        Command::Restore(args) => session.restore(args).await,
        Command::Prune(args) => session.prune(args).await,
        Command::Drill(args) => session.drill(args).await,
        Command::Plan(PlanCommand::Check(args)) => session.plan_check(&args.plan).await,
        Command::Plan(PlanCommand::Show(args)) => session.plan_show(&args.plan),
        Command::Plan(PlanCommand::Permissions(args)) => session.plan_permissions(&args).await,
        Command::Runs(RunsCommand::List(args)) => session.runs_list(&args.plan),
        Command::Status(args) => Ok(session.status(&args).await),
        Command::Catalog(CatalogCommand::Rebuild { plan, dry_run }) => {
            session.catalog_rebuild(&plan.plan, dry_run).await
        }
        Command::Schedule(args) => session.schedule(&args),
        Command::Runs(RunsCommand::Show { plan, run }) => session.runs_show(&plan.plan, &run),
        Command::Keys(KeysCommand::List(step)) => session.keys(&step, KeyOperation::List).await,
        Command::Keys(KeysCommand::Add { step, source }) => {
            session
                .keys(
                    &step,
                    KeyOperation::Add {
                        source: key_source(source),
                    },
                )
                .await
        }
        Command::Keys(KeysCommand::Remove { step, id }) => {
            session.keys(&step, KeyOperation::Remove { id }).await
        }
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
        let _ = writeln!(std::io::stderr(), "error: {error:#}");
        if json {
            let report = json!({"error": format!("{error:#}"), "exit_code": code});
            outln!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        }
        code
    })
}

/// The SDK's name for the key source given on the command line (clap makes it exactly one).
fn key_source(given: NewKeySource) -> KeySource {
    match given {
        NewKeySource {
            passphrase_file: Some(path),
            ..
        } => KeySource::PassphraseFile(path.to_string_lossy().into_owned()),
        NewKeySource {
            passphrase_env: Some(name),
            ..
        } => KeySource::PassphraseEnv(name),
        NewKeySource {
            kms_key_id: Some(key),
            ..
        } => KeySource::KmsKeyId(key),
        NewKeySource { .. } => unreachable!("clap requires exactly one key source"),
    }
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
        if let Some(KeysFailed(error)) = cause.downcast_ref::<KeysFailed>() {
            return match error.kind {
                ErrorKind::Config => exit::CONFIG,
                _ => exit::FAILED,
            };
        }
    }
    exit::FAILED
}

/// Each step's stage: one below the deepest step it runs after (in backup or restore order).
fn levels(plan: &Plan, order: Order) -> BTreeMap<&str, usize> {
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    for step in plan.steps_in(order) {
        let depth = step
            .deps(order)
            .iter()
            .filter_map(|a| level.get(a.as_str()))
            .max()
            .map_or(0, |d| d + 1);
        level.insert(&step.id, depth);
    }
    level
}

/// The `-o KEY=VALUE` options as one JSON object handed to every step (`null` when none).
fn options(pairs: &[(String, Value)]) -> Value {
    if pairs.is_empty() {
        return Value::Null;
    }
    Value::Object(pairs.iter().cloned().collect())
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

    /// The plan's catalog, to run in (an S3 one must prove it enforces conditional writes).
    fn catalog(&self, plan: &Plan) -> anyhow::Result<Catalog> {
        self.open_catalog(plan, true)
    }

    /// The plan's catalog, only to read (`runs`, `status`: a read-only role suffices).
    fn catalog_to_read(&self, plan: &Plan) -> anyhow::Result<Catalog> {
        self.open_catalog(plan, false)
    }

    fn open_catalog(&self, plan: &Plan, to_write: bool) -> anyhow::Result<Catalog> {
        match state::catalog_location(plan, &self.state_root) {
            CatalogLocation::Local(dir) => Ok(Catalog::open(&dir, &plan.name)?),
            CatalogLocation::S3 { bucket, prefix } => {
                let store = if to_write {
                    S3Store::open(&bucket, &prefix, &plan.name)
                } else {
                    S3Store::open_to_read(&bucket, &prefix, &plan.name)
                }
                .map_err(|e| plan.catalog_problem(e.0))?;
                Ok(Catalog::new(&plan.name, Arc::new(store)))
            }
        }
    }

    fn runner<'a>(&self, plan: &'a Plan, host: &'a PluginHost) -> Runner<'a> {
        Runner::new(plan, host, self.state_root.clone())
            .observer(self.observer.clone())
            .cancel_token(self.stop.token())
            .notifier(Arc::new(notifier::Deliveries::new()))
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
        let path = catalog.location(Some(&record.run_id));
        if self.global.json {
            outln!("{}", serde_json::to_string_pretty(&record)?);
        } else {
            out!("{}", output::run_report(&record, &path));
        }
        self.write_metrics(plan, &catalog);
        let code = self.stop.exit_code(&record);
        Ok((record, code))
    }

    /// Writes the plan's metrics file, if one is asked for; a failure is a warning, never the
    /// run's failure.
    fn write_metrics(&self, plan: &Plan, catalog: &Catalog) {
        let Some(path) = self
            .global
            .metrics_file
            .as_ref()
            .or(plan.metrics_file.as_ref())
        else {
            return;
        };
        let written = catalog
            .list_now()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|(records, _)| metrics::write(path, &health::health(plan, &records)));
        if let Err(error) = written {
            tracing::warn!(
                "could not write the metrics file {}: {error}",
                path.display()
            );
        }
    }

    async fn run(&self, args: RunArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let mut request = RunRequest::new(RunKind::Backup);
        request.dry_run = args.dry_run;
        request.only_steps = args.steps;
        request.options = options(&args.options);
        request.history = self.catalog_to_read(&plan)?.list()?.0;
        Ok(self.execute(&plan, &host, request).await?.1)
    }

    async fn verify(&self, args: SourceArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let catalog = self.catalog(&plan)?;
        let source = catalog.backup(&args.run)?;
        let mut request = RunRequest::new(RunKind::Verify);
        request.only_steps = args.steps;
        request.options = options(&args.options);
        request.source = Some(source);
        Ok(self.execute(&plan, &host, request).await?.1)
    }

    async fn restore(&self, args: RestoreArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let catalog = self.catalog(&plan)?;
        let source = catalog.backup(&args.run)?;
        let mut request = RunRequest::new(RunKind::Restore);
        request.dry_run = args.dry_run;
        request.force = args.force;
        request.options = options(&args.options);
        if !args.steps.is_empty() {
            request.prior_outputs = catalog.earlier_restore_outputs(&source.run_id, &args.steps)?;
        }
        request.only_steps = args.steps;
        request.source = Some(source);
        Ok(self.execute(&plan, &host, request).await?.1)
    }

    async fn drill(&self, args: DrillArgs) -> anyhow::Result<i32> {
        /// The drill's health check from its arguments, or why it could never pass.
        fn drill_spec(args: &DrillArgs) -> Result<DrillSpec, String> {
            let mut spec = DrillSpec::new(&args.health, args.health_timeout)?;
            if let Some(statuses) = &args.health_status {
                spec = spec.expect_status(statuses)?;
            }
            if args.health_insecure {
                spec = spec.accept_any_certificate()?;
            }
            if let Some(interval) = args.health_interval {
                spec = spec.check_every(interval)?;
            }
            Ok(spec)
        }
        // A usage error before anything is loaded or launched.
        let spec = drill_spec(&args).unwrap_or_else(|message| {
            let mut cli = Cli::command();
            cli.build();
            let drill = cli
                .find_subcommand_mut("drill")
                .expect("the drill subcommand");
            drill
                .error(clap::error::ErrorKind::InvalidValue, message)
                .exit()
        });
        let (plan, host) = self.load(&args.plan.plan)?;
        let catalog = self.catalog(&plan)?;
        let source = catalog.backup(&args.run)?;
        let mut request = RunRequest::new(RunKind::Drill);
        request.dry_run = args.dry_run;
        let mut given = args.options.clone();
        if args.allow_production_subnet {
            given.push(("allow_production_subnet".into(), Value::Bool(true)));
        }
        request.options = options(&given);
        request.only_steps = args.steps;
        request.source = Some(source);
        request.drill = Some(spec);
        Ok(self.execute(&plan, &host, request).await?.1)
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
        if matches!(plan.catalog, Some(CatalogLocation::S3 { .. })) {
            // The bucket exists and can be read, and its server enforces conditional writes.
            self.catalog(&plan)?;
        }
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
                    Ok(output) if output.warnings.is_empty() => {
                        json!({"step": c.step, "ok": true, "summary": output.summary})
                    }
                    Ok(output) => json!({
                        "step": c.step, "ok": true, "summary": output.summary,
                        "warnings": output.warnings,
                    }),
                    Err(error) => json!({"step": c.step, "ok": false, "error": error}),
                })
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"plan": plan.name, "digest": plan.digest, "checks": checks})
                )?
            );
        } else {
            outln!("plan `{}` is valid ({} steps)", plan.name, plan.steps.len());
            out!("{}", output::check_report(&results));
        }
        Ok(if failures.is_empty() {
            exit::SUCCEEDED
        } else if failures.iter().all(|e| e.kind == ErrorKind::Config) {
            exit::CONFIG
        } else {
            exit::FAILED
        })
    }

    async fn plan_permissions(&self, args: &PermissionsArgs) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let role = args.role.map(Role::from);
        let answers = self
            .runner(&plan, &host)
            .permissions(&RunRequest::new(RunKind::Backup))
            .await?;
        let catalog = match &plan.catalog {
            Some(CatalogLocation::S3 { bucket, prefix }) => {
                backplan_core::iam::catalog_statements(bucket, prefix, &plan.name)
            }
            _ => Vec::new(),
        };
        let merged =
            backplan_core::iam::merged_policy(role, catalog, answers).map_err(|e| anyhow!(e))?;
        for (step, actions) in &merged.unsplit {
            tracing::warn!(
                "step `{step}`: its plugin does not say which role needs which permission (it \
                 was built with an SDK older than roles), so the {} role gets all of them, \
                 {} included: update the plugin",
                role.map_or("", Role::as_str),
                actions.join(", ")
            );
        }
        if role.is_none() && !self.global.json {
            tracing::info!(
                "this policy allows everything, deleting backups included: give the machine \
                 that backs up `--role backup` (it cannot delete), and `--role prune` and \
                 `--role restore` to the credentials that prune and restore"
            );
        }
        outln!("{}", serde_json::to_string_pretty(&merged.policy)?);
        Ok(exit::SUCCEEDED)
    }

    async fn keys(&self, args: &KeyStepArgs, operation: KeyOperation) -> anyhow::Result<i32> {
        let (plan, host) = self.load(&args.plan.plan)?;
        let answer = self
            .runner(&plan, &host)
            .keys(&args.step, &operation)
            .await?;
        let output = match answer.result {
            Ok(output) => output,
            Err(error) => {
                anyhow::bail!(KeysFailed(error));
            }
        };
        let keys: Keys = serde_json::from_value(output.record.clone())
            .map_err(|e| anyhow!("the plugin's keys answer is unreadable: {e}"))?;
        if self.global.json {
            outln!("{}", serde_json::to_string_pretty(&keys)?);
            return Ok(exit::SUCCEEDED);
        }
        if !output.summary.is_empty() {
            outln!("{}", output.summary);
        }
        for key in &keys.keys {
            let used = if key.in_use { "  (in use)" } else { "" };
            outln!(
                "  {:<18} {:<10} {:<25} {}{used}",
                key.id,
                key.kind,
                key.created_at,
                key.source
            );
        }
        for warning in &output.warnings {
            outln!("warning: {warning}");
        }
        Ok(exit::SUCCEEDED)
    }

    fn plan_show(&self, path: &Path) -> anyhow::Result<i32> {
        let (plan, host) = self.load(path)?;
        let backup_levels = levels(&plan, Order::Backup);
        let restore_levels = levels(&plan, Order::Restore);
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
                        "when": s.when.as_str(),
                        "config": s.config,
                    })
                })
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"plan": plan.name, "digest": plan.digest, "concurrency": plan.concurrency, "steps": steps})
                )?
            );
            return Ok(exit::SUCCEEDED);
        }
        outln!(
            "plan `{}`: {} steps, up to {} at once",
            plan.name,
            plan.steps.len(),
            plan.concurrency
        );
        let same_order = plan.steps.iter().all(|s| s.after == s.restore_after);
        let orders: &[(Order, &str)] = if same_order {
            &[(Order::Backup, "backup, verify, prune and restore")]
        } else {
            &[
                (Order::Backup, "backup, verify and prune"),
                (Order::Restore, "restore"),
            ]
        };
        for &(order, title) in orders {
            outln!("{title}:");
            let level = match order {
                Order::Backup => &backup_levels,
                Order::Restore => &restore_levels,
            };
            let mut stages: BTreeMap<usize, Vec<&Step>> = BTreeMap::new();
            for step in plan.steps_in(order) {
                stages
                    .entry(level[step.id.as_str()])
                    .or_default()
                    .push(step);
            }
            for (d, stage) in stages {
                outln!("  stage {}:", d + 1);
                for step in stage {
                    let origin = host
                        .get(&step.plugin)
                        .map(|p| p.origin.to_string())
                        .unwrap_or_default();
                    let deps = step.deps(order);
                    let after = if deps.is_empty() {
                        String::new()
                    } else {
                        format!("  after {}", deps.join(", "))
                    };
                    let when = match step.when {
                        When::OnSuccess => String::new(),
                        other => format!("  [{}]", other.as_str()),
                    };
                    outln!(
                        "    {:<20} {} ({origin}){after}{when}",
                        step.id,
                        step.plugin
                    );
                }
            }
        }
        Ok(exit::SUCCEEDED)
    }

    async fn catalog_rebuild(&self, path: &Path, dry_run: bool) -> anyhow::Result<i32> {
        let (plan, host) = self.load(path)?;
        let catalog = self.catalog(&plan)?;
        // Under the plan's lock, so no run writes records meanwhile.
        let lock = catalog.lock(&format!("rebuild-{}", backplan_core::record::new_run_id()))?;
        let discovery = self.runner(&plan, &host).discover().await?;
        let rebuilt =
            backplan_core::rebuild::records(&plan, &discovery.found, jiff::Timestamp::now());
        let mut added = Vec::new();
        for record in rebuilt {
            match catalog.load(&record.run_id) {
                Err(CatalogError::NoSuchRun(_)) => {}
                _ => continue, // there already, or unreadable: never replaced
            }
            if !dry_run {
                catalog.save(&record)?;
            }
            added.push(record);
        }
        drop(lock);
        if self.global.json {
            let failed: Vec<Value> = discovery
                .failed
                .iter()
                .map(|(step, error)| json!({"step": step, "error": error}))
                .collect();
            let runs: Vec<Value> = added
                .iter()
                .map(
                    |r| json!({"run_id": r.run_id, "status": r.status, "started_at": r.started_at}),
                )
                .collect();
            outln!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"dry_run": dry_run, "added": runs, "failed": failed})
                )?
            );
        } else {
            for found in &discovery.found {
                let what = if found.can_discover {
                    format!("{} backups found", found.backups.len())
                } else {
                    format!("plugin `{}` has nothing to discover", found.plugin)
                };
                outln!("  {:<20} {what}", found.step);
                for warning in &found.warnings {
                    outln!("         warning: {warning}");
                }
            }
            for (step, error) in &discovery.failed {
                outln!("  FAIL {step:<15} {error}");
            }
            let verb = if dry_run { "would add" } else { "added" };
            outln!(
                "{verb} {} run records to {}",
                added.len(),
                catalog.location(None)
            );
            for record in &added {
                outln!("  {:<26} {:?}", record.run_id, record.status);
            }
        }
        Ok(if discovery.failed.is_empty() {
            exit::SUCCEEDED
        } else {
            exit::PARTIALLY_FAILED
        })
    }

    fn schedule(&self, args: &ScheduleArgs) -> anyhow::Result<i32> {
        let (plan, _host) = self.load(&args.plan.plan)?;
        let plan_path = plan.path.display().to_string();
        let job = |name: &'static str, every: &str, args: Vec<String>, what: &str| {
            let every = schedule::check_calendar(every)?;
            schedule::check_with_systemd(&every)?;
            Ok(schedule::Job {
                name,
                every,
                args,
                description: format!("backplan {what} of plan {}", plan.name),
                environment_file: None,
            })
        };
        let mut jobs = Vec::new();
        if !args.no_backup {
            jobs.push(job(
                "backup",
                &args.every,
                vec!["run".into(), plan_path.clone()],
                "backup",
            ));
        } else if args.prune.is_none() && args.status.is_none() && args.drill.is_none() {
            jobs.push(Err(
                "--no-backup leaves nothing to schedule: add --prune, --status or --drill".into(),
            ));
        }
        if let Some(every) = &args.prune {
            let prune = job(
                "prune",
                every,
                vec!["prune".into(), plan_path.clone()],
                "retention",
            );
            jobs.push(prune.map(|job| schedule::Job {
                environment_file: args.prune_environment_file.clone(),
                ..job
            }));
        }
        if let Some(every) = &args.status {
            let check = vec!["status".into(), plan_path.clone(), "--notify".into()];
            jobs.push(job("status", every, check, "freshness check"));
        }
        if let Some(every) = &args.drill {
            let mut drill = vec!["drill".into(), plan_path.clone()];
            for step in &args.drill_step {
                drill.extend(["--step".into(), step.clone()]);
            }
            let health = args.drill_health.clone().unwrap_or_default();
            // Refused now, not at 5 a.m.: a health check that could never pass.
            let checked = DrillSpec::new(&health, std::time::Duration::from_secs(900)).map(drop);
            drill.extend(["--health".into(), health]);
            let drill = checked.and_then(|()| job("drill", every, drill, "restore drill"));
            jobs.push(drill.map(|job| schedule::Job {
                environment_file: args.drill_environment_file.clone(),
                ..job
            }));
        }
        let jobs = match jobs.into_iter().collect::<Result<Vec<_>, String>>() {
            Ok(jobs) => jobs,
            Err(message) => {
                let _ = writeln!(std::io::stderr(), "error: {message}");
                return Ok(exit::USAGE);
            }
        };
        let mut state_args = Vec::new();
        if let Some(dir) = &self.global.state_dir {
            state_args = vec![
                "--state-dir".to_owned(),
                std::path::absolute(dir)?.display().to_string(),
            ];
        }
        let units = schedule::Units {
            plan: plan.name.clone(),
            binary: std::env::current_exe().context("finding the backplan binary")?,
            environment_file: args
                .environment_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("/etc/backplan/{}.env", plan.name))),
            jobs: jobs
                .into_iter()
                .map(|mut job| {
                    job.args.splice(0..0, state_args.iter().cloned());
                    job
                })
                .collect(),
        };
        if args.cron {
            out!("{}", units.cron().map_err(|e| anyhow!(e))?);
            return Ok(exit::SUCCEEDED);
        }
        let files = units.files();
        if args.print {
            for (name, text) in &files {
                outln!("# {name}\n{text}");
            }
            return Ok(exit::SUCCEEDED);
        }
        for path in schedule::write(&args.unit_dir, &files)
            .with_context(|| format!("writing the units into {}", args.unit_dir.display()))?
        {
            outln!("wrote {}", path.display());
        }
        let timers: Vec<&str> = files
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| name.ends_with(".timer"))
            .collect();
        outln!(
            "then: systemctl daemon-reload && systemctl enable --now {}",
            timers.join(" ")
        );
        Ok(exit::SUCCEEDED)
    }

    /// `status`: never fails as a command; what goes wrong is UNKNOWN (3), as monitors expect.
    async fn status(&self, args: &StatusArgs) -> i32 {
        let facts = Plan::load(&args.plan.plan)
            .map_err(anyhow::Error::from)
            .and_then(|plan| {
                let records = self.catalog_to_read(&plan)?.list_now()?.0;
                Ok((health::health(&plan, &records), plan))
            });
        let (health, plan) = match facts {
            Ok(health) => health,
            Err(error) => {
                let line = format!("backplan UNKNOWN: {error:#}");
                if self.global.json {
                    outln!("{}", json!({"level": "UNKNOWN", "line": line}));
                } else {
                    outln!("{line}");
                }
                return health::Level::Unknown as i32;
            }
        };
        let limits = health::Limits {
            max_age: args.max_age,
            verified_within: (!args.verified_within.is_zero()).then_some(args.verified_within),
        };
        let now = jiff::Timestamp::now();
        let verdict = health::judge(&health, now, limits);
        if args.notify && verdict.level == health::Level::Critical {
            let message = notify::Message::stale(
                &plan.name,
                verdict.findings.clone(),
                verdict.line(&plan.name),
            );
            let specs = plan.notify.clone();
            let _ = tokio::task::spawn_blocking(move || {
                notify::notify_all(&notifier::Deliveries::new(), &specs, &message)
            })
            .await;
        }
        if self.global.json {
            let report = json!({
                "level": verdict.level,
                "line": verdict.line(&health.plan),
                "findings": verdict.findings,
                "health": health,
            });
            outln!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            outln!("{}", verdict.line(&health.plan));
            out!("{}", output::status_report(&health, now));
        }
        verdict.level as i32
    }

    fn runs_list(&self, path: &Path) -> anyhow::Result<i32> {
        let plan = Plan::load(path)?;
        let catalog = self.catalog_to_read(&plan)?;
        let (records, problems) = catalog.list_now()?;
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
                        "rebuilt": r.rebuilt.is_some(),
                        "source_run": r.source_run,
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&runs)?);
            return Ok(exit::SUCCEEDED);
        }
        if records.is_empty() {
            outln!(
                "no runs recorded for plan `{}` in {}",
                plan.name,
                catalog.location(None)
            );
        }
        for r in &records {
            let ok = r
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Succeeded)
                .count();
            let bytes: u64 = r.steps.iter().map(|s| s.bytes).sum();
            outln!(
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
            if r.rebuilt.is_some() {
                outln!("{:<26} (rebuilt from what the backups left)", "");
            }
        }
        Ok(exit::SUCCEEDED)
    }

    fn runs_show(&self, path: &Path, run: &str) -> anyhow::Result<i32> {
        let plan = Plan::load(path)?;
        let catalog = self.catalog_to_read(&plan)?;
        let record = catalog.run(run)?;
        if self.global.json {
            outln!("{}", serde_json::to_string_pretty(&record)?);
        } else {
            let path = catalog.location(Some(&record.run_id));
            out!("{}", output::run_report(&record, &path));
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
            outln!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            for p in host.iter() {
                outln!(
                    "{:<14} {:<8} {:<10} {}",
                    p.description.name,
                    p.description.version,
                    p.origin,
                    p.description.summary
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
            outln!("{}", serde_json::to_string_pretty(d)?);
        } else {
            let actions: Vec<&str> = d.actions.iter().map(|a| a.as_str()).collect();
            outln!(
                "{} {} ({})\n{}\nactions: {}\n",
                d.name,
                d.version,
                plugin.origin,
                d.summary,
                actions.join(", ")
            );
            if !d.docs.is_empty() {
                outln!("{}\n", d.docs.trim_end());
            }
            outln!(
                "config schema:\n{}",
                serde_json::to_string_pretty(&d.config_schema)?
            );
        }
        Ok(exit::SUCCEEDED)
    }
}
