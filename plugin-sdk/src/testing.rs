//! An in-process harness: test a plugin without the runner, through the real ABI.
//!
//! The harness calls the plugin's descriptor exactly as the host does (JSON request, C callbacks,
//! panic guard, buffer hand-back), collects the logs and progress it sends, and can raise the
//! cancellation flag.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use crate::abi::PluginDescriptor;
use crate::host::{HostHooks, PluginRef};
use crate::protocol::{Action, Description, Level, Progress, Request, Response};
use crate::{ErrorKind, PluginError, PluginResult, StepOutput};

/// Runs a plugin's actions in-process and records what it said.
#[derive(Debug)]
pub struct Harness {
    plugin: PluginRef,
    recorder: Recorder,
}

#[derive(Debug, Default)]
struct Recorder {
    logs: Mutex<Vec<(Level, String)>>,
    progress: Mutex<Vec<Progress>>,
    cancelled: AtomicBool,
}

impl HostHooks for Recorder {
    fn log(&self, level: Level, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_owned()));
    }
    fn progress(&self, progress: Progress) {
        self.progress.lock().unwrap().push(progress);
    }
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl Harness {
    /// A harness for the plugin behind `descriptor` (usually the crate's `plugin_descriptor()`).
    ///
    /// # Panics
    /// If the descriptor fails the host's checks (wrong ABI version, bad name).
    pub fn new(descriptor: &'static PluginDescriptor) -> Self {
        // SAFETY: a `&'static` descriptor is valid for the rest of the process.
        let plugin = unsafe { PluginRef::from_raw(descriptor) }
            .unwrap_or_else(|e| panic!("the descriptor is not usable: {e}"));
        Self {
            plugin,
            recorder: Recorder::default(),
        }
    }

    /// The plugin's description.
    pub fn describe(&self) -> Description {
        self.plugin
            .describe()
            .unwrap_or_else(|e| panic!("describe failed: {e}"))
    }

    /// A request for `action` with `config` and test defaults for the ids.
    pub fn request(&self, action: Action, config: Value) -> Request {
        Request {
            action,
            plan: "test-plan".into(),
            run_id: "test-run".into(),
            step_id: "test-step".into(),
            config,
            inputs: Default::default(),
            source_run_id: None,
            record: None,
            history: Vec::new(),
            check_for: None,
            dry_run: false,
            force: false,
            options: Value::Null,
            state_dir: None,
            next_steps: Vec::new(),
        }
    }

    /// Runs `action` with `config`.
    pub fn run(&self, action: Action, config: Value) -> PluginResult<StepOutput> {
        self.run_request(&self.request(action, config))
    }

    /// Runs a fully specified request.
    pub fn run_request(&self, request: &Request) -> PluginResult<StepOutput> {
        match self.plugin.invoke(request, &self.recorder) {
            Ok(Response::Ok(output)) => Ok(output),
            Ok(Response::Error(error)) => Err(error),
            Err(abi) => Err(PluginError::new(ErrorKind::Internal, abi.to_string())),
        }
    }

    /// Raises (or lowers) the cancellation flag seen by `ctx.is_cancelled()`.
    pub fn set_cancelled(&self, cancelled: bool) {
        self.recorder.cancelled.store(cancelled, Ordering::SeqCst);
    }

    /// The log records sent so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.recorder.logs.lock().unwrap().clone()
    }

    /// The progress updates sent so far.
    pub fn progress(&self) -> Vec<Progress> {
        self.recorder.progress.lock().unwrap().clone()
    }
}
