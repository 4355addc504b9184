//! What an action can see and say while it runs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::PluginError;
use crate::abi::link::HostLink;
use crate::protocol::{Level, Outputs, Progress, Request};

/// Progress updates closer together than this are dropped (the last one always goes through).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Handed to every action: the request, and the way back to the host for progress, logs and
/// cancellation.
#[derive(Debug)]
pub struct Context {
    request: Request,
    host: HostLink,
    last_progress: Mutex<Option<Instant>>,
}

impl Context {
    pub(crate) fn new(request: Request, host: HostLink) -> Self {
        Self {
            request,
            host,
            last_progress: Mutex::new(None),
        }
    }

    /// The whole request: action, ids, earlier record, history, options.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The outputs of an earlier step this one depends on.
    pub fn input(&self, step_id: &str) -> Option<&Outputs> {
        self.request.inputs.get(step_id)
    }

    /// The record this step returned at backup time (verify, restore), decoded.
    pub fn record<T: serde::de::DeserializeOwned>(&self) -> Result<T, PluginError> {
        let record =
            self.request.record.clone().ok_or_else(|| {
                PluginError::permanent("no backup record was given for this step")
            })?;
        serde_json::from_value(record)
            .map_err(|e| PluginError::permanent(format!("the backup record is unreadable: {e}")))
    }

    /// Whether this is a dry run (`--dry-run`): say what would be done, change nothing.
    pub fn dry_run(&self) -> bool {
        self.request.dry_run
    }

    /// Whether the operator passed `--force` to override a safety refusal (e.g. overwriting a
    /// file that differs from the backup).
    pub fn force(&self) -> bool {
        self.request.force
    }

    /// The command line's `-o KEY=VALUE` options, decoded into the plugin's own options type;
    /// none given is `T::default()`.
    ///
    /// Use `#[serde(deny_unknown_fields)]` on `T` so that a mistyped option is an error, not
    /// silently ignored. An option that does not decode is a config error naming the action.
    pub fn options<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, PluginError> {
        match &self.request.options {
            serde_json::Value::Null => Ok(T::default()),
            given => serde_json::from_value(given.clone()).map_err(|e| {
                PluginError::config(format!("{} options (-o): {e}", self.request.action))
            }),
        }
    }

    /// Whether the action should stop now (Ctrl-C, step timeout). Long loops check it often.
    pub fn is_cancelled(&self) -> bool {
        self.host.is_cancelled()
    }

    /// `Err(cancelled)` when the action should stop, for use with `?` in loops.
    pub fn check_cancelled(&self) -> Result<(), PluginError> {
        if self.is_cancelled() {
            Err(PluginError::cancelled())
        } else {
            Ok(())
        }
    }

    /// Reports progress. Cheap to call often: updates are rate-limited here, and one that
    /// completes the work (`done == total`) is always sent.
    pub fn progress(&self, progress: Progress) {
        let finished = progress.total.is_some_and(|t| progress.done >= t);
        let mut last = self.last_progress.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !finished && last.is_some_and(|t| now.duration_since(t) < PROGRESS_INTERVAL) {
            return;
        }
        *last = Some(now);
        drop(last);
        self.host.progress(&progress);
    }

    /// Sends a log record to the host; it appears in the host's `tracing` output.
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        self.host.log(level, message.as_ref());
    }

    /// A debug-level log record.
    pub fn debug(&self, message: impl AsRef<str>) {
        self.log(Level::Debug, message);
    }

    /// An info-level log record.
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::Info, message);
    }

    /// A warning-level log record.
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::Warn, message);
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::ErrorKind;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RestoreOptions {
        target: Option<String>,
    }

    fn with_options(options: serde_json::Value) -> Context {
        let request: Request = serde_json::from_value(json!({
            "action": "restore", "plan": "p", "run_id": "r", "step_id": "s", "config": {},
            "options": options,
        }))
        .unwrap();
        Context::new(request, HostLink::new(std::ptr::null()))
    }

    #[test]
    fn options_decode_into_the_plugins_type_and_none_given_is_the_default() {
        let given = with_options(json!({"target": "/srv/drill"}));
        let options: RestoreOptions = given.options().unwrap();
        assert_eq!(options.target.as_deref(), Some("/srv/drill"));
        let none: RestoreOptions = with_options(serde_json::Value::Null).options().unwrap();
        assert_eq!(none, RestoreOptions::default());
    }

    #[test]
    fn a_mistyped_option_is_a_config_error_naming_it() {
        let typo = with_options(json!({"taget": "/srv/drill"}));
        let err = typo.options::<RestoreOptions>().unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.starts_with("restore options (-o): "), "{err}");
        assert!(err.message.contains("taget"), "{err}");
    }
}
