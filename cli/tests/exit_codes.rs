//! The binary's documented exit codes for the two kinds of bad input.
//!
//! This integration test also makes `cargo test --workspace` build `target/<profile>/backplan`,
//! which the end-to-end tests in `tests/` run.

use std::process::Command;

fn backplan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_backplan"))
        .args(args)
        .env(
            "BACKPLAN_STATE_DIR",
            std::env::temp_dir().join("backplan-cli-test"),
        )
        .output()
        .expect("run backplan")
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = backplan(&["bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
}

#[test]
fn an_unreadable_plan_is_a_config_error_naming_the_file() {
    let out = backplan(&["plan", "check", "/nonexistent/plan.toml"]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/plan.toml"));
}
