//! A private local AWS endpoint per test (moto for EC2, ministack for S3), started by the
//! project's own `scripts/local-aws/start` and stopped when dropped.
//!
//! Each test gets its own servers, ports and fault settings, so tests run in parallel without
//! seeing each other's images, buckets or injected faults. There is no skipping: if the
//! endpoint cannot be started (no Python, no PyPI), the test fails and says why.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::workspace_root;

/// A running local endpoint and the environment that points the AWS SDK at it.
#[derive(Debug)]
pub struct LocalAws {
    env: BTreeMap<String, String>,
    state: PathBuf,
}

impl LocalAws {
    /// Starts an endpoint; `options` are `start`'s (e.g. `["--pending", "3"]`, `["--proxy"]`).
    pub fn start(options: &[&str]) -> LocalAws {
        let script = workspace_root().join("scripts/local-aws/start");
        let args: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
        let env = crate::exports::start(&script, &args, "the local AWS endpoint");
        let state = PathBuf::from(
            env.get("BACKPLAN_LOCAL_AWS_STATE")
                .expect("start exports BACKPLAN_LOCAL_AWS_STATE"),
        );
        LocalAws { env, state }
    }

    /// The exported variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, credentials, region,
    /// `BACKPLAN_MOTO_URL`, `BACKPLAN_FAULT_PROXY_URL`...).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// One exported variable.
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not exported by the local endpoint"))
    }

    /// Points `cmd` (the binary, or a Python/boto3 fixture script) at this endpoint, with no
    /// trace of the caller's own AWS settings.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        for key in [
            "AWS_PROFILE",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_SESSION_TOKEN",
        ] {
            cmd.env_remove(key);
        }
        cmd.envs(&self.env).env("AWS_EC2_METADATA_DISABLED", "true")
    }

    /// Runs a boto3 script against this endpoint and returns what it printed. The script gets
    /// `ec2` (default region), `west` (us-west-2), `s3` (path-style), `raw` (path-style, sends no
    /// checksum unless told to), the modules `base64`, `json`, `zlib`, and `out(v)` to print a
    /// value as JSON. For fixtures and for reading AWS state back, through the wire protocol.
    pub fn script(&self, script: &str) -> String {
        let prelude = "import base64, json, sys, zlib\n\
                       import boto3\n\
                       from botocore.config import Config\n\
                       ec2 = boto3.client('ec2')\n\
                       west = boto3.client('ec2', region_name='us-west-2')\n\
                       s3 = boto3.client('s3', config=Config(s3={'addressing_style': 'path'}))\n\
                       raw = boto3.client('s3', config=Config(s3={'addressing_style': 'path'}, \
                       request_checksum_calculation='when_required'))\n\
                       def out(v): print(json.dumps(v, default=str))\n";
        let output = self
            .python()
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .output()
            .expect("run the virtualenv's python");
        assert!(
            output.status.success(),
            "boto3 script failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// [`LocalAws::script`], with the last line it printed parsed as JSON (`null` if none).
    pub fn boto(&self, script: &str) -> serde_json::Value {
        let text = self.script(script);
        serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap_or_default()
    }

    /// The virtualenv's Python, which has boto3: for setting up fixtures the way a user's
    /// account would look (instances, buckets), through the same wire protocol.
    pub fn python(&self) -> Command {
        let venv = std::env::var_os("BACKPLAN_LOCAL_AWS_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("scripts/local-aws/.venv"));
        let mut cmd = Command::new(venv.join("bin/python"));
        self.apply(&mut cmd);
        cmd
    }
}

impl Drop for LocalAws {
    fn drop(&mut self) {
        let _ = Command::new(workspace_root().join("scripts/local-aws/stop"))
            .arg(&self.state)
            .output();
    }
}
