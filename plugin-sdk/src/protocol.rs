//! The messages that cross the plugin boundary, as plain serde types.
//!
//! Everything here is serialised to UTF-8 JSON before it crosses the C ABI, so a plugin built with
//! another compiler or other crate versions reads the same bytes. Unknown fields are ignored on
//! both sides and new fields are only ever added with defaults, which keeps old plugins working
//! with a newer host and the reverse. Nothing in this module does I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::PluginError;

/// What the runner asks a plugin to do.
///
/// New actions may come in later SDK versions, so the enum is `#[non_exhaustive]` and reads
/// any name it does not know as [`Action::Unknown`]: an older host reading a newer plugin's
/// description, or an older plugin reading a newer host's request, never fails on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// Validate the configuration and preflight (credentials, permissions, paths). Changes nothing.
    Check,
    /// Make a backup and return a record of it.
    Backup,
    /// Confirm that an earlier backup (given as its record) is intact and usable.
    Verify,
    /// Put an earlier backup back.
    Restore,
    /// Apply retention: remove what the plan no longer needs to keep.
    Prune,
    /// Say which cloud permissions the step's configuration needs, without calling anything.
    /// Always callable, like `check`; the answer's record is a
    /// [`Permissions`](crate::Permissions).
    Permissions,
    /// Undo a restore made only to prove the backup works (a restore drill): e.g. terminate the
    /// instance launched from the image. The request's `record` is what that restore returned.
    Teardown,
    /// Find the backups this step made, from what they left (tags, snapshot headers), for
    /// `backplan catalog rebuild` when the catalog is lost. The answer's record is a
    /// [`Discovered`]. Optional: a plugin without it has nothing to discover.
    Discover,
    /// Manage the keys that open the step's encrypted backups: list them, add one, remove one,
    /// for `backplan keys`. The request's `options` is a [`KeyOperation`]; the answer's record
    /// is a [`Keys`]. Adding or removing a key must never re-encrypt or touch backed-up data.
    /// Optional: a plugin that does not encrypt has no keys.
    Keys,
    /// An action this SDK version does not know (named by a newer plugin or host). Never called:
    /// a plugin answers it as unsupported, and a [`Description`] drops it when read.
    #[serde(other)]
    Unknown,
}

impl Action {
    /// The actions of a backup's life, in the order a backup goes through them: the check before
    /// each run, then backup, verify, restore and prune. Not `permissions` (a question about the
    /// configuration, answered without acting) nor `teardown` (the undo of a drill's restore). A
    /// plugin that implements the whole life (like `exec`) lists these as its `ACTIONS`.
    pub const LIFECYCLE: [Action; 5] = [
        Action::Check,
        Action::Backup,
        Action::Verify,
        Action::Restore,
        Action::Prune,
    ];

    /// The lower-case name used in plans, records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Check => "check",
            Action::Backup => "backup",
            Action::Verify => "verify",
            Action::Restore => "restore",
            Action::Prune => "prune",
            Action::Permissions => "permissions",
            Action::Teardown => "teardown",
            Action::Discover => "discover",
            Action::Keys => "keys",
            Action::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plugin's self-description: what `backplan plugins info` shows and what the plan is checked
/// against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// The name plans use in `plugin = "..."`.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line: what the plugin backs up.
    pub summary: String,
    /// Longer documentation (Markdown): configuration notes, what the record holds.
    #[serde(default)]
    pub docs: String,
    /// The actions it implements. Reading a description drops the actions this SDK does not know
    /// (a newer plugin's), so a host only ever sees actions it can call.
    #[serde(deserialize_with = "known_actions")]
    pub actions: Vec<Action>,
    /// A JSON Schema of the step's `config` table.
    pub config_schema: Value,
    /// The version of the SDK the plugin was built with.
    #[serde(default)]
    pub sdk_version: String,
}

/// Reads a list of actions, leaving out those this SDK does not know.
fn known_actions<'de, D: serde::Deserializer<'de>>(reader: D) -> Result<Vec<Action>, D::Error> {
    let actions = Vec::<Action>::deserialize(reader)?;
    Ok(actions
        .into_iter()
        .filter(|action| *action != Action::Unknown)
        .collect())
}

/// The outputs of one earlier step, as a later step sees them.
pub type Outputs = BTreeMap<String, Value>;

/// One earlier backup of this step, as prune sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The run that made it.
    pub run_id: String,
    /// When that run started (RFC 3339).
    pub started_at: String,
    /// Whether a restore drill or verify proved this backup usable.
    #[serde(default)]
    pub verified: bool,
    /// The record the plugin returned then.
    pub record: Value,
}

/// Everything a plugin is told about one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// What to do.
    pub action: Action,
    /// The plan's name (used e.g. to tag what the plugin makes).
    pub plan: String,
    /// The id of the run this action belongs to.
    pub run_id: String,
    /// The step's id in the plan.
    pub step_id: String,
    /// The step's `config` table, with references to other steps' outputs resolved (in `check`
    /// they may still be unresolved `${...}` strings; see [`Request::is_unresolved`]).
    pub config: Value,
    /// Outputs of the steps this one depends on, by step id.
    #[serde(default)]
    pub inputs: BTreeMap<String, Outputs>,
    /// For verify and restore: the id of the backup run acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run_id: Option<String>,
    /// For verify and restore: the record this step returned when the backup was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<Value>,
    /// For backup and prune: every earlier backup of this step that the catalog knows, oldest
    /// first (a backup may compare itself with the last one; prune applies retention).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// For `check`: the action the run will perform after the checks pass (a plugin may check
    /// differently before a restore on a new machine than before a backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_for: Option<Action>,
    /// Show what would be done, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// The operator asked to override a safety refusal (e.g. overwrite newer files).
    #[serde(default)]
    pub force: bool,
    /// Free-form options from the command line (e.g. a restore target or sub-path).
    #[serde(default)]
    pub options: Value,
    /// A folder this step may keep state in between runs (caches, indexes). Created by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// For `check`: the steps that run directly after this one in a backup (their `after`
    /// names it), so a plugin can say when its step is placed where it cannot do its job
    /// (build-cleanup's list must be taken right before the AMI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_steps: Vec<PlanStep>,
}

/// Another step of the plan, as `check` sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// Its id.
    pub id: String,
    /// Its plugin.
    pub plugin: String,
    /// The steps it runs after in a backup.
    #[serde(default)]
    pub after: Vec<String>,
}

impl Request {
    /// Whether a config string still holds a reference to another step's output: always in
    /// `check`, and in other actions when that step produced no such output in this run (nor in
    /// the backup acted upon). A plugin must not use such a value as if it were real.
    pub fn is_unresolved(value: &str) -> bool {
        value.contains("${steps.")
    }

    /// A config error naming the first unresolved reference among `values`, if any.
    pub fn require_resolved<'a>(
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), crate::PluginError> {
        match values.into_iter().find(|v| Self::is_unresolved(v)) {
            Some(value) => Err(crate::PluginError::config(format!(
                "{value:?} refers to a step output that does not exist in this run"
            ))),
            None => Ok(()),
        }
    }
}

/// What a plugin action returns on success: the catalog stores it in the run record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StepOutput {
    /// One line for the report, e.g. `ami-0abc available (3 snapshots)`.
    #[serde(default)]
    pub summary: String,
    /// What was made (ids, paths, sizes, checksums): handed back to verify, restore and prune.
    #[serde(default)]
    pub record: Value,
    /// Values later steps may read, e.g. `instance_id` or `private_ip`.
    #[serde(default)]
    pub outputs: Outputs,
    /// Bytes read or written, for the report.
    #[serde(default)]
    pub bytes: u64,
    /// Things the operator should know that did not fail the step.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why the record or an output could not be encoded as JSON (a path that is not UTF-8, a
    /// map with non-string keys): the step then fails with this, rather than store a `null`
    /// record that no restore could use.
    #[serde(skip)]
    encode_error: Option<String>,
}

impl StepOutput {
    /// An output with the given summary line.
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            ..Self::default()
        }
    }
    /// Sets the record (anything serialisable): what `verify`, `restore` and `prune` read back
    /// with [`Context::record`](crate::Context::record). A record that does not encode as JSON
    /// fails the step.
    pub fn record(mut self, record: impl Serialize) -> Self {
        self.record = self.encode("the record", record);
        self
    }
    /// Adds an output later steps may read. A value that does not encode as JSON fails the step.
    pub fn output(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        let key = key.into();
        let value = self.encode(&format!("the output `{key}`"), value);
        self.outputs.insert(key, value);
        self
    }
    /// `value` as JSON; on failure, `null`, remembering the first failure for [`Self::encoded`].
    fn encode(&mut self, what: &str, value: impl Serialize) -> Value {
        serde_json::to_value(value).unwrap_or_else(|e| {
            self.encode_error
                .get_or_insert_with(|| format!("{what} cannot be encoded as JSON: {e}"));
            Value::Null
        })
    }
    /// The output, or the error of a record or output that could not be encoded.
    pub(crate) fn encoded(self) -> Result<Self, PluginError> {
        match &self.encode_error {
            Some(error) => Err(PluginError::new(crate::ErrorKind::Internal, error.clone())),
            None => Ok(self),
        }
    }
    /// Sets the byte count.
    pub fn bytes(mut self, bytes: u64) -> Self {
        self.bytes = bytes;
        self
    }
    /// Adds a warning.
    pub fn warning(mut self, warning: impl Into<String>) -> Self {
        self.warnings.push(warning.into());
        self
    }
}

/// The answer to a request: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The action succeeded.
    Ok(StepOutput),
    /// The action failed.
    Error(PluginError),
}

/// What `backplan keys` asks of a step (the `options` of a `keys` request).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum KeyOperation {
    /// List the keys that open the step's backups (what no options mean).
    #[default]
    List,
    /// Add a key: open the backups with a key the step's configuration names, then make them
    /// openable by `source` too.
    Add {
        /// Where the new key comes from.
        source: KeySource,
    },
    /// Remove the key with this id (as `list` shows it). Refused for the last key, and for the
    /// key the step's configuration opens the backups with, so no backup is ever locked out.
    Remove {
        /// The key's id.
        id: String,
    },
}

/// Where a key-encryption key comes from. Secrets never appear in a plan or a request: only
/// the file or variable that holds them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// A passphrase read from this file (its first line, without the line end).
    PassphraseFile(String),
    /// A passphrase read from this environment variable.
    PassphraseEnv(String),
    /// An AWS KMS key (id, ARN or alias) that wraps the key.
    KmsKeyId(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::PassphraseFile(path) => write!(f, "passphrase file {path}"),
            KeySource::PassphraseEnv(name) => write!(f, "passphrase in ${name}"),
            KeySource::KmsKeyId(key) => write!(f, "KMS key {key}"),
        }
    }
}

/// The keys that open a step's backups (the record of a `keys` answer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Keys {
    /// Every key, in any order.
    #[serde(default)]
    pub keys: Vec<KeyInfo>,
}

/// One key that opens a step's backups. Never the secret itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Its id, which `remove` takes.
    pub id: String,
    /// What kind of key-encryption key it is: `passphrase` or `kms`.
    pub kind: String,
    /// A description of where it was added from (the KMS key's id; for a passphrase, the file
    /// or variable it was read from when added).
    #[serde(default)]
    pub source: String,
    /// When it was added (RFC 3339).
    #[serde(default)]
    pub created_at: String,
    /// Whether the step's configuration opens the backups with this key.
    #[serde(default)]
    pub in_use: bool,
}

/// The backups a step finds it made (the record of a `discover` answer).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Discovered {
    /// Every backup found, in any order.
    #[serde(default)]
    pub backups: Vec<DiscoveredBackup>,
}

/// One backup a step found, with what its run's record said of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredBackup {
    /// The run that made it (as tagged or written into it at backup).
    pub run_id: String,
    /// When that run started (RFC 3339), as closely as the plugin knows.
    pub started_at: String,
    /// The record the backup returned then: what verify, restore and prune read.
    pub record: Value,
    /// The outputs it published then.
    #[serde(default)]
    pub outputs: Outputs,
    /// Bytes, if known.
    #[serde(default)]
    pub bytes: u64,
    /// One line.
    #[serde(default)]
    pub summary: String,
}

/// Severity of a log record sent to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Level {
    /// Very detailed.
    Trace = 0,
    /// Detailed.
    Debug = 1,
    /// Normal progress.
    Info = 2,
    /// Something worth attention.
    Warn = 3,
    /// A failure.
    Error = 4,
}

impl Level {
    /// The level for a number received over the ABI (unknown numbers become `Info`).
    pub fn from_u32(n: u32) -> Level {
        match n {
            0 => Level::Trace,
            1 => Level::Debug,
            3 => Level::Warn,
            4 => Level::Error,
            _ => Level::Info,
        }
    }
}

/// A progress update for long work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done so far.
    pub done: u64,
    /// Units in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// What is counted: `bytes`, `files`, `percent`, ...
    #[serde(default)]
    pub unit: String,
    /// What is happening now, e.g. `waiting for snap-123`.
    #[serde(default)]
    pub message: String,
}

impl Progress {
    /// Progress in bytes: `done` of `total` (when known), with what is being read or written.
    pub fn bytes(done: u64, total: Option<u64>, message: impl Into<String>) -> Self {
        Self {
            done,
            total,
            unit: "bytes".into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_action_this_sdk_does_not_know_reads_as_unknown() {
        let action: Action = serde_json::from_str(r#""snapshot_tags""#).unwrap();
        assert_eq!(action, Action::Unknown);
        let known: Action = serde_json::from_str(r#""teardown""#).unwrap();
        assert_eq!(known, Action::Teardown);
    }

    #[test]
    fn a_key_operation_reads_as_the_cli_writes_it_and_no_options_mean_list() {
        let add: KeyOperation = serde_json::from_value(serde_json::json!(
            {"operation": "add", "source": {"passphrase_env": "BACKUP_PASSPHRASE"}}
        ))
        .unwrap();
        assert_eq!(
            add,
            KeyOperation::Add {
                source: KeySource::PassphraseEnv("BACKUP_PASSPHRASE".into())
            }
        );
        let remove = serde_json::to_value(KeyOperation::Remove { id: "k1".into() }).unwrap();
        assert_eq!(
            remove,
            serde_json::json!({"operation": "remove", "id": "k1"})
        );
        assert_eq!(KeyOperation::default(), KeyOperation::List);
    }
}
