//! Restore drills: after the restore steps of a drill ran, wait until the restored system
//! answers a TCP health check, record the time to recovery, then tear down what was restored.
//!
//! The teardown runs whatever happened before it — a failed health check, a failed step, even
//! Ctrl-C — because a drill must never leave a launched machine behind. It uses its own
//! cancellation token for that reason, and tears steps down in reverse restore order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::Runner;
use super::attempt::attempt;
use super::call::{Calls, NotRun};
use crate::plan::Step;
use crate::plan::refs::Scope;
use crate::record::{DrillOutcome, RunRecord, StepStatus, TeardownOutcome};

/// What a drill checks once its restore steps have run.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    /// `host:port` that must accept a TCP connection; may use `${steps.ID.outputs.KEY}`.
    pub health: String,
    /// How long to wait for it.
    pub health_timeout: Duration,
}

/// Time between health-check connection attempts.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

impl Runner<'_> {
    pub(super) async fn finish_drill(
        &self,
        spec: &DrillSpec,
        calls: &Calls<'_>,
        steps: &[&Step],
        record: &RunRecord,
    ) -> DrillOutcome {
        let restored: Vec<&Step> = steps
            .iter()
            .copied()
            .filter(|s| {
                record
                    .step(&s.id)
                    .is_some_and(|r| r.status == StepStatus::Succeeded)
            })
            .collect();
        let all_restored = record.steps.iter().all(|s| {
            s.status == StepStatus::Succeeded
                || (s.status == StepStatus::Skipped && s.error.is_none())
        });
        let mut scope = calls.scope();
        scope.outputs = record
            .steps
            .iter()
            .map(|s| (s.id.clone(), s.outputs.clone()))
            .collect::<BTreeMap<_, _>>();
        let target = scope
            .resolve_config(&serde_json::Value::String(spec.health.clone()))
            .map(|v| v.as_str().unwrap_or_default().to_owned());

        let mut outcome = DrillOutcome {
            health_target: target.clone().unwrap_or_else(|_| spec.health.clone()),
            healthy: false,
            time_to_recovery_secs: None,
            health_error: None,
            teardown: Vec::new(),
        };
        if record.dry_run {
            outcome.healthy = true;
            outcome.health_error = Some("dry run: nothing was launched, nothing checked".into());
            return outcome;
        }
        match target {
            Err(message) => outcome.health_error = Some(message),
            Ok(_) if !all_restored => {
                outcome.health_error = Some("not checked: the restore did not succeed".into());
            }
            Ok(_) if self.cancel.is_cancelled() => {
                outcome.health_error = Some("not checked: the run was cancelled".into());
            }
            Ok(target) => {
                tracing::info!(target = %target, "drill: waiting for the health check");
                match self.wait_healthy(&target, spec.health_timeout).await {
                    Ok(()) => {
                        outcome.healthy = true;
                        let elapsed = jiff::Timestamp::now().duration_since(record.started_at);
                        outcome.time_to_recovery_secs = Some(elapsed.as_secs_f64());
                        tracing::info!(
                            "drill: {target} answered after {:.1}s",
                            elapsed.as_secs_f64()
                        );
                    }
                    Err(message) => outcome.health_error = Some(message),
                }
            }
        }
        for step in restored.iter().rev() {
            outcome
                .teardown
                .push(self.teardown(step, calls, record, &scope).await);
        }
        outcome
    }

    /// Connects to `target` until it accepts, the deadline passes or the run is cancelled.
    async fn wait_healthy(&self, target: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last_error;
        loop {
            let attempt = tokio::time::timeout(HEALTH_INTERVAL, TcpStream::connect(target)).await;
            match attempt {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "connection attempt timed out".into(),
            }
            if Instant::now() + HEALTH_INTERVAL > deadline {
                return Err(format!(
                    "{target} did not accept a connection within {} (last: {last_error})",
                    humantime::format_duration(timeout)
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(HEALTH_INTERVAL) => {}
                () = self.cancel.cancelled() => {
                    return Err("cancelled while waiting for the health check".into());
                }
            }
        }
    }

    async fn teardown(
        &self,
        step: &Step,
        calls: &Calls<'_>,
        record: &RunRecord,
        scope: &Scope,
    ) -> TeardownOutcome {
        let outcome = |ok: bool, message: String| TeardownOutcome {
            step: step.id.clone(),
            ok,
            message,
        };
        let Some(restored) = record.step(&step.id) else {
            return outcome(false, "the step was not restored".into());
        };
        let call = match calls.teardown(step, restored, scope) {
            Ok(Some(call)) => call,
            Ok(None) => {
                let message = format!("plugin `{}` has nothing to tear down", step.plugin);
                return outcome(true, message);
            }
            Err(NotRun::Failed(error)) => return outcome(false, error.message),
            Err(NotRun::Skipped { summary, .. }) => return outcome(true, summary),
        };
        // Not the run's token: a cancelled drill must still tear down.
        let hooks = calls.hooks(step, CancellationToken::new());
        tracing::info!(step = %step.id, "drill: tearing down");
        let timeout = step.policy.timeout;
        match attempt(call.plugin, call.request, hooks, timeout, self.grace)
            .await
            .into_result("teardown", timeout)
        {
            Ok(output) => outcome(true, output.summary),
            Err(error) => outcome(false, error.to_string()),
        }
    }
}
