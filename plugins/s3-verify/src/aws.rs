//! The S3 client, and failed calls worded for this plugin.
//!
//! Configuration, endpoints (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`), path style and what an
//! error means come from `backplan-aws`, shared with the other AWS plugins; this module adds the
//! bucket and the API call to every message, and one rule of its own: a bucket the step names
//! that does not exist is a configuration error.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use backplan_aws::SdkConfig;
use backplan_aws::{Failure, Meaning};
use backplan_plugin_sdk::PluginError;

use crate::config::Config;

/// Loads the AWS configuration (credentials, region, endpoint) from the environment and the
/// step. Without a region anywhere, us-east-1: GetBucketLocation answers from any region, and
/// the bucket's own is used after that.
pub(crate) async fn load(config: &Config) -> SdkConfig {
    backplan_aws::load(&backplan_aws::Settings {
        region: config.region.clone(),
        fallback_region: Some("us-east-1"),
        ..backplan_aws::Settings::default()
    })
    .await
}

/// An S3 client in `region` (or the loaded configuration's).
pub(crate) fn client(sdk: &SdkConfig, config: &Config, region: Option<&str>) -> Client {
    backplan_aws::s3::client(sdk, region, config.force_path_style)
}

/// The error code of a service error (`NoSuchBucket`, `AccessDenied`...), if the call got that far.
pub(crate) fn code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}

/// Translates a failed call on `bucket` into a plugin error naming both.
pub(crate) fn error<E>(bucket: &str, call: &str, err: SdkError<E, HttpResponse>) -> PluginError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = Failure::of(&err);
    let reason = failure.reason();
    let message = match failure.meaning {
        Meaning::Denied => format!(
            "bucket `{bucket}`: {call} was denied ({reason}): check the credentials and that the policy allows it (`backplan plan permissions` lists what this step needs)"
        ),
        Meaning::Unresolved => format!(
            "bucket `{bucket}`: {call} could not be sent: no credentials, or no endpoint for the region"
        ),
        Meaning::NotFound
            if call == "HeadBucket" || failure.code.as_deref() == Some("NoSuchBucket") =>
        {
            return PluginError::config(format!(
                "bucket `{bucket}` does not exist ({call}: {reason})"
            ))
            .with_detail(failure.words);
        }
        Meaning::Transient if failure.status.is_none() => {
            format!("bucket `{bucket}`: {call} did not get an answer (network or endpoint problem)")
        }
        Meaning::Transient => format!("bucket `{bucket}`: {call} failed ({reason}), try again"),
        Meaning::NotFound | Meaning::Failed => {
            format!("bucket `{bucket}`: {call} failed ({reason})")
        }
    };
    failure.into_error(message)
}

#[cfg(test)]
mod tests {
    use backplan_aws::testing::answer;
    use backplan_plugin_sdk::ErrorKind;

    use super::*;

    #[test]
    fn each_failure_names_the_bucket_and_call_and_keeps_s3s_words() {
        for (call, code, status, kind, says) in [
            (
                "GetObject k",
                Some("AccessDenied"),
                403,
                ErrorKind::Config,
                "was denied (AccessDenied)",
            ),
            (
                "HeadBucket",
                None,
                403,
                ErrorKind::Config,
                "was denied (HTTP 403)",
            ),
            (
                "HeadBucket",
                Some("NotFound"),
                404,
                ErrorKind::Config,
                "bucket `b` does not exist",
            ),
            (
                "ListObjectsV2",
                Some("NoSuchBucket"),
                404,
                ErrorKind::Config,
                "does not exist",
            ),
            (
                "GetObject k",
                Some("NoSuchKey"),
                404,
                ErrorKind::Permanent,
                "failed (NoSuchKey)",
            ),
            (
                "GetObject k",
                Some("SlowDown"),
                503,
                ErrorKind::Transient,
                "try again",
            ),
            (
                "GetObject k",
                Some("InvalidObjectState"),
                403,
                ErrorKind::Permanent,
                "failed",
            ),
        ] {
            let e = error("b", call, answer(code, status, "S3's own words"));
            assert_eq!(e.kind, kind, "{code:?} {status}: {e:?}");
            assert!(e.message.contains(says), "{code:?}: {}", e.message);
            assert!(
                e.message.contains("`b`") && e.message.contains(call.split(' ').next().unwrap())
            );
            assert!(
                e.detail.as_deref().unwrap().contains("S3's own words"),
                "{e:?}"
            );
        }
    }
}
