//! One step's attempts: a plugin call on a blocking thread bounded by the step's timeout, and
//! retries of retryable errors with exponential backoff and jitter.
//!
//! On timeout or cancellation the step's flag is raised and the plugin gets [`STOP_GRACE`] to
//! return; a plugin that ignores the flag is abandoned (its thread is left to finish on its own)
//! and the step is recorded as timed out or cancelled all the same.

use std::sync::Arc;
use std::time::Duration;

use backplan_plugin_sdk::host::{HostHooks, PluginRef};
use backplan_plugin_sdk::{ErrorKind, Level, PluginError, Progress, Request, Response, StepOutput};
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use super::Observer;
use crate::plan::StepPolicy;
use crate::record::{StepError, StepRecord, StepStatus};

/// How long a timed-out or cancelled step may take to stop before it is abandoned (by default:
/// see [`super::Runner::stop_grace`]).
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// The longest delay between retries (unless the step's first delay is longer).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// The host side of one step's callbacks: logs to tracing and the observer, progress to the
/// observer, cancellation from the step's token.
pub(super) struct StepHooks {
    pub step: String,
    pub plugin: String,
    pub observer: Arc<dyn Observer>,
    pub cancel: CancellationToken,
}

impl HostHooks for StepHooks {
    fn log(&self, level: Level, message: &str) {
        let (step, plugin) = (&self.step, &self.plugin);
        match level {
            Level::Trace => tracing::trace!(target: "backplan::plugin", step, plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "backplan::plugin", step, plugin, "{message}"),
            Level::Info => tracing::info!(target: "backplan::plugin", step, plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "backplan::plugin", step, plugin, "{message}"),
            Level::Error => tracing::error!(target: "backplan::plugin", step, plugin, "{message}"),
        }
        self.observer.step_log(step, level, message);
    }

    fn progress(&self, progress: Progress) {
        self.observer.step_progress(&self.step, &progress);
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// How one attempt ended.
pub(super) enum Attempt {
    Done(StepOutput),
    Failed(PluginError),
    TimedOut,
}

impl Attempt {
    /// The attempt as a result, a timeout being a transient error that says what timed out.
    pub(super) fn into_result(
        self,
        what: &str,
        timeout: Duration,
    ) -> Result<StepOutput, PluginError> {
        match self {
            Attempt::Done(output) => Ok(output),
            Attempt::Failed(error) => Err(error),
            Attempt::TimedOut => Err(PluginError::transient(format!(
                "{what} did not finish within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }
}

/// One call of a plugin on a blocking thread, bounded by `timeout`.
pub(super) async fn attempt(
    plugin: PluginRef,
    call: Request,
    hooks: Arc<StepHooks>,
    timeout: Duration,
    grace: Duration,
) -> Attempt {
    let flag = hooks.cancel.clone();
    let mut task = tokio::task::spawn_blocking(move || plugin.invoke(&call, &*hooks));
    let finished = tokio::select! {
        joined = &mut task => Some(joined),
        () = tokio::time::sleep(timeout) => None,
        () = flag.cancelled() => None,
    };
    let timed_out = finished.is_none() && !flag.is_cancelled();
    let joined = match finished {
        Some(joined) => joined,
        None => {
            flag.cancel();
            match tokio::time::timeout(grace, &mut task).await {
                Ok(joined) if !timed_out => joined,
                _ if timed_out => return Attempt::TimedOut,
                _ => {
                    return Attempt::Failed(PluginError::new(
                        ErrorKind::Cancelled,
                        format!("cancelled; the plugin did not stop within {grace:?}"),
                    ));
                }
            }
        }
    };
    match joined {
        Ok(Ok(Response::Ok(output))) => Attempt::Done(output),
        Ok(Ok(Response::Error(error))) => Attempt::Failed(error),
        Ok(Err(abi)) => Attempt::Failed(PluginError::new(
            ErrorKind::Internal,
            format!("the plugin broke the protocol: {abi}"),
        )),
        Err(join) => Attempt::Failed(PluginError::new(
            ErrorKind::Internal,
            format!("the plugin's thread failed: {join}"),
        )),
    }
}

/// Everything one step's attempts need, owned, so it can run on its own task.
pub(super) struct StepJob {
    pub step: String,
    pub plugin_name: String,
    pub observer: Arc<dyn Observer>,
    pub cancel: CancellationToken,
    pub policy: StepPolicy,
    pub grace: Duration,
}

impl StepJob {
    /// Attempts the call until it succeeds, fails for good, runs out of retries or time, or the
    /// run is cancelled; `entry` comes back final.
    pub(super) async fn run(
        self,
        plugin: PluginRef,
        call: Request,
        mut entry: StepRecord,
    ) -> StepRecord {
        let mut attempt_no = 0;
        loop {
            attempt_no += 1;
            entry.attempts = attempt_no;
            self.observer.step_started(&self.step, attempt_no);
            let hooks = Arc::new(StepHooks {
                step: self.step.clone(),
                plugin: self.plugin_name.clone(),
                observer: self.observer.clone(),
                cancel: self.cancel.child_token(),
            });
            let outcome =
                attempt(plugin, call.clone(), hooks, self.policy.timeout, self.grace).await;
            entry.finished_at = Some(Timestamp::now());
            match outcome {
                Attempt::Done(output) => {
                    entry.status = StepStatus::Succeeded;
                    entry.summary = output.summary;
                    entry.record = output.record;
                    entry.outputs = output.outputs;
                    entry.bytes = output.bytes;
                    entry.warnings = output.warnings;
                    entry.error = None;
                    return entry;
                }
                Attempt::TimedOut => {
                    entry.status = StepStatus::TimedOut;
                    entry.error = Some(StepError {
                        kind: ErrorKind::Transient,
                        message: format!(
                            "timed out after {}",
                            humantime::format_duration(self.policy.timeout)
                        ),
                        detail: None,
                    });
                    return entry;
                }
                Attempt::Failed(error) => {
                    let cancelled =
                        self.cancel.is_cancelled() || error.kind == ErrorKind::Cancelled;
                    if error.is_retryable() && attempt_no <= self.policy.retries && !cancelled {
                        let delay = backoff(self.policy.retry_delay, attempt_no);
                        tracing::warn!(step = %self.step, attempt = attempt_no, "{error}; retrying in {delay:?}");
                        self.observer
                            .step_retrying(&self.step, attempt_no, delay, &error);
                        tokio::select! {
                            () = tokio::time::sleep(delay) => continue,
                            () = self.cancel.cancelled() => {}
                        }
                    }
                    entry.status = if cancelled || self.cancel.is_cancelled() {
                        StepStatus::Cancelled
                    } else {
                        StepStatus::Failed
                    };
                    entry.error = Some(error.into());
                    return entry;
                }
            }
        }
    }
}

/// The delay before retry number `attempt` (1-based): `base · 2^(attempt-1)`, capped at a minute
/// (or `base`, if longer), with "equal jitter" (between half and all of it) so that parallel
/// retries spread out.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt.max(1) - 1).min(16));
    let capped = exp.min(MAX_RETRY_DELAY.max(base));
    let half = capped / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_secs(2);
        for attempt in 1..=10 {
            let d = backoff(base, attempt);
            let full = (base * 2u32.pow(attempt - 1)).min(MAX_RETRY_DELAY);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
        let samples: BTreeSet<_> = (0..20).map(|_| backoff(base, 3)).collect();
        assert!(samples.len() > 1, "no jitter");
        let long = Duration::from_secs(600);
        assert!(
            backoff(long, 5) >= long / 2,
            "a long first delay was cut to the cap"
        );
    }
}
