//! The plugin: record in-flight builds at backup, delete them after a restore — each only once
//! the API confirms it is still unfinished, so a build that finished since is kept.

use std::io::Write;
use std::process::{Command, Stdio};

use backplan_plugin_sdk::{Action, Context, Plugin, PluginError, PluginResult, StepOutput};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::builds::{self, Build, ListError, Now};

/// The plugin.
#[derive(Debug, Default)]
pub(crate) struct BuildCleanup;

/// The step's `config` table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
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
pub(crate) struct Record {
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

/// A recorded build the restore leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Skipped {
    url: String,
    reason: String,
}

/// The recorded builds sorted by what the API says of them now.
#[derive(Debug, Default)]
struct Recheck {
    /// Still unfinished: to delete.
    stuck: Vec<Build>,
    skipped: Vec<Skipped>,
    /// Why the API was not asked, if it was not.
    unchecked: Option<String>,
}

const DOCS: &str = include_str!("../README.md");

impl Plugin for BuildCleanup {
    type Config = Config;
    const NAME: &'static str = "build-cleanup";
    const SUMMARY: &'static str =
        "Builds in flight at backup time, deleted after a restore (admin/delete-build)";
    const DOCS: &'static str = DOCS;
    const ACTIONS: &'static [Action] = &[Action::Backup, Action::Restore];

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        if ctx.request().check_for == Some(Action::Restore) {
            let console = config.console_command.join(" ");
            return match &config.api_url {
                // Deleting asks the API first: without the token it could not, so say it now,
                // before the restore has launched anything.
                Some(url) if restore_options(ctx)?.delete.unwrap_or(config.delete) => {
                    token(config)?;
                    Ok(StepOutput::new(format!(
                        "deletes through `{console}` the recorded builds {url} still shows unfinished"
                    )))
                }
                _ => Ok(StepOutput::new(format!(
                    "deletes through `{console}` when asked"
                ))),
            };
        }
        let output = match (&config.api_url, &config.running_command) {
            (Some(url), None) => {
                api_address(url)?;
                token(config)?;
                StepOutput::new(format!("lists running builds from {url}"))
            }
            (None, Some(command)) if !command.is_empty() => {
                StepOutput::new(format!("lists running builds with `{}`", command.join(" ")))
            }
            _ => {
                return Err(PluginError::config(
                    "set exactly one of `api_url` (with a token) or `running_command`",
                ));
            }
        };
        Ok(match moment_warning(ctx) {
            Some(warning) => output.warning(warning),
            None => output,
        })
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
        if ctx.request().record.as_ref().is_none_or(|r| r.is_null()) {
            // A catalog rebuilt from the AMI and the repository has no list of the builds.
            return Ok(StepOutput::new(
                "no record of the builds in flight (the catalog was rebuilt): nothing deleted; \
                 look for builds that stay \"running\" in the app and delete them by hand",
            )
            .warning("the builds in flight at backup time are unknown: none were deleted"));
        }
        let record: Record = ctx.record()?;
        let delete = restore_options(ctx)?.delete.unwrap_or(config.delete);
        // A URL that cannot be quoted safely fails the step before anything is asked or run.
        for build in &record.builds {
            builds::delete_line(build).map_err(PluginError::permanent)?;
        }
        if record.builds.is_empty() {
            return Ok(
                StepOutput::new("no build was in flight at backup time").record(
                    serde_json::json!({
                        "lines": Vec::<String>::new(),
                        "deleted": false,
                        "skipped": Vec::<Skipped>::new(),
                        "rechecked": false,
                    }),
                ),
            );
        }
        let recheck = recheck(config, &record.builds, delete)?;
        for skipped in &recheck.skipped {
            ctx.info(format!("not deleting {}: {}", skipped.url, skipped.reason));
        }
        let lines = recheck
            .stuck
            .iter()
            .map(builds::delete_line)
            .collect::<Result<Vec<_>, _>>()
            .map_err(PluginError::permanent)?;
        for line in &lines {
            ctx.info(line);
        }
        let skipped = skipped_text(&recheck.skipped);
        let console = config.console_command.join(" ");
        let record = |deleted: bool, answer: Option<&str>| {
            let mut record = serde_json::json!({
                "lines": lines,
                "deleted": deleted,
                "skipped": recheck.skipped,
                "rechecked": recheck.unchecked.is_none(),
            });
            if let Some(answer) = answer {
                record["console_output"] = answer.into();
            }
            record
        };
        let with_note = |out: StepOutput| {
            match &recheck.unchecked {
            Some(why) => out.warning(format!(
                "not asked whether each build is still unfinished ({why}): one that has finished since the backup would be deleted too"
            )),
            None => out,
        }
        };
        if lines.is_empty() {
            return Ok(
                StepOutput::new(format!("no recorded build is still unfinished{skipped}"))
                    .record(record(false, None)),
            );
        }
        if ctx.request().dry_run || !delete {
            let how = if ctx.request().dry_run {
                "dry run"
            } else {
                "set `delete = true` or pass -o delete=true to run them"
            };
            return Ok(with_note(
                StepOutput::new(format!(
                    "{} build(s) to delete in `{console}` ({how}){skipped}",
                    lines.len()
                ))
                .record(record(false, None)),
            ));
        }
        let answer = feed_console(&config.console_command, &lines)?;
        Ok(with_note(
            StepOutput::new(format!(
                "deleted {} build(s) through `{console}`{skipped}",
                lines.len()
            ))
            .record(record(true, Some(&answer))),
        ))
    }
}

backplan_plugin_sdk::declare_plugin!(BuildCleanup);

fn restore_options(ctx: &Context) -> PluginResult<RestoreOptions> {
    match &ctx.request().options {
        serde_json::Value::Null => Ok(RestoreOptions::default()),
        given => serde_json::from_value(given.clone())
            .map_err(|e| PluginError::config(format!("restore options: {e}"))),
    }
}

/// Asks the API about each recorded build, before anything is deleted: a build that finished
/// since the backup (a build the AMI caught just finishing, or one the restored install's
/// Nomad clients finished) must not be deleted. Deleting needs the answer, so it needs the
/// token; printing the lines does not. An API that cannot be reached fails the step (the runner
/// may retry it; nothing was deleted yet).
fn recheck(config: &Config, recorded: &[Build], delete: bool) -> PluginResult<Recheck> {
    let Some(api_url) = &config.api_url else {
        return Ok(Recheck {
            stuck: recorded.to_vec(),
            unchecked: Some("`running_command` gives no API to ask".into()),
            ..Recheck::default()
        });
    };
    let token = match token(config) {
        Ok(token) => token,
        Err(_) if !delete => {
            return Ok(Recheck {
                stuck: recorded.to_vec(),
                unchecked: Some(format!("${} is not set", config.token_env)),
                ..Recheck::default()
            });
        }
        Err(error) => return Err(error),
    };
    let mut recheck = Recheck::default();
    for build in recorded {
        let reason = match builds::now(api_url, &token, build) {
            Ok(Now::Unfinished(_)) => {
                recheck.stuck.push(build.clone());
                continue;
            }
            Ok(Now::Finished(lifecycle)) => {
                format!("finished since the backup (lifecycle {lifecycle})")
            }
            Ok(Now::Unknown(why)) => why,
            Err(ListError::Refused(m)) => return Err(PluginError::permanent(m)),
            Err(ListError::Unreachable(m)) => return Err(PluginError::transient(m)),
        };
        recheck.skipped.push(Skipped {
            url: build.url.clone(),
            reason,
        });
    }
    Ok(recheck)
}

/// `; skipped 2: URL (why), URL (why)` for the summary, or nothing.
fn skipped_text(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let each: Vec<String> = skipped
        .iter()
        .map(|s| format!("{} ({})", s.url, s.reason))
        .collect();
    format!("; skipped {}: {}", skipped.len(), each.join(", "))
}

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

/// Why the list of builds would not describe the AMI's moment: no `ebs` step runs directly
/// after this one (in the plan's backup order, `after = ["THIS"]`).
fn moment_warning(ctx: &Context) -> Option<String> {
    let request = ctx.request();
    if request.next_steps.iter().any(|s| s.plugin == "ebs") {
        return None;
    }
    Some(format!(
        "no ebs step runs right after `{}`: the builds listed are not those in flight when the \
         AMI is made; give the AMI step `after = [\"{}\"]`",
        request.step_id, request.step_id
    ))
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
