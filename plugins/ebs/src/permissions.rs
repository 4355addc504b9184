//! The smallest IAM policy a step's configuration needs, for `backplan plan permissions`.
//!
//! One statement per purpose (find, back up, copy, prune, restore), each with its `Sid`, so a
//! security review reads what each group of actions is for. EC2's snapshot and image actions
//! mostly do not support resource-level restrictions at creation time, hence `"*"`; deletion is
//! limited to resources carrying a `backplan:plan` tag, and termination to instances carrying
//! `backplan:restored-from` (the action is called without the plan's name, so a policy scoped to
//! one plan replaces the `*` with that name).

use backplan_plugin_sdk::Permissions;
use serde_json::{Value, json};

use crate::config::{Mode, Settings};
use crate::tags::{PLAN, RESTORED_FROM};

fn statement(sid: &str, actions: &[&str], condition: Option<Value>) -> Value {
    let actions: Vec<String> = actions.iter().map(|a| format!("ec2:{a}")).collect();
    let mut s = json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": "*"});
    if let Some(condition) = condition {
        s["Condition"] = condition;
    }
    s
}

/// A condition: the resource carries tag `key`, whatever its value.
fn tagged(key: &str) -> Option<Value> {
    Some(json!({"StringLike": {format!("aws:ResourceTag/{key}"): "*"}}))
}

/// The statements for `settings`.
pub fn for_settings(settings: &Settings) -> Permissions {
    let mut statements = vec![statement(
        "BackplanEbsDescribe",
        &["DescribeInstances", "DescribeImages", "DescribeSnapshots"],
        None,
    )];
    match settings.mode {
        Mode::Ami => statements.push(statement(
            "BackplanEbsBackup",
            &["CreateImage", "CreateTags"],
            None,
        )),
        Mode::Snapshots => statements.push(statement(
            "BackplanEbsBackup",
            &["CreateSnapshot", "CreateTags"],
            None,
        )),
    }
    if !settings.copies.is_empty() {
        statements.push(statement("BackplanEbsCopy", &["CopyImage"], None));
    }
    let prune: &[&str] = match settings.mode {
        Mode::Ami => &["DeregisterImage", "DeleteSnapshot"],
        Mode::Snapshots => &["DeleteSnapshot"],
    };
    statements.push(statement("BackplanEbsPrune", prune, tagged(PLAN)));
    if settings.mode == Mode::Ami {
        statements.push(statement(
            "BackplanEbsRestore",
            &["RunInstances", "CreateTags"],
            None,
        ));
        let teardown =
            Some(json!({"StringLike": {format!("aws:ResourceTag/{RESTORED_FROM}"): "*"}}));
        statements.push(statement(
            "BackplanEbsDrillTeardown",
            &["TerminateInstances"],
            teardown,
        ));
    }
    Permissions {
        aws_iam_statements: statements,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn actions(p: &Permissions) -> Vec<String> {
        p.aws_iam_statements
            .iter()
            .flat_map(|s| {
                s["Action"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_owned())
            })
            .collect()
    }

    fn settings(config: Value) -> Settings {
        Settings::new(&serde_json::from_value::<Config>(config).unwrap()).unwrap()
    }

    #[test]
    fn ami_mode_with_copies_needs_create_copy_prune_restore() {
        let p = for_settings(&settings(
            json!({"instance": "self", "copy_to": [{"region": "us-west-2"}]}),
        ));
        let a = actions(&p);
        for wanted in [
            "ec2:CreateImage",
            "ec2:CopyImage",
            "ec2:DeregisterImage",
            "ec2:RunInstances",
            "ec2:TerminateInstances",
        ] {
            assert!(a.iter().any(|x| x == wanted), "{wanted} missing from {a:?}");
        }
        let prune = p
            .aws_iam_statements
            .iter()
            .find(|s| s["Sid"] == "BackplanEbsPrune")
            .unwrap();
        assert_eq!(
            prune["Condition"]["StringLike"]["aws:ResourceTag/backplan:plan"],
            "*"
        );
    }

    #[test]
    fn snapshot_mode_needs_no_image_actions() {
        let a = actions(&for_settings(&settings(
            json!({"instance": "self", "mode": "snapshots"}),
        )));
        assert!(a.iter().any(|x| x == "ec2:CreateSnapshot"));
        assert!(
            !a.iter()
                .any(|x| x.contains("Image") && x != "ec2:DescribeImages"),
            "{a:?}"
        );
    }
}
