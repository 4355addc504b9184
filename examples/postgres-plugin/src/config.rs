//! The step's configuration, and what can be checked about it without touching anything.

use std::path::{Path, PathBuf};

use backplan_plugin_sdk::{PluginError, PluginResult, Request};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The `config` table of a `postgres` step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server's host name or address (a path starting with `/` is a Unix socket folder).
    #[serde(default = "default_host")]
    pub host: String,
    /// The server's port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The role to log in as. It needs to read everything it dumps (or the REPLICATION attribute
    /// for `method = "basebackup"`), and to create databases for a restore into a new one.
    #[serde(default = "default_user")]
    pub user: String,
    /// The databases to dump, each into its own file (`method = "dump"`, the default).
    #[serde(default)]
    pub databases: Vec<String>,
    /// The name of an environment variable holding the password (handed to the tools as
    /// `PGPASSWORD`, never recorded or logged).
    #[serde(default)]
    pub password_env: Option<String>,
    /// A libpq password file (`host:port:database:user:password` lines, mode 0600), handed to
    /// the tools as `PGPASSFILE`. Exclusive with `password_env`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `dump` (`pg_dump --format=custom`, one file per database) or `basebackup`
    /// (`pg_basebackup`: the whole cluster as one tar).
    #[serde(default)]
    pub method: Method,
    /// The folder the backups go into (absolute; created when missing). Each run writes a
    /// `<run id>/` folder in it, with one file per database and a `manifest.json`.
    pub destination: PathBuf,
    /// The database `restore` writes into (`-o database=NAME` overrides it). Default: each
    /// dump goes back into a database of its original name.
    #[serde(default)]
    pub restore_database: Option<String>,
    /// The database used for server-wide queries and `CREATE DATABASE`.
    #[serde(default = "default_maintenance_database")]
    pub maintenance_database: String,
    /// Restore without the original owners and privileges (`pg_restore --no-owner --no-acl`),
    /// for a server that lacks the original roles.
    #[serde(default)]
    pub no_owner: bool,
    /// The folder holding the PostgreSQL client tools (e.g. `/usr/lib/postgresql/16/bin`).
    /// Default: found on `PATH`.
    #[serde(default)]
    pub bin_dir: Option<PathBuf>,
    /// `prune` keeps the newest this many backups of the step and deletes the older run folders.
    /// Default: keep everything.
    #[serde(default)]
    pub keep_last: Option<u32>,
}

/// How a backup is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `pg_dump --format=custom` of each configured database.
    #[default]
    Dump,
    /// `pg_basebackup` of the whole cluster, as one tar.
    Basebackup,
}

fn default_host() -> String {
    "localhost".to_owned()
}
fn default_port() -> u16 {
    5432
}
fn default_user() -> String {
    "postgres".to_owned()
}
fn default_maintenance_database() -> String {
    "postgres".to_owned()
}

impl Config {
    /// Checks what needs no server and no file system: required keys, names, paths.
    pub fn validate(&self) -> PluginResult<()> {
        if self.password_env.is_some() && self.password_file.is_some() {
            return Err(PluginError::config(
                "`password_env` and `password_file` are exclusive: set one of them",
            ));
        }
        if !self.destination.is_absolute() && !self.unresolved(&self.destination) {
            return Err(PluginError::config(format!(
                "`destination` must be an absolute path, not {}",
                self.destination.display()
            )));
        }
        match self.method {
            Method::Dump if self.databases.is_empty() => {
                return Err(PluginError::config(
                    "`databases` is empty: list the databases to dump (or set method = \"basebackup\")",
                ));
            }
            Method::Basebackup if !self.databases.is_empty() => {
                return Err(PluginError::config(
                    "`databases` does not apply to method = \"basebackup\", which copies the whole cluster",
                ));
            }
            _ => {}
        }
        for name in self
            .databases
            .iter()
            .chain(self.restore_database.iter())
            .chain(std::iter::once(&self.maintenance_database))
        {
            check_database_name(name)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = self.databases.iter().find(|d| !seen.insert(*d)) {
            return Err(PluginError::config(format!(
                "database `{dup}` is listed twice in `databases`"
            )));
        }
        if self.user.is_empty() || self.host.is_empty() {
            return Err(PluginError::config("`user` and `host` must not be empty"));
        }
        if let Some(var) = &self.password_env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(PluginError::config(format!(
                    "`password_env` must name an environment variable, not {var:?}"
                )));
            }
        }
        Ok(())
    }

    /// The first config value that still refers to another step's output, if any.
    pub fn first_unresolved(&self) -> Option<String> {
        let paths = [Some(&self.destination), self.password_file.as_ref()];
        let strings = [Some(&self.host), Some(&self.user)];
        paths
            .into_iter()
            .flatten()
            .map(|p| p.display().to_string())
            .chain(strings.into_iter().flatten().cloned())
            .chain(self.databases.iter().cloned())
            .find(|v| Request::is_unresolved(v))
    }

    fn unresolved(&self, path: &Path) -> bool {
        Request::is_unresolved(&path.display().to_string())
    }
}

/// PostgreSQL accepts almost any database name; refuse only what cannot be right.
pub fn check_database_name(name: &str) -> PluginResult<()> {
    if name.is_empty() || name.contains('\0') || name.len() > 63 {
        return Err(PluginError::config(format!(
            "{name:?} is not a usable database name (1 to 63 bytes, no NUL)"
        )));
    }
    Ok(())
}

/// A file name for the dump of `database`: the name with anything but letters, digits, `-`,
/// `_` and `.` replaced by `_` (and a leading dot too, so dumps are never hidden files).
pub fn dump_file_name(database: &str) -> String {
    let mut safe: String = database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.starts_with('.') {
        safe.replace_range(0..1, "_");
    }
    format!("{safe}.pgdump")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<Config, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn defaults_fill_in_the_connection() {
        let config = parse(json!({"databases": ["circle"], "destination": "/backups/pg"})).unwrap();
        assert_eq!(config.host, "localhost");
        assert_eq!(config.port, 5432);
        assert_eq!(config.user, "postgres");
        assert_eq!(config.method, Method::Dump);
        assert_eq!(config.maintenance_database, "postgres");
        config.validate().unwrap();
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let err = parse(json!({"databases": ["a"], "destination": "/b", "pasword_env": "X"}))
            .unwrap_err();
        assert!(err.to_string().contains("pasword_env"), "{err}");
    }

    #[test]
    fn a_dump_needs_databases_and_a_basebackup_refuses_them() {
        let err = parse(json!({"destination": "/b"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.message.contains("`databases` is empty"), "{err}");
        let config = parse(json!({"destination": "/b", "method": "basebackup"})).unwrap();
        config.validate().unwrap();
        let err = parse(json!({"destination": "/b", "method": "basebackup", "databases": ["a"]}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.message.contains("whole cluster"), "{err}");
    }

    #[test]
    fn both_password_sources_are_refused() {
        let err = parse(json!({
            "databases": ["a"], "destination": "/b",
            "password_env": "PG_PW", "password_file": "/etc/pgpass"
        }))
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(err.message.contains("exclusive"), "{err}");
    }

    #[test]
    fn relative_destinations_and_duplicate_databases_are_refused() {
        let err = parse(json!({"databases": ["a"], "destination": "backups"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.message.contains("absolute"), "{err}");
        let err = parse(json!({"databases": ["a", "a"], "destination": "/b"}))
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.message.contains("listed twice"), "{err}");
    }

    #[test]
    fn an_unresolved_reference_is_found_and_not_judged() {
        let config = parse(json!({
            "databases": ["a"], "destination": "${steps.mount.outputs.path}/pg"
        }))
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.first_unresolved().as_deref(),
            Some("${steps.mount.outputs.path}/pg")
        );
    }

    #[test]
    fn dump_file_names_are_safe() {
        assert_eq!(dump_file_name("circle"), "circle.pgdump");
        assert_eq!(dump_file_name("../etc/passwd"), "_._etc_passwd.pgdump");
        assert_eq!(dump_file_name("weird name"), "weird_name.pgdump");
    }
}
