//! The one meaning of a failed AWS call, whatever the service and whichever plugin made it.
//!
//! - AWS refused the credentials or the policy refused the call ([`Meaning::Denied`]), or the
//!   SDK found no credentials, region or endpoint to send it with ([`Meaning::Unresolved`]): a
//!   configuration error, since only a change to the plan, the policy or the environment helps.
//! - Throttling, a 5xx, a timeout, no answer at all ([`Meaning::Transient`]): the runner retries.
//! - What the call names does not exist ([`Meaning::NotFound`]), or anything else
//!   ([`Meaning::Failed`]): permanent.
//!
//! A [`Failure`] keeps AWS's code and message and the SDK's whole cause chain, so the error a
//! plugin builds from it ([`Failure::into_error`]) always carries the SDK's own words.

use std::error::Error;

use aws_credential_types::provider::error::CredentialsError;
use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use backplan_plugin_sdk::{ErrorKind, PluginError};

/// Codes that mean "these credentials may not do this": missing, invalid or expired
/// credentials, an account that is blocked, or a policy that does not allow the call.
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AccountProblem",
    "AllAccessDisabled",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidToken",
    "OptInRequired",
    "SignatureDoesNotMatch",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
];

/// Codes that mean "try later", besides the SDK's own throttling and transient lists.
const ALSO_TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "RequestTimeTooSkewed",
    "ResourceLimitExceeded",
    "ServiceUnavailable",
    "SnapshotCreationPerVolumeRateExceeded",
    "Unavailable",
];

/// What a failed call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// AWS refused the credentials, or the policy does not allow the call.
    Denied,
    /// The request was never sent: no credentials were found, or no region or endpoint could
    /// be worked out.
    Unresolved,
    /// Throttling, a server error, a timeout or no answer: the same call may succeed later.
    Transient,
    /// What the call names does not exist.
    NotFound,
    /// Anything else; repeating the call will not help.
    Failed,
}

impl Meaning {
    /// What the runner does about it.
    pub fn kind(self) -> ErrorKind {
        match self {
            Meaning::Denied | Meaning::Unresolved => ErrorKind::Config,
            Meaning::Transient => ErrorKind::Transient,
            Meaning::NotFound | Meaning::Failed => ErrorKind::Permanent,
        }
    }
}

/// The meaning of an answer from AWS: its error code (if it sent one) and HTTP status.
pub fn meaning(code: Option<&str>, status: Option<u16>) -> Meaning {
    let listed = |list: &[&str]| code.is_some_and(|c| list.contains(&c));
    if listed(DENIED) {
        Meaning::Denied
    } else if listed(THROTTLING_ERRORS)
        || listed(TRANSIENT_ERRORS)
        || listed(ALSO_TRANSIENT)
        || status.is_some_and(|s| s == 429 || s >= 500)
    {
        Meaning::Transient
    } else if code.is_some_and(names_something_missing) || (code.is_none() && status == Some(404)) {
        Meaning::NotFound
    } else if code.is_none() && matches!(status, Some(401 | 403)) {
        // HEAD requests get no body, so no code: the status is all there is.
        Meaning::Denied
    } else {
        Meaning::Failed
    }
}

/// `NoSuchBucket`, `NoSuchKey`, `InvalidAMIID.NotFound`, `NotFound`,
/// `ReplicationConfigurationNotFoundError`...
fn names_something_missing(code: &str) -> bool {
    code.starts_with("NoSuch")
        || ["NotFound", "NotFoundError", "NotFoundException"]
            .iter()
            .any(|end| code.ends_with(end))
}

/// Whether the SDK gave up before sending: no credentials in the chain, or no endpoint (a
/// missing or malformed region or endpoint URL).
fn unresolved(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(credentials) = error.downcast_ref::<CredentialsError>()
            && matches!(
                credentials,
                CredentialsError::CredentialsNotLoaded(_)
                    | CredentialsError::InvalidConfiguration(_)
            )
        {
            return true;
        }
        if error.is::<aws_smithy_http::endpoint::ResolveEndpointError>()
            || error.is::<aws_smithy_runtime_api::client::endpoint::error::ResolveEndpointError>()
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// A failed call, read once: AWS's code, message and status, its meaning, and the SDK's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// AWS's error code, e.g. `AccessDenied`; `None` when AWS did not answer or sent none.
    pub code: Option<String>,
    /// AWS's message, when it sent one.
    pub message: Option<String>,
    /// The HTTP status of the answer, if there was one.
    pub status: Option<u16>,
    pub meaning: Meaning,
    /// The SDK's own words: `code: message (HTTP status)` for an answer, the whole cause chain
    /// otherwise (connection refused, no credentials...).
    pub words: String,
}

impl Failure {
    /// Reads a failed call of any AWS SDK client.
    pub fn of<E>(error: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + Error + 'static,
    {
        let status = error.raw_response().map(|r| r.status().as_u16());
        if let SdkError::ServiceError(service) = error {
            let code = service.err().code().map(str::to_owned);
            let message = service.err().message().map(str::to_owned);
            let words = format!(
                "{}: {} (HTTP {})",
                code.as_deref().unwrap_or("no error code"),
                message.as_deref().unwrap_or("no message"),
                status.unwrap_or_default()
            );
            return Failure {
                meaning: meaning(code.as_deref(), status),
                code,
                message,
                status,
                words,
            };
        }
        let meaning = if unresolved(error) {
            Meaning::Unresolved
        } else {
            match error {
                SdkError::TimeoutError(_)
                | SdkError::DispatchFailure(_)
                | SdkError::ResponseError(_) => Meaning::Transient,
                _ => Meaning::Failed,
            }
        };
        Failure {
            code: None,
            message: None,
            status,
            meaning,
            words: DisplayErrorContext(error).to_string(),
        }
    }

    /// A short name for what happened, for a message: the code, else the HTTP status, else
    /// whether the request got out at all.
    pub fn reason(&self) -> String {
        match (&self.code, self.status, self.meaning) {
            (Some(code), _, _) => code.clone(),
            (None, Some(status), _) => format!("HTTP {status}"),
            (None, None, Meaning::Unresolved) => "not sent".into(),
            (None, None, Meaning::Transient) => "no answer".into(),
            (None, None, _) => "no error code".into(),
        }
    }

    /// The plugin error `message` of the kind this failure means, with the SDK's words as its
    /// detail.
    pub fn into_error(self, message: impl Into<String>) -> PluginError {
        PluginError::new(self.meaning.kind(), message).with_detail(self.words)
    }
}

#[cfg(test)]
mod tests {
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn answer(code: Option<&str>, status: u16) -> SdkError<ErrorMetadata, HttpResponse> {
        crate::testing::answer(code, status, "the service's own words")
    }

    #[test]
    fn every_answer_has_one_meaning_whichever_service_sent_it() {
        use Meaning::*;
        for (code, status, expected) in [
            // S3
            (Some("AccessDenied"), 403, Denied),
            (Some("InvalidAccessKeyId"), 403, Denied),
            (Some("SignatureDoesNotMatch"), 403, Denied),
            (Some("ExpiredToken"), 400, Denied),
            (None, 403, Denied),
            (Some("SlowDown"), 503, Transient),
            (Some("RequestTimeout"), 400, Transient),
            (Some("RequestTimeTooSkewed"), 403, Transient),
            (Some("NoSuchBucket"), 404, NotFound),
            (Some("NoSuchKey"), 404, NotFound),
            (Some("NotFound"), 404, NotFound),
            (None, 404, NotFound),
            (Some("ReplicationConfigurationNotFoundError"), 404, NotFound),
            (Some("InvalidObjectState"), 403, Failed),
            (Some("InvalidRange"), 416, Failed),
            // EC2
            (Some("UnauthorizedOperation"), 403, Denied),
            (Some("AuthFailure"), 401, Denied),
            (Some("RequestLimitExceeded"), 503, Transient),
            (Some("RequestLimitExceeded"), 400, Transient),
            (
                Some("SnapshotCreationPerVolumeRateExceeded"),
                400,
                Transient,
            ),
            (Some("Unavailable"), 503, Transient),
            (Some("InternalError"), 500, Transient),
            (Some("InvalidAMIID.NotFound"), 400, NotFound),
            (Some("InvalidInstanceID.NotFound"), 400, NotFound),
            (Some("InvalidParameterValue"), 400, Failed),
            (Some("DryRunOperation"), 412, Failed),
            // Any service
            (Some("Throttling"), 400, Transient),
            (Some("ThrottlingException"), 400, Transient),
            (Some("SomethingNew"), 502, Transient),
            (None, 429, Transient),
            (Some("SomethingNew"), 400, Failed),
        ] {
            assert_eq!(meaning(code, Some(status)), expected, "{code:?} {status}");
            let failure = Failure::of(&answer(code, status));
            assert_eq!(
                failure.meaning, expected,
                "{code:?} {status} through the SDK"
            );
        }
    }

    #[test]
    fn denied_and_unresolved_are_configuration_errors_throttling_is_transient_the_rest_permanent() {
        assert_eq!(Meaning::Denied.kind(), ErrorKind::Config);
        assert_eq!(Meaning::Unresolved.kind(), ErrorKind::Config);
        assert_eq!(Meaning::Transient.kind(), ErrorKind::Transient);
        assert_eq!(Meaning::NotFound.kind(), ErrorKind::Permanent);
        assert_eq!(Meaning::Failed.kind(), ErrorKind::Permanent);
    }

    #[test]
    fn the_error_keeps_the_services_own_words() {
        let failure = Failure::of(&answer(Some("AccessDenied"), 403));
        assert_eq!(failure.reason(), "AccessDenied");
        let error = failure.into_error("bucket `b`: GetObject was denied");
        assert_eq!(error.kind, ErrorKind::Config);
        assert_eq!(
            error.detail.as_deref(),
            Some("AccessDenied: the service's own words (HTTP 403)")
        );
        assert_eq!(Failure::of(&answer(None, 403)).reason(), "HTTP 403");
    }

    #[test]
    fn no_answer_is_transient_and_says_why() {
        let refused: SdkError<ErrorMetadata, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let failure = Failure::of(&refused);
        assert_eq!(failure.meaning, Meaning::Transient);
        assert_eq!(failure.reason(), "no answer");
        assert!(
            failure.words.contains("connection refused"),
            "{}",
            failure.words
        );
        let timeout: SdkError<ErrorMetadata, HttpResponse> =
            SdkError::timeout_error("read timed out");
        assert_eq!(Failure::of(&timeout).meaning, Meaning::Transient);
    }

    #[test]
    fn missing_credentials_or_endpoint_are_configuration_not_network_trouble() {
        // How the SDK reports an empty credential chain: a dispatch failure around it.
        let no_credentials: SdkError<ErrorMetadata, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(
                Box::new(CredentialsError::not_loaded(
                    "no providers in chain provided credentials",
                )),
                None,
            ));
        let failure = Failure::of(&no_credentials);
        assert_eq!(failure.meaning, Meaning::Unresolved);
        assert_eq!(failure.reason(), "not sent");
        assert!(
            failure.words.contains("no providers in chain"),
            "{}",
            failure.words
        );
        let no_endpoint: SdkError<ErrorMetadata, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(
                Box::new(aws_smithy_http::endpoint::ResolveEndpointError::message(
                    "A region must be set when sending requests to S3.",
                )),
                None,
            ));
        assert_eq!(Failure::of(&no_endpoint).meaning, Meaning::Unresolved);
        let slow_provider: SdkError<ErrorMetadata, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::other(
                Box::new(CredentialsError::provider_timed_out(
                    std::time::Duration::from_secs(5),
                )),
                None,
            ));
        assert_eq!(Failure::of(&slow_provider).meaning, Meaning::Transient);
    }

    #[test]
    fn a_request_that_cannot_be_built_is_permanent() {
        let bad: SdkError<ErrorMetadata, HttpResponse> =
            SdkError::construction_failure("a required field is missing");
        assert_eq!(Failure::of(&bad).meaning, Meaning::Failed);
    }
}
