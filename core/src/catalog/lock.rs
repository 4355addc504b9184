//! The plan lock: one run per plan at a time, on any store that offers two atomic operations.
//!
//! The rules live here once; a [`LockStore`] only has to provide "create if absent" and
//! "replace/remove if unchanged" (compare-and-swap). The local store ([`super::file_lock`]) does
//! that with `link(2)` and a short `flock(2)`; an S3 store does it with `If-None-Match: *` and
//! `If-Match: <ETag>`. [`conformance`] holds the race tests every store must pass.
//!
//! - **Taking** the lock is one atomic create of an object that already holds the owner (host,
//!   boot, pid and its start time, run id, a random token): no contender can ever see a lock
//!   that exists but is not yet written, so a fresh lock is never mistaken for a broken one.
//! - **Stale** means provably gone: the owner ran on this very boot of this machine (same host
//!   name *and* boot id) and its process is gone (or the pid now belongs to a process started
//!   later), or the store has not seen a heartbeat for the expiry. A lock that cannot be read as
//!   an owner is stale only after the expiry. A machine restored from an image of this one may
//!   share its host name, so a different boot is never proof by itself.
//! - **Reclaiming** a stale lock is a compare-and-swap from the exact lock judged stale to ours:
//!   of two reclaimers, one wins and the other sees a live lock.
//! - The owner **refreshes** the lock every [`HEARTBEAT`] with the same compare-and-swap; a
//!   refresh that fails means the lock was taken over (the run was judged dead) and the run must
//!   stop. **Releasing** removes the lock only if it is still ours.

use std::io;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A lock whose store has not seen a heartbeat for this long belongs to a dead run.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);
/// How often a running backplan refreshes its lock.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// The lock as a store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The bytes written by its owner.
    pub bytes: Vec<u8>,
    /// When the store last wrote it (its clock, not the owner's).
    pub written: SystemTime,
    /// What identifies this exact version for a compare-and-swap (a digest, an ETag).
    pub tag: String,
}

/// Where a lock lives: two atomic operations and a read.
pub trait LockStore: Send + Sync + std::fmt::Debug {
    /// Creates the lock holding `bytes` if there is none, atomically (no one ever sees it
    /// without its bytes). `Ok(None)` if a lock exists.
    fn create(&self, bytes: &[u8]) -> io::Result<Option<Held>>;
    /// The lock as it is now, if any.
    fn read(&self) -> io::Result<Option<Held>>;
    /// Replaces the lock with `bytes` if it is still exactly `expected`. `Ok(None)` if it changed
    /// or is gone.
    fn replace(&self, expected: &Held, bytes: &[u8]) -> io::Result<Option<Held>>;
    /// Removes the lock if it is still exactly `expected`; whether it did.
    fn remove(&self, expected: &Held) -> io::Result<bool>;
    /// Where the lock is, for messages.
    fn describe(&self) -> String;
}

/// Who holds a lock, as written into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    /// The run under way.
    pub run_id: String,
    /// The machine's host name.
    pub host: String,
    /// The kernel's boot id: with the host name, "this very boot of this machine".
    #[serde(default)]
    pub boot_id: String,
    /// The process.
    pub pid: u32,
    /// When the process started, in clock ticks since boot (tells a reused pid apart).
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// When the lock was taken (RFC 3339).
    pub since: String,
    /// Heartbeats so far: every refresh writes new bytes.
    #[serde(default)]
    pub refreshed: u64,
    /// Random, so that two owners' bytes always differ.
    #[serde(default)]
    pub token: u64,
}

impl LockOwner {
    /// This process, for `run_id`.
    pub fn this_process(run_id: &str) -> Self {
        let pid = std::process::id();
        LockOwner {
            run_id: run_id.to_owned(),
            host: hostname(),
            boot_id: boot_id(),
            pid,
            pid_start: process_start(pid),
            since: jiff::Timestamp::now().to_string(),
            refreshed: 0,
            token: fastrand::u64(..),
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("lock owners serialise");
        bytes.push(b'\n');
        bytes
    }
}

/// Whether `owner` is provably gone, judged at `now`, its lock last written at `written`.
pub(crate) fn is_gone(
    owner: &LockOwner,
    written: SystemTime,
    now: SystemTime,
    expiry: Duration,
) -> bool {
    if silent_for(written, now) > expiry {
        return true;
    }
    let this_boot =
        owner.host == hostname() && !owner.boot_id.is_empty() && owner.boot_id == boot_id();
    this_boot && !process_alive(owner.pid, owner.pid_start)
}

fn silent_for(written: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(written).unwrap_or_default()
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// A live run holds it.
    #[error("held by run {} (pid {} on {}, since {})", .0.run_id, .0.pid, .0.host, .0.since)]
    Busy(Box<LockOwner>),
    /// It holds something that is not an owner, and is not old enough to be judged dead.
    #[error("{0} holds no readable owner; it is reclaimed once untouched for {STALE_AFTER:?}")]
    Unreadable(String),
    /// It changed hands faster than it could be taken.
    #[error("{0} keeps changing hands; try again")]
    Contended(String),
    /// The store failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What taking the lock found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// There was no lock.
    Free,
    /// A stale lock of this (dead) owner was replaced; `None` if it was unreadable.
    Reclaimed(Option<Box<LockOwner>>),
}

/// Takes the lock in `store` for `owner`, judging staleness at `now` with `expiry`.
pub fn acquire(
    store: Box<dyn LockStore>,
    owner: LockOwner,
    now: SystemTime,
    expiry: Duration,
) -> Result<(LockGuard, Taken), LockError> {
    let bytes = owner.to_bytes();
    for _ in 0..8 {
        if let Some(held) = store.create(&bytes)? {
            return Ok((LockGuard::new(store, owner, held), Taken::Free));
        }
        let Some(current) = store.read()? else {
            continue; // released in between: try to create again
        };
        let holder: Option<LockOwner> = serde_json::from_slice(&current.bytes).ok();
        let gone = match &holder {
            Some(holder) => is_gone(holder, current.written, now, expiry),
            None => silent_for(current.written, now) > expiry,
        };
        if !gone {
            return Err(match holder {
                Some(holder) => LockError::Busy(Box::new(holder)),
                None => LockError::Unreadable(store.describe()),
            });
        }
        if let Some(held) = store.replace(&current, &bytes)? {
            let taken = Taken::Reclaimed(holder.map(Box::new));
            return Ok((LockGuard::new(store, owner, held), taken));
        }
        // Someone else changed it first: look again.
    }
    Err(LockError::Contended(store.describe()))
}

/// The held lock. Dropping it releases the lock if it is still ours.
#[derive(Debug)]
pub struct LockGuard {
    store: Box<dyn LockStore>,
    owner: LockOwner,
    held: std::sync::Mutex<Option<Held>>,
}

impl LockGuard {
    fn new(store: Box<dyn LockStore>, owner: LockOwner, held: Held) -> Self {
        LockGuard {
            store,
            owner,
            held: std::sync::Mutex::new(Some(held)),
        }
    }

    /// The owner written into the lock.
    pub fn owner(&self) -> &LockOwner {
        &self.owner
    }

    /// Writes a heartbeat. `Ok(false)` means the lock is no longer ours: another process judged
    /// this run dead and took it, so the run must stop.
    pub fn refresh(&self) -> io::Result<bool> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some(current) = held.as_ref() else {
            return Ok(false);
        };
        let mut next = self.owner.clone();
        next.refreshed =
            serde_json::from_slice::<LockOwner>(&current.bytes).map_or(0, |o| o.refreshed) + 1;
        match self.store.replace(current, &next.to_bytes())? {
            Some(new) => {
                *held = Some(new);
                Ok(true)
            }
            None => {
                *held = None;
                Ok(false)
            }
        }
    }

    /// Releases the lock now (also done on drop); whether it was still ours.
    pub fn release(&self) -> io::Result<bool> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.take() {
            Some(current) => self.store.remove(&current),
            None => Ok(false),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Err(error) = self.release() {
            tracing::warn!(
                "could not release the lock {}: {error}",
                self.store.describe()
            );
        }
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// The kernel's id of this boot (empty where there is none).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is a live process that started at `started` (when known). In doubt: alive.
fn process_alive(pid: u32, started: Option<u64>) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(raw, 0) };
    let exists = rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match (started, process_start(pid)) {
        (Some(then), Some(now)) => then == now,
        _ => true,
    }
}

/// The race and liveness tests every [`LockStore`] must pass. Each function panics on failure;
/// `store` makes a new handle on one shared, initially empty, lock location.
pub mod conformance {
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, SystemTime};

    use super::{LockError, LockOwner, LockStore, STALE_AFTER, Taken, acquire};

    type Outcome = Result<(super::LockGuard, Taken), LockError>;

    /// `threads` contenders (runs `run-0`, `run-1`, ...) try to take the lock at one instant.
    fn race<F>(store: F, threads: usize) -> Vec<Outcome>
    where
        F: Fn() -> Box<dyn LockStore> + Send + Sync + 'static,
    {
        let store = Arc::new(store);
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let owner = LockOwner::this_process(&format!("run-{i}"));
                    barrier.wait();
                    acquire(store(), owner, SystemTime::now(), STALE_AFTER)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Runs every check below, each on a fresh location from `location()`, which returns a
    /// factory of handles on one location.
    pub fn check_all<F>(location: impl Fn() -> F)
    where
        F: Fn() -> Box<dyn LockStore> + Send + Sync + 'static,
    {
        one_of_many_simultaneous_takers_wins(location(), 16);
        a_held_lock_is_refused_then_free_after_release(location());
        one_of_many_reclaimers_of_a_stale_lock_wins(location(), 16);
        a_refresh_after_a_takeover_reports_the_lock_lost(location());
    }

    /// `threads` contenders start at once: exactly one takes the lock, the others see it busy.
    pub fn one_of_many_simultaneous_takers_wins<F>(store: F, threads: usize)
    where
        F: Fn() -> Box<dyn LockStore> + Send + Sync + 'static,
    {
        let results = race(store, threads);
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{results:?}");
        for result in &results {
            match result {
                Ok((_, taken)) => assert_eq!(*taken, Taken::Free),
                Err(LockError::Busy(_)) => {}
                Err(other) => panic!("a contender failed otherwise: {other}"),
            }
        }
    }

    /// A held lock is refused with its owner; once released it can be taken again.
    pub fn a_held_lock_is_refused_then_free_after_release<F>(store: F)
    where
        F: Fn() -> Box<dyn LockStore>,
    {
        let now = SystemTime::now();
        let (guard, _) = acquire(store(), LockOwner::this_process("a"), now, STALE_AFTER).unwrap();
        match acquire(store(), LockOwner::this_process("b"), now, STALE_AFTER) {
            Err(LockError::Busy(owner)) => assert_eq!(owner.run_id, "a"),
            other => panic!("expected busy, got {other:?}"),
        }
        assert!(guard.refresh().unwrap(), "the owner's heartbeat failed");
        assert!(guard.release().unwrap());
        let (_again, taken) =
            acquire(store(), LockOwner::this_process("b"), now, STALE_AFTER).unwrap();
        assert_eq!(taken, Taken::Free);
    }

    /// A lock whose owner is provably gone (its process on this boot has exited) is reclaimed by
    /// exactly one of many contenders; the others then see the winner's live lock.
    pub fn one_of_many_reclaimers_of_a_stale_lock_wins<F>(store: F, threads: usize)
    where
        F: Fn() -> Box<dyn LockStore> + Send + Sync + 'static,
    {
        let mut dead = LockOwner::this_process("old");
        dead.pid = i32::MAX as u32;
        dead.pid_start = None;
        store()
            .create(&dead.to_bytes())
            .unwrap()
            .expect("the location starts empty");
        let results = race(store, threads);
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        assert!(
            matches!(&winners[0].1, Taken::Reclaimed(Some(old)) if old.run_id == "old"),
            "{:?}",
            winners[0].1
        );
        for result in &results {
            if let Err(error) = result {
                assert!(matches!(error, LockError::Busy(_)), "{error}");
            }
        }
    }

    /// The owner of a lock taken over (after it was judged dead) learns so at its next heartbeat,
    /// and its release leaves the new owner's lock alone.
    pub fn a_refresh_after_a_takeover_reports_the_lock_lost<F>(store: F)
    where
        F: Fn() -> Box<dyn LockStore>,
    {
        let now = SystemTime::now();
        let (first, _) =
            acquire(store(), LockOwner::this_process("first"), now, STALE_AFTER).unwrap();
        let later = now + STALE_AFTER + Duration::from_secs(60);
        let (second, taken) = acquire(
            store(),
            LockOwner::this_process("second"),
            later,
            STALE_AFTER,
        )
        .unwrap();
        assert!(matches!(taken, Taken::Reclaimed(Some(_))), "{taken:?}");
        assert!(!first.refresh().unwrap(), "a lost lock refreshed");
        assert!(!first.release().unwrap(), "a lost lock was released");
        match acquire(store(), LockOwner::this_process("third"), now, STALE_AFTER) {
            Err(LockError::Busy(owner)) => assert_eq!(owner.run_id, "second"),
            other => panic!("expected busy, got {other:?}"),
        }
        drop(second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = std::process::id();
        let start = process_start(me);
        assert!(start.is_some(), "no start time for our own pid");
        assert!(process_alive(me, start));
        assert!(
            !process_alive(me, start.map(|s| s + 1)),
            "a reused pid counted as alive"
        );
        assert!(!process_alive(i32::MAX as u32, None));
        assert!(!process_alive(0, None));
    }

    #[test]
    fn an_owner_on_this_boot_whose_process_is_gone_is_gone_at_once() {
        let now = SystemTime::now();
        let mut owner = LockOwner::this_process("r");
        assert!(!is_gone(&owner, now, now, STALE_AFTER));
        owner.pid = i32::MAX as u32;
        assert!(is_gone(&owner, now, now, STALE_AFTER));
        // Another boot (or another machine restored from this one's image): only the expiry
        // proves it gone.
        owner.boot_id = "another-boot".into();
        assert!(!is_gone(&owner, now, now, STALE_AFTER));
        assert!(is_gone(&owner, now, now + STALE_AFTER * 2, STALE_AFTER));
    }
}
