//! Errors a plugin returns, and whether trying again may help.
//!
//! The runner decides about retries from the [`ErrorKind`] alone, so a plugin must say what it
//! knows: a throttled or timed-out API call is [`ErrorKind::Transient`] (the runner retries with
//! backoff), a missing bucket or a bad checksum is [`ErrorKind::Permanent`] (retrying only wastes
//! time), and anything wrong with the step's configuration is [`ErrorKind::Config`] (reported
//! before anything runs when it comes from `check`). Errors cross the C ABI as JSON, so they carry
//! plain strings, never boxed sources.

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What went wrong, at the level the runner acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The step's configuration is wrong; fixing the plan is the only cure.
    Config,
    /// The plugin does not implement this action.
    Unsupported,
    /// A passing condition (throttling, a timeout, a 5xx); the same call may succeed later.
    Transient,
    /// A failure that repeating the call will not fix.
    Permanent,
    /// The action stopped because the run was cancelled or its step timed out.
    Cancelled,
    /// A bug: a panic inside the plugin or a broken protocol message.
    Internal,
    /// A kind this SDK version does not know yet (sent by a newer plugin or host).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// Whether the runner may try the action again.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "configuration error",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Transient => "transient error",
            ErrorKind::Permanent => "error",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal error",
            ErrorKind::Unknown => "error",
        })
    }
}

/// An error returned by a plugin action.
///
/// `message` is one line for humans; `detail` may hold more (a cause chain, the API's own words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct PluginError {
    /// What the runner does about it.
    pub kind: ErrorKind,
    /// A one-line description, e.g. `snapshot snap-123 failed: Internal error`.
    pub message: String,
    /// Optional further lines: causes, hints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl PluginError {
    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            detail: None,
        }
    }
    /// The configuration is wrong.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// Worth retrying later.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }
    /// Not worth retrying.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, message)
    }
    /// The action stopped because it was asked to.
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "cancelled")
    }
    /// The plugin does not implement `action`.
    pub fn unsupported(action: crate::Action) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!("this plugin does not support `{action}`"),
        )
    }
    /// An I/O failure while doing something to `path`: `"{doing} {path}: {why}"`.
    ///
    /// Transient when the OS says the condition may pass (interrupted, timed out, would block),
    /// permanent otherwise; a missing file reads "it does not exist".
    /// [`IoResultExt::io_context`] is the same for an `io::Result`, with `?`.
    pub fn io(doing: &str, path: &Path, error: &io::Error) -> Self {
        let why = match error.kind() {
            io::ErrorKind::NotFound => "it does not exist".to_owned(),
            _ => error.to_string(),
        };
        let message = format!("{doing} {}: {why}", path.display());
        match error.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                Self::transient(message)
            }
            _ => Self::permanent(message),
        }
    }
    /// Adds a line of detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    /// Whether the runner may try again.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

/// The result type of plugin actions.
pub type PluginResult<T> = Result<T, PluginError>;

/// Names the path an I/O call failed on, for `?` in an action.
///
/// ```
/// use backplan_plugin_sdk::{IoResultExt, PluginResult};
///
/// fn make(dir: &std::path::Path) -> PluginResult<()> {
///     std::fs::create_dir_all(dir).io_context("cannot create", dir)?;
///     Ok(())
/// }
/// # make(&std::env::temp_dir()).unwrap();
/// let err = make("/proc/no/such".as_ref()).unwrap_err();
/// assert!(err.message.starts_with("cannot create /proc/no/such: "), "{err}");
/// ```
pub trait IoResultExt<T> {
    /// The value, or [`PluginError::io`] of the error: `"{doing} {path}: {why}"`.
    fn io_context(self, doing: &str, path: &Path) -> PluginResult<T>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn io_context(self, doing: &str, path: &Path) -> PluginResult<T> {
        self.map_err(|error| PluginError::io(doing, path, &error))
    }
}
