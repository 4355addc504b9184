//! The smallest IAM policy a step's configuration needs, for `backplan plan permissions`.
//!
//! One statement per purpose (find, back up, copy, prune, restore), each with its `Sid`, so a
//! security review reads what each group of actions is for, and each granted to the roles that
//! need it: the backup role makes and copies but never deregisters, deletes or terminates (a
//! failed backup leaves what it made, tagged, for prune). EC2's snapshot and image actions
//! mostly do not support resource-level restrictions at creation time, hence `"*"`; deletion is
//! limited to resources carrying a `backplan:plan` tag, and termination to instances carrying
//! `backplan:restored-from` (the action is called without the plan's name, so a policy scoped to
//! one plan replaces the `*` with that name). `iam:PassRole` is limited to EC2, and to the role
//! `launch.iam_role_arn` names: the role is an IAM fact the configuration alone cannot know.

use backplan_plugin_sdk::{Permissions, Role};
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

/// `iam:PassRole` of `role` (any role, when the plan does not name it) to EC2 only: what
/// RunInstances needs to give the new machine the old one's instance profile.
fn pass_role(role: Option<&str>) -> Value {
    json!({
        "Sid": "BackplanEbsRestorePassRole",
        "Effect": "Allow",
        "Action": ["iam:PassRole"],
        "Resource": role.unwrap_or("*"),
        "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
    })
}

/// The statements for `settings`, with the roles that need them: finding and describing for
/// every role; making, tagging and copying for backup; deregistering and deleting for prune
/// alone; launching, and terminating what a drill launched, for restore.
pub(crate) fn for_settings(settings: &Settings) -> Permissions {
    let mut describe = vec!["DescribeInstances", "DescribeImages", "DescribeSnapshots"];
    if settings.mode == Mode::Ami {
        // The Elastic IP of the instance, recorded for a restore to move.
        describe.push("DescribeAddresses");
    }
    let make: &[&str] = match settings.mode {
        Mode::Ami => &["CreateImage", "CreateTags"],
        Mode::Snapshots => &["CreateSnapshot", "CreateTags"],
    };
    let mut permissions = Permissions::default()
        .grant(
            &Role::ALL,
            statement("BackplanEbsDescribe", &describe, None),
        )
        .grant(&[Role::Backup], statement("BackplanEbsBackup", make, None));
    if !settings.copies.is_empty() {
        permissions = permissions.grant(
            &[Role::Backup],
            statement("BackplanEbsCopy", &["CopyImage"], None),
        );
    }
    let prune: &[&str] = match settings.mode {
        Mode::Ami => &["DeregisterImage", "DeleteSnapshot"],
        Mode::Snapshots => &["DeleteSnapshot"],
    };
    permissions = permissions.grant(
        &[Role::Prune],
        statement("BackplanEbsPrune", prune, tagged(PLAN)),
    );
    if settings.mode == Mode::Ami {
        let launch = &settings.launch;
        let mut restore = vec!["RunInstances", "CreateTags"];
        if launch.reuse_private_ip {
            restore.push("DescribeNetworkInterfaces");
        }
        if launch.reuse_elastic_ip {
            restore.push("AssociateAddress");
        }
        permissions = permissions.grant(
            &[Role::Restore],
            statement("BackplanEbsRestore", &restore, None),
        );
        if launch.iam_instance_profile.as_deref() != Some("none") {
            permissions =
                permissions.grant(&[Role::Restore], pass_role(launch.iam_role_arn.as_deref()));
        }
        // Only what a restore launched carries the tag: the drill's teardown terminates nothing
        // else.
        permissions = permissions.grant(
            &[Role::Restore],
            statement(
                "BackplanEbsDrillTeardown",
                &["TerminateInstances"],
                tagged(RESTORED_FROM),
            ),
        );
    }
    permissions
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

    fn sid<'p>(p: &'p Permissions, sid: &str) -> Option<&'p Value> {
        p.aws_iam_statements.iter().find(|s| s["Sid"] == sid)
    }

    #[test]
    fn pass_role_is_limited_to_the_named_role_and_to_ec2() {
        let named = for_settings(&settings(json!({
            "instance": "self",
            "launch": {"iam_role_arn": "arn:aws:iam::123456789012:role/circleci-services"}
        })));
        let statement = sid(&named, "BackplanEbsRestorePassRole").expect("a PassRole statement");
        assert_eq!(statement["Action"], json!(["iam:PassRole"]));
        assert_eq!(
            statement["Resource"],
            "arn:aws:iam::123456789012:role/circleci-services"
        );
        assert_eq!(
            statement["Condition"]["StringEquals"]["iam:PassedToService"],
            "ec2.amazonaws.com"
        );
        let unnamed = for_settings(&settings(json!({"instance": "self"})));
        let statement = sid(&unnamed, "BackplanEbsRestorePassRole").unwrap();
        assert_eq!(statement["Resource"], "*");
        assert_eq!(
            statement["Condition"]["StringEquals"]["iam:PassedToService"], "ec2.amazonaws.com",
            "any role, but only to EC2"
        );
        let none = for_settings(&settings(
            json!({"instance": "self", "launch": {"iam_instance_profile": "none"}}),
        ));
        assert!(sid(&none, "BackplanEbsRestorePassRole").is_none());
    }

    #[test]
    fn address_reuse_adds_what_it_calls() {
        let plain = actions(&for_settings(&settings(json!({"instance": "self"}))));
        assert!(plain.iter().any(|a| a == "ec2:DescribeAddresses"));
        assert!(!plain.iter().any(|a| a == "ec2:AssociateAddress"));
        let reuse = actions(&for_settings(&settings(json!({
            "instance": "self",
            "launch": {"reuse_private_ip": true, "reuse_elastic_ip": true}
        }))));
        for wanted in ["ec2:AssociateAddress", "ec2:DescribeNetworkInterfaces"] {
            assert!(reuse.iter().any(|a| a == wanted), "{wanted}: {reuse:?}");
        }
    }

    fn role_actions(p: &Permissions, role: Role) -> Vec<String> {
        p.statements_for(role)
            .iter()
            .flat_map(|s| s["Action"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn only_prune_may_deregister_or_delete_and_restore_terminates_only_what_it_launched() {
        for config in [
            json!({"instance": "self", "copy_to": [{"region": "us-west-2"}]}),
            json!({"instance": "self", "mode": "snapshots"}),
        ] {
            let p = for_settings(&settings(config));
            assert!(p.is_split());
            let backup = role_actions(&p, Role::Backup);
            assert!(
                backup.iter().any(|a| a.starts_with("ec2:Create")),
                "{backup:?}"
            );
            let destructive = |a: &&String| {
                ["Delete", "Deregister", "Terminate"]
                    .iter()
                    .any(|verb| a.starts_with(&format!("ec2:{verb}")))
            };
            assert!(!backup.iter().any(|a| destructive(&a)), "{backup:?}");
            let prune = role_actions(&p, Role::Prune);
            assert!(
                prune.contains(&"ec2:DeleteSnapshot".to_owned()),
                "{prune:?}"
            );
            let restore = role_actions(&p, Role::Restore);
            let destroying: Vec<&String> = restore.iter().filter(destructive).collect();
            for action in &destroying {
                assert_eq!(*action, "ec2:TerminateInstances");
            }
            let teardown = p
                .statements_for(Role::Restore)
                .iter()
                .find(|s| s["Sid"] == "BackplanEbsDrillTeardown");
            if let Some(teardown) = teardown {
                assert_eq!(
                    teardown["Condition"]["StringLike"]["aws:ResourceTag/backplan:restored-from"],
                    "*"
                );
            }
        }
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
