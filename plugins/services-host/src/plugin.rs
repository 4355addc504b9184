//! The plugin: identity at backup, the documented fix-ups at restore.

use std::fs;
use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use backplan_plugin_sdk::{
    Action, Context, Plugin, PluginError, PluginResult, Request, StepOutput,
};
use rustix::fs::FileType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, Task};
use crate::identity::{self, Found};
use crate::imds::Imds;
use crate::rewrite::{
    Replacement, check_rewritable, line_diff, replace_addresses, write_atomically,
};
use crate::rooted::Rooted;

/// The plugin.
#[derive(Debug, Default)]
pub(crate) struct ServicesHost;

/// A configuration file as it was at backup time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileIdentity {
    pub path: PathBuf,
    pub exists: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What a backup records: the identity the restore replaces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub hostname: String,
    #[serde(default)]
    pub private_ip: Option<String>,
    #[serde(default)]
    pub public_ip: Option<String>,
    pub files: Vec<FileIdentity>,
}

/// One rewritten (or, in a dry run, to-be-rewritten) file.
#[derive(Debug, Clone, Serialize)]
struct FileChange {
    path: PathBuf,
    replacements: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    original_kept_at: Option<PathBuf>,
}

/// Options a restore understands (`-o private_ip=10.0.1.5`); other keys belong to other plugins.
#[derive(Debug, Default, Deserialize)]
struct RestoreOptions {
    private_ip: Option<String>,
    public_ip: Option<String>,
    /// The old machine's addresses, for a backup whose record was rebuilt without this step's
    /// (`catalog rebuild` finds nothing of services-host's): e.g. the ebs step's `private_ip`.
    old_private_ip: Option<String>,
    old_public_ip: Option<String>,
}

const DOCS: &str = "\
Backup records the machine's hostname, private and public addresses, and which of the \
Replicated configuration files exist (with checksums). Restore, on the new machine, runs \
`restore_tasks` in order: `stop-app`, `rewrite-addresses` (old addresses → new, shown as a diff \
first, originals kept as FILE.backplan-orig, atomic rewrite), `reset-nomad` (removes \
/opt/nomad), `start-app`. New addresses come from `-o private_ip=`/`public_ip=`, the config \
(e.g. `${steps.machine.outputs.private_ip}`), the instance metadata service, or the default \
route. `--dry-run` prints every change and runs nothing. A second run changes nothing. A changed \
hostname is reported: the GitHub OAuth app's callback URL must follow it. Nothing under `root` is \
changed through a symbolic link: a configuration file, nomad folder or folder on the way to them \
that is a link is refused (at check, before any step runs), naming the link and its target; list \
the real path in `config_files` or `nomad_dir` instead.";

impl Plugin for ServicesHost {
    type Config = Config;
    const NAME: &'static str = "services-host";
    const SUMMARY: &'static str = "Services machine identity at backup; address rewrite, nomad reset, app stop/start at restore";
    const DOCS: &'static str = DOCS;
    const ACTIONS: &'static [Action] = &[Action::Backup, Action::Restore];

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        if !config.root.is_dir() {
            return Err(PluginError::config(format!(
                "root {} is not a folder",
                config.root.display()
            )));
        }
        let present: Vec<PathBuf> = config
            .config_files
            .iter()
            .filter(|f| config.under_root(f).exists())
            .cloned()
            .collect();
        if ctx.request().check_for == Some(Action::Restore) {
            nomad_dir_is_safe(config)?;
            links_refused(config).map_err(PluginError::config)?;
            let mut missing = Vec::new();
            for task in &config.restore_tasks {
                for command in commands_of(config, *task) {
                    if let Some(program) = command.first() {
                        if !on_path(program) {
                            missing.push(program.clone());
                        }
                    }
                }
            }
            if !missing.is_empty() && !ctx.request().dry_run {
                return Err(PluginError::config(format!(
                    "not found on PATH: {} (set the stop/restart/start commands for this install)",
                    missing.join(", ")
                )));
            }
            return Ok(StepOutput::new(format!(
                "{} of {} configuration files present; tasks: {}",
                present.len(),
                config.config_files.len(),
                task_names(&config.restore_tasks)
            )));
        }
        if present.is_empty() {
            return Err(PluginError::config(format!(
                "none of the configuration files exists under {}: {}",
                config.root.display(),
                list(&config.config_files)
            )));
        }
        Ok(StepOutput::new(format!(
            "{} configuration files found: {}",
            present.len(),
            list(&present)
        )))
    }

    fn backup(&self, _ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let imds = config.use_imds.then(Imds::from_env).flatten();
        let private = identity::address(
            explicit(&config.private_ip, "config"),
            imds.as_ref(),
            "local-ipv4",
            true,
        );
        let public = identity::address(
            explicit(&config.public_ip, "config"),
            imds.as_ref(),
            "public-ipv4",
            false,
        );
        let mut files = Vec::new();
        let mut warnings = Vec::new();
        for path in &config.config_files {
            if let Err(refused) = link_refused(config, path) {
                warnings.push(format!("{refused}: a restore will refuse to rewrite it"));
            }
            let full = config.under_root(path);
            let sha256 = match fs::read(&full) {
                Ok(bytes) => Some(hex(&Sha256::digest(&bytes))),
                Err(e) if e.kind() == IoKind::NotFound => None,
                Err(e) => {
                    return Err(PluginError::permanent(format!(
                        "cannot read {}: {e}",
                        full.display()
                    )));
                }
            };
            files.push(FileIdentity {
                path: path.clone(),
                exists: sha256.is_some(),
                sha256,
            });
        }
        let identity = Identity {
            hostname: identity::hostname(),
            private_ip: private.as_ref().map(|f| f.ip.clone()),
            public_ip: public.as_ref().map(|f| f.ip.clone()),
            files,
        };
        let mut output = StepOutput::new(format!(
            "host {} private {} public {}; {} configuration files",
            identity.hostname,
            describe(&private),
            describe(&public),
            identity.files.iter().filter(|f| f.exists).count()
        ))
        .output("hostname", &identity.hostname)
        .output(
            "private_ip",
            identity.private_ip.clone().unwrap_or_default(),
        )
        .output("public_ip", identity.public_ip.clone().unwrap_or_default());
        if private.is_none() {
            output = output.warning(
                "no private address found: set `private_ip`, or restore must be given `old_private_ip`",
            );
        }
        for warning in warnings {
            output = output.warning(warning);
        }
        Ok(output.record(&identity))
    }

    fn restore(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let options: RestoreOptions = match &ctx.request().options {
            serde_json::Value::Null => RestoreOptions::default(),
            given => serde_json::from_value(given.clone()).map_err(|e| {
                PluginError::config(format!("restore options (addresses are strings): {e}"))
            })?,
        };
        let old: Identity = match &ctx.request().record {
            Some(record) if !record.is_null() => ctx.record()?,
            // A catalog rebuilt from the AMI and the repository has no record of this step: the
            // old addresses must be given.
            _ => Identity {
                hostname: String::new(),
                private_ip: options
                    .old_private_ip
                    .clone()
                    .or(config.old_private_ip.clone()),
                public_ip: options
                    .old_public_ip
                    .clone()
                    .or(config.old_public_ip.clone()),
                files: Vec::new(),
            },
        };
        if old.private_ip.is_none()
            && old.public_ip.is_none()
            && config.restore_tasks.contains(&Task::RewriteAddresses)
        {
            return Err(PluginError::config(
                "this backup has no record of the old machine's addresses (its catalog was \
                 rebuilt): pass -o old_private_ip=… (and -o old_public_ip=…), e.g. the ebs \
                 step's recorded private_ip in `backplan runs show`",
            ));
        }
        let dry_run = ctx.request().dry_run;
        let imds = config.use_imds.then(Imds::from_env).flatten();
        let new_private = identity::address(
            explicit(&options.private_ip, "option").or(explicit(&config.private_ip, "config")),
            imds.as_ref(),
            "local-ipv4",
            true,
        );
        let new_public = identity::address(
            explicit(&options.public_ip, "option").or(explicit(&config.public_ip, "config")),
            imds.as_ref(),
            "public-ipv4",
            false,
        );
        let old_private = config.old_private_ip.clone().or(old.private_ip.clone());
        let old_public = config.old_public_ip.clone().or(old.public_ip.clone());
        let mut replacements = Vec::new();
        for (old_ip, new, what) in [
            (&old_private, &new_private, "private"),
            (&old_public, &new_public, "public"),
        ] {
            match (old_ip, new) {
                (Some(old_ip), Some(new)) => replacements.push(Replacement {
                    old: old_ip.clone(),
                    new: new.ip.clone(),
                }),
                (Some(old_ip), None) if config.restore_tasks.contains(&Task::RewriteAddresses) => {
                    return Err(PluginError::config(format!(
                        "the new {what} address is unknown (old: {old_ip}): pass -o {what}_ip=... \
                         or set `{what}_ip` in the step (e.g. from the launch step's outputs)"
                    )));
                }
                _ => {}
            }
        }

        let mut output_warnings = Vec::new();
        let hostname = identity::hostname();
        if !old.hostname.is_empty() && hostname != old.hostname {
            output_warnings.push(format!(
                "hostname changed from {} to {hostname}: make sure the install's configured \
                 hostname (Management Console, port 8800) points at this machine, and update \
                 the GitHub OAuth app's homepage and callback URLs if it changed",
                old.hostname
            ));
        }

        let mut done = Vec::new();
        let mut changes = Vec::new();
        let mut diff = String::new();
        let mut nomad_removed = false;
        for task in &config.restore_tasks {
            ctx.check_cancelled()?;
            match task {
                Task::StopApp => {
                    done.push(run(ctx, &config.stop_command, "stop-app", dry_run)?);
                }
                Task::RewriteAddresses => {
                    let (file_changes, file_diff, missing) =
                        rewrite_files(ctx, config, &replacements, dry_run)?;
                    if !missing.is_empty() {
                        output_warnings.push(format!("not present here: {}", list(&missing)));
                    }
                    let total: usize = file_changes.iter().map(|c| c.replacements).sum();
                    done.push(format!(
                        "rewrite-addresses: {}{} replacement(s) in {} file(s)",
                        if dry_run { "would make " } else { "" },
                        total,
                        file_changes.len()
                    ));
                    changes = file_changes;
                    diff = file_diff;
                }
                Task::ResetNomad => {
                    nomad_dir_is_safe(config)?;
                    let (line, removed) = reset_nomad(config, dry_run)?;
                    nomad_removed = removed;
                    ctx.info(&line);
                    done.push(line);
                }
                Task::StartApp => {
                    if !config.restart_command.is_empty() {
                        done.push(run(ctx, &config.restart_command, "restart", dry_run)?);
                    }
                    done.push(run(ctx, &config.start_command, "start-app", dry_run)?);
                }
            }
        }

        let mut output = StepOutput::new(done.join("; "))
            .output("private_ip", new_private.as_ref().map(|f| f.ip.clone()).unwrap_or_default())
            .output("public_ip", new_public.as_ref().map(|f| f.ip.clone()).unwrap_or_default())
            .record(serde_json::json!({
                "old": { "private_ip": old_private, "public_ip": old_public, "hostname": old.hostname },
                "new": {
                    "private_ip": new_private.as_ref().map(|f| &f.ip),
                    "private_ip_from": new_private.as_ref().map(|f| f.source),
                    "public_ip": new_public.as_ref().map(|f| &f.ip),
                    "public_ip_from": new_public.as_ref().map(|f| f.source),
                    "hostname": hostname,
                },
                "tasks": done,
                "files": changes,
                "diff": diff,
                "nomad_removed": nomad_removed,
                "dry_run": dry_run,
            }));
        for warning in output_warnings {
            output = output.warning(warning);
        }
        Ok(output)
    }
}

backplan_plugin_sdk::declare_plugin!(ServicesHost);

/// Rewrites every present configuration file; returns the changes, the diff and the files
/// that are not there. Every file is read and its new content computed before any is written,
/// so an unreadable file (or a symlink in the way) stops the task with nothing changed.
fn rewrite_files(
    ctx: &Context,
    config: &Config,
    replacements: &[Replacement],
    dry_run: bool,
) -> PluginResult<(Vec<FileChange>, String, Vec<PathBuf>)> {
    let mut planned = Vec::new();
    let mut missing = Vec::new();
    for path in &config.config_files {
        let unreadable = |e: std::io::Error| {
            PluginError::permanent(format!("cannot read {e}; no file was rewritten"))
        };
        let found = match Rooted::locate(&config.root, path).map_err(unreadable)? {
            Some(file) => file
                .read()
                .map_err(unreadable)?
                .map(|contents| (file, contents)),
            None => None,
        };
        let Some((file, contents)) = found else {
            missing.push(path.clone());
            continue;
        };
        let before = String::from_utf8(contents.bytes.clone()).map_err(|_| {
            PluginError::permanent(format!(
                "cannot read {}: not UTF-8 text; no file was rewritten",
                file.shown().display()
            ))
        })?;
        let (after, count) = replace_addresses(&before, replacements);
        if count > 0 {
            check_rewritable(&file).map_err(|e| {
                PluginError::permanent(format!("cannot rewrite {e}; no file was rewritten"))
            })?;
            let file_diff = line_diff(path, &before, &after);
            planned.push((path, file, contents, file_diff, after, count));
        }
    }
    let mut changes = Vec::new();
    let mut diff = String::new();
    for (path, file, contents, file_diff, after, count) in planned {
        ctx.info(format!(
            "{} {}:\n{file_diff}",
            if dry_run {
                "would rewrite"
            } else {
                "rewriting"
            },
            path.display()
        ));
        diff.push_str(&file_diff);
        let original_kept_at = if dry_run {
            None
        } else {
            let original = write_atomically(&file, &contents, &after).map_err(|e| {
                PluginError::permanent(format!("cannot rewrite {}: {e}", file.shown().display()))
            })?;
            Some(original)
        };
        changes.push(FileChange {
            path: path.clone(),
            replacements: count,
            original_kept_at,
        });
    }
    Ok((changes, diff, missing))
}

/// Removes `nomad_dir` (never through a symlink, at it or on the way); the task's line and
/// whether anything was removed.
fn reset_nomad(config: &Config, dry_run: bool) -> PluginResult<(String, bool)> {
    let shown = config.under_root(&config.nomad_dir);
    let refused = |e: std::io::Error| PluginError::permanent(format!("reset-nomad: {e}"));
    let absent = || {
        Ok((
            format!("reset-nomad: {} already absent", shown.display()),
            false,
        ))
    };
    let Some(dir) = Rooted::locate(&config.root, &config.nomad_dir).map_err(refused)? else {
        return absent();
    };
    match dir.kind().map_err(refused)? {
        None => absent(),
        Some(FileType::Symlink) => Err(refused(dir.not_followed())),
        Some(FileType::Directory) if dry_run => Ok((
            format!("reset-nomad: would remove {}", shown.display()),
            false,
        )),
        Some(FileType::Directory) => {
            dir.remove_tree().map_err(|e| {
                PluginError::permanent(format!("cannot remove {}: {e}", shown.display()))
            })?;
            Ok((format!("reset-nomad: removed {}", shown.display()), true))
        }
        Some(_) => Err(PluginError::permanent(format!(
            "reset-nomad: {} is not a folder; nothing removed",
            shown.display()
        ))),
    }
}

/// Why `path` under the root cannot be worked on safely: a symlink at it or on the way.
fn link_refused(config: &Config, path: &Path) -> Result<(), String> {
    match Rooted::locate(&config.root, path) {
        Ok(None) => Ok(()),
        Ok(Some(found)) => match found.kind() {
            Ok(Some(FileType::Symlink)) => Err(found.not_followed().to_string()),
            _ => Ok(()),
        },
        Err(err) if err.kind() == IoKind::InvalidInput => Err(err.to_string()),
        Err(_) => Ok(()),
    }
}

/// The first path a restore would refuse because of a symlink: a configuration file to rewrite
/// or the nomad folder to remove.
fn links_refused(config: &Config) -> Result<(), String> {
    if config.restore_tasks.contains(&Task::RewriteAddresses) {
        for path in &config.config_files {
            link_refused(config, path)?;
        }
    }
    if config.restore_tasks.contains(&Task::ResetNomad) {
        link_refused(config, &config.nomad_dir)?;
    }
    Ok(())
}

/// Runs one configured command (no shell); in a dry run, says what would run.
fn run(ctx: &Context, command: &[String], task: &str, dry_run: bool) -> PluginResult<String> {
    let Some((program, args)) = command.split_first() else {
        return Ok(format!("{task}: no command configured"));
    };
    let shown = command.join(" ");
    if dry_run {
        return Ok(format!("{task}: would run `{shown}`"));
    }
    ctx.info(format!("{task}: running `{shown}`"));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| PluginError::permanent(format!("{task}: cannot run `{program}`: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        return Err(
            PluginError::permanent(format!("{task}: `{shown}` failed ({})", out.status))
                .with_detail(tail.into_iter().rev().collect::<Vec<_>>().join("\n")),
        );
    }
    Ok(format!("{task}: ran `{shown}`"))
}

fn commands_of(config: &Config, task: Task) -> Vec<&Vec<String>> {
    match task {
        Task::StopApp => vec![&config.stop_command],
        Task::StartApp => vec![&config.restart_command, &config.start_command],
        Task::RewriteAddresses | Task::ResetNomad => Vec::new(),
    }
}

/// `reset-nomad` removes a whole tree: refuse a path that is the root or outside it.
fn nomad_dir_is_safe(config: &Config) -> PluginResult<()> {
    let dir = &config.nomad_dir;
    let depth = dir
        .components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count();
    let escapes = dir
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if depth < 2 || escapes {
        return Err(PluginError::config(format!(
            "nomad_dir {} is too close to the root to remove safely",
            dir.display()
        )));
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn explicit<'a>(
    value: &'a Option<String>,
    source: &'static str,
) -> Option<(&'a str, &'static str)> {
    value
        .as_deref()
        .filter(|v| !v.trim().is_empty() && !Request::is_unresolved(v))
        .map(|v| (v, source))
}

fn describe(found: &Option<Found>) -> String {
    found.as_ref().map_or_else(
        || "unknown".to_owned(),
        |f| format!("{} ({})", f.ip, f.source),
    )
}

fn task_names(tasks: &[Task]) -> String {
    tasks
        .iter()
        .map(|t| match t {
            Task::StopApp => "stop-app",
            Task::RewriteAddresses => "rewrite-addresses",
            Task::ResetNomad => "reset-nomad",
            Task::StartApp => "start-app",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
