//! The step's configuration, with defaults for a Replicated-based CircleCI Server install.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

/// One restore task, run in the order given in `restore_tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Task {
    /// Run `stop_command` (stop the app before changing anything under it).
    StopApp,
    /// Replace the old addresses with the new ones in `config_files`.
    RewriteAddresses,
    /// Remove `nomad_dir` (nomad state refers to the old machine).
    ResetNomad,
    /// Run `restart_command` (the Replicated daemons re-read their files), then `start_command`.
    StartApp,
}

/// The step's `config` table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The filesystem root the paths below are taken from. `/` on a real machine; a copy of it
    /// for a test or a rehearsal.
    #[serde(default = "default_root")]
    #[schemars(length(min = 1))]
    pub root: PathBuf,
    /// Configuration files that name the machine's addresses. Missing ones are skipped (the
    /// list covers both the Debian/Ubuntu and the RHEL/CentOS layouts).
    #[serde(default = "default_config_files")]
    #[schemars(length(max = 1000), inner(length(min = 1)))]
    pub config_files: Vec<PathBuf>,
    /// The folder removed by `reset-nomad`.
    #[serde(default = "default_nomad_dir")]
    #[schemars(length(min = 1))]
    pub nomad_dir: PathBuf,
    /// The restore tasks, in order.
    #[serde(default = "default_tasks")]
    #[schemars(length(max = 16))]
    pub restore_tasks: Vec<Task>,
    /// Stops the app (no shell: program and arguments).
    #[serde(default = "default_stop")]
    #[schemars(
        length(min = 1, max = 4096),
        extend("prefixItems" = [{"type": "string", "minLength": 1}])
    )]
    pub stop_command: Vec<String>,
    /// Restarts the Replicated daemons so they read the rewritten files; empty to skip.
    #[serde(default = "default_restart")]
    #[schemars(
        length(max = 4096),
        extend("prefixItems" = [{"type": "string", "minLength": 1}])
    )]
    pub restart_command: Vec<String>,
    /// Starts the app.
    #[serde(default = "default_start")]
    #[schemars(
        length(min = 1, max = 4096),
        extend("prefixItems" = [{"type": "string", "minLength": 1}])
    )]
    pub start_command: Vec<String>,
    /// This machine's private address, when the instance metadata service cannot tell (e.g.
    /// `${steps.machine.outputs.private_ip}` from the launch step). Also `-o private_ip=...`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub private_ip: Option<String>,
    /// This machine's public address, likewise. Also `-o public_ip=...`.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub public_ip: Option<String>,
    /// The old addresses to replace, when they are not the ones recorded at backup time.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub old_private_ip: Option<String>,
    /// The old public address to replace.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub old_public_ip: Option<String>,
    /// Ask the instance metadata service (IMDSv2) for missing addresses (default true).
    #[serde(default = "yes")]
    pub use_imds: bool,
}

impl Config {
    /// `path` (absolute, as on the machine) under `root`.
    pub(crate) fn under_root(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        self.root.join(relative)
    }
}

fn default_root() -> PathBuf {
    PathBuf::from("/")
}

fn default_config_files() -> Vec<PathBuf> {
    [
        "/etc/default/replicated",
        "/etc/default/replicated-operator",
        "/etc/sysconfig/replicated",
        "/etc/sysconfig/replicated-operator",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

fn default_nomad_dir() -> PathBuf {
    PathBuf::from("/opt/nomad")
}

fn default_tasks() -> Vec<Task> {
    vec![
        Task::StopApp,
        Task::RewriteAddresses,
        Task::ResetNomad,
        Task::StartApp,
    ]
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn default_stop() -> Vec<String> {
    words(&["replicatedctl", "app", "stop"])
}

fn default_restart() -> Vec<String> {
    words(&[
        "systemctl",
        "restart",
        "replicated",
        "replicated-ui",
        "replicated-operator",
    ])
}

fn default_start() -> Vec<String> {
    words(&["replicatedctl", "app", "start"])
}

fn yes() -> bool {
    true
}
