//! Ctrl-C and SIGTERM stop a run cleanly; a second one leaves at once.
//!
//! systemd stops a unit with SIGTERM, an operator with Ctrl-C: both cancel the run, which still
//! records what it did, releases the plan's lock and ends with 128 + the signal's number (130,
//! 143). The second signal exits immediately (the lock is then reclaimed by the next run, its
//! process being gone).

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use backplan_core::exit;
use backplan_core::record::RunRecord;
use backplan_core::runner::CancellationToken;
use tokio::signal::unix::{SignalKind, signal};

/// The cancellation of this command, and which signal caused it.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Stop {
    /// Cancels on the first SIGINT or SIGTERM; exits on the second.
    pub(crate) fn on_signals() -> Self {
        let stop = Stop {
            token: CancellationToken::new(),
            signal: Arc::new(AtomicI32::new(0)),
        };
        let (token, signal_no) = (stop.token.clone(), stop.signal.clone());
        tokio::spawn(async move {
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            let mut first = true;
            loop {
                let number = tokio::select! {
                    Some(()) = interrupt.recv() => libc::SIGINT,
                    Some(()) = terminate.recv() => libc::SIGTERM,
                    else => return,
                };
                if !first {
                    std::process::exit(128 + number);
                }
                first = false;
                signal_no.store(number, Ordering::SeqCst);
                eprintln_quiet(
                    "stopping: cancelling running steps (send the signal again to quit at once)",
                );
                token.cancel();
            }
        });
        stop
    }

    /// The token the runner watches.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The exit code of a finished run: a run stopped by a signal ends with 128 + its number.
    pub(crate) fn exit_code(&self, record: &RunRecord) -> i32 {
        match self.signal.load(Ordering::SeqCst) {
            0 => exit::for_run(record),
            _ if !record.interrupted => exit::for_run(record),
            number if number == libc::SIGTERM => exit::TERMINATED,
            _ => exit::INTERRUPTED,
        }
    }
}

fn eprintln_quiet(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n{message}");
}
