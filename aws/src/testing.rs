//! Failed calls made up in-process, for tests of how a plugin words AWS's answers (feature
//! `testing`): the same error type every SDK client returns, without a server.

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::error::ErrorMetadata;

/// AWS answering HTTP `status` with error `code` (none: a HEAD answer) and `message`.
pub fn answer(
    code: Option<&str>,
    status: u16,
    message: &str,
) -> SdkError<ErrorMetadata, HttpResponse> {
    let mut metadata = ErrorMetadata::builder().message(message);
    if let Some(code) = code {
        metadata = metadata.code(code);
    }
    let status = StatusCode::try_from(status).expect("an HTTP status is 100 to 999");
    SdkError::service_error(
        metadata.build(),
        HttpResponse::new(status, SdkBody::empty()),
    )
}
