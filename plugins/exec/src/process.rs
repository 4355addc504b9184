//! Running one child process: bounded capture, log forwarding, timeout and cancellation.
//!
//! The child gets its own process group so that a timeout or Ctrl-C stops everything it
//! started (a shell's children included): SIGTERM first, SIGKILL after a grace period.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use backplan_plugin_sdk::{Context, PluginError, PluginResult};

/// How long a child has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often the wait loop looks at the clock and the cancellation flag.
const POLL: Duration = Duration::from_millis(25);

/// Everything needed to start the command.
#[derive(Debug)]
pub(crate) struct Invocation<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub clear_env: bool,
    pub cwd: Option<&'a Path>,
    pub timeout: Option<Duration>,
    pub capture_bytes: usize,
}

/// The last bytes of a stream, and how much there was in all.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    tail: VecDeque<u8>,
    pub total: u64,
    pub truncated: bool,
}

impl Capture {
    fn push(&mut self, bytes: &[u8], limit: usize) {
        self.total += bytes.len() as u64;
        self.tail.extend(bytes);
        if self.tail.len() > limit {
            self.truncated = true;
            let excess = self.tail.len() - limit;
            self.tail.drain(..excess);
        }
    }

    /// The captured tail as text (invalid UTF-8 replaced).
    pub(crate) fn text(&self) -> String {
        let (a, b) = self.tail.as_slices();
        String::from_utf8_lossy(&[a, b].concat()).into_owned()
    }
}

/// How the process ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub exit_code: Option<i32>,
    pub duration: Duration,
    pub stdout: Capture,
    pub stderr: Capture,
}

/// Resolves a program the way `execvp` will: a path with a slash as is, else through `PATH`.
pub(crate) fn find_program(program: &str, cwd: Option<&Path>) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match cwd {
            Some(dir) if Path::new(program).is_relative() => dir.join(program),
            _ => PathBuf::from(program),
        };
        return if executable(&path) {
            Ok(path)
        } else {
            Err(format!("{} is not an executable file", path.display()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("`{program}` was not found on PATH"))
}

/// Runs the command to the end, or until timeout or cancellation.
pub(crate) fn run(ctx: &Context, inv: &Invocation<'_>) -> PluginResult<Finished> {
    let mut command = Command::new(&inv.argv[0]);
    command
        .args(&inv.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if inv.clear_env {
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
    }
    command.envs(inv.env);
    if let Some(dir) = inv.cwd {
        command.current_dir(dir);
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| PluginError::permanent(format!("cannot start `{}`: {e}", inv.argv[0])))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let limit = inv.capture_bytes;

    std::thread::scope(|scope| {
        let out_reader = scope.spawn(move || {
            let mut capture = Capture::default();
            let mut reader = BufReader::new(stdout);
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                capture.push(&buf[..n], limit);
            }
            capture
        });
        let err_reader = scope.spawn(move || {
            let mut capture = Capture::default();
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while let Ok(n) = reader.read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                capture.push(&line, limit);
                let text = String::from_utf8_lossy(&line);
                ctx.info(text.trim_end());
                line.clear();
            }
            capture
        });

        let outcome = wait(ctx, &mut child, started, inv.timeout);
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        let status = outcome?;
        Ok(Finished {
            exit_code: status.code(),
            duration: started.elapsed(),
            stdout,
            stderr,
        })
    })
}

/// Waits for the child, stopping its process group on timeout or cancellation.
fn wait(
    ctx: &Context,
    child: &mut std::process::Child,
    started: Instant,
    timeout: Option<Duration>,
) -> PluginResult<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => {}
            Err(e) => {
                return Err(PluginError::permanent(format!(
                    "waiting for the command: {e}"
                )));
            }
        }
        let timed_out = timeout.is_some_and(|t| started.elapsed() >= t);
        if timed_out || ctx.is_cancelled() {
            stop_group(child);
            return Err(if timed_out {
                PluginError::transient(format!(
                    "the command did not finish within {}",
                    humantime::format_duration(timeout.unwrap_or_default())
                ))
            } else {
                PluginError::cancelled()
            });
        }
        std::thread::sleep(POLL);
    }
}

/// SIGTERM to the child's process group, then SIGKILL if it is still there after the grace.
fn stop_group(child: &mut std::process::Child) {
    let group = child.id() as libc::pid_t;
    // SAFETY: plain syscalls on the process group this function's caller started.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(POLL);
    }
    // SAFETY: as above; also reaps stragglers the shell left in the group.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
}
