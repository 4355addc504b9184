//! `[[notify]]`: a webhook received by a local HTTP server, retries that outlast a flaky one, a
//! failing webhook that never fails the run, and SNS delivered to an SQS queue on moto.

use backplan_e2e::{HttpStandIn, LocalAws, Sandbox};
use serde_json::Value;

fn plan(sandbox: &Sandbox, notify: &str) -> String {
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"t\"\n{notify}\n\
             [[steps]]\nid = \"dump\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\n\
             [[steps]]\nid = \"upload\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"false\"]\n"
        ),
    );
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_webhook_hears_the_status_and_each_failed_steps_reason() {
    let hook = HttpStandIn::start(&[200]);
    let sandbox = Sandbox::new();
    let path = plan(
        &sandbox,
        "[[notify]]\non = [\"partial\", \"failure\"]\nwebhook_env = \"TEST_HOOK\"\n",
    );
    let out = sandbox
        .cmd(["--json", "run", &path])
        .env(
            "TEST_HOOK",
            format!("{}/hooks/backups?token=secret", hook.url),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let seen = hook.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].line, "POST /hooks/backups?token=secret HTTP/1.1");
    let message: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(message["event"], "partial");
    assert_eq!(message["status"], "PartiallyFailed");
    assert_eq!(message["failed_steps"][0]["step"], "upload");
    assert!(
        message["failed_steps"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("exited with code 1")
    );
    assert!(
        message["text"]
            .as_str()
            .unwrap()
            .contains("• upload Failed"),
        "{message}"
    );
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["notifications"][0]["delivered"], true);
    assert_eq!(record["notifications"][0]["target"], "webhook $TEST_HOOK");
}

#[test]
fn a_flaky_webhook_is_retried_and_a_dead_one_never_fails_the_backup() {
    let flaky = HttpStandIn::start(&[500, 500, 500, 200]);
    let dead = HttpStandIn::start(&[404]);
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"t\"\n\
             [[notify]]\non = [\"success\"]\nwebhook = \"{}/flaky\"\n\
             [[notify]]\non = [\"success\"]\nwebhook = \"{}/dead\"\n\
             [[notify]]\non = [\"failure\"]\nwebhook = \"{}/never\"\n\
             [[steps]]\nid = \"dump\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\n",
            flaky.url, dead.url, dead.url
        ),
    );
    let out = sandbox.run(["--json", "run", path.to_str().unwrap()]);
    let record = out.expect_code(0).json();
    assert_eq!(record["status"], "Succeeded");
    let told = record["notifications"].as_array().unwrap();
    assert_eq!(told.len(), 2, "{told:?}");
    assert_eq!(
        (told[0]["delivered"].as_bool(), told[0]["attempts"].as_u64()),
        (Some(true), Some(4))
    );
    assert_eq!(
        (told[1]["delivered"].as_bool(), told[1]["attempts"].as_u64()),
        (Some(false), Some(1))
    );
    assert_eq!(told[1]["error"], "HTTP 404");
    assert_eq!(flaky.seen().len(), 4);
    assert_eq!(
        dead.seen().len(),
        1,
        "a 404 is not retried, and `failure` was not told"
    );
    let stored = sandbox.records("t");
    assert_eq!(stored[0]["notifications"], record["notifications"]);
}

#[test]
fn an_sns_notification_reaches_an_sqs_queue() {
    let aws = LocalAws::start(&[]);
    let made = aws.boto(
        "sns = boto3.client('sns')\n\
         sqs = boto3.client('sqs')\n\
         topic = sns.create_topic(Name='backups')['TopicArn']\n\
         queue = sqs.create_queue(QueueName='pager')['QueueUrl']\n\
         arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=['QueueArn'])['Attributes']['QueueArn']\n\
         sns.subscribe(TopicArn=topic, Protocol='sqs', Endpoint=arn)\n\
         out({'topic': topic, 'queue': queue})",
    );
    let sandbox = Sandbox::new();
    let path = plan(
        &sandbox,
        &format!(
            "[[notify]]\non = [\"partial\"]\nsns_topic = \"{}\"\n",
            made["topic"].as_str().unwrap()
        ),
    );
    let record = sandbox
        .run_on(&aws, &["--json", "run", &path])
        .expect_code(3)
        .json();
    assert_eq!(record["notifications"][0]["delivered"], true, "{record:#}");
    let received = aws.boto(&format!(
        "sqs = boto3.client('sqs')\n\
         got = sqs.receive_message(QueueUrl='{}', WaitTimeSeconds=5)['Messages'][0]['Body']\n\
         out(json.loads(json.loads(got)['Message']))",
        made["queue"].as_str().unwrap()
    ));
    assert_eq!(received["plan"], "t");
    assert_eq!(received["failed_steps"][0]["step"], "upload");
}

#[test]
fn status_with_notify_tells_stale_listeners_when_a_step_has_no_fresh_backup() {
    let hook = HttpStandIn::start(&[200]);
    let sandbox = Sandbox::new();
    let path = plan(
        &sandbox,
        &format!(
            "[[notify]]\non = [\"stale\"]\nwebhook = \"{}/stale\"\n",
            hook.url
        ),
    );
    let quiet = sandbox.run(["status", &path]);
    assert_eq!(quiet.code(), 2);
    assert!(
        hook.seen().is_empty(),
        "status without --notify tells no one"
    );
    let told = sandbox.run(["status", &path, "--notify"]);
    assert_eq!(told.code(), 2);
    let seen = hook.seen();
    assert_eq!(seen.len(), 1);
    let message: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(message["event"], "stale");
    assert!(
        message["text"]
            .as_str()
            .unwrap()
            .starts_with("backplan CRITICAL"),
        "{message}"
    );
}
