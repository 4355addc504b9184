//! How a long operation reports progress and learns that it should stop.
//!
//! The engine does not know about the plugin SDK; the caller passes two closures and the engine
//! calls them from its coordinating thread, at most a few times per second.

use std::time::{Duration, Instant};

/// Where an operation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// `backup`, `restore`, `verify` or `prune`.
    pub action: &'static str,
    /// Entries (files, folders, links) fully handled so far.
    pub entries: u64,
    /// File bytes fully handled so far.
    pub bytes: u64,
    /// Expected file bytes in total, when known (e.g. from the previous snapshot).
    pub total_bytes: Option<u64>,
    pub elapsed: Duration,
}

/// The caller's hooks.
#[derive(Clone, Copy)]
pub struct Control<'a> {
    cancelled: &'a (dyn Fn() -> bool + Sync),
    progress: &'a (dyn Fn(&Progress) + Sync),
}

impl std::fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl<'a> Control<'a> {
    /// Hooks asking whether to stop and receiving progress.
    pub fn new(
        cancelled: &'a (dyn Fn() -> bool + Sync),
        progress: &'a (dyn Fn(&Progress) + Sync),
    ) -> Self {
        Self {
            cancelled,
            progress,
        }
    }

    /// Never cancelled, reports nothing.
    pub fn silent() -> Control<'static> {
        Control {
            cancelled: &|| false,
            progress: &|_| {},
        }
    }

    /// Fails with [`crate::error::Error::Cancelled`] once the caller asked to stop.
    pub fn check_cancelled(&self) -> crate::error::Result<()> {
        if (self.cancelled)() {
            Err(crate::error::Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Rate-limits progress reports of one operation.
#[derive(Debug)]
pub(crate) struct Reporter<'a> {
    control: Control<'a>,
    action: &'static str,
    total_bytes: Option<u64>,
    started: Instant,
    last: Instant,
}

impl<'a> Reporter<'a> {
    const INTERVAL: Duration = Duration::from_millis(500);

    pub(crate) fn new(
        control: Control<'a>,
        action: &'static str,
        total_bytes: Option<u64>,
    ) -> Self {
        let now = Instant::now();
        Self {
            control,
            action,
            total_bytes,
            started: now,
            last: now,
        }
    }

    /// Reports if the last report is old enough (or `force`).
    pub(crate) fn report(&mut self, entries: u64, bytes: u64, force: bool) {
        let now = Instant::now();
        if force || now.duration_since(self.last) >= Self::INTERVAL {
            self.last = now;
            (self.control.progress)(&Progress {
                action: self.action,
                entries,
                bytes,
                total_bytes: self.total_bytes,
                elapsed: now.duration_since(self.started),
            });
        }
    }
}
