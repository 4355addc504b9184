//! The connection to EC2: runtime, configuration, clients per region, and EC2's errors.
//!
//! The runtime, the standard configuration chain (`AWS_ENDPOINT_URL` for a local endpoint) and
//! what an error means come from `backplan-aws`, shared with the other AWS plugins, so tests
//! exercise the same code as production. Every EC2 call goes through [`call`]: the SDK's
//! standard retry first, then a bounded retry of our own for throttling and 5xx, then a
//! transient error the runner may retry once more. Errors keep AWS's own code and words.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use backplan_aws::{Failure, Meaning, SdkConfig};
use backplan_plugin_sdk::{Context, PluginError, PluginResult};
use tokio::runtime::Runtime;

use crate::throttle::backoff;
use crate::wait::pause;

/// Attempts the SDK makes per call (its standard mode: exponential backoff with jitter).
const SDK_ATTEMPTS: u32 = 4;
/// Our own attempts on top, for throttling that outlasts the SDK's.
const OUR_ATTEMPTS: u32 = 3;
const OUR_BACKOFF_BASE: Duration = Duration::from_secs(2);
const OUR_BACKOFF_CAP: Duration = Duration::from_secs(20);

/// A failed EC2 call: the operation, and what AWS or the SDK said.
#[derive(Debug, Clone)]
pub struct AwsError {
    /// The API operation, e.g. `CreateImage`.
    pub operation: &'static str,
    pub failure: Failure,
}

impl AwsError {
    /// Whether AWS answered `DryRunOperation`: the call would have been allowed.
    pub fn is_dry_run_ok(&self) -> bool {
        self.failure.code.as_deref() == Some("DryRunOperation")
    }

    /// Whether the resource named does not exist (or its id cannot exist).
    pub fn is_not_found(&self) -> bool {
        self.failure.meaning == Meaning::NotFound
            || self
                .failure
                .code
                .as_deref()
                .is_some_and(|c| c.ends_with(".Malformed"))
    }

    /// Throttling, 5xx, timeouts, connection failures.
    pub fn is_transient(&self) -> bool {
        self.failure.meaning == Meaning::Transient
    }
}

impl From<AwsError> for PluginError {
    fn from(e: AwsError) -> PluginError {
        let operation = e.operation;
        let reason = e.failure.reason();
        let message = match (e.failure.meaning, &e.failure.message) {
            (Meaning::Denied, _) => format!(
                "ec2:{operation} was refused ({reason}): check the credentials and that the IAM policy allows it (`backplan plan permissions` prints one)"
            ),
            (Meaning::Unresolved, _) => format!(
                "{operation} could not be sent: no AWS credentials, or no endpoint for the region"
            ),
            (_, Some(message)) if e.failure.code.is_some() => {
                format!("{operation} failed: {reason}: {message}")
            }
            (_, _) => format!("{operation} failed: {}", e.failure.words),
        };
        e.failure.into_error(message)
    }
}

/// Calls EC2 operation `operation` through `send`, retrying throttling and 5xx with backoff.
pub(crate) async fn call<T, E, F, Fut>(
    ctx: &Context,
    operation: &'static str,
    mut send: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut attempt = 1;
    loop {
        match send().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                let error = AwsError {
                    operation,
                    failure: Failure::of(&error),
                };
                if !error.is_transient() || attempt >= OUR_ATTEMPTS || ctx.is_cancelled() {
                    return Err(error);
                }
                let wait = backoff(attempt, OUR_BACKOFF_BASE, OUR_BACKOFF_CAP);
                ctx.warn(format!(
                    "{operation}: {}; retrying in {:.1}s",
                    error.failure.words,
                    wait.as_secs_f64()
                ));
                if pause(ctx, wait).await.is_err() {
                    return Err(error);
                }
                attempt += 1;
            }
        }
    }
}

/// The runtime and AWS configuration of one action.
#[derive(Debug)]
pub(crate) struct Aws {
    runtime: Runtime,
    config: SdkConfig,
    region: String,
}

impl Aws {
    /// Loads the standard configuration; `region` overrides the chain's region.
    pub(crate) fn connect(region: Option<&str>) -> PluginResult<Aws> {
        let runtime = backplan_aws::runtime::current_thread()?;
        let config = runtime.block_on(backplan_aws::load(&backplan_aws::Settings {
            region: region.map(str::to_owned),
            max_attempts: Some(SDK_ATTEMPTS),
            ..backplan_aws::Settings::default()
        }));
        let region = config.region().map(ToString::to_string).ok_or_else(|| {
            PluginError::config(
                "no AWS region: set `region` in the step, or AWS_REGION / a profile's region",
            )
        })?;
        Ok(Aws {
            runtime,
            config,
            region,
        })
    }

    /// The main region.
    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    /// An EC2 client for `region`.
    pub(crate) fn ec2(&self, region: &str) -> Client {
        let config = aws_sdk_ec2::config::Builder::from(&self.config)
            .region(Region::new(region.to_owned()))
            .build();
        Client::from_conf(config)
    }

    /// Runs `future` to completion on this action's runtime.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Resolves credentials now, for `check`: a config error says where they were looked for.
    pub(crate) async fn check_credentials(&self) -> PluginResult<()> {
        backplan_aws::check_credentials(&self.config).await
    }
}

#[cfg(test)]
mod tests {
    use backplan_plugin_sdk::ErrorKind;

    use super::*;

    fn answered(code: &str, status: u16) -> AwsError {
        AwsError {
            operation: "CreateImage",
            failure: Failure {
                code: Some(code.to_owned()),
                message: Some("AWS's own words".into()),
                status: Some(status),
                meaning: backplan_aws::error::meaning(Some(code), Some(status)),
                words: format!("{code}: AWS's own words (HTTP {status})"),
            },
        }
    }

    #[test]
    fn an_unauthorized_call_during_a_run_is_a_configuration_error_like_in_check() {
        let error = PluginError::from(answered("UnauthorizedOperation", 403));
        assert_eq!(error.kind, ErrorKind::Config, "{error:?}");
        assert!(
            error.message.contains("ec2:CreateImage"),
            "{}",
            error.message
        );
        assert!(
            error.detail.as_deref().unwrap().contains("AWS's own words"),
            "{error:?}"
        );
    }

    #[test]
    fn throttling_is_transient_and_a_missing_image_permanent_with_aws_words() {
        let throttled = PluginError::from(answered("RequestLimitExceeded", 503));
        assert_eq!(throttled.kind, ErrorKind::Transient);
        assert!(
            throttled
                .message
                .contains("RequestLimitExceeded: AWS's own words")
        );
        let missing = answered("InvalidAMIID.NotFound", 400);
        assert!(missing.is_not_found());
        assert_eq!(PluginError::from(missing).kind, ErrorKind::Permanent);
        assert!(answered("InvalidInstanceID.Malformed", 400).is_not_found());
        assert!(answered("DryRunOperation", 412).is_dry_run_ok());
    }
}
