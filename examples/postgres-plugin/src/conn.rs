//! How the tools reach the server: the connection string, the password's way into the child
//! environment, and keeping the password out of everything the plugin says.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

use backplan_plugin_sdk::{PluginError, PluginResult};

use crate::config::Config;

/// Environment variables of libpq that could redirect a tool or hand it another password; they
/// are removed from every child's environment, which gets only what the plan says.
const INHERITED_LIBPQ_VARS: &[&str] = &[
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
];

/// Where the password comes from. Its `Debug` never shows the password.
#[derive(Clone, Default)]
pub enum Secret {
    /// No password (peer or trust authentication, or a `~/.pgpass`-less setup).
    #[default]
    None,
    /// Read from the environment variable the plan named; handed over as `PGPASSWORD`.
    Password(String),
    /// A libpq password file, handed over as `PGPASSFILE`.
    PassFile(PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::None => f.write_str("None"),
            Secret::Password(_) => f.write_str("Password(<redacted>)"),
            Secret::PassFile(path) => f.debug_tuple("PassFile").field(path).finish(),
        }
    }
}

/// A server and the way to log in to it.
#[derive(Debug, Clone)]
pub struct Connection {
    host: String,
    port: u16,
    user: String,
    secret: Secret,
}

impl Connection {
    /// The connection the step's config describes, with its password source resolved.
    pub fn from_config(config: &Config) -> PluginResult<Connection> {
        let secret = match (&config.password_env, &config.password_file) {
            (Some(var), _) => match std::env::var(var) {
                Ok(password) if !password.is_empty() => Secret::Password(password),
                Ok(_) => {
                    return Err(PluginError::config(format!(
                        "the environment variable `{var}` (password_env) is empty"
                    )));
                }
                Err(_) => {
                    return Err(PluginError::config(format!(
                        "the environment variable `{var}` (password_env) is not set"
                    )));
                }
            },
            (None, Some(path)) => {
                check_passfile(path)?;
                Secret::PassFile(path.clone())
            }
            (None, None) => Secret::None,
        };
        Ok(Connection {
            host: config.host.clone(),
            port: config.port,
            user: config.user.clone(),
            secret,
        })
    }

    /// For tools that read only files (`pg_restore --list`): no server, no password, and still
    /// none of the caller's libpq settings.
    pub fn offline() -> Connection {
        Connection {
            host: String::new(),
            port: 0,
            user: String::new(),
            secret: Secret::None,
        }
    }

    /// A connection made up by a test.
    #[cfg(test)]
    pub fn for_tests(host: &str, port: u16, user: &str, secret: Secret) -> Connection {
        Connection {
            host: host.into(),
            port,
            user: user.into(),
            secret,
        }
    }

    /// `user@host:port`, for messages.
    pub fn target(&self) -> String {
        format!("`{}` at {}:{}", self.user, self.host, self.port)
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// A libpq connection string for `database`. Every value is quoted, so no database name
    /// can smuggle in another parameter; the password is never part of it.
    pub fn conninfo(&self, database: &str) -> String {
        [
            ("host", self.host.as_str()),
            ("port", &self.port.to_string()),
            ("user", &self.user),
            ("dbname", database),
            ("application_name", "backplan-postgres"),
            ("connect_timeout", "10"),
        ]
        .iter()
        .map(|(key, value)| format!("{key}={}", conninfo_quote(value)))
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// Sets up a tool's environment: none of the caller's libpq settings, the password through
    /// `PGPASSWORD` or `PGPASSFILE`, and never a prompt.
    pub fn apply(&self, cmd: &mut Command) {
        for var in INHERITED_LIBPQ_VARS {
            cmd.env_remove(var);
        }
        match &self.secret {
            Secret::None => {}
            Secret::Password(password) => {
                cmd.env("PGPASSWORD", password);
            }
            Secret::PassFile(path) => {
                cmd.env("PGPASSFILE", path);
            }
        }
    }

    /// `text` with every occurrence of the password replaced by `********`.
    pub fn scrub(&self, text: &str) -> String {
        match &self.secret {
            Secret::Password(password) if !password.is_empty() => {
                text.replace(password.as_str(), "********")
            }
            _ => text.to_owned(),
        }
    }
}

/// libpq ignores a password file that others can read, and then fails with "no password
/// supplied": say so before any tool runs.
fn check_passfile(path: &std::path::Path) -> PluginResult<()> {
    let meta = std::fs::metadata(path).map_err(|e| {
        PluginError::config(format!(
            "`password_file` {} cannot be read: {e}",
            path.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(PluginError::config(format!(
            "`password_file` {} is not a file",
            path.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(PluginError::config(format!(
            "`password_file` {} is readable by others (mode {:o}); libpq ignores such a file: chmod 0600 it",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// A value quoted for a libpq connection string: in single quotes, `\` and `'` escaped.
pub fn conninfo_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if matches!(c, '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// An SQL identifier in double quotes (`"` doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal (`'` doubled; `standard_conforming_strings` is on in every supported
/// PostgreSQL, so backslashes are plain characters).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn connection(secret: Secret) -> Connection {
        Connection::for_tests("db.internal", 5433, "circle", secret)
    }

    #[test]
    fn conninfo_quotes_every_value() {
        let conn = connection(Secret::Password("s3cret".into()));
        let info = conn.conninfo("it's a \\ db host=evil");
        assert_eq!(
            info,
            "host='db.internal' port='5433' user='circle' dbname='it\\'s a \\\\ db host=evil' \
             application_name='backplan-postgres' connect_timeout='10'"
        );
        assert!(!info.contains("s3cret"));
    }

    #[test]
    fn sql_quoting_doubles_quotes() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("o'neil"), "'o''neil'");
    }

    #[test]
    fn the_password_is_scrubbed_and_never_debug_printed() {
        let conn = connection(Secret::Password("hunter2".into()));
        assert_eq!(
            conn.scrub("pg_dump: error: hunter2 in a message, twice: hunter2"),
            "pg_dump: error: ******** in a message, twice: ********"
        );
        assert!(!format!("{conn:?}").contains("hunter2"));
        assert_eq!(connection(Secret::None).scrub("as is"), "as is");
    }

    #[test]
    fn the_child_gets_only_the_configured_password() {
        let conn = connection(Secret::Password("hunter2".into()));
        let mut cmd = Command::new("true");
        cmd.env("PGPASSFILE", "/somewhere/else")
            .env("PGHOST", "elsewhere");
        conn.apply(&mut cmd);
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("PGPASSWORD".as_ref(), Some("hunter2".as_ref()))));
        assert!(envs.contains(&("PGPASSFILE".as_ref(), None)));
        assert!(envs.contains(&("PGHOST".as_ref(), None)));
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:circle:pw\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_passfile(&path).unwrap_err();
        assert!(err.message.contains("chmod 0600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_passfile(&path).unwrap();
        let err = check_passfile(&dir.path().join("missing")).unwrap_err();
        assert!(err.message.contains("cannot be read"), "{err}");
    }
}
