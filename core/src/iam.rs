//! One IAM policy for a whole plan, from what each step's plugin says it needs.

use backplan_plugin_sdk::Permissions;
use serde_json::{Value, json};

use crate::runner::CheckResult;

/// What the plan's catalog needs when it is in S3: its records and lock under
/// `PREFIX/PLAN/` (read, write, conditional delete), and the listing of that folder.
pub fn catalog_statements(bucket: &str, prefix: &str, plan: &str) -> Vec<Value> {
    let folder = if prefix.is_empty() {
        format!("{plan}/")
    } else {
        format!("{prefix}/{plan}/")
    };
    vec![
        json!({
            "Sid": "BackplanCatalogObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": format!("arn:aws:s3:::{bucket}/{folder}*"),
        }),
        json!({
            "Sid": "BackplanCatalogListing",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": format!("arn:aws:s3:::{bucket}"),
            "Condition": {"StringLike": {"s3:prefix": [format!("{folder}*")]}},
        }),
    ]
}

/// The policy document granting `first` and then every statement the steps asked for, each
/// once, in the order first asked. A step whose plugin could not answer is an error naming it.
pub fn merged_policy(first: Vec<Value>, answers: Vec<CheckResult>) -> Result<Value, String> {
    let mut statements: Vec<Value> = first;
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
