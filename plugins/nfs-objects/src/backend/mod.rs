//! Where repository objects live, behind one small trait.
//!
//! The engine only ever needs whole named objects ("data/ab/abcd….pack", "snapshots/….json"),
//! written once and never modified, so the same code runs against a local folder
//! ([`LocalBackend`]) and an S3 bucket/prefix ([`S3Backend`]). Every `put` is atomic and
//! durable when it returns: that is what lets a backup publish its snapshot last and survive a
//! crash at any moment. What a crash leaves in the staging area is collected by
//! [`Backend::collect_leftovers`] (see [`leftovers`]).

pub mod leftovers;
mod local;
mod s3;
mod sealed;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

pub use leftovers::Leftovers;
pub use local::LocalBackend;
pub use s3::{LOCK_STATE_OBJECT, Lock, LockMode, ObjectLock, S3Backend, S3Location, S3Options};
pub use sealed::SealedBackend;

use crate::error::{Error, IoContext, Result};

/// One object as seen by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full object name, `/`-separated, e.g. `data/ab/ab12….pack`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification (creation, since objects are immutable).
    pub modified: SystemTime,
}

/// A store of immutable named objects.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A local folder where callers build large objects before handing them to
    /// [`Backend::put_file`]; for a local repository it is on the same filesystem, so publishing
    /// is a rename, not a copy.
    fn staging_dir(&self) -> &Path;

    /// A fresh path in [`Backend::staging_dir`] for a file ending in `suffix`, named so that
    /// [`Backend::collect_leftovers`] can tell whether its writer is still alive.
    fn staging_file(&self, suffix: &str) -> PathBuf {
        self.staging_dir().join(leftovers::staged_name(suffix))
    }

    /// Removes staged files that processes killed before they could clean up left behind: those
    /// of provably dead writers, and those untouched for `max_age` whose writer cannot be
    /// judged (see [`leftovers`]). In a `dry_run`, only counts them. Best effort.
    fn collect_leftovers(&self, max_age: Duration, dry_run: bool) -> Leftovers;

    /// Publishes the finished local file `staged` as object `name`, consuming the file.
    /// Atomic (readers see all or nothing) and durable when it returns.
    fn put_file(&self, name: &str, staged: &Path) -> Result<()>;

    /// Publishes `data` as object `name`; atomic and durable like [`Backend::put_file`].
    fn put_bytes(&self, name: &str, data: &[u8]) -> Result<()>;

    /// Publishes a copy of object `from` as object `to`; atomic and durable like
    /// [`Backend::put_file`]. By default the bytes go through a staged file
    /// ([`copy_through_staging`]); a store that can copy without moving them does (a hard
    /// link, a server-side copy). A wrapper that seals objects under their name must not pass
    /// it on: sealed bytes open only under the name they were sealed for.
    fn copy(&self, from: &str, to: &str) -> Result<()> {
        copy_through_staging(self, from, to)
    }

    /// Reads a whole object.
    fn get(&self, name: &str) -> Result<Vec<u8>>;

    /// Reads `len` bytes at `offset`; an object shorter than that is corrupt.
    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// [`Backend::get_range`] into `into`, as many bytes as it is long, for callers that read
    /// many ranges: a reused buffer spares an allocation, and fresh pages, per read.
    fn read_range(&self, name: &str, offset: u64, into: &mut [u8]) -> Result<()> {
        let bytes = self.get_range(name, offset, into.len() as u64)?;
        into.copy_from_slice(&bytes);
        Ok(())
    }

    /// Reads each `(name, offset, len)` of `ranges` into its part of `into`, which holds them
    /// back to back (a range starts where the one before it ends) and is exactly as long as all
    /// of them: the reads of one batch of a restore or verify, into one buffer its worker keeps.
    /// A store whose requests wait on the network (S3) makes them concurrently; by default
    /// they are made one after another.
    fn read_ranges(&self, ranges: &[(String, u64, u64)], into: &mut [u8]) -> Vec<Result<()>> {
        split_ranges(ranges, into)
            .map(|((name, offset, _), into)| self.read_range(name, *offset, into))
            .collect()
    }

    /// Opens an object as a stream (manifests are read this way so they never sit whole in memory).
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>>;

    /// Every object whose name starts with `prefix` (a folder such as `snapshots/`), in name order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Whether object `name` exists.
    fn exists(&self, name: &str) -> Result<bool>;

    /// Object Lock: makes sure each of `names` stays locked at least the configured days after
    /// `time` (the snapshot referencing them), extending retentions that fall short; how many
    /// were extended. Without a lock configured, nothing to do. No default: a wrapper (like
    /// the sealing one) must pass it on, or an encrypted repository's locks would lapse.
    fn protect(&self, names: &[String], time: jiff::Timestamp) -> Result<usize>;

    /// The lock on object `name` (Object Lock retention, legal hold); none for a store without.
    /// No default, for the same reason as [`Backend::protect`].
    fn lock(&self, name: &str) -> Result<Lock>;

    /// Removes object `name`; removing an absent object is not an error.
    fn delete(&self, name: &str) -> Result<()>;
}

/// [`Backend::copy`] by reading object `from` into a staged file and publishing that as `to`.
pub fn copy_through_staging<B: Backend + ?Sized>(backend: &B, from: &str, to: &str) -> Result<()> {
    let staged = backend.staging_file("");
    let copied = stage_copy(backend, from, &staged).and_then(|()| backend.put_file(to, &staged));
    if copied.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    copied
}

/// Writes the bytes of object `from` into the new file `staged`.
fn stage_copy<B: Backend + ?Sized>(backend: &B, from: &str, staged: &Path) -> Result<()> {
    let mut reader = backend.open(from)?;
    let mut file = File::create_new(staged).at(staged)?;
    let mut buffer = vec![0; 256 << 10];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(Error::from_stream(err, |source| Error::Backend {
                    name: from.to_owned(),
                    source,
                    transient: true,
                }));
            }
        };
        file.write_all(&buffer[..read]).at(staged)?;
    }
}

/// Each range of `ranges` beside its part of `into` (see [`Backend::read_ranges`]).
///
/// # Panics
/// If `into` is not exactly as long as the ranges together: a caller's bug.
pub fn split_ranges<'a, 'b>(
    ranges: &'a [(String, u64, u64)],
    mut into: &'b mut [u8],
) -> impl Iterator<Item = (&'a (String, u64, u64), &'b mut [u8])> {
    let total: u64 = ranges.iter().map(|(_, _, len)| len).sum();
    assert_eq!(into.len() as u64, total, "a buffer as long as the ranges");
    ranges.iter().map(move |range| {
        let (part, rest) = std::mem::take(&mut into).split_at_mut(range.2 as usize);
        into = rest;
        (range, part)
    })
}
