//! Delivering notifications: webhooks over HTTP(S) with retries; SNS through the AWS SDK.
//!
//! A delivery is tried up to [`ATTEMPTS`] times with a doubling delay for errors that may pass
//! (no answer, a 5xx, 429); a 4xx other than 429 is final. Nothing here can fail a run: the
//! outcome is recorded with it.

use std::time::Duration;

use backplan_core::notify::{Message, Notifier, Target};

/// How many times a delivery is tried.
pub(crate) const ATTEMPTS: u32 = 5;
/// The delay before the first retry; it doubles each time.
const FIRST_DELAY: Duration = Duration::from_millis(250);

/// The notifier of the `backplan` binary.
#[derive(Debug)]
pub(crate) struct Deliveries {
    agent: ureq::Agent,
}

impl Deliveries {
    pub(crate) fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        Deliveries { agent }
    }

    /// One POST: Ok, or whether a retry may help and why not.
    fn post(&self, url: &str, message: &Message) -> Result<(), (bool, String)> {
        let response = self
            .agent
            .post(url)
            .header(
                "User-Agent",
                concat!("backplan/", env!("CARGO_PKG_VERSION")),
            )
            .send_json(message)
            .map_err(|e| (true, e.to_string()))?;
        let status = response.status().as_u16();
        match status {
            200..=299 => Ok(()),
            429 | 500..=599 => Err((true, format!("HTTP {status}"))),
            _ => Err((false, format!("HTTP {status}"))),
        }
    }
}

impl Notifier for Deliveries {
    fn deliver(&self, target: &Target, message: &Message) -> (u32, Result<(), String>) {
        match target {
            Target::Webhook(url) => {
                let url = match url.reveal() {
                    Ok(url) => url,
                    Err(error) => return (0, Err(error)),
                };
                let (mut attempt, mut delay) = (0, FIRST_DELAY);
                loop {
                    attempt += 1;
                    match self.post(&url, message) {
                        Ok(()) => return (attempt, Ok(())),
                        Err((retry, error)) if !retry || attempt == ATTEMPTS => {
                            return (attempt, Err(error));
                        }
                        Err(_) => {
                            std::thread::sleep(delay);
                            delay *= 2;
                        }
                    }
                }
            }
            Target::Sns { topic_arn } => crate::sns::publish(topic_arn, message),
        }
    }
}
