//! One IAM policy for a whole plan, from what each step's plugin says it needs.

use backplan_plugin_sdk::Permissions;
use serde_json::{Value, json};

use crate::runner::CheckResult;

/// The policy document granting every statement the steps asked for, each once, in the order
/// first asked. A step whose plugin could not answer is an error naming it.
pub fn merged_policy(answers: Vec<CheckResult>) -> Result<Value, String> {
    let mut statements: Vec<Value> = Vec::new();
    for answer in answers {
        let output = answer
            .result
            .map_err(|e| format!("step `{}`: {e}", answer.step))?;
        let permissions: Permissions = serde_json::from_value(output.record).unwrap_or_default();
        for statement in permissions.aws_iam_statements {
            if !statements.contains(&statement) {
                statements.push(statement);
            }
        }
    }
    Ok(json!({"Version": "2012-10-17", "Statement": statements}))
}
