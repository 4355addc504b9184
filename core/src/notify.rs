//! Notifications: who hears about a run, and what they are told.
//!
//! A plan's `[[notify]]` entries each name the events they want (`success`, `partial`,
//! `failure`, `stale`) and one target (a webhook URL, or an SNS topic). The runner tells them at
//! the end of a run, while it still holds the plan's lock, and records each delivery in the run's
//! record. Sending is a [`Notifier`]'s job, supplied by the binary (HTTP and AWS clients stay out
//! of this crate); a notification that cannot be delivered never fails the run.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::record::{RunRecord, RunStatus, StepStatus};

/// What happened, as a `[[notify]]` entry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Every step succeeded.
    Success,
    /// Some steps succeeded, some did not.
    Partial,
    /// The run failed, was cancelled, or its process died.
    Failure,
    /// `backplan status --notify` found a step without a fresh backup.
    Stale,
}

impl Event {
    /// The plan's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Success => "success",
            Event::Partial => "partial",
            Event::Failure => "failure",
            Event::Stale => "stale",
        }
    }

    /// The event a finished run is.
    pub fn of(record: &RunRecord) -> Event {
        match record.status {
            RunStatus::Succeeded => Event::Success,
            RunStatus::PartiallyFailed => Event::Partial,
            RunStatus::Failed
            | RunStatus::Cancelled
            | RunStatus::Interrupted
            | RunStatus::Running => Event::Failure,
        }
    }
}

/// A value that may be a secret: given in the plan, or read from the environment or a file when
/// it is needed (a webhook URL with a token in it does not belong in a plan file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// Written in the plan.
    Plain(String),
    /// The value of this environment variable.
    Env(String),
    /// The first line of this file.
    File(PathBuf),
}

impl Secret {
    /// The value, or why it cannot be had.
    pub fn reveal(&self) -> Result<String, String> {
        match self {
            Secret::Plain(value) => Ok(value.clone()),
            Secret::Env(name) => std::env::var(name)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("the environment variable {name} is not set")),
            Secret::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .ok_or_else(|| format!("{} is empty", path.display())),
        }
    }

    /// How it is named in records and logs: never the value of an environment variable or file.
    pub fn describe(&self) -> String {
        match self {
            Secret::Plain(value) => redact_url(value),
            Secret::Env(name) => format!("${name}"),
            Secret::File(path) => path.display().to_string(),
        }
    }
}

/// A URL without its path and query, which is where webhook tokens live.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or_default();
            format!("{scheme}://{host}/…")
        }
        None => "…".into(),
    }
}

/// Where a notification goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A JSON POST to this URL (Slack-compatible: it carries a `text` field).
    Webhook(Secret),
    /// A message published to this SNS topic.
    Sns {
        /// The topic's ARN.
        topic_arn: String,
    },
}

impl Target {
    /// How the target is named in records and logs.
    pub fn describe(&self) -> String {
        match self {
            Target::Webhook(url) => format!("webhook {}", url.describe()),
            Target::Sns { topic_arn } => format!("sns {topic_arn}"),
        }
    }
}

/// One `[[notify]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySpec {
    /// The events it wants.
    pub on: Vec<Event>,
    /// Where they go.
    pub target: Target,
}

/// One failed step, as a notification tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedStep {
    /// The step.
    pub step: String,
    /// How it ended.
    pub status: StepStatus,
    /// Why.
    pub reason: String,
}

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    /// The event.
    pub event: Event,
    /// The plan.
    pub plan: String,
    /// The run (absent for `stale`, which is about no run in particular).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The kind of run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// How it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// The host it ran on.
    pub host: String,
    /// Every step that did not succeed, with its reason.
    pub failed_steps: Vec<FailedStep>,
    /// For `stale`: what `status` found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// One human line (Slack and most chat webhooks show `text`).
    pub text: String,
}

impl Message {
    /// The message about a finished run.
    pub fn of_run(record: &RunRecord) -> Message {
        let failed_steps: Vec<FailedStep> = record
            .steps
            .iter()
            .filter(|s| !matches!(s.status, StepStatus::Succeeded) && s.error.is_some())
            .map(|s| FailedStep {
                step: s.id.clone(),
                status: s.status,
                reason: s.error.as_ref().map(|e| e.to_string()).unwrap_or_default(),
            })
            .collect();
        let kind = crate::health::kind_name(record.kind);
        let mut text = format!(
            "backplan: {kind} run {} of plan `{}` on {}: {:?}",
            record.run_id, record.plan.name, record.host, record.status
        );
        for failed in &failed_steps {
            text.push_str(&format!(
                "\n• {} {:?}: {}",
                failed.step, failed.status, failed.reason
            ));
        }
        Message {
            event: Event::of(record),
            plan: record.plan.name.clone(),
            run_id: Some(record.run_id.clone()),
            kind: Some(kind.to_owned()),
            status: Some(record.status),
            host: record.host.clone(),
            failed_steps,
            findings: Vec::new(),
            text,
        }
    }

    /// The message that a plan's backups are stale.
    pub fn stale(plan: &str, findings: Vec<String>, line: String) -> Message {
        Message {
            event: Event::Stale,
            plan: plan.to_owned(),
            run_id: None,
            kind: None,
            status: None,
            host: crate::catalog::hostname(),
            failed_steps: Vec::new(),
            findings,
            text: line,
        }
    }
}

/// How one delivery went, as the run's record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Where it went (secrets left out).
    pub target: String,
    /// The event it told.
    pub event: Event,
    /// Whether it was delivered.
    pub delivered: bool,
    /// How many attempts it took (or were made).
    pub attempts: u32,
    /// Why it was not delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sends notifications; the binary supplies one with its HTTP and AWS clients.
pub trait Notifier: Send + Sync {
    /// Delivers `message` to `target`, retrying as it sees fit: the attempts made, and the
    /// last error if it never got through.
    fn deliver(&self, target: &Target, message: &Message) -> (u32, Result<(), String>);
}

/// Tells every entry of `specs` that wants `message`'s event; what became of each.
pub fn notify_all(
    notifier: &dyn Notifier,
    specs: &[NotifySpec],
    message: &Message,
) -> Vec<Delivery> {
    specs
        .iter()
        .filter(|spec| spec.on.contains(&message.event))
        .map(|spec| {
            let (attempts, result) = notifier.deliver(&spec.target, message);
            if let Err(error) = &result {
                tracing::warn!(
                    "could not notify {}: {error} (after {attempts} attempts)",
                    spec.target.describe()
                );
            }
            Delivery {
                target: spec.target.describe(),
                event: message.event,
                delivered: result.is_ok(),
                attempts,
                error: result.err(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_is_named_without_its_token() {
        let url = Secret::Plain("https://hooks.slack.com/services/T0/B0/secret".into());
        assert_eq!(url.describe(), "https://hooks.slack.com/…");
        assert_eq!(Secret::Env("HOOK".into()).describe(), "$HOOK");
    }

    struct Refuses;
    impl Notifier for Refuses {
        fn deliver(&self, _: &Target, _: &Message) -> (u32, Result<(), String>) {
            (3, Err("HTTP 500".into()))
        }
    }

    #[test]
    fn only_entries_that_want_the_event_are_told_and_failures_are_recorded() {
        let specs = [
            NotifySpec {
                on: vec![Event::Failure],
                target: Target::Sns {
                    topic_arn: "arn:aws:sns:us-east-1:1:t".into(),
                },
            },
            NotifySpec {
                on: vec![Event::Success],
                target: Target::Webhook(Secret::Env("X".into())),
            },
        ];
        let message = Message::stale("p", vec![], "stale".into());
        assert!(notify_all(&Refuses, &specs, &message).is_empty());
        let failure = Message {
            event: Event::Failure,
            ..message
        };
        let told = notify_all(&Refuses, &specs, &failure);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].target, "sns arn:aws:sns:us-east-1:1:t");
        assert!(!told[0].delivered);
        assert_eq!(told[0].attempts, 3);
    }
}
