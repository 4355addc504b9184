//! Running the PostgreSQL client tools: finding them, their versions, streaming their output,
//! stopping them on cancellation, and turning their complaints into typed errors.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use backplan_plugin_sdk::{Context, PluginError, PluginResult};

use crate::conn::Connection;

/// How much of a tool's standard error is kept for an error message.
const STDERR_TAIL_LINES: usize = 15;

/// Where the client tools are.
#[derive(Debug, Clone)]
pub struct Tools {
    dir: Option<PathBuf>,
}

impl Tools {
    /// Tools in `dir`, or on `PATH` when `None`.
    pub fn new(dir: Option<PathBuf>) -> Tools {
        Tools { dir }
    }

    /// A command for tool `name`.
    pub fn command(&self, name: &str) -> Command {
        match &self.dir {
            Some(dir) => Command::new(dir.join(name)),
            None => Command::new(name),
        }
    }

    /// The major version of tool `name` (`pg_dump --version`), or a config error saying it is
    /// missing.
    pub fn major_version(&self, name: &str) -> PluginResult<u32> {
        let output = self
            .command(name)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.missing(name, &e))?;
        let text = String::from_utf8_lossy(&output.stdout);
        parse_tool_major(&text).ok_or_else(|| {
            PluginError::config(format!(
                "cannot tell the version of `{name}` from {:?}",
                text.trim()
            ))
        })
    }

    fn missing(&self, name: &str, error: &io::Error) -> PluginError {
        let place = match &self.dir {
            Some(dir) => format!("in {}", dir.display()),
            None => "on PATH".to_owned(),
        };
        PluginError::config(format!(
            "cannot run `{name}` ({place}): {error}; install the PostgreSQL client tools \
             (e.g. apt-get install postgresql-client) or set `bin_dir`"
        ))
    }

    /// Runs tool `name` with `args` to the end, its standard output going to `stdout`. The
    /// child sees the connection's password and nothing else of libpq's environment; it is
    /// killed when the run is cancelled. A failure becomes a typed error (see [`classify`]).
    pub fn run(
        &self,
        ctx: &Context,
        conn: &Connection,
        name: &str,
        args: &[String],
        stdout: &mut (dyn Write + Send),
    ) -> PluginResult<()> {
        let mut cmd = self.command(name);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        conn.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| self.missing(name, &e))?;
        let mut child_out = child.stdout.take().expect("stdout is piped");
        let mut child_err = child.stderr.take().expect("stderr is piped");

        let (status, copied, stderr, cancelled) = std::thread::scope(|scope| {
            let copier = scope.spawn(move || io::copy(&mut child_out, stdout));
            let reader = scope.spawn(move || {
                let mut text = Vec::new();
                let _ = child_err.read_to_end(&mut text);
                String::from_utf8_lossy(&text).into_owned()
            });
            let mut cancelled = false;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) => {}
                    Err(e) => break Err(e),
                }
                if !cancelled && ctx.is_cancelled() {
                    cancelled = true;
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let copied = copier.join().expect("the copy thread does not panic");
            let stderr = reader.join().expect("the stderr thread does not panic");
            (status, copied, stderr, cancelled)
        });
        if cancelled {
            return Err(PluginError::cancelled());
        }
        let status = status
            .map_err(|e| PluginError::permanent(format!("waiting for `{name}` failed: {e}")))?;
        // A full disk first: the tool then only says its output pipe broke.
        if let Err(e) = copied {
            return Err(PluginError::permanent(format!(
                "writing the output of `{name}` failed: {e}"
            ))
            .with_detail(tail(&conn.scrub(&stderr), STDERR_TAIL_LINES)));
        }
        if !status.success() {
            return Err(classify(conn, name, status, &stderr));
        }
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            ctx.warn(format!("{name}: {}", conn.scrub(line)));
        }
        Ok(())
    }

    /// Runs `psql` with one SQL command against `database` and returns its unaligned,
    /// tuples-only output (fields separated by tabs, one row per line).
    pub fn query(
        &self,
        ctx: &Context,
        conn: &Connection,
        database: &str,
        sql: &str,
    ) -> PluginResult<String> {
        let args: Vec<String> = [
            "--no-psqlrc",
            "--no-password",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--field-separator=\t",
            "--set=ON_ERROR_STOP=1",
            "--dbname",
            &conn.conninfo(database),
            "--command",
            sql,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut out = Vec::new();
        self.run(ctx, conn, "psql", &args, &mut out)?;
        Ok(String::from_utf8_lossy(&out).trim_end().to_owned())
    }
}

/// The major version in `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`: 15 (and 906 for
/// the pre-10 `9.6.24`, matching [`server_major`]).
pub fn parse_tool_major(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "(PostgreSQL)")
        .nth(1)?;
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let first: u32 = parts.next()?.parse().ok()?;
    if first >= 10 {
        Some(first)
    } else {
        Some(first * 100 + parts.next()?.parse::<u32>().ok()?)
    }
}

/// The major version of a server from `server_version_num` (150018 → 15, 90624 → 906).
pub fn server_major(version_num: u32) -> u32 {
    if version_num >= 100_000 {
        version_num / 10_000
    } else {
        version_num / 100
    }
}

/// A major version for people: 15, or 9.6.
pub fn display_major(major: u32) -> String {
    if major >= 100 {
        format!("{}.{}", major / 100, major % 100)
    } else {
        major.to_string()
    }
}

/// Turns a tool's failure into an error the runner can act on: a refused login is the plan's
/// fault (config), a server that cannot be reached now may be reachable later (transient),
/// anything else is permanent and carries the end of the tool's standard error. Every text is
/// scrubbed of the password first.
pub fn classify(conn: &Connection, tool: &str, status: ExitStatus, stderr: &str) -> PluginError {
    let stderr = conn.scrub(stderr);
    let lower = stderr.to_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    let reason = stderr
        .lines()
        .find(|l| l.contains("FATAL") || l.contains("error:"))
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    let tail = tail(&stderr, STDERR_TAIL_LINES);
    if has(&[
        "password authentication failed",
        "no password supplied",
        "authentication failed",
        "no pg_hba.conf entry",
        "password is required",
    ]) {
        let why = if has(&["password authentication failed"]) {
            "the password was refused"
        } else if has(&["no password supplied", "password is required"]) {
            "the server wants a password and none was given (set `password_env` or `password_file`)"
        } else {
            "the server refused the login"
        };
        return PluginError::config(format!(
            "cannot log in to PostgreSQL as {}: {why}",
            conn.target()
        ))
        .with_detail(tail);
    }
    if lower.contains("role \"") && lower.contains("does not exist") {
        return PluginError::config(format!(
            "cannot log in to PostgreSQL as {}: no such role",
            conn.target()
        ))
        .with_detail(tail);
    }
    if has(&["database \""]) && has(&["does not exist"]) {
        return PluginError::config(format!("{tool}: {reason}")).with_detail(tail);
    }
    if has(&[
        "connection refused",
        "could not connect",
        "timeout expired",
        "the database system is starting up",
        "the database system is shutting down",
        "too many clients",
        "server closed the connection unexpectedly",
        "could not translate host name",
        "no route to host",
    ]) {
        return PluginError::transient(format!(
            "cannot reach PostgreSQL as {} ({tool}): {reason}",
            conn.target()
        ))
        .with_detail(tail);
    }
    PluginError::permanent(format!("`{tool}` failed ({status}): {reason}")).with_detail(tail)
}

/// The last `n` non-empty lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Secret;
    use backplan_plugin_sdk::ErrorKind;
    use std::os::unix::process::ExitStatusExt;

    fn conn(password: &str) -> Connection {
        Connection::for_tests(
            "10.0.0.5",
            5432,
            "circle",
            Secret::Password(password.into()),
        )
    }

    fn failed() -> ExitStatus {
        ExitStatus::from_raw(1 << 8)
    }

    #[test]
    fn tool_versions_parse() {
        assert_eq!(
            parse_tool_major("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(
            parse_tool_major("pg_restore (PostgreSQL) 17beta1"),
            Some(17)
        );
        assert_eq!(parse_tool_major("pg_dump (PostgreSQL) 9.6.24"), Some(906));
        assert_eq!(parse_tool_major("something else"), None);
        assert_eq!(server_major(150018), 15);
        assert_eq!(server_major(90624), 906);
        assert_eq!(display_major(906), "9.6");
        assert_eq!(display_major(16), "16");
    }

    #[test]
    fn a_refused_password_is_a_config_error_without_the_secret() {
        let c = conn("wrong-horse-battery");
        let err = classify(
            &c,
            "psql",
            failed(),
            "psql: error: connection to server at \"10.0.0.5\", port 5432 failed: FATAL:  \
             password authentication failed for user \"circle\" (tried wrong-horse-battery)\n",
        );
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("`circle` at 10.0.0.5:5432"), "{err}");
        assert!(err.message.contains("password was refused"), "{err}");
        let all = format!("{} {}", err.message, err.detail.clone().unwrap_or_default());
        assert!(!all.contains("wrong-horse-battery"), "{all}");
        assert!(all.contains("********"), "{all}");
    }

    #[test]
    fn an_unreachable_server_is_transient() {
        let c = conn("pw1");
        let err = classify(
            &c,
            "pg_dump",
            failed(),
            "pg_dump: error: connection to server at \"10.0.0.5\", port 5432 failed: \
             Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n",
        );
        assert_eq!(err.kind, ErrorKind::Transient);
        assert!(err.is_retryable());
    }

    #[test]
    fn other_failures_are_permanent_with_the_stderr_tail() {
        let c = conn("pw22");
        let stderr: String = (0..40).map(|i| format!("line {i}\n")).collect::<String>()
            + "pg_dump: error: query failed: ERROR:  permission denied for table builds\n";
        let err = classify(&c, "pg_dump", failed(), &stderr);
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.contains("permission denied"), "{err}");
        let detail = err.detail.unwrap();
        assert_eq!(detail.lines().count(), STDERR_TAIL_LINES);
        assert!(!detail.contains("line 0\n"));
        let err = classify(
            &c,
            "pg_dump",
            failed(),
            "pg_dump: error: connection to server failed: FATAL:  database \"nope\" does not exist",
        );
        assert_eq!(err.kind, ErrorKind::Config);
    }
}
