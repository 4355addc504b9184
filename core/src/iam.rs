//! IAM policies for a plan, from what each step's plugin says it needs: one per [`Role`], or one
//! for everything.
//!
//! The split exists so that the machine making the backups cannot destroy them: the backup
//! role's policy holds no action that deletes, deregisters or terminates ([`destroys`]). A
//! plugin built before roles answers one list of statements, which then goes to every role;
//! [`Merged::unsplit`] names such steps when that puts a destructive action where none belongs.

use backplan_plugin_sdk::{Permissions, Role};
use serde_json::{Value, json};

use crate::runner::CheckResult;

/// What the plan's catalog needs when it is in S3, whatever the role: its records and lock under
/// `PREFIX/PLAN/` read and written, and the listing of that folder. Never a delete: the lock is
/// released by writing a "released" marker over it.
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
            "Action": ["s3:GetObject", "s3:PutObject"],
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

/// Whether the IAM action `action` (`service:Name`, maybe with wildcards) can destroy something
/// stored: a `Delete*`, `Deregister*` or `Terminate*` action, or a wildcard that covers one
/// (`s3:*`, `ec2:Del*`, `*`). Aborting a multipart upload is not: it removes only parts of an
/// upload that never became an object.
pub fn destroys(action: &str) -> bool {
    const VERBS: [&str; 3] = ["delete", "deregister", "terminate"];
    let name = action
        .split_once(':')
        .map_or(action, |(_, name)| name)
        .to_ascii_lowercase();
    VERBS.iter().any(|verb| match name.find(['*', '?']) {
        Some(wild) => verb.starts_with(&name[..wild]) || name[..wild].starts_with(verb),
        None => name.starts_with(verb),
    })
}

/// Every action a policy document (or one statement) allows that [`destroys`], in order, each
/// once.
pub fn destructive_actions(policy: &Value) -> Vec<String> {
    let statements = match &policy["Statement"] {
        Value::Array(all) => all.iter().collect(),
        Value::Null => vec![policy],
        one => vec![one],
    };
    let mut found: Vec<String> = Vec::new();
    for statement in statements {
        if statement["Effect"] != "Allow" {
            continue;
        }
        let actions = match &statement["Action"] {
            Value::String(one) => vec![one.as_str()],
            Value::Array(all) => all.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for action in actions {
            if destroys(action) && !found.iter().any(|f| f == action) {
                found.push(action.to_owned());
            }
        }
    }
    found
}

/// A merged policy, and what the steps did not say.
#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// The policy document.
    pub policy: Value,
    /// The steps whose plugin did not split its statements by role and thereby gave this role
    /// actions that destroy (listed with them); empty for the policy of everything and for
    /// the prune role.
    pub unsplit: Vec<(String, Vec<String>)>,
}

/// The policy document for `role` (`None`: every role at once) granting `first` and then every
/// statement the steps' plugins asked for, each once, in the order first asked. A step whose
/// plugin could not answer is an error naming it.
pub fn merged_policy(
    role: Option<Role>,
    first: Vec<Value>,
    answers: Vec<CheckResult>,
) -> Result<Merged, String> {
    let mut statements: Vec<Value> = first;
    let mut unsplit = Vec::new();
    for answer in answers {
        let output = answer
            .result
            .map_err(|e| format!("step `{}`: {e}", answer.step))?;
        let permissions: Permissions = serde_json::from_value(output.record).unwrap_or_default();
        let asked = match role {
            Some(role) => permissions.statements_for(role),
            None => &permissions.aws_iam_statements,
        };
        if role.is_some_and(|r| r != Role::Prune) && !permissions.is_split() {
            let destructive: Vec<String> = asked.iter().flat_map(destructive_actions).collect();
            if !destructive.is_empty() {
                unsplit.push((answer.step.clone(), destructive));
            }
        }
        for statement in asked {
            if !statements.contains(statement) {
                statements.push(statement.clone());
            }
        }
    }
    Ok(Merged {
        policy: json!({"Version": "2012-10-17", "Statement": statements}),
        unsplit,
    })
}

#[cfg(test)]
mod tests {
    use backplan_plugin_sdk::StepOutput;

    use super::*;

    fn statement(actions: &[&str]) -> Value {
        json!({"Effect": "Allow", "Action": actions, "Resource": "*"})
    }

    fn answer(step: &str, permissions: &Permissions) -> CheckResult {
        CheckResult {
            step: step.to_owned(),
            result: Ok(StepOutput::new("permissions").record(permissions)),
        }
    }

    /// A plugin that splits (`split`) and one built before roles (`old`), each needing a read,
    /// a write and a delete.
    fn answers() -> Vec<CheckResult> {
        let split = Permissions::default()
            .grant(&Role::ALL, statement(&["s3:GetObject"]))
            .grant(&[Role::Backup], statement(&["s3:PutObject"]))
            .grant(&[Role::Prune], statement(&["s3:DeleteObject"]));
        let old = Permissions {
            aws_iam_statements: vec![
                statement(&["ec2:DescribeImages"]),
                statement(&["ec2:CreateImage", "ec2:DeregisterImage"]),
            ],
            roles: None,
        };
        vec![answer("split", &split), answer("old", &old)]
    }

    #[test]
    fn each_role_gets_what_its_steps_granted_it_and_the_whole_policy_everything() {
        let backup = merged_policy(Some(Role::Backup), Vec::new(), answers()).unwrap();
        let actions = |m: &Merged| -> Vec<String> {
            m.policy["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["Action"].as_array().unwrap().clone())
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        };
        let got = actions(&backup);
        assert!(got.contains(&"s3:PutObject".to_owned()), "{got:?}");
        assert!(!got.contains(&"s3:DeleteObject".to_owned()), "{got:?}");
        let prune = merged_policy(Some(Role::Prune), Vec::new(), answers()).unwrap();
        let got = actions(&prune);
        assert!(got.contains(&"s3:DeleteObject".to_owned()), "{got:?}");
        assert!(!got.contains(&"s3:PutObject".to_owned()), "{got:?}");
        assert!(prune.unsplit.is_empty(), "prune may delete");
        let restore = merged_policy(Some(Role::Restore), Vec::new(), answers()).unwrap();
        let got = actions(&restore);
        assert!(got.contains(&"s3:GetObject".to_owned()), "{got:?}");
        assert!(
            !got.iter()
                .any(|a| a.starts_with("s3:") && a != "s3:GetObject")
        );
        let all = merged_policy(None, Vec::new(), answers()).unwrap();
        for wanted in ["s3:PutObject", "s3:DeleteObject", "ec2:DeregisterImage"] {
            assert!(actions(&all).contains(&wanted.to_owned()), "{wanted}");
        }
        assert!(all.unsplit.is_empty());
    }

    #[test]
    fn a_plugin_built_before_roles_gives_the_backup_role_its_deletes_and_is_named_for_it() {
        let backup = merged_policy(Some(Role::Backup), Vec::new(), answers()).unwrap();
        assert_eq!(
            backup.unsplit,
            [("old".to_owned(), vec!["ec2:DeregisterImage".to_owned()])]
        );
        assert_eq!(
            destructive_actions(&backup.policy),
            ["ec2:DeregisterImage"],
            "all of the old plugin's statements went to the backup role"
        );
    }

    #[test]
    fn destructive_actions_include_wildcards_that_cover_them_but_not_aborts() {
        for yes in [
            "s3:DeleteObject",
            "s3:DeleteObjectVersion",
            "ec2:DeregisterImage",
            "ec2:TerminateInstances",
            "kms:*",
            "*",
            "ec2:Del*",
            "s3:Delete*",
            "ec2:*Image",
        ] {
            assert!(destroys(yes), "{yes}");
        }
        for no in [
            "s3:AbortMultipartUpload",
            "s3:GetObject",
            "ec2:CreateImage",
            "ec2:Describe*",
            "s3:Put*",
        ] {
            assert!(!destroys(no), "{no}");
        }
    }
}
