//! `plan permissions --role`: one policy per role, for the shipped Services plan with a step of
//! every built-in plugin. The backup role — what the Services machine holds — cannot destroy a
//! backup; prune holds the deletes; restore terminates only what a drill launched.

use backplan_e2e::{Sandbox, workspace_root};
use serde_json::Value;

const USAGE: i32 = 2;

/// The shipped Services plan (build-cleanup, ebs, services-host, nfs-objects) with an
/// `s3-verify` and an `exec` step added.
fn every_plugin(sandbox: &Sandbox) -> String {
    let shipped =
        std::fs::read_to_string(workspace_root().join("examples/plans/aws/services.toml")).unwrap();
    let plan = format!(
        "{shipped}\n[[steps]]\nid = \"artifact-bucket\"\nplugin = \"s3-verify\"\n\
         [steps.config]\nbucket = \"circleci-artifacts-example\"\n\n\
         [[steps]]\nid = \"database\"\nplugin = \"exec\"\n[steps.config]\n\
         command = [\"true\"]\nrestore_command = [\"true\"]\n"
    );
    let path = sandbox.write("services.toml", &plan);
    path.to_str().unwrap().to_owned()
}

/// Every action the policy allows, with the statement that allows it.
fn actions(policy: &Value) -> Vec<(String, Value)> {
    policy["Statement"]
        .as_array()
        .unwrap_or_else(|| panic!("not a policy: {policy:#}"))
        .iter()
        .flat_map(|s| {
            assert_eq!(s["Effect"], "Allow", "{s:#}");
            let actions = match &s["Action"] {
                Value::String(one) => vec![one.clone()],
                Value::Array(all) => all.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
                other => panic!("no actions: {other}"),
            };
            actions.into_iter().map(move |a| (a, s.clone()))
        })
        .collect()
}

/// Whether an action (or a wildcard covering one) destroys something stored. Aborting a
/// multipart upload destroys nothing stored: it is allowed.
fn destroys(action: &str) -> bool {
    let name = action.split_once(':').map_or(action, |(_, n)| n);
    let name = name.to_ascii_lowercase();
    name.contains('*')
        || ["delete", "deregister", "terminate"]
            .iter()
            .any(|verb| name.starts_with(verb))
}

fn policy(sandbox: &Sandbox, path: &str, role: &str) -> Value {
    sandbox
        .run(["--json", "plan", "permissions", path, "--role", role])
        .expect_code(0)
        .json()
}

fn has(policy: &[(String, Value)], action: &str) -> bool {
    policy.iter().any(|(a, _)| a == action)
}

/// The policy writes to S3 only the plan's catalog (its run records and lock), never a backup.
#[track_caller]
fn writes_only_the_catalog(policy: &[(String, Value)]) {
    for (_, statement) in policy.iter().filter(|(a, _)| a == "s3:PutObject") {
        assert_eq!(
            statement["Resource"],
            "arn:aws:s3:::circleci-backups-usw2/backplan/circleci-services/*",
            "{statement:#}"
        );
    }
}

#[test]
fn the_backup_role_of_a_plan_of_every_plugin_destroys_nothing() {
    let sandbox = Sandbox::new();
    let path = every_plugin(&sandbox);
    let backup = actions(&policy(&sandbox, &path, "backup"));
    let destructive: Vec<&String> = backup
        .iter()
        .map(|(a, _)| a)
        .filter(|a| destroys(a))
        .collect();
    assert!(
        destructive.is_empty(),
        "the backup role may destroy: {destructive:?}"
    );
    for wanted in [
        "ec2:CreateImage",
        "ec2:CopyImage",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:PutObjectRetention",
        "s3:GetBucketObjectLockConfiguration",
        "s3:GetBucketVersioning",
    ] {
        assert!(has(&backup, wanted), "{wanted} missing: {backup:#?}");
    }
    assert!(!has(&backup, "ec2:RunInstances"), "backup launches nothing");
}

#[test]
fn the_prune_role_holds_the_deletes_and_the_restore_role_terminates_only_what_it_launched() {
    let sandbox = Sandbox::new();
    let path = every_plugin(&sandbox);
    let prune = actions(&policy(&sandbox, &path, "prune"));
    for wanted in [
        "ec2:DeregisterImage",
        "ec2:DeleteSnapshot",
        "s3:DeleteObject",
        "s3:GetObjectRetention",
    ] {
        assert!(has(&prune, wanted), "{wanted} missing: {prune:#?}");
    }
    for (action, statement) in prune
        .iter()
        .filter(|(a, _)| a.starts_with("ec2:") && destroys(a))
    {
        assert_eq!(
            statement["Condition"]["StringLike"]["aws:ResourceTag/backplan:plan"], "*",
            "{action} is not limited to backplan's own resources"
        );
    }
    assert!(!has(&prune, "ec2:CreateImage"));
    writes_only_the_catalog(&prune);
    let restore = actions(&policy(&sandbox, &path, "restore"));
    for wanted in ["ec2:RunInstances", "iam:PassRole", "s3:GetObject"] {
        assert!(has(&restore, wanted), "{wanted} missing: {restore:#?}");
    }
    writes_only_the_catalog(&restore);
    let destructive: Vec<&(String, Value)> = restore.iter().filter(|(a, _)| destroys(a)).collect();
    assert!(!destructive.is_empty(), "a drill's teardown terminates");
    for (action, statement) in destructive {
        assert_eq!(action, "ec2:TerminateInstances");
        assert_eq!(
            statement["Condition"]["StringLike"]["aws:ResourceTag/backplan:restored-from"], "*",
            "termination is not limited to the instances a restore launched: {statement:#}"
        );
    }
}

#[test]
fn without_a_role_the_policy_covers_everything_and_recommends_the_split() {
    let sandbox = Sandbox::new();
    let path = every_plugin(&sandbox);
    let all = sandbox.run(["plan", "permissions", &path]);
    let text = all.expect_code(0);
    let everything = actions(&serde_json::from_str(&text.stdout()).unwrap());
    for wanted in [
        "ec2:CreateImage",
        "ec2:DeregisterImage",
        "ec2:RunInstances",
        "s3:DeleteObject",
    ] {
        assert!(has(&everything, wanted), "{wanted} missing");
    }
    assert!(text.stderr().contains("--role backup"), "{}", text.stderr());
    let json = sandbox.run(["--json", "plan", "permissions", &path]);
    assert!(
        !json.expect_code(0).stderr().contains("--role"),
        "{}",
        json.stderr()
    );
    let backup = sandbox.run(["plan", "permissions", &path, "--role", "backup"]);
    assert!(!backup.expect_code(0).stderr().contains("--role backup"));
}

#[test]
fn an_unknown_role_is_a_usage_error() {
    let sandbox = Sandbox::new();
    let path = every_plugin(&sandbox);
    let out = sandbox.run(["plan", "permissions", &path, "--role", "admin"]);
    out.expect_code(USAGE);
    assert!(out.stderr().contains("backup"), "{}", out.stderr());
}
