//! `backplan schedule`: units systemd accepts, a cron line, and calendars that are refused.

use std::process::Command;

use backplan_e2e::Sandbox;

fn plan(sandbox: &Sandbox) -> String {
    let path = sandbox.write(
        "plan.toml",
        "[plan]\nname = \"nightly\"\n[[steps]]\nid = \"dump\"\nplugin = \"exec\"\n[steps.config]\ncommand = [\"true\"]\n",
    );
    path.to_str().unwrap().to_owned()
}

#[test]
fn schedule_writes_units_that_systemd_analyze_verifies() {
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    let units = sandbox.path().join("units");
    let out = sandbox.run([
        "schedule",
        &path,
        "--every",
        "*-*-* 03:00",
        "--prune",
        "weekly",
        "--drill",
        "Sun 05:00",
        "--drill-step",
        "dump",
        "--drill-health",
        "127.0.0.1:8800",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    out.expect_code(0);
    assert!(
        out.stdout()
            .contains("systemctl enable --now backplan-nightly-backup.timer")
    );
    let mut names: Vec<String> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "backplan-nightly-backup.service",
            "backplan-nightly-backup.timer",
            "backplan-nightly-drill.service",
            "backplan-nightly-drill.timer",
            "backplan-nightly-prune.service",
            "backplan-nightly-prune.timer",
        ]
    );
    let timer = std::fs::read_to_string(units.join("backplan-nightly-backup.timer")).unwrap();
    for line in [
        "OnCalendar=*-*-* 03:00\n",
        "Persistent=true\n",
        "RandomizedDelaySec=",
    ] {
        assert!(timer.contains(line), "{line:?} missing:\n{timer}");
    }
    let service = std::fs::read_to_string(units.join("backplan-nightly-drill.service")).unwrap();
    assert!(
        service.contains(&format!(
            " drill {path} --step dump --health 127.0.0.1:8800\n"
        )),
        "{service}"
    );
    let paths: Vec<_> = names.iter().map(|n| units.join(n)).collect();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze is missing: run scripts/test-tools/install (scripts/test does)");
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[test]
fn schedule_prints_cron_lines_and_refuses_a_calendar_systemd_does_not_know() {
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    let cron = sandbox.run(["schedule", &path, "--cron", "--every", "*-*-* 02:45"]);
    cron.expect_code(0);
    assert!(
        cron.stdout().contains("45 2 * * *  set -a;"),
        "{}",
        cron.stdout()
    );
    assert!(
        cron.stdout()
            .contains(&format!(" run {path} --no-progress")),
        "{}",
        cron.stdout()
    );
    let units = sandbox.path().join("units");
    for bad in ["not a time", "daily\nExecStartPre=/bin/true"] {
        let out = sandbox.run([
            "schedule",
            &path,
            "--every",
            bad,
            "--unit-dir",
            units.to_str().unwrap(),
        ]);
        out.expect_code(2);
        assert!(!units.exists(), "{bad:?}: units were written");
    }
}

#[test]
fn an_admin_machine_schedules_prune_and_drill_with_their_own_credentials_and_no_backup() {
    let sandbox = Sandbox::new();
    let path = plan(&sandbox);
    let units = sandbox.path().join("units");
    let out = sandbox.run([
        "schedule",
        &path,
        "--no-backup",
        "--prune",
        "daily",
        "--prune-environment-file",
        "/etc/backplan/nightly-prune.env",
        "--drill",
        "Sun 05:00",
        "--drill-step",
        "dump",
        "--drill-health",
        "127.0.0.1:8800",
        "--drill-environment-file",
        "/etc/backplan/nightly-restore.env",
        "--unit-dir",
        units.to_str().unwrap(),
    ]);
    out.expect_code(0);
    let mut names: Vec<String> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "backplan-nightly-drill.service",
            "backplan-nightly-drill.timer",
            "backplan-nightly-prune.service",
            "backplan-nightly-prune.timer",
        ],
        "the backed-up machine backs up; this one only prunes and drills"
    );
    let read = |name: &str| std::fs::read_to_string(units.join(name)).unwrap();
    let prune = read("backplan-nightly-prune.service");
    assert!(
        prune.contains("EnvironmentFile=-/etc/backplan/nightly-prune.env\n"),
        "{prune}"
    );
    assert!(prune.contains(&format!(" prune {path}\n")), "{prune}");
    let drill = read("backplan-nightly-drill.service");
    assert!(
        drill.contains("EnvironmentFile=-/etc/backplan/nightly-restore.env\n"),
        "{drill}"
    );
    let paths: Vec<_> = names.iter().map(|n| units.join(n)).collect();
    let verified = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze is missing: run scripts/test-tools/install (scripts/test does)");
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // Nothing left to schedule is refused.
    let nothing = sandbox.run(["schedule", &path, "--no-backup", "--print"]);
    nothing.expect_code(2);
    assert!(
        nothing.stderr().contains("--no-backup"),
        "{}",
        nothing.stderr()
    );
}
