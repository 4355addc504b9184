//! The exit codes of the `backplan` command, in one place so the README and the code agree.

use crate::record::{RunRecord, RunStatus};

/// Every step succeeded.
pub const SUCCEEDED: i32 = 0;
/// The run failed (no step succeeded, or a check failed), or a command could not do its job.
pub const FAILED: i32 = 1;
/// Command-line usage error (clap's own code).
pub const USAGE: i32 = 2;
/// Some steps succeeded and some did not.
pub const PARTIALLY_FAILED: i32 = 3;
/// Another run of the same plan holds the lock (EX_TEMPFAIL: try again later).
pub const BUSY: i32 = 75;
/// The plan or a step's configuration is invalid (EX_CONFIG); nothing was run.
pub const CONFIG: i32 = 78;
/// Interrupted by Ctrl-C (128 + SIGINT); the run was still recorded.
pub const INTERRUPTED: i32 = 130;
/// Stopped by SIGTERM (128 + SIGTERM), as systemd stops a unit; the run was still recorded.
pub const TERMINATED: i32 = 143;

/// The exit code for a finished run.
pub fn for_run(record: &RunRecord) -> i32 {
    if record.interrupted {
        return INTERRUPTED;
    }
    match record.status {
        RunStatus::Succeeded => SUCCEEDED,
        RunStatus::PartiallyFailed => PARTIALLY_FAILED,
        RunStatus::Cancelled | RunStatus::Interrupted => INTERRUPTED,
        RunStatus::Failed | RunStatus::Running => {
            let config_only = record
                .steps
                .iter()
                .filter_map(|s| s.error.as_ref())
                .filter(|e| e.kind != backplan_plugin_sdk::ErrorKind::Cancelled)
                .all(|e| e.kind == backplan_plugin_sdk::ErrorKind::Config);
            let any_error = record.steps.iter().any(|s| {
                s.error
                    .as_ref()
                    .is_some_and(|e| e.kind == backplan_plugin_sdk::ErrorKind::Config)
            });
            if config_only && any_error {
                CONFIG
            } else {
                FAILED
            }
        }
    }
}
