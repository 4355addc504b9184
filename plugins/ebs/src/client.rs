//! The connection to EC2: runtime, configuration, clients per region, and what its errors mean.
//!
//! The AWS SDK is async; actions are called on a blocking thread, so each action builds its own
//! small current-thread runtime here and drives everything on it. Configuration comes from the
//! standard chain only (environment, profile, IMDS; `AWS_ENDPOINT_URL` for a local endpoint), so
//! tests exercise the same code as production. Every EC2 call goes through [`call`]: the SDK's
//! standard retry first, then a bounded retry of our own for throttling and 5xx, then a transient
//! error the runner may retry once more. Errors keep AWS's own code and words.

use std::future::Future;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use backplan_plugin_sdk::{Context, PluginError, PluginResult};
use tokio::runtime::Runtime;

use crate::throttle::{backoff, is_throttling};
use crate::wait::pause;

/// Attempts the SDK makes per call (its standard mode: exponential backoff with jitter).
const SDK_ATTEMPTS: u32 = 4;
/// Our own attempts on top, for throttling that outlasts the SDK's.
const OUR_ATTEMPTS: u32 = 3;
const OUR_BACKOFF_BASE: Duration = Duration::from_secs(2);
const OUR_BACKOFF_CAP: Duration = Duration::from_secs(20);

/// An EC2 failure, with AWS's code and message.
#[derive(Debug, Clone)]
pub struct AwsError {
    /// The API operation, e.g. `CreateImage`.
    pub operation: &'static str,
    /// AWS's error code (`InvalidAMIID.NotFound`), empty for network failures.
    pub code: String,
    pub message: String,
    /// Throttling, 5xx, timeouts, connection failures.
    pub transient: bool,
}

impl AwsError {
    fn from_sdk<E>(operation: &'static str, error: SdkError<E>) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &error {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or_default().to_owned();
                let message = service.err().message().unwrap_or_default().to_owned();
                let status = service.raw().status().as_u16();
                AwsError {
                    operation,
                    transient: is_throttling(&code, status),
                    message: if message.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        message
                    },
                    code,
                }
            }
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => AwsError {
                operation,
                code: String::new(),
                message: DisplayErrorContext(&error).to_string(),
                transient: true,
            },
            _ => AwsError {
                operation,
                code: String::new(),
                message: DisplayErrorContext(&error).to_string(),
                transient: false,
            },
        }
    }

    /// Whether AWS answered `DryRunOperation`: the call would have been allowed.
    pub fn is_dry_run_ok(&self) -> bool {
        self.code == "DryRunOperation"
    }

    /// Whether the caller lacks the IAM permission.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self.code.as_str(),
            "UnauthorizedOperation" | "AccessDenied" | "AuthFailure"
        )
    }

    /// Whether the resource named does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code.ends_with(".NotFound") || self.code.ends_with(".Malformed")
    }
}

impl From<AwsError> for PluginError {
    fn from(e: AwsError) -> PluginError {
        let text = if e.code.is_empty() {
            format!("{} failed: {}", e.operation, e.message)
        } else {
            format!("{} failed: {}: {}", e.operation, e.code, e.message)
        };
        if e.is_unauthorized() {
            PluginError::permanent(format!(
                "not allowed to call ec2:{} ({}): grant it in the IAM policy (`backplan plan permissions`)",
                e.operation, e.code
            ))
            .with_detail(e.message)
        } else if e.transient {
            PluginError::transient(text)
        } else {
            PluginError::permanent(text)
        }
    }
}

/// Calls EC2 operation `operation` through `send`, retrying throttling and 5xx with backoff.
pub async fn call<T, E, F, Fut>(
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
                let error = AwsError::from_sdk(operation, error);
                if !error.transient || attempt >= OUR_ATTEMPTS || ctx.is_cancelled() {
                    return Err(error);
                }
                let wait = backoff(attempt, OUR_BACKOFF_BASE, OUR_BACKOFF_CAP);
                ctx.warn(format!(
                    "{operation}: {} {}; retrying in {:.1}s",
                    error.code,
                    error.message,
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
pub struct Aws {
    runtime: Runtime,
    config: SdkConfig,
    region: String,
}

impl Aws {
    /// Loads the standard configuration; `region` overrides the chain's region.
    pub fn connect(region: Option<&str>) -> PluginResult<Aws> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PluginError::permanent(format!("cannot start an async runtime: {e}")))?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(SDK_ATTEMPTS));
        if let Some(region) = region {
            loader = loader.region(Region::new(region.to_owned()));
        }
        let config = runtime.block_on(loader.load());
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
    pub fn region(&self) -> &str {
        &self.region
    }

    /// An EC2 client for `region`.
    pub fn ec2(&self, region: &str) -> Client {
        let config = aws_sdk_ec2::config::Builder::from(&self.config)
            .region(Region::new(region.to_owned()))
            .build();
        Client::from_conf(config)
    }

    /// Runs `future` to completion on this action's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Resolves credentials now, for `check`: a config error says where they were looked for.
    pub async fn check_credentials(&self) -> PluginResult<()> {
        use aws_sdk_ec2::config::ProvideCredentials;
        let provider = self
            .config
            .credentials_provider()
            .ok_or_else(|| PluginError::config("no AWS credentials provider is configured"))?;
        provider.provide_credentials().await.map(|_| ()).map_err(|e| {
            PluginError::config(format!(
                "no AWS credentials (environment, profile, SSO, web identity, IMDS were tried): {}",
                DisplayErrorContext(&e)
            ))
        })
    }
}
