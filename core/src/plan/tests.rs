use super::*;

fn parse(text: &str) -> Result<Plan, PlanError> {
    Plan::parse(Path::new("/plans/p.toml"), text.to_owned())
}

fn first_problem(text: &str) -> Located {
    parse(text).unwrap_err().problems.remove(0)
}

const GOOD: &str = r#"
[plan]
name = "services"
concurrency = 2
timeout = "1h"

[[steps]]
id = "launch"
plugin = "exec"
[steps.config]
command = ["true"]

[[steps]]
id = "fixup"
plugin = "exec"
after = ["launch"]
retries = 5
[steps.config]
command = ["echo", "${steps.launch.outputs.ip}"]
"#;

#[test]
fn a_good_plan_is_ordered_and_resolved() {
    let plan = parse(GOOD).unwrap();
    assert_eq!(plan.name, "services");
    assert_eq!(plan.concurrency, 2);
    let ids: Vec<_> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["launch", "fixup"]);
    let fixup = plan.step("fixup").unwrap();
    assert_eq!(fixup.policy.retries, 5);
    assert_eq!(fixup.policy.timeout, Duration::from_secs(3600));
    let ancestors: Vec<_> = plan
        .ancestors(fixup, Order::Backup)
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(ancestors, ["launch"]);
    assert!(plan.digest.starts_with("sha256:"));
}

#[test]
fn steps_are_reordered_to_respect_after() {
    let plan = parse(
        r#"
[plan]
name = "p"
[[steps]]
id = "b"
plugin = "exec"
after = ["a"]
[[steps]]
id = "a"
plugin = "exec"
"#,
    )
    .unwrap();
    let ids: Vec<_> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn a_syntax_error_names_line_and_column() {
    let p = first_problem("[plan]\nname = = \"x\"\n");
    assert_eq!(p.line, Some(2));
    assert!(p.to_string().starts_with("/plans/p.toml:2:"), "{p}");
}

#[test]
fn an_unknown_key_is_an_error_at_its_line() {
    let p = first_problem("[plan]\nname = \"x\"\nconcurency = 3\n");
    assert_eq!(p.line, Some(3));
    assert!(
        p.message.contains("unknown field `concurency`"),
        "{}",
        p.message
    );
}

#[test]
fn a_wrong_type_is_an_error_at_its_value() {
    let p = first_problem("[plan]\nname = \"x\"\nconcurrency = \"four\"\n");
    assert_eq!((p.line, p.column), (Some(3), Some(15)));
    assert!(p.message.contains("invalid type"), "{}", p.message);
}

#[test]
fn a_cycle_is_reported_with_its_path() {
    let p = first_problem(
        r#"[plan]
name = "x"
[[steps]]
id = "a"
plugin = "exec"
after = ["b"]
[[steps]]
id = "b"
plugin = "exec"
after = ["a"]
"#,
    );
    assert!(p.message.contains("cycle: a → b → a"), "{}", p.message);
    assert_eq!(p.line, Some(6));
}

#[test]
fn unknown_and_duplicate_ids_are_all_reported_at_once() {
    let err = parse(
        r#"[plan]
name = "x"
[[steps]]
id = "a"
plugin = "exec"
after = ["nope"]
[[steps]]
id = "a"
plugin = "exec"
"#,
    )
    .unwrap_err();
    let messages: Vec<_> = err.problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("unknown step `nope`"));
    assert!(messages[1].contains("used twice"));
}

#[test]
fn an_output_reference_must_point_at_an_earlier_step() {
    let p = first_problem(
        r#"[plan]
name = "x"
[[steps]]
id = "a"
plugin = "exec"
[[steps]]
id = "b"
plugin = "exec"
[steps.config]
command = ["echo", "${steps.a.outputs.ip}"]
"#,
    );
    assert!(p.message.contains("add it to `after`"), "{}", p.message);
}

#[test]
fn bad_numbers_and_durations_are_rejected() {
    let p = first_problem(
        "[plan]\nname = \"x\"\ntimeout = \"soon\"\n[[steps]]\nid = \"a\"\nplugin = \"e\"\n",
    );
    assert!(p.message.contains("not a duration"), "{}", p.message);
    let p = first_problem(
        "[plan]\nname = \"x\"\nconcurrency = 0\n[[steps]]\nid = \"a\"\nplugin = \"e\"\n",
    );
    assert!(p.message.contains("between 1 and 256"), "{}", p.message);
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let err = Plan::load(Path::new("/nonexistent/plan.toml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/plan.toml: cannot read the plan"),
        "{err}"
    );
}

struct OnlyExec;

impl SchemaSource for OnlyExec {
    fn has_plugin(&self, name: &str) -> bool {
        name == "exec"
    }
    fn config_problems(&self, _: &str, config: &Value) -> Vec<(String, String)> {
        match config.pointer("/command/1") {
            Some(Value::String(s)) if s == "bad" => {
                vec![("/command/1".into(), "\"bad\" is not allowed".into())]
            }
            _ => Vec::new(),
        }
    }
}

#[test]
fn config_problems_point_into_the_config_table() {
    let plan = parse(
        r#"[plan]
name = "x"
[[steps]]
id = "a"
plugin = "exec"
[steps.config]
command = ["echo", "bad"]
[[steps]]
id = "b"
plugin = "nosuch"
"#,
    )
    .unwrap();
    let err = plan.check_configs(&OnlyExec).unwrap_err();
    assert_eq!(err.problems.len(), 2);
    let bad = &err.problems[0];
    assert_eq!((bad.line, bad.column), (Some(7), Some(20)));
    assert!(
        bad.message.contains("config at `command.1`"),
        "{}",
        bad.message
    );
    assert!(err.problems[1].message.contains("unknown plugin `nosuch`"));
}

const RESTORE_ORDER: &str = r#"
[plan]
name = "services"

[[steps]]
id = "machine"
plugin = "exec"

[[steps]]
id = "artifacts"
plugin = "exec"
restore_after = ["host-stop"]

[[steps]]
id = "host-stop"
plugin = "exec"
after = ["machine"]
[steps.config]
command = ["echo", "${steps.machine.outputs.private_ip}"]

[[steps]]
id = "host-start"
plugin = "exec"
after = ["machine"]
restore_after = ["artifacts"]
"#;

#[test]
fn a_restore_can_take_its_own_order() {
    let plan = parse(RESTORE_ORDER).unwrap();
    let ids =
        |order| -> Vec<String> { plan.steps_in(order).iter().map(|s| s.id.clone()).collect() };
    assert_eq!(
        ids(Order::Backup),
        ["machine", "artifacts", "host-stop", "host-start"]
    );
    assert_eq!(
        ids(Order::Restore),
        ["machine", "host-stop", "artifacts", "host-start"]
    );
    let start = plan.step("host-start").unwrap();
    assert_eq!(start.deps(Order::Backup), ["machine"]);
    assert_eq!(start.deps(Order::Restore), ["artifacts"]);
    let in_restore: Vec<_> = plan
        .ancestors(start, Order::Restore)
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(in_restore, ["machine", "artifacts", "host-stop"]);
    // Without `restore_after`, a step keeps its backup dependencies.
    assert_eq!(
        plan.step("host-stop").unwrap().deps(Order::Restore),
        ["machine"]
    );
}

#[test]
fn a_cycle_in_restore_order_is_located() {
    let text = RESTORE_ORDER.replace(
        "id = \"machine\"\nplugin = \"exec\"\n",
        "id = \"machine\"\nplugin = \"exec\"\nrestore_after = [\"host-start\"]\n",
    );
    let problem = first_problem(&text);
    assert!(
        problem.message.contains("cycle in restore order"),
        "{problem}"
    );
    assert!(problem.message.contains("machine"), "{problem}");
}

#[test]
fn restore_after_names_must_exist() {
    let text = RESTORE_ORDER.replace(
        "restore_after = [\"host-stop\"]",
        "restore_after = [\"host-stpo\"]",
    );
    let problem = first_problem(&text);
    assert!(
        problem
            .message
            .contains("`restore_after` names an unknown step `host-stpo`"),
        "{problem}"
    );
}

#[test]
fn absurd_numbers_and_durations_are_refused_at_their_value() {
    for (line, expect) in [
        ("concurrency = 9223372036854775807", "between 1 and 256"),
        ("retries = -1", "between 0 and 20"),
        ("timeout = \"100000h\"", "longer than the most allowed"),
        ("retry_delay = \"2h\"", "longer than the most allowed"),
        ("timeout = \"0s\"", "longer than zero"),
    ] {
        let p = first_problem(&format!(
            "[plan]\nname = \"x\"\n{line}\n[[steps]]\nid = \"a\"\nplugin = \"e\"\n"
        ));
        assert_eq!(p.line, Some(3), "{line}: {p}");
        assert!(p.message.contains(expect), "{line}: {p}");
    }
}

#[test]
fn empty_paths_in_a_plan_are_errors() {
    for line in ["catalog = \"\"", "plugin_dirs = [\"\"]"] {
        let p = first_problem(&format!(
            "[plan]\nname = \"x\"\n{line}\n[[steps]]\nid = \"a\"\nplugin = \"e\"\n"
        ));
        assert_eq!(p.line, Some(3), "{line}: {p}");
        assert!(p.message.contains("must not be empty"), "{line}: {p}");
    }
    let p = first_problem(
        "[plan]\nname = \"x\"\n[[plugins]]\npath = \" \"\n[[steps]]\nid = \"a\"\nplugin = \"e\"\n",
    );
    assert_eq!(p.line, Some(4), "{p}");
}

#[test]
fn a_nan_in_a_config_is_refused_where_it_is_written() {
    let p = first_problem(
        "[plan]\nname = \"x\"\n[[steps]]\nid = \"a\"\nplugin = \"e\"\n[steps.config]\nmode = \"x\"\nverify_fraction = nan\n",
    );
    assert_eq!((p.line, p.column), (Some(8), Some(19)), "{p}");
    assert!(p.message.contains("config at `verify_fraction`"), "{p}");
}

#[test]
fn a_reference_error_points_at_the_value_that_holds_it() {
    let p = first_problem(
        r#"[plan]
name = "x"
[[steps]]
id = "a"
plugin = "exec"
[steps.config]
command = ["true"]
target = "${steps.nope.outputs.x}"
"#,
    );
    assert_eq!((p.line, p.column), (Some(8), Some(10)), "{p}");
    assert!(p.message.contains("unknown step `nope`"), "{p}");
}

/// A plan of `n` steps, each after the one before and using its output.
fn chained_plan(n: usize) -> String {
    let mut text = String::from("[plan]\nname = \"big\"\n");
    for i in 0..n {
        text.push_str(&format!("[[steps]]\nid = \"s{i}\"\nplugin = \"exec\"\n"));
        if i > 0 {
            text.push_str(&format!(
                "after = [\"s{}\"]\n[steps.config]\ncommand = [\"echo\", \"${{steps.s0.outputs.x}}\"]\n",
                i - 1
            ));
        }
    }
    text
}

#[test]
fn a_plan_of_thousands_of_chained_steps_validates_without_quadratic_memory() {
    // Every step refers to the first one, the worst case for reference checks; 4,000 chained
    // steps used to need 2.6 GB for their stored ancestor sets.
    let plan = parse(&chained_plan(4000)).unwrap();
    assert_eq!(plan.steps.len(), 4000);
    let last = plan.step("s3999").unwrap();
    assert_eq!(plan.ancestors(last, Order::Backup).len(), 3999);
    assert_eq!(plan.ancestors(last, Order::Restore)[0].id, "s0");
}

#[test]
fn an_s3_catalog_is_a_bucket_and_a_prefix_and_a_bad_one_is_located() {
    let with = |catalog: &str| {
        parse(&format!(
            "[plan]\nname = \"x\"\ncatalog = \"{catalog}\"\n[[steps]]\nid = \"a\"\nplugin = \"e\"\n"
        ))
    };
    let plan = with("s3://backups-eu/backplan/fleet/").unwrap();
    assert_eq!(
        plan.catalog,
        Some(CatalogLocation::S3 {
            bucket: "backups-eu".into(),
            prefix: "backplan/fleet".into()
        })
    );
    assert_eq!(
        plan.catalog.unwrap().to_string(),
        "s3://backups-eu/backplan/fleet"
    );
    for bad in [
        "s3://B",
        "s3://ok-bucket/a//b",
        "s3://ok-bucket/../x",
        "ftp://x",
    ] {
        let p = with(bad).unwrap_err().problems.remove(0);
        assert_eq!((p.line, p.column), (Some(3), Some(11)), "{bad}: {p}");
    }
    let plan = with("s3://ok-bucket").unwrap();
    let problem = plan.catalog_problem("the bucket does not exist");
    assert!(
        problem
            .to_string()
            .contains(":3:11: the bucket does not exist"),
        "{problem}"
    );
}

#[test]
fn when_takes_three_words_and_refuses_others_at_their_value() {
    let text = |when: &str| {
        format!("[plan]\nname = \"x\"\n[[steps]]\nid = \"a\"\nplugin = \"e\"\nwhen = \"{when}\"\n")
    };
    assert_eq!(parse(&text("always")).unwrap().steps[0].when, When::Always);
    assert_eq!(
        parse(&text("on-failure")).unwrap().steps[0].when,
        When::OnFailure
    );
    let p = first_problem(&text("sometimes"));
    assert_eq!((p.line, p.column), (Some(6), Some(8)), "{p}");
}
