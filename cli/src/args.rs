//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

/// One `-o KEY=VALUE`: a VALUE that parses as JSON is taken as JSON (`delete=true` is a bool),
/// anything else as a string. A missing `=` or an empty KEY is a usage error.
fn key_value(pair: &str) -> Result<(String, Value), String> {
    let (key, value) = pair
        .split_once('=')
        .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
    if key.trim().is_empty() {
        return Err(format!("{pair:?} has no KEY before the `=`"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
    Ok((key.to_owned(), value))
}

/// Plugin-based backups for self-hosted CircleCI Server: AMIs, artifact trees, buckets.
#[derive(Debug, Parser)]
#[command(name = "backplan", version, about, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Print machine-readable JSON on stdout instead of a report.
    #[arg(long, global = true)]
    pub json: bool,
    /// Where local state and the default catalog live [default: $XDG_STATE_HOME/backplan]
    #[arg(long, global = true, env = "BACKPLAN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Load every plugin library in this folder too (repeatable).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors in the log.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Never draw progress bars, even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// After every run, write the plan's metrics here (for node_exporter's textfile collector;
    /// overrides the plan's `metrics_file`).
    #[arg(
        long,
        global = true,
        env = "BACKPLAN_METRICS_FILE",
        value_name = "FILE"
    )]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Back up: check every step, then run the plan's graph.
    Run(RunArgs),
    /// Verify a recorded backup is intact (default: the latest).
    Verify(SourceArgs),
    /// Restore a recorded backup, in the plan's order.
    Restore(RestoreArgs),
    /// Apply retention: remove what the plan no longer keeps.
    Prune(PruneArgs),
    /// Restore drill: restore some steps (e.g. launch from the AMI), wait until the result
    /// answers a health check (a TCP port, or an HTTP(S) URL with an expected status), record
    /// the time to recovery, tear it down, and mark the backup verified.
    Drill(DrillArgs),
    /// Look at a plan without running it.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// The runs recorded in a plan's catalog.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// The catalog itself.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Run a plan unattended: write systemd service and timer units (catch-up after downtime,
    /// randomized start, the journal for logs), or print a cron line.
    Schedule(ScheduleArgs),
    /// For monitors: is every step's latest backup fresh and verified? Exits 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN (the monitoring-plugin convention) and prints one line a pager can
    /// show, then each step.
    Status(StatusArgs),
    /// The keys that open a step's encrypted backups (an nfs-objects repository with
    /// `encryption`): list them, add one, remove one. Adding or removing a key rewraps the
    /// repository's master key and never touches backed-up data.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The plugins available.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub(crate) struct PlanArg {
    /// The plan file (TOML).
    #[arg(env = "BACKPLAN_PLAN", value_name = "PLAN")]
    pub plan: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// Run only these steps (repeatable).
    #[arg(long = "step", value_name = "ID")]
    pub steps: Vec<String>,
    /// Ask every plugin to show what it would do, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Plugin options as KEY=VALUE (repeatable); VALUE may be JSON.
    #[arg(long = "option", short = 'o', value_name = "KEY=VALUE", value_parser = key_value)]
    pub options: Vec<(String, Value)>,
}

#[derive(Debug, Args)]
pub(crate) struct SourceArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// The backup run to act on, or `latest` (the newest backup that ran to its end with at
    /// least one step done).
    #[arg(long = "run", value_name = "ID", default_value = "latest")]
    pub run: String,
    /// Only these steps (repeatable).
    #[arg(long = "step", value_name = "ID")]
    pub steps: Vec<String>,
    /// Plugin options as KEY=VALUE (repeatable); VALUE may be JSON.
    #[arg(long = "option", short = 'o', value_name = "KEY=VALUE", value_parser = key_value)]
    pub options: Vec<(String, Value)>,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// The backup run to restore, or `latest`.
    #[arg(long = "run", value_name = "ID")]
    pub run: String,
    /// Only these steps (repeatable): e.g. the launch from an admin machine, the rest on the
    /// new host.
    #[arg(long = "step", value_name = "ID")]
    pub steps: Vec<String>,
    /// Print every change that would be made, make none.
    #[arg(long)]
    pub dry_run: bool,
    /// Override safety refusals (e.g. overwrite newer files).
    #[arg(long)]
    pub force: bool,
    /// Plugin options as KEY=VALUE (repeatable), e.g. `-o target=/tmp/drill`.
    #[arg(long = "option", short = 'o', value_name = "KEY=VALUE", value_parser = key_value)]
    pub options: Vec<(String, Value)>,
}

#[derive(Debug, Args)]
pub(crate) struct DrillArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// The backup run to drill, or `latest`.
    #[arg(long = "run", value_name = "ID", default_value = "latest")]
    pub run: String,
    /// The steps to restore (repeatable), typically the launch from the AMI.
    #[arg(long = "step", value_name = "ID", required = true)]
    pub steps: Vec<String>,
    /// What must answer once the steps are restored: `HOST:PORT` must accept a TCP connection,
    /// an `http://` or `https://` URL must answer a GET with `--health-status` (redirects are
    /// not followed). May use references, e.g. `${steps.machine.outputs.private_ip}:8800` (the
    /// Management Console) or `https://${steps.machine.outputs.private_ip}/`.
    #[arg(long, value_name = "HOST:PORT|URL")]
    pub health: String,
    /// For a URL: the status it must answer, one code (`200`) or a range (`200-399`)
    /// [default: any 2xx]
    #[arg(long, value_name = "CODE|LOW-HIGH")]
    pub health_status: Option<String>,
    /// For an https URL: accept any certificate (a restored machine's is often self-signed);
    /// the drill's record says so. Without it the certificate is verified.
    #[arg(long)]
    pub health_insecure: bool,
    /// How long to wait for the health check.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = humantime::parse_duration)]
    pub health_timeout: std::time::Duration,
    /// Time between health-check attempts [default: 2s] (for tests).
    #[arg(long, value_name = "DURATION", hide = true, value_parser = humantime::parse_duration)]
    pub health_interval: Option<std::time::Duration>,
    /// Plugin options as KEY=VALUE (repeatable), e.g. `-o subnet_id=subnet-0abc`.
    #[arg(long = "option", short = 'o', value_name = "KEY=VALUE", value_parser = key_value)]
    pub options: Vec<(String, Value)>,
    /// Say what would be launched, launch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Let the drill launch into the backed-up machine's own subnet (refused otherwise, unless
    /// `-o subnet_id=…` names another).
    #[arg(long)]
    pub allow_production_subnet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// When to back up, in systemd's calendar syntax: `daily`, `hourly`, `"*-*-* 03:00"`.
    #[arg(long, value_name = "CALENDAR", default_value = "daily")]
    pub every: String,
    /// Write no backup job, only the others (--prune, --status, --drill): for a machine that
    /// prunes or drills with its own credentials while the backed-up machine only backs up.
    #[arg(long)]
    pub no_backup: bool,
    /// Also apply retention on this calendar.
    #[arg(long, value_name = "CALENDAR")]
    pub prune: Option<String>,
    /// The environment file of the prune job, if its credentials (the `--role prune` policy)
    /// differ from the backup job's.
    #[arg(long, value_name = "FILE", requires = "prune")]
    pub prune_environment_file: Option<PathBuf>,
    /// Also check freshness on this calendar (`status --notify`: `stale` notifications).
    #[arg(long, value_name = "CALENDAR")]
    pub status: Option<String>,
    /// Also run a restore drill on this calendar (needs --drill-step and --drill-health).
    #[arg(long, value_name = "CALENDAR", requires_all = ["drill_step", "drill_health"])]
    pub drill: Option<String>,
    /// The steps the scheduled drill restores (repeatable).
    #[arg(long, value_name = "ID")]
    pub drill_step: Vec<String>,
    /// What must answer for the scheduled drill to pass (`HOST:PORT`, may use references).
    #[arg(long, value_name = "HOST:PORT")]
    pub drill_health: Option<String>,
    /// The environment file of the drill job, if its credentials (the `--role restore` policy)
    /// differ from the backup job's.
    #[arg(long, value_name = "FILE", requires = "drill")]
    pub drill_environment_file: Option<PathBuf>,
    /// Where to write the units.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// The environment file the units read (credentials, AWS_*); it may be absent.
    #[arg(long, value_name = "FILE")]
    pub environment_file: Option<PathBuf>,
    /// Print the units instead of writing them.
    #[arg(long)]
    pub print: bool,
    /// Print crontab lines instead (for machines without systemd).
    #[arg(long, conflicts_with = "print")]
    pub cron: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// CRITICAL when a step's newest successful backup is older than this.
    #[arg(long, value_name = "DURATION", default_value = "26h", value_parser = humantime::parse_duration)]
    pub max_age: std::time::Duration,
    /// WARNING when a step's newest verified backup is older than this (`0` to not check).
    #[arg(long, value_name = "DURATION", default_value = "8d", value_parser = humantime::parse_duration)]
    pub verified_within: std::time::Duration,
    /// When a step has no fresh backup (CRITICAL), tell the plan's `[[notify]]` entries that
    /// want `stale` (run it from a timer: `backplan schedule --status hourly`).
    #[arg(long)]
    pub notify: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only these steps (repeatable).
    #[arg(long = "step", value_name = "ID")]
    pub steps: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PlanCommand {
    /// Validate the plan and run every step's check (a dry run that touches nothing).
    Check(PlanArg),
    /// Show the plan's steps as a graph.
    Show(PlanArg),
    /// Print the minimal AWS IAM policy the plan's steps need: with --role, only what that role
    /// needs (backup, prune or restore), so the machine that backs up cannot delete backups.
    Permissions(PermissionsArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PermissionsArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// Only what this role needs: `backup` (check, run, verify, status, metrics: never deletes a
    /// backup), `prune` (retention) or `restore` (restore, drill, catalog rebuild). Without it,
    /// one policy for everything.
    #[arg(long, value_enum, value_name = "ROLE")]
    pub role: Option<RoleArg>,
}

/// The roles `plan permissions --role` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RoleArg {
    Backup,
    Prune,
    Restore,
}

impl From<RoleArg> for backplan_plugin_sdk::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Backup => backplan_plugin_sdk::Role::Backup,
            RoleArg::Prune => backplan_plugin_sdk::Role::Prune,
            RoleArg::Restore => backplan_plugin_sdk::Role::Restore,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum CatalogCommand {
    /// Recreate lost run records from what the backups left (AMI tags, repository snapshots),
    /// through each plugin's `discover`. Existing records are kept; only missing ones are added.
    Rebuild {
        #[command(flatten)]
        plan: PlanArg,
        /// Show what would be recreated, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct KeyStepArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// The step whose keys these are.
    #[arg(long = "step", value_name = "ID")]
    pub step: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Every key that opens the step's backups (ids, kinds, where each came from; never the
    /// secret).
    List(KeyStepArgs),
    /// Open the step's backups with the key its configuration names, and make them openable by
    /// one more key.
    Add {
        #[command(flatten)]
        step: KeyStepArgs,
        #[command(flatten)]
        source: NewKeySource,
    },
    /// Remove a key (by the id `keys list` shows). The last key, and the one the step's
    /// configuration uses, cannot be removed. A copy of the old key file made before still
    /// opens the data: rotate the data too if that key leaked.
    Remove {
        #[command(flatten)]
        step: KeyStepArgs,
        /// The key's id.
        id: String,
    },
}

/// Where a new key comes from: exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct NewKeySource {
    /// A passphrase read from this file (its first line).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// A passphrase read from this environment variable.
    #[arg(long, value_name = "NAME")]
    pub passphrase_env: Option<String>,
    /// An AWS KMS key (id, ARN or alias).
    #[arg(long, value_name = "KEY")]
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// Every recorded run, oldest first.
    List(PlanArg),
    /// One run's record.
    Show {
        #[command(flatten)]
        plan: PlanArg,
        /// The run id, or `latest` (the newest run of any kind).
        run: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PluginsCommand {
    /// Every plugin: built-ins, and those a plan loads.
    List {
        /// Also load the plugins this plan names.
        #[arg(long)]
        plan: Option<PathBuf>,
    },
    /// A plugin's documentation and config schema.
    Info {
        /// The plugin's name.
        name: String,
        /// Also load the plugins this plan names.
        #[arg(long)]
        plan: Option<PathBuf>,
    },
}
