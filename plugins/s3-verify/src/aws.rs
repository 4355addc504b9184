//! The S3 client, and AWS errors translated into errors the runner acts on.
//!
//! Endpoints come only from the standard environment (`AWS_ENDPOINT_URL_S3`,
//! `AWS_ENDPOINT_URL`), so the same code talks to AWS and to a local stand-in. Every failed call
//! names the bucket and the API call: "access denied" is a configuration problem (fix the policy),
//! throttling and 5xx are transient (the runner retries), the rest is permanent.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use backplan_plugin_sdk::PluginError;

use crate::config::Config;

/// Loads the shared AWS configuration (credentials, region, endpoint) from the environment.
pub async fn load(config: &Config) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        // GetBucketLocation answers from any region; the bucket's own is used after that.
        return aws_config::defaults(BehaviorVersion::latest())
            .region(Region::from_static("us-east-1"))
            .load()
            .await;
    }
    sdk
}

/// Whether an endpoint is set through the environment (a local stand-in, or a VPC endpoint).
fn endpoint_from_env() -> bool {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// An S3 client in `region` (or the loaded configuration's).
pub fn client(sdk: &SdkConfig, config: &Config, region: Option<&str>) -> Client {
    let mut builder = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(config.force_path_style.unwrap_or_else(endpoint_from_env));
    if let Some(region) = region {
        builder = builder.region(Region::new(region.to_owned()));
    }
    Client::from_conf(builder.build())
}

/// The error code of a service error (`NoSuchBucket`, `AccessDenied`...), if the call got that far.
pub fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

const DENIED: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
];
const TRANSIENT: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
];

/// Translates a failed call on `bucket` into a plugin error naming both.
pub fn error<E>(
    bucket: &str,
    call: &str,
    err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> PluginError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // The service's own words when it answered; the whole cause chain when it did not
    // (connection refused, no credentials...).
    let detail = match &err {
        SdkError::ServiceError(e) => format!(
            "{}: {}",
            e.err().code().unwrap_or("no error code"),
            e.err().message().unwrap_or("no message")
        ),
        other => DisplayErrorContext(other).to_string(),
    };
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = code(&err).map(str::to_owned);
    let error = match (&err, code.as_deref(), status) {
        (SdkError::ServiceError(_), Some(c), _) if DENIED.contains(&c) => {
            PluginError::config(format!(
                "bucket `{bucket}`: {call} was denied ({c}): check the credentials and that the policy allows it (`backplan plan permissions` lists what this step needs)"
            ))
        }
        (SdkError::ServiceError(_), Some("NoSuchBucket"), _) => PluginError::config(format!(
            "bucket `{bucket}` does not exist ({call}: NoSuchBucket)"
        )),
        (SdkError::ServiceError(_), None, Some(403)) => PluginError::config(format!(
            "bucket `{bucket}`: {call} was denied (HTTP 403): check the credentials and the bucket policy"
        )),
        (SdkError::ServiceError(_), Some("NotFound") | None, Some(404)) if call == "HeadBucket" => {
            PluginError::config(format!(
                "bucket `{bucket}` does not exist ({call}: HTTP 404)"
            ))
        }
        (SdkError::ServiceError(_), Some(c), _) if TRANSIENT.contains(&c) => {
            PluginError::transient(format!("bucket `{bucket}`: {call} failed ({c}), try again"))
        }
        (SdkError::ServiceError(_), _, Some(s)) if s >= 500 => {
            PluginError::transient(format!("bucket `{bucket}`: {call} failed (HTTP {s})"))
        }
        (
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_),
            _,
            _,
        ) => PluginError::transient(format!(
            "bucket `{bucket}`: {call} did not get an answer (network or endpoint problem)"
        )),
        (SdkError::ConstructionFailure(_), _, _) => PluginError::config(format!(
            "bucket `{bucket}`: {call} could not be sent (credentials or region not resolved?)"
        )),
        (_, c, s) => PluginError::permanent(format!(
            "bucket `{bucket}`: {call} failed ({})",
            c.map(str::to_owned)
                .or_else(|| s.map(|s| format!("HTTP {s}")))
                .unwrap_or_else(|| "no error code".into())
        )),
    };
    error.with_detail(detail)
}
