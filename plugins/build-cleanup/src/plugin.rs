//! The plugin: record in-flight builds at backup, delete them after a restore.

use std::io::Write;
use std::process::{Command, Stdio};

use backplan_plugin_sdk::{Action, Context, Plugin, PluginError, PluginResult, StepOutput};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::builds::{self, Build, ListError};

/// The plugin.
#[derive(Debug, Default)]
pub struct BuildCleanup;

/// The step's `config` table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The install's address, e.g. `https://circleci.example.com`: its v1.1 API lists the
    /// builds. Either this or `running_command`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub api_url: Option<String>,
    /// The environment variable holding an API token (never recorded or logged).
    #[serde(default = "default_token_env")]
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub token_env: String,
    /// How many pages of 100 recent builds to look through (1 to 1000).
    #[serde(default = "default_pages")]
    #[schemars(range(min = 1, max = 1000))]
    pub pages: u32,
    /// Instead of the API: a command that prints the running builds' URLs, one per line.
    #[serde(default)]
    #[schemars(
        length(min = 1, max = 4096),
        extend("prefixItems" = [{"type": "string", "minLength": 1}])
    )]
    pub running_command: Option<Vec<String>>,
    /// At restore, feed the delete lines to this command's standard input.
    #[serde(default = "default_console")]
    #[schemars(
        length(min = 1, max = 4096),
        extend("prefixItems" = [{"type": "string", "minLength": 1}])
    )]
    pub console_command: Vec<String>,
    /// At restore, actually delete (also `-o delete=true`); otherwise only print the lines.
    #[serde(default)]
    pub delete: bool,
}

fn default_token_env() -> String {
    "CIRCLE_TOKEN".into()
}

fn default_pages() -> u32 {
    5
}

fn default_console() -> Vec<String> {
    vec!["circleci".into(), "dev-console".into()]
}

/// What a backup records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `api` or `command`.
    pub source: String,
    /// The builds not finished at that moment.
    pub builds: Vec<Build>,
}

/// Restore options (`-o delete=true`); other keys belong to other plugins.
#[derive(Debug, Default, Deserialize)]
struct RestoreOptions {
    delete: Option<bool>,
}

const DOCS: &str = "\
Backup records which builds were unfinished (running, queued, scheduled, not_running) at the \
moment of the backup: from `api_url` (CircleCI v1.1 `recent-builds`, token from `token_env`) or \
from `running_command` (one URL per line). Restore prints one `(admin/delete-build \"URL\")` \
line per build; with `delete = true` (or `-o delete=true`) it feeds them to `console_command` \
(default `circleci dev-console`) and reports the console's answer. Run it last, once the app is \
up on the restored machine.";

impl Plugin for BuildCleanup {
    type Config = Config;
    const NAME: &'static str = "build-cleanup";
    const SUMMARY: &'static str =
        "Builds in flight at backup time, deleted after a restore (admin/delete-build)";
    const DOCS: &'static str = DOCS;
    const ACTIONS: &'static [Action] = &[Action::Backup, Action::Restore];

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        if ctx.request().check_for == Some(Action::Restore) {
            return Ok(StepOutput::new(format!(
                "deletes through `{}` when asked",
                config.console_command.join(" ")
            )));
        }
        match (&config.api_url, &config.running_command) {
            (Some(url), None) => {
                api_address(url)?;
                token(config)?;
                Ok(StepOutput::new(format!("lists running builds from {url}")))
            }
            (None, Some(command)) if !command.is_empty() => Ok(StepOutput::new(format!(
                "lists running builds with `{}`",
                command.join(" ")
            ))),
            _ => Err(PluginError::config(
                "set exactly one of `api_url` (with a token) or `running_command`",
            )),
        }
    }

    fn backup(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let (source, builds) = match (&config.api_url, &config.running_command) {
            (Some(url), None) => {
                let found =
                    builds::from_api(url, &token(config)?, config.pages).map_err(|e| match e {
                        ListError::Refused(m) => PluginError::permanent(m),
                        ListError::Unreachable(m) => PluginError::transient(m),
                    })?;
                ("api", found)
            }
            (None, Some(command)) if !command.is_empty() => {
                ("command", builds::from_lines(&run_for_output(command)?))
            }
            _ => {
                return Err(PluginError::config(
                    "set exactly one of `api_url` (with a token) or `running_command`",
                ));
            }
        };
        for build in &builds {
            ctx.info(format!("in flight: {}", build.url));
        }
        Ok(StepOutput::new(format!(
            "{} build(s) in flight at backup time",
            builds.len()
        ))
        .output("count", builds.len())
        .record(Record {
            source: source.into(),
            builds,
        }))
    }

    fn restore(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let record: Record = ctx.record()?;
        let options: RestoreOptions = match &ctx.request().options {
            serde_json::Value::Null => RestoreOptions::default(),
            given => serde_json::from_value(given.clone())
                .map_err(|e| PluginError::config(format!("restore options: {e}")))?,
        };
        let delete = options.delete.unwrap_or(config.delete);
        let lines = record
            .builds
            .iter()
            .map(builds::delete_line)
            .collect::<Result<Vec<_>, _>>()
            .map_err(PluginError::permanent)?;
        if lines.is_empty() {
            return Ok(StepOutput::new("no build was in flight at backup time")
                .record(serde_json::json!({ "lines": lines, "deleted": false })));
        }
        for line in &lines {
            ctx.info(line);
        }
        if ctx.request().dry_run || !delete {
            let how = if ctx.request().dry_run {
                "dry run"
            } else {
                "set `delete = true` or pass -o delete=true to run them"
            };
            return Ok(StepOutput::new(format!(
                "{} build(s) to delete in `{}` ({how})",
                lines.len(),
                config.console_command.join(" ")
            ))
            .record(serde_json::json!({ "lines": lines, "deleted": false })));
        }
        let answer = feed_console(&config.console_command, &lines)?;
        Ok(StepOutput::new(format!(
            "deleted {} build(s) through `{}`",
            lines.len(),
            config.console_command.join(" ")
        ))
        .record(serde_json::json!({
            "lines": lines,
            "deleted": true,
            "console_output": answer,
        })))
    }
}

backplan_plugin_sdk::declare_plugin!(BuildCleanup);

/// The API's address must be an http(s) URL: anything else would fail only at backup time.
fn api_address(url: &str) -> PluginResult<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(PluginError::config(format!(
            "api_url {url:?} is not an http(s) address such as https://circleci.example.com"
        ))),
    }
}

fn token(config: &Config) -> PluginResult<String> {
    std::env::var(&config.token_env)
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            PluginError::config(format!(
                "the API token is read from ${}, which is not set",
                config.token_env
            ))
        })
}

fn run_for_output(command: &[String]) -> PluginResult<String> {
    let (program, args) = command.split_first().expect("checked non-empty");
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| PluginError::permanent(format!("cannot run `{program}`: {e}")))?;
    if !out.status.success() {
        return Err(PluginError::permanent(format!(
            "`{}` failed ({})",
            command.join(" "),
            out.status
        ))
        .with_detail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the console with the lines on its standard input; returns what it printed.
fn feed_console(command: &[String], lines: &[String]) -> PluginResult<String> {
    let Some((program, args)) = command.split_first() else {
        return Err(PluginError::config("`console_command` is empty"));
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| PluginError::permanent(format!("cannot run `{program}`: {e}")))?;
    let mut input = lines.join("\n");
    input.push('\n');
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| PluginError::permanent(format!("writing to `{program}`: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| PluginError::permanent(format!("waiting for `{program}`: {e}")))?;
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(PluginError::permanent(format!(
            "`{}` failed ({}); some builds may be deleted already, the lines are safe to run again",
            command.join(" "),
            out.status
        ))
        .with_detail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_must_be_an_http_address() {
        for good in ["https://circleci.example.com", "http://127.0.0.1:8080"] {
            assert!(api_address(good).is_ok(), "{good}");
        }
        for bad in [
            "circleci.example.com",
            "https://",
            "ftp://x",
            "https:///path",
            " ",
        ] {
            let error = api_address(bad).unwrap_err();
            assert!(error.message.contains("not an http(s) address"), "{bad}");
        }
    }
}
