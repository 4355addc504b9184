//! Helpers for the end-to-end tests: the real `backplan` binary in a sandbox, and plugin
//! libraries built for real as `cdylib`s.
//!
//! The binary is the one `cargo test --workspace` builds next to the test executables. Plugin
//! libraries are built with a nested `cargo build` into `target/fixtures`, a separate target
//! folder, so the nested build never waits on the lock the outer `cargo test` holds.

mod aws;
mod exports;
mod http;
mod postgres;

pub use aws::LocalAws;
pub use http::{HttpStandIn, Seen};
pub use postgres::LocalPostgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// The `backplan` binary built by `cargo test --workspace` (the cli crate's own integration
/// test makes cargo build it) or by `cargo build`.
pub fn backplan_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-exe> → target/<profile>/backplan
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let bin = profile_dir.join("backplan");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or build it with `cargo build -p backplan-cli`)",
        bin.display()
    );
    bin
}

/// A temporary folder with its own state folder, for running the binary in isolation.
#[derive(Debug)]
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A fresh sandbox.
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The sandbox folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The state folder the binary uses (catalog and step state).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes a file in the sandbox and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// A `backplan` command with this sandbox's state folder and no progress bars.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(backplan_bin());
        cmd.args(args)
            .env("BACKPLAN_STATE_DIR", self.state_dir())
            .env_remove("RUST_LOG")
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs `backplan` with `args` to the end, pointed at the local AWS endpoint `aws`.
    pub fn run_on(&self, aws: &LocalAws, args: &[&str]) -> Outcome {
        let mut cmd = self.cmd(args);
        aws.apply(&mut cmd);
        Outcome(cmd.output().expect("run backplan"))
    }

    /// Runs `backplan` with `args` to the end.
    pub fn run<I, S>(&self, args: I) -> Outcome
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Outcome(self.cmd(args).output().expect("run backplan"))
    }

    /// Every run record in the catalog of `plan`, oldest first.
    pub fn records(&self, plan: &str) -> Vec<serde_json::Value> {
        let dir = self.state_dir().join("catalog").join(plan).join("runs");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
        paths.sort();
        let mut records: Vec<serde_json::Value> = paths
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        // Oldest first: ids only sort by the second they were made in.
        records.sort_by_key(|r| {
            r["started_at"]
                .as_str()
                .and_then(|at| at.parse::<jiff::Timestamp>().ok())
        });
        records
    }
}

/// A finished `backplan` process.
#[derive(Debug)]
pub struct Outcome(pub Output);

impl Outcome {
    /// The exit code (-1 when killed by a signal).
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Stdout parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        })
    }
    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// How to build one plugin library.
#[derive(Debug, Clone, Copy)]
pub enum Fixture {
    /// A package of this workspace (`cargo build -p NAME`).
    WorkspacePackage(&'static str),
    /// A crate with its own manifest and lock file, built as an outside author would.
    Standalone(&'static str),
}

/// Builds a plugin `cdylib` (once per test process) and returns the path of the `.so`.
pub fn build_plugin(fixture: Fixture, lib_name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(name, _)| name == lib_name) {
        return path.clone();
    }
    let root = workspace_root();
    let target = root.join("target").join("fixtures");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&root);
    match fixture {
        Fixture::WorkspacePackage(package) => {
            cmd.args(["-p", package]);
        }
        Fixture::Standalone(manifest) => {
            cmd.arg("--manifest-path").arg(root.join(manifest));
        }
    }
    let output = cmd.output().expect("run cargo build");
    assert!(
        output.status.success(),
        "building the plugin failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = target.join("debug").join(format!("lib{lib_name}.so"));
    assert!(path.exists(), "{} was not built", path.display());
    built.push((lib_name.to_owned(), path.clone()));
    path
}
