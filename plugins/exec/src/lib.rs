//! The built-in `exec` plugin: a step that runs a command.
//!
//! It is the escape hatch of a plan: stop or drain the application before a snapshot, start it
//! again after a restore, or run an external datastore's own dump tool. A command is a list
//! (`["systemctl", "stop", "replicated"]`) run directly, never through a shell unless the step sets
//! `shell = true` and gives a string. Each action has its own optional command; an action without
//! one does nothing and says so, which lets a restore-only hook sit in the same graph as the
//! backup steps.
//!
//! The record keeps the command, exit code, duration and a bounded capture of stdout and stderr;
//! stderr lines are also forwarded to the host's log as they arrive. With `outputs = "json"`, a
//! JSON object printed on stdout becomes the step's outputs, for later steps to read.

mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use backplan_plugin_sdk::schemars::{self, JsonSchema};
use backplan_plugin_sdk::{
    Action, Context, Plugin, PluginError, PluginResult, Request, StepOutput, declare_plugin,
};
use serde::{Deserialize, Serialize};

use process::{Finished, Invocation};

/// A command: a list `[program, args...]`, or a string when `shell = true`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum CommandLine {
    /// Program and arguments, run directly; the program may not be empty.
    Args(
        #[schemars(
            length(min = 1, max = 4096),
            extend("prefixItems" = [{"type": "string", "minLength": 1}])
        )]
        Vec<String>,
    ),
    /// A shell command line, run with `sh -c` (requires `shell = true`).
    Shell(#[schemars(length(min = 1))] String),
}

/// What to do with the command's standard output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputsFrom {
    /// Keep it in the record only.
    #[default]
    None,
    /// Parse stdout as a JSON object whose keys become the step's outputs.
    Json,
}

/// The `config` table of an `exec` step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Runs on `backplan run` (backup).
    #[serde(default)]
    pub command: Option<CommandLine>,
    /// Runs on `backplan verify`.
    #[serde(default)]
    pub verify_command: Option<CommandLine>,
    /// Runs on `backplan restore`.
    #[serde(default)]
    pub restore_command: Option<CommandLine>,
    /// Runs on `backplan prune`.
    #[serde(default)]
    pub prune_command: Option<CommandLine>,
    /// Runs on `backplan plan check` and before every run; by default check only confirms that
    /// each configured program can be found.
    #[serde(default)]
    pub check_command: Option<CommandLine>,
    /// Run string commands through `sh -c`. Off by default: lists are run directly.
    #[serde(default)]
    pub shell: bool,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment (plus `env` and the BACKPLAN_* variables).
    #[serde(default)]
    pub clear_env: bool,
    /// Working directory.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub cwd: Option<PathBuf>,
    /// Kill the command after this long, e.g. "90s", "15m" (at most 30 days). The step's own
    /// timeout still applies.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub timeout: Option<String>,
    /// Exit codes that count as success (0 to 255).
    #[serde(default = "default_success_codes")]
    #[schemars(length(min = 1, max = 256), inner(range(min = 0, max = 255)))]
    pub success_codes: Vec<i32>,
    /// Exit codes that mean "try again later" (the runner retries them with backoff).
    #[serde(default)]
    #[schemars(length(max = 256), inner(range(min = 0, max = 255)))]
    pub retry_codes: Vec<i32>,
    /// How many bytes of stdout and of stderr the record keeps (the tail when longer), at most
    /// 16 MiB each: the capture is held in memory and written into the record.
    #[serde(default = "default_capture_bytes")]
    #[schemars(range(max = MAX_CAPTURE_BYTES))]
    pub capture_bytes: usize,
    /// Whether stdout becomes the step's outputs.
    #[serde(default)]
    pub outputs: OutputsFrom,
}

fn default_success_codes() -> Vec<i32> {
    vec![0]
}

/// The most of stdout or stderr a record keeps.
const MAX_CAPTURE_BYTES: usize = 16 << 20;
/// The longest `timeout` (the runner's longest step timeout).
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

fn default_capture_bytes() -> usize {
    64 * 1024
}

impl ExecConfig {
    fn command_for(&self, action: Action) -> Option<&CommandLine> {
        match action {
            Action::Check => self.check_command.as_ref(),
            Action::Backup => self.command.as_ref(),
            Action::Verify => self.verify_command.as_ref(),
            Action::Restore => self.restore_command.as_ref(),
            Action::Prune => self.prune_command.as_ref(),
            _ => None,
        }
    }

    fn timeout(&self) -> PluginResult<Option<Duration>> {
        let Some(text) = self.timeout.as_deref() else {
            return Ok(None);
        };
        match humantime::parse_duration(text) {
            Err(e) => Err(PluginError::config(format!("timeout {text:?}: {e}"))),
            Ok(t) if t.is_zero() => Err(PluginError::config(format!(
                "timeout {text:?}: the command would be killed at once; give more than zero"
            ))),
            Ok(t) if t > MAX_TIMEOUT => Err(PluginError::config(format!(
                "timeout {text:?} is longer than the most allowed, {}",
                humantime::format_duration(MAX_TIMEOUT)
            ))),
            Ok(t) => Ok(Some(t)),
        }
    }

    /// Variable names the environment can hold: not empty, no `=` and no NUL.
    fn check_env(&self) -> PluginResult<()> {
        match self
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            Some(name) => Err(PluginError::config(format!(
                "env has the variable name {name:?}: a name is not empty and has no `=` or NUL"
            ))),
            None => Ok(()),
        }
    }

    /// Turns a configured command into argv, enforcing the shell rule.
    fn argv(&self, command: &CommandLine) -> PluginResult<Vec<String>> {
        match (command, self.shell) {
            (CommandLine::Args(args), false) if args.first().is_none_or(String::is_empty) => Err(
                PluginError::config("the command list is empty or names no program"),
            ),
            (CommandLine::Args(args), false) => Ok(args.clone()),
            (CommandLine::Shell(line), true) => Ok(vec!["sh".into(), "-c".into(), line.clone()]),
            (CommandLine::Shell(line), false) => Err(PluginError::config(format!(
                "the command {line:?} is a string, which would need a shell: give a list \
                 [\"program\", \"arg\", ...] or set shell = true"
            ))),
            (CommandLine::Args(_), true) => Err(PluginError::config(
                "shell = true needs the command as one string",
            )),
        }
    }
}

/// What an `exec` step records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRecord {
    /// The argv that ran.
    pub argv: Vec<String>,
    /// Its exit code (absent when killed by a signal).
    pub exit_code: Option<i32>,
    /// How long it ran.
    pub duration_ms: u64,
    /// The tail of stdout (lossy UTF-8).
    pub stdout: String,
    /// The tail of stderr (lossy UTF-8).
    pub stderr: String,
    /// Whether either capture was cut.
    pub truncated: bool,
}

/// The `exec` plugin.
#[derive(Debug, Default)]
pub struct ExecPlugin;

impl Plugin for ExecPlugin {
    type Config = ExecConfig;
    const NAME: &'static str = "exec";
    const SUMMARY: &'static str =
        "Runs a command as a step: application hooks, external datastores' dump tools.";
    const DOCS: &'static str = include_str!("../README.md");
    const ACTIONS: &'static [Action] = &Action::LIFECYCLE;

    fn check(&self, ctx: &Context, config: &ExecConfig) -> PluginResult<StepOutput> {
        config.timeout()?;
        config.check_env()?;
        let mut checked = Vec::new();
        for action in Action::LIFECYCLE {
            if let Some(command) = config.command_for(action) {
                let argv = config.argv(command)?;
                process::find_program(&argv[0], config.cwd.as_deref())
                    .map_err(|e| PluginError::config(format!("{action} command: {e}")))?;
                if !checked.contains(&argv[0]) {
                    checked.push(argv[0].clone());
                }
            }
        }
        if config.check_command.is_some() && !ctx.request().dry_run {
            return self.run(ctx, config, Action::Check);
        }
        Ok(StepOutput::new(if checked.is_empty() {
            "no command configured".to_owned()
        } else {
            format!("found {}", checked.join(", "))
        }))
    }

    fn backup(&self, ctx: &Context, config: &ExecConfig) -> PluginResult<StepOutput> {
        self.run(ctx, config, Action::Backup)
    }

    fn verify(&self, ctx: &Context, config: &ExecConfig) -> PluginResult<StepOutput> {
        self.run(ctx, config, Action::Verify)
    }

    fn restore(&self, ctx: &Context, config: &ExecConfig) -> PluginResult<StepOutput> {
        self.run(ctx, config, Action::Restore)
    }

    fn prune(&self, ctx: &Context, config: &ExecConfig) -> PluginResult<StepOutput> {
        self.run(ctx, config, Action::Prune)
    }
}

impl ExecPlugin {
    fn run(&self, ctx: &Context, config: &ExecConfig, action: Action) -> PluginResult<StepOutput> {
        let Some(command) = config.command_for(action) else {
            return Ok(StepOutput::new(format!("no {action} command configured")));
        };
        let argv = config.argv(command)?;
        let request = ctx.request();
        if request.dry_run && action != Action::Check {
            // Earlier steps did not really run either, so their outputs may be missing here.
            return Ok(StepOutput::new(format!("would run {}", shell_words(&argv))));
        }
        Request::require_resolved(
            argv.iter()
                .chain(config.env.values())
                .map(String::as_str)
                .chain(config.cwd.iter().filter_map(|c| c.to_str())),
        )?;
        let mut env = config.env.clone();
        env.insert("BACKPLAN_PLAN".into(), request.plan.clone());
        env.insert("BACKPLAN_RUN_ID".into(), request.run_id.clone());
        env.insert("BACKPLAN_STEP_ID".into(), request.step_id.clone());
        env.insert("BACKPLAN_ACTION".into(), action.to_string());
        if let Some(source) = &request.source_run_id {
            env.insert("BACKPLAN_SOURCE_RUN_ID".into(), source.clone());
        }
        if let Some(dir) = &request.state_dir {
            env.insert("BACKPLAN_STATE_DIR".into(), dir.clone());
        }
        let invocation = Invocation {
            argv: &argv,
            env: &env,
            clear_env: config.clear_env,
            cwd: config.cwd.as_deref(),
            timeout: config.timeout()?,
            capture_bytes: config.capture_bytes,
        };
        ctx.info(format!("running {}", shell_words(&argv)));
        let finished = process::run(ctx, &invocation)?;
        self.judge(config, argv, finished)
    }

    /// Turns a finished process into the step's result, by its exit code.
    fn judge(
        &self,
        config: &ExecConfig,
        argv: Vec<String>,
        finished: Finished,
    ) -> PluginResult<StepOutput> {
        let record = ExecRecord {
            argv,
            exit_code: finished.exit_code,
            duration_ms: finished.duration.as_millis() as u64,
            stdout: finished.stdout.text(),
            stderr: finished.stderr.text(),
            truncated: finished.stdout.truncated || finished.stderr.truncated,
        };
        let program = record.argv[0].clone();
        let code = record.exit_code;
        if !code.is_some_and(|c| config.success_codes.contains(&c)) {
            let what = match code {
                Some(c) => format!("`{program}` exited with code {c}"),
                None => format!("`{program}` was killed by a signal"),
            };
            let tail = last_line(&record.stderr);
            let error = if code.is_some_and(|c| config.retry_codes.contains(&c)) {
                PluginError::transient(what)
            } else {
                PluginError::permanent(what)
            };
            return Err(match tail {
                Some(line) => error.with_detail(format!("stderr: {line}")),
                None => error,
            });
        }
        let mut output = StepOutput::new(format!(
            "`{program}` exited with code {} in {:.1}s",
            code.unwrap_or_default(),
            finished.duration.as_secs_f64()
        ))
        .output("exit_code", code)
        .bytes(finished.stdout.total + finished.stderr.total);
        if config.outputs == OutputsFrom::Json {
            let parsed: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(record.stdout.trim()).map_err(|e| {
                    PluginError::permanent(format!(
                        "outputs = \"json\" but stdout is not a JSON object: {e}"
                    ))
                })?;
            output.outputs.extend(parsed);
        }
        Ok(output.record(record))
    }
}

fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_owned)
}

/// Renders argv for humans, quoting words that need it.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

declare_plugin!(ExecPlugin);
