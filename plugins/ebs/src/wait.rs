//! Waiting: cancellable pauses and the polling schedule.
//!
//! Every wait in the plugin (AMI available, snapshots completed, instance running, a throttle
//! gap) goes through [`pause`], which wakes up often enough to notice Ctrl-C or a step timeout,
//! and every polling loop through [`Poll`], which backs off from `poll_interval` up to a cap and
//! gives up with a transient error after `wait_timeout` (the runner may retry the step, which
//! then finds its own image by tag and keeps waiting).

use std::time::{Duration, Instant};

use backplan_plugin_sdk::{Context, PluginError, PluginResult};

use crate::config::Timing;

/// The longest stretch a pause sleeps without looking at the cancellation flag.
const WAKE_UP: Duration = Duration::from_millis(200);

/// Sleeps `duration`, returning early with `cancelled` if the run is stopped.
pub(crate) async fn pause(ctx: &Context, duration: Duration) -> PluginResult<()> {
    let end = Instant::now() + duration;
    loop {
        ctx.check_cancelled()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        tokio::time::sleep((end - now).min(WAKE_UP)).await;
    }
}

/// The schedule of one polling loop.
#[derive(Debug)]
pub(crate) struct Poll {
    what: String,
    next: Duration,
    cap: Duration,
    deadline: Instant,
    timeout: Duration,
}

impl Poll {
    /// A loop waiting for `what` (used in the timeout message).
    pub(crate) fn new(what: impl Into<String>, timing: &Timing) -> Poll {
        Poll {
            what: what.into(),
            next: timing.poll_start,
            cap: timing.poll_cap,
            deadline: Instant::now() + timing.timeout,
            timeout: timing.timeout,
        }
    }

    /// Waits before the next poll (doubling the pause up to the cap), or fails once the deadline
    /// has passed.
    pub(crate) async fn tick(&mut self, ctx: &Context) -> PluginResult<()> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(PluginError::transient(format!(
                "{} did not finish within wait_timeout ({})",
                self.what,
                humantime::format_duration(self.timeout)
            )));
        }
        let pause_for = self.next.min(self.deadline - now);
        self.next = (self.next * 2).min(self.cap);
        pause(ctx, pause_for).await
    }
}
