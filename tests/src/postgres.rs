//! A private PostgreSQL server per test, started by the project's own
//! `scripts/local-postgres/start` and stopped when dropped.
//!
//! Each test gets its own server (its own port, data folder and random superuser password), so
//! tests run in parallel without seeing each other's databases. There is no skipping: if the
//! server cannot be started (no packages and no way to install them), the test fails and says
//! why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workspace_root;

/// A running server and how to reach it.
#[derive(Debug)]
pub struct LocalPostgres {
    env: BTreeMap<String, String>,
    state: PathBuf,
}

impl LocalPostgres {
    /// Starts a server (`scripts/local-postgres/start`). It is stopped when this value is
    /// dropped, and also when the test process dies without dropping it (`--watch-pid`).
    pub fn start() -> LocalPostgres {
        let script = workspace_root().join("scripts/local-postgres/start");
        let args = ["--watch-pid".to_owned(), std::process::id().to_string()];
        let env = crate::exports::start(&script, &args, "the local PostgreSQL server");
        let state = PathBuf::from(
            env.get("BACKPLAN_PG_STATE")
                .expect("start exports BACKPLAN_PG_STATE"),
        );
        LocalPostgres { env, state }
    }

    /// One exported variable (`PGHOST`, `PGPORT`, `BACKPLAN_PG_BIN`, ...).
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not exported by scripts/local-postgres/start"))
    }

    /// The server's address.
    pub fn host(&self) -> &str {
        self.var("PGHOST")
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.var("PGPORT").parse().expect("PGPORT is a port")
    }

    /// The superuser's name.
    pub fn superuser(&self) -> &str {
        self.var("BACKPLAN_PG_SUPERUSER")
    }

    /// The superuser's password.
    pub fn password(&self) -> String {
        let file = self.var("BACKPLAN_PG_PASSWORD_FILE");
        std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {file}: {e}"))
            .trim()
            .to_owned()
    }

    /// A libpq password file for the superuser (mode 0600).
    pub fn passfile(&self) -> &Path {
        Path::new(self.var("BACKPLAN_PG_PASSFILE"))
    }

    /// The folder of the server's own binaries (`pg_dump`, `psql`, ... of the same version).
    pub fn bin(&self) -> &Path {
        Path::new(self.var("BACKPLAN_PG_BIN"))
    }

    /// Runs SQL in `database` as the superuser and returns psql's unaligned, tuples-only output.
    #[track_caller]
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin().join("psql"))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql])
            .env("PGHOST", self.host())
            .env("PGPORT", self.port().to_string())
            .env("PGUSER", self.superuser())
            .env("PGPASSFILE", self.passfile())
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql -d {database} -c {sql:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }
}

impl LocalPostgres {
    /// Stops the server now (a later drop does nothing more).
    pub fn stop(&self) {
        let _ = Command::new(workspace_root().join("scripts/local-postgres/stop"))
            .arg(&self.state)
            .output();
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
