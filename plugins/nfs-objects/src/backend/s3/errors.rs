//! Failed S3 calls translated into engine errors the runner can act on.
//!
//! What a failure means is `backplan-aws`'s one policy, shared with the other AWS plugins; this
//! module maps it onto the engine's errors. A missing key is a missing object (verify names the
//! damaged file); a missing bucket or a refused credential is the plan's fault and must say so
//! in one line, not after minutes of retries; everything else (throttling and 5xx once the SDK's
//! own retries are spent, network errors) is a backend failure worth another attempt later.
//! The engine's errors have no detail field, so the SDK's own words go into the message.

use std::io;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use backplan_aws::{Failure, Meaning};

use crate::error::Error;

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
    let failure = Failure::of(&err);
    let reason = failure.reason();
    let words = &failure.words;
    match (failure.code.as_deref(), failure.status, failure.meaning) {
        (Some("NoSuchBucket"), _, _) => Error::Access(format!(
            "bucket `{bucket}` does not exist ({call}: {words})"
        )),
        (_, _, Meaning::Denied) => Error::Access(format!(
            "bucket `{bucket}`: {call} {name} was denied ({reason}); check the credentials and that the policy allows s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject on the prefix ({words})"
        )),
        (_, _, Meaning::Unresolved) => Error::Access(format!(
            "bucket `{bucket}`: {call} {name} could not be sent: no credentials, or no endpoint for the region ({words})"
        )),
        (Some("NoSuchKey" | "NotFound") | None, _, Meaning::NotFound) => {
            Error::MissingObject(name.to_owned())
        }
        (Some("InvalidRange"), _, _) | (_, Some(416), _) => Error::Corrupt {
            name: name.to_owned(),
            reason: "shorter than the range its index promises".into(),
        },
        _ => Error::Backend {
            name: format!("s3://{bucket}/{name}"),
            source: io::Error::other(format!("{call} failed: {words}")),
        },
    }
}

/// A failure to read a response body (the call itself succeeded).
pub(super) fn body_error(bucket: &str, name: &str, err: impl std::fmt::Display) -> Error {
    Error::Backend {
        name: format!("s3://{bucket}/{name}"),
        source: io::Error::other(format!("reading the response body: {err}")),
    }
}
