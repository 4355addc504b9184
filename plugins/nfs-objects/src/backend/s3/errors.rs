//! Failed S3 calls translated into engine errors the runner can act on.
//!
//! A missing key is a missing object (verify names the damaged file); a missing bucket or a
//! refused credential is the plan's fault and must say so in one line, not after minutes of
//! retries; everything else (throttling and 5xx once the SDK's own retries are spent, network
//! errors) is a backend failure worth another attempt later.

use std::io;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::Error;

/// Error codes meaning "the credentials or the policy do not allow this".
const DENIED: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AccountProblem",
];

/// What went wrong with `call` on object `name` (a key relative to the repository) of `bucket`.
pub(super) fn classify<E>(
    bucket: &str,
    name: &str,
    call: &str,
    err: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = match &err {
        SdkError::ServiceError(e) => e.err().code().map(str::to_owned),
        _ => None,
    };
    match (code.as_deref(), status) {
        (Some("NoSuchBucket"), _) => {
            Error::Access(format!("bucket `{bucket}` does not exist ({call})"))
        }
        (Some(c), _) if DENIED.contains(&c) => Error::Access(format!(
            "bucket `{bucket}`: {call} {name} was denied ({c}); check the credentials and that the policy allows s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject on the prefix"
        )),
        (None, Some(403)) => Error::Access(format!(
            "bucket `{bucket}`: {call} {name} was denied (HTTP 403); check the credentials and the bucket policy"
        )),
        (Some("NoSuchKey" | "NotFound"), _) | (None, Some(404)) => {
            Error::MissingObject(name.to_owned())
        }
        (Some("InvalidRange"), _) | (_, Some(416)) => Error::Corrupt {
            name: name.to_owned(),
            reason: "shorter than the range its index promises".into(),
        },
        _ => {
            let detail = match &err {
                SdkError::ServiceError(e) => format!(
                    "{call} failed: {} (HTTP {})",
                    e.err().code().unwrap_or("no error code"),
                    status.unwrap_or_default()
                ),
                other => format!("{call} failed: {}", DisplayErrorContext(other)),
            };
            Error::Backend {
                name: format!("s3://{bucket}/{name}"),
                source: io::Error::other(detail),
            }
        }
    }
}

/// A failure to read a response body (the call itself succeeded).
pub(super) fn body_error(bucket: &str, name: &str, err: impl std::fmt::Display) -> Error {
    Error::Backend {
        name: format!("s3://{bucket}/{name}"),
        source: io::Error::other(format!("reading the response body: {err}")),
    }
}
