//! Publishing a notification to an SNS topic, in the topic's region, through backplan-aws's
//! configuration (the standard chain, `AWS_ENDPOINT_URL_SNS` / `AWS_ENDPOINT_URL`), as every AWS
//! call of backplan's.

use backplan_core::notify::Message;

/// Publishes `message` to `topic_arn`: one attempt (the SDK retries throttling and 5xx itself).
pub(crate) fn publish(topic_arn: &str, message: &Message) -> (u32, Result<(), String>) {
    // Called from a blocking thread of the command's runtime: drive the SDK on that runtime.
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return (0, Err("no async runtime to call SNS on".into()));
    };
    let region = topic_arn.split(':').nth(3).unwrap_or_default().to_owned();
    let body = serde_json::to_string(message).unwrap_or_default();
    let subject: String = format!("backplan: {} {}", message.plan, message.event.as_str())
        .chars()
        .take(100)
        .collect();
    let result = handle.block_on(async move {
        let settings = backplan_aws::Settings {
            region: (!region.is_empty()).then_some(region),
            ..Default::default()
        };
        let client = aws_sdk_sns::Client::new(&backplan_aws::load(&settings).await);
        client
            .publish()
            .topic_arn(topic_arn)
            .subject(subject)
            .message(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_sns::error::DisplayErrorContext(e).to_string())
    });
    (1, result)
}
