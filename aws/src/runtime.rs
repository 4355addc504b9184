//! The tokio runtime a plugin drives the SDK on. Actions are called on a blocking thread and
//! the SDK is async, so each action (or backend) owns a runtime and blocks on it.

use backplan_plugin_sdk::{PluginError, PluginResult};
use tokio::runtime::{Builder, Runtime};

/// One thread, for calls made one after the other.
pub fn current_thread() -> PluginResult<Runtime> {
    started(Builder::new_current_thread().enable_all().build())
}

/// `workers` threads named `name`, for many requests at once (`workers` is at least 1).
pub fn multi_thread(workers: usize, name: &str) -> PluginResult<Runtime> {
    started(
        Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(name)
            .enable_all()
            .build(),
    )
}

fn started(runtime: std::io::Result<Runtime>) -> PluginResult<Runtime> {
    runtime.map_err(|e| PluginError::permanent(format!("cannot start an async runtime: {e}")))
}
