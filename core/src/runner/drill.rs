//! Restore drills: after the restore steps of a drill ran, wait until the restored system
//! answers its health check (a TCP port, or an HTTP(S) URL with an expected status; see
//! [`health_check`]), record the time to recovery, then tear down what was restored.
//!
//! The teardown runs whatever happened before it — a failed health check, a failed step, even
//! Ctrl-C — because a drill must never leave a launched machine behind. It uses its own
//! cancellation token for that reason, and tears steps down in reverse restore order.

mod health_check;

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Runner;
use super::attempt::attempt;
use super::call::{Calls, NotRun};
use crate::plan::Step;
use crate::plan::refs::Scope;
use crate::record::{DrillOutcome, RunRecord, StepStatus, TeardownOutcome};
use health_check::{HttpRules, Probe, StatusRange, Target};

/// What a drill checks once its restore steps have run. Made by [`DrillSpec::new`], which
/// refuses a health check that could never pass, so that nothing is launched for it.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    /// `HOST:PORT` or an http(s) URL, as written: may use `${steps.ID.outputs.KEY}`.
    health: String,
    /// The kind of target that is, each reference standing for a placeholder.
    written: Target,
    /// What a URL must answer (left at the default for a TCP target).
    http: HttpRules,
    /// How long to wait for it.
    timeout: Duration,
    /// Time between attempts.
    interval: Duration,
}

/// Time between health-check attempts, unless told otherwise.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

impl DrillSpec {
    /// A drill that waits up to `timeout` for `health` to answer: `HOST:PORT` must accept a
    /// TCP connection, an `http://` or `https://` URL must answer a GET with any 2xx (see
    /// [`DrillSpec::expect_status`]), verifying the certificate. References to step outputs are
    /// resolved after the restore; everything else about the value is checked now.
    pub fn new(health: &str, timeout: Duration) -> Result<DrillSpec, String> {
        let written = health_check::check_written(health)?;
        if timeout.is_zero() {
            return Err("the health timeout must be more than 0".into());
        }
        Ok(DrillSpec {
            health: health.to_owned(),
            written,
            http: HttpRules {
                expect: StatusRange::SUCCESS,
                insecure: false,
            },
            timeout,
            interval: HEALTH_INTERVAL,
        })
    }

    /// The statuses a URL target must answer: `200`, or a range `200-399` (codes from 100 to
    /// 599). Refused for a `HOST:PORT` target, which answers no status.
    pub fn expect_status(mut self, statuses: &str) -> Result<DrillSpec, String> {
        let expect = statuses.parse()?;
        if !matches!(self.written, Target::Http { .. }) {
            return Err(format!(
                "health status `{statuses}`: only an http:// or https:// health target answers \
                 with a status, not `{}`",
                self.health
            ));
        }
        self.http.expect = expect;
        Ok(self)
    }

    /// Accept any certificate from an https target (a freshly restored machine's is often
    /// self-signed); the drill's record says so. Refused for any other target.
    pub fn accept_any_certificate(mut self) -> Result<DrillSpec, String> {
        if !matches!(self.written, Target::Http { tls: true, .. }) {
            return Err(format!(
                "accepting any certificate applies only to an https:// health target, not `{}`",
                self.health
            ));
        }
        self.http.insecure = true;
        Ok(self)
    }

    /// Time between attempts (default 2 s).
    pub fn check_every(mut self, interval: Duration) -> Result<DrillSpec, String> {
        if interval.is_zero() {
            return Err("the time between health checks must be more than 0".into());
        }
        self.interval = interval;
        Ok(self)
    }

    /// The target `resolved` stands for, if it is the kind written (a step output cannot turn
    /// a `HOST:PORT` into a URL, nor http into https).
    fn resolved_target(&self, resolved: &str) -> Result<Target, String> {
        let in_target =
            |why: &str| format!("health target `{resolved}` (from `{}`): {why}", self.health);
        let target = Target::parse(resolved).map_err(|why| in_target(&why))?;
        match (&self.written, &target) {
            (Target::Tcp(_), Target::Tcp(_)) => Ok(target),
            (Target::Http { tls: a, .. }, Target::Http { tls: b, .. }) if a == b => Ok(target),
            _ => Err(in_target("not the kind of target written")),
        }
    }
}

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
        let resolved = health_check::resolve(&scope, &spec.health);
        let target = resolved
            .clone()
            .and_then(|text| spec.resolved_target(&text));

        let mut outcome = DrillOutcome {
            health_target: resolved.unwrap_or_else(|_| spec.health.clone()),
            healthy: false,
            time_to_recovery_secs: None,
            health_error: None,
            health_status: None,
            health_expected: None,
            health_insecure: false,
            teardown: Vec::new(),
        };
        if let Target::Http { tls, .. } = spec.written {
            outcome.health_expected = Some(spec.http.expect.to_string());
            outcome.health_insecure = tls && spec.http.insecure;
        }
        if record.dry_run {
            outcome.healthy = true;
            outcome.health_error = Some("dry run: nothing was launched, nothing checked".into());
            return outcome;
        }
        match target {
            _ if !all_restored => {
                outcome.health_error = Some("not checked: the restore did not succeed".into());
            }
            _ if self.cancel.is_cancelled() => {
                outcome.health_error = Some("not checked: the run was cancelled".into());
            }
            Err(message) => outcome.health_error = Some(message),
            Ok(target) => {
                let shown = &outcome.health_target;
                tracing::info!(target = %shown, "drill: waiting for the health check");
                let waited = Probe::new(target, spec.http)
                    .wait(spec.timeout, spec.interval, &self.cancel)
                    .await;
                outcome.health_status = waited.status;
                match waited.result {
                    Ok(()) => {
                        outcome.healthy = true;
                        let elapsed = jiff::Timestamp::now().duration_since(record.started_at);
                        outcome.time_to_recovery_secs = Some(elapsed.as_secs_f64());
                        tracing::info!(
                            "drill: {} answered after {:.1}s",
                            outcome.health_target,
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_url_target_expects_any_2xx_and_verifies_its_certificate_unless_told() {
        let spec = DrillSpec::new("https://${steps.machine.outputs.private_ip}/", MINUTE).unwrap();
        assert_eq!(spec.http.expect, StatusRange::SUCCESS);
        assert!(!spec.http.insecure);
        assert_eq!(spec.interval, HEALTH_INTERVAL);
        let spec = spec
            .expect_status("200-399")
            .unwrap()
            .accept_any_certificate()
            .unwrap();
        assert_eq!(spec.http.expect.to_string(), "200-399");
        assert!(spec.http.insecure);
    }

    #[test]
    fn a_status_or_an_insecure_certificate_fits_only_the_targets_that_have_them() {
        let tcp = DrillSpec::new("${steps.machine.outputs.private_ip}:8800", MINUTE).unwrap();
        let error = tcp.clone().expect_status("200").unwrap_err();
        assert!(error.contains("only an http:// or https://"), "{error}");
        let error = tcp.accept_any_certificate().unwrap_err();
        assert!(error.contains("only to an https://"), "{error}");
        let http = DrillSpec::new("http://10.0.0.5:8800/", MINUTE).unwrap();
        assert!(http.clone().accept_any_certificate().is_err());
        let error = http.expect_status("600").unwrap_err();
        assert!(error.contains("from 100 to 599"), "{error}");
    }

    #[test]
    fn a_health_check_that_could_never_pass_is_refused_before_the_drill() {
        for bad in [
            "",
            "10.0.0.5",
            "http://:8800/",
            "ftp://10.0.0.5/",
            "${steps.a.ip}:80",
        ] {
            assert!(DrillSpec::new(bad, MINUTE).is_err(), "{bad:?}");
        }
        let zero = DrillSpec::new("10.0.0.5:8800", Duration::ZERO).unwrap_err();
        assert!(zero.contains("more than 0"), "{zero}");
        let spec = DrillSpec::new("10.0.0.5:8800", MINUTE).unwrap();
        assert!(spec.clone().check_every(Duration::ZERO).is_err());
        assert_eq!(
            spec.check_every(Duration::from_millis(10))
                .unwrap()
                .interval,
            Duration::from_millis(10)
        );
    }

    #[test]
    fn a_step_output_cannot_change_the_kind_of_target_written() {
        let tcp = DrillSpec::new("${steps.m.outputs.host}:8800", MINUTE).unwrap();
        assert_eq!(
            tcp.resolved_target("10.0.0.9:8800").unwrap(),
            Target::Tcp("10.0.0.9:8800".into())
        );
        let error = tcp.resolved_target("http://10.0.0.9:8800").unwrap_err();
        assert!(error.contains("not the kind of target written"), "{error}");
        let https = DrillSpec::new("https://${steps.m.outputs.host}/", MINUTE).unwrap();
        assert!(https.resolved_target("https://10.0.0.9/").is_ok());
        let error = https.resolved_target(":8800").unwrap_err();
        assert!(
            error.contains("(from `https://${steps.m.outputs.host}/`)"),
            "{error}"
        );
    }
}
