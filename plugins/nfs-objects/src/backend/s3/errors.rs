//! Failed S3 calls translated into engine errors the runner can act on.
//!
//! What a failure means is `backplan-aws`'s one policy, shared with the other AWS plugins; this
//! module maps it onto the engine's errors. A missing key is a missing object (verify names the
//! damaged file); a missing bucket or a refused credential is the plan's fault and must say so
//! in one line, not after minutes of retries; everything else is a backend failure that keeps
//! the policy's meaning: transient (throttling and 5xx once the SDK's own retries are spent,
//! network errors) is worth another attempt later, the rest (an answer such as
//! `InvalidObjectState`) is not.
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
        (_, _, meaning) => Error::Backend {
            name: format!("s3://{bucket}/{name}"),
            source: io::Error::other(format!("{call} failed: {words}")),
            transient: meaning == Meaning::Transient,
        },
    }
}

/// A failure to read a response body (the call itself succeeded).
pub(super) fn body_error(bucket: &str, name: &str, err: impl std::fmt::Display) -> Error {
    // The connection dropped or timed out mid-body: the next attempt may get it whole.
    Error::Backend {
        name: format!("s3://{bucket}/{name}"),
        source: io::Error::other(format!("reading the response body: {err}")),
        transient: true,
    }
}

#[cfg(test)]
mod tests {
    use backplan_aws::testing::answer;

    use super::*;

    fn transient(code: &str, status: u16) -> Option<bool> {
        match classify(
            "art",
            "data/ab/ab.pack",
            "GetObject",
            answer(Some(code), status, ""),
        ) {
            Error::Backend { transient, .. } => Some(transient),
            _ => None,
        }
    }

    #[test]
    fn an_s3_answer_the_shared_policy_calls_permanent_is_not_a_transient_backend_error() {
        assert_eq!(transient("SlowDown", 503), Some(true));
        assert_eq!(transient("InternalError", 500), Some(true));
        assert_eq!(transient("InvalidObjectState", 403), Some(false));
        assert_eq!(transient("NoSuchUpload", 404), Some(false));
        assert!(matches!(
            classify(
                "art",
                "x",
                "GetObject",
                answer(Some("AccessDenied"), 403, "")
            ),
            Error::Access(_)
        ));
    }
}
