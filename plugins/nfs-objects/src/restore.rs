//! Restore: put a snapshot (or a sub-path of it) back, byte-checked, with its metadata.
//!
//! The manifest is streamed three times, each pass cheap next to the data: first folders,
//! symlinks and file contents (workers fetch, verify against the content id and write pieces in
//! parallel; all-zero blocks are skipped so sparse files stay sparse); then hard links, which
//! need their first name in place; last folder modes, owners and mtimes, which every earlier
//! write into the folder would have changed. A file is written under a temporary name and renamed
//! over its final name only once complete and checked, so an interrupted restore never leaves a
//! truncated file under a real name. An existing file newer than the snapshot's is kept unless
//! `force`; one identical in size and mtime is not rewritten.
//!
//! Large files are written around the page cache (see `direct`); a file of one piece (most
//! small files) is created, written and finished by the worker that fetched it, so the
//! coordinating thread makes no system calls per small file.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::backup::Skipped;
use crate::blob::{BlobRef, Decoder};
use crate::control::{Control, Reporter};
use crate::direct::{self, AlignedBuffer, DirectFile};
use crate::error::{Error, IoContext, Result};
use crate::fetch::fetch_each;
use crate::manifest::{Entry, Kind, ManifestReader, is_within};
use crate::pool::{Pool, Worker};
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// Files being written at once; bounds open descriptors and memory.
const OPEN_FILES: usize = 256;
/// Small-file pieces per job.
const BATCH_PIECES: usize = 64;
/// Zero runs shorter than this are written, not skipped (a multiple of `direct::ALIGN`, so the
/// writes between holes stay aligned).
const HOLE_BLOCK: usize = 64 * 1024;
/// Files at least this large are written around the page cache (see `direct`); smaller ones are
/// many and short, and a synchronous direct write each would cost more than the copy it saves.
const DIRECT_MIN: u64 = 1 << 20;

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The folder the snapshot's root maps to (the original source, or another folder for a drill).
    pub target: PathBuf,
    /// Only entries at or below this relative path (`/`-separated; empty for everything).
    pub subpath: Vec<u8>,
    /// Overwrite existing files even when they are newer than the snapshot's.
    pub force: bool,
    /// Restore owners and groups (needs root).
    pub owners: bool,
    pub workers: usize,
}

impl RestoreOptions {
    /// Everything into `target`; owners restored when running as root.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            subpath: Vec::new(),
            force: false,
            // SAFETY: geteuid has no preconditions and cannot fail.
            owners: unsafe { libc::geteuid() } == 0,
            workers: crate::backup::default_workers(),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Files already identical (size and mtime) and left alone.
    pub unchanged: u64,
    /// Existing files newer than the snapshot's, kept because `force` was off.
    pub kept_newer: Vec<String>,
    /// Entries that could not be restored (damaged data, conflicts), with the reason.
    pub failed: Vec<Skipped>,
}

/// Restores `snapshot` from `repo` as `options` say.
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    control: Control<'_>,
) -> Result<RestoreReport> {
    let backend = repo.backend();
    let open_manifest = || {
        ManifestReader::open(
            backend.as_ref(),
            &snapshot.manifest,
            snapshot.manifest_blake3,
        )
    };
    let target = &options.target;
    let subpath = options.subpath.as_slice();
    fs::create_dir_all(target.join(Path::new(std::ffi::OsStr::from_bytes(subpath)))).at(target)?;

    let workers = (0..options.workers.max(1))
        .map(|_| {
            Ok(PieceWriter {
                backend: backend.as_ref(),
                decoder: Decoder::new()?,
                aligned: AlignedBuffer::with_capacity(0),
                fetched: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;
    let mut report = RestoreReport::default();
    let reporter = Reporter::new(control, "restore", Some(snapshot.stats.bytes));
    let has_hardlinks = std::thread::scope(|scope| -> Result<bool> {
        let mut run = Run {
            pool: Pool::start(scope, workers),
            options,
            files: HashMap::new(),
            next_slot: 0,
            batch: Vec::new(),
            report: &mut report,
            reporter,
            has_hardlinks: false,
        };
        for entry in open_manifest()? {
            control.check_cancelled()?;
            let entry = entry?;
            if is_within(&entry.path, subpath) {
                run.restore_entry(entry)?;
            }
            run.collect_ready()?;
        }
        while run.wait_for_one()? {}
        let has_hardlinks = run.has_hardlinks;
        run.pool.finish()?;
        Ok(has_hardlinks)
    })?;

    if has_hardlinks {
        for entry in open_manifest()? {
            let entry = entry?;
            if entry.kind == Kind::Hardlink && is_within(&entry.path, subpath) {
                restore_hardlink(&entry, options, &mut report)?;
            }
        }
    }
    for entry in open_manifest()? {
        let entry = entry?;
        if entry.kind == Kind::Dir && is_within(&entry.path, subpath) {
            let path = destination(target, &entry.path)?;
            if let Err(err) = apply_metadata(&path, None, &entry, options.owners) {
                report.failed.push(failure(&path, err.to_string()));
            }
        }
    }
    Ok(report)
}

/// A file whose pieces are being written.
struct OpenFile {
    destination: PathBuf,
    /// A file of several pieces, finished by the coordinating thread once all are in; `None`
    /// for a file a worker writes and finishes whole.
    shared: Option<(NewFile, Arc<Mutex<DirectFile>>)>,
    missing: usize,
    failure: Option<String>,
}

/// A restored file, from creation under its temporary name to its move into place.
struct NewFile {
    entry: Entry,
    temporary: PathBuf,
    destination: PathBuf,
    owners: bool,
}

impl NewFile {
    /// Creates the temporary file at its full size (direct writes for large files).
    fn create(&self) -> io::Result<DirectFile> {
        let create = if writes_direct(&self.entry) {
            DirectFile::create
        } else {
            DirectFile::create_buffered
        };
        let file = create(&self.temporary)?;
        file.file().set_len(self.entry.size)?;
        Ok(file)
    }

    /// Moves the written file into place with its metadata, or removes it after a `failure`.
    /// Direct writes padded the last block, so such a file is first cut back to its size
    /// (buffered ones already have it from `create`).
    fn finish(
        &self,
        file: &DirectFile,
        failure: Option<String>,
    ) -> std::result::Result<(), String> {
        let cut_back = || {
            if writes_direct(&self.entry) {
                file.file().set_len(self.entry.size)
            } else {
                Ok(())
            }
        };
        let finished = match failure {
            Some(reason) => Err(reason),
            None => cut_back()
                .and_then(|()| {
                    apply_metadata(&self.temporary, Some(file.file()), &self.entry, self.owners)
                })
                .and_then(|()| fs::rename(&self.temporary, &self.destination))
                .map_err(|err| err.to_string()),
        };
        if finished.is_err() {
            let _ = fs::remove_file(&self.temporary);
        }
        finished
    }

    /// Creates, writes and finishes a file whose content is all in `raw`.
    fn write_whole(
        &self,
        raw: &[u8],
        aligned: &mut AlignedBuffer,
    ) -> std::result::Result<(), String> {
        let mut file = self.create().map_err(|err| {
            let _ = fs::remove_file(&self.temporary);
            err.to_string()
        })?;
        let written = write_sparse(&mut file, 0, raw, aligned).err();
        self.finish(&file, written.map(|err| err.to_string()))
    }
}

/// One piece to fetch and write.
struct Piece {
    slot: u64,
    into: Destination,
    blob: BlobRef,
    offset: u64,
}

/// Where a piece goes.
enum Destination {
    /// Into a file of several pieces. Writes into one file are serialised here: parallel
    /// `pwrite`s on one inode queue on its kernel lock, spinning while the holder copies 4 MiB
    /// (10 % of a restore's CPU on 2 cores); a waiter on this mutex sleeps instead, and the
    /// other worker decodes meanwhile.
    Shared(Arc<Mutex<DirectFile>>),
    /// It is the whole file: the worker creates, writes and finishes it, so the many small
    /// files of a tree cost the coordinating thread no system calls of their own.
    Whole(Box<NewFile>),
}

/// A worker: fetches pieces, checks them and writes them into their files.
struct PieceWriter<'a> {
    backend: &'a dyn Backend,
    decoder: Decoder,
    /// Where raw blobs (slices of a fetched range, at any address) are copied for a direct write.
    aligned: AlignedBuffer,
    fetched: Vec<u8>,
}

impl Worker for PieceWriter<'_> {
    type Job = Vec<Piece>;
    type Output = Vec<(u64, Option<String>)>;

    fn run(&mut self, pieces: Vec<Piece>) -> Result<Self::Output> {
        let mut outcomes = Vec::with_capacity(pieces.len());
        let wanted = pieces
            .into_iter()
            .map(|piece| ((piece.slot, piece.into, piece.offset), piece.blob))
            .collect();
        let aligned = &mut self.aligned;
        fetch_each(
            self.backend,
            &mut self.decoder,
            &mut self.fetched,
            wanted,
            |(slot, into, offset), _, raw| {
                let problem = match (into, raw) {
                    (Destination::Shared(file), Ok(raw)) => {
                        write_sparse(&mut lock(&file), offset, raw, aligned)
                            .err()
                            .map(|e| e.to_string())
                    }
                    (Destination::Whole(file), Ok(raw)) => file.write_whole(raw, aligned).err(),
                    (_, Err(reason)) => Some(reason),
                };
                outcomes.push((slot, problem));
            },
        );
        Ok(outcomes)
    }

    fn finish(self) -> Result<()> {
        Ok(())
    }
}

/// The file behind `shared`; a worker that panicked while writing is reported by the pool.
fn lock(shared: &Mutex<DirectFile>) -> std::sync::MutexGuard<'_, DirectFile> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `data` at `offset`, leaving all-zero blocks as holes (the file is pre-sized). Into a
/// direct file, each write is made aligned: copied into `aligned` when the data does not start
/// at an aligned address, and zero-padded to a whole block at the file's end (the file is cut
/// back to its size when complete; a direct file's pieces all start at aligned offsets).
fn write_sparse(
    file: &mut DirectFile,
    offset: u64,
    data: &[u8],
    aligned: &mut AlignedBuffer,
) -> io::Result<()> {
    let mut start = 0;
    while start < data.len() {
        let end = (start + HOLE_BLOCK).min(data.len());
        if data[start..end].iter().all(|&byte| byte == 0) {
            start = end;
            continue;
        }
        // Extend the write over following non-zero blocks.
        let mut stop = end;
        while stop < data.len() {
            let next = (stop + HOLE_BLOCK).min(data.len());
            if data[stop..next].iter().all(|&byte| byte == 0) {
                break;
            }
            stop = next;
        }
        let run = &data[start..stop];
        let at = offset + start as u64;
        if file.is_direct() && !direct::is_aligned(run, at) && at % direct::ALIGN as u64 == 0 {
            aligned.copy_from(run);
            file.write_all_at(aligned.padded(), at)?;
        } else {
            file.write_all_at(run, at)?;
        }
        start = stop;
    }
    Ok(())
}

/// The coordinating thread's state during the first pass.
struct Run<'scope, 'env> {
    pool: Pool<'scope, PieceWriter<'env>>,
    options: &'env RestoreOptions,
    files: HashMap<u64, OpenFile>,
    next_slot: u64,
    batch: Vec<Piece>,
    report: &'env mut RestoreReport,
    reporter: Reporter<'env>,
    has_hardlinks: bool,
}

impl<'scope, 'env: 'scope> Run<'scope, 'env> {
    fn restore_entry(&mut self, entry: Entry) -> Result<()> {
        let path = destination(&self.options.target, &entry.path)?;
        match entry.kind {
            Kind::Dir => {
                self.report.dirs += 1;
                if let Err(err) = make_dir(&path, self.options.force) {
                    self.report.failed.push(failure(&path, err));
                }
            }
            Kind::Symlink => {
                self.report.symlinks += 1;
                if self.may_replace(&path, &entry)? {
                    if let Err(err) = make_symlink(&path, &entry, self.options.owners) {
                        self.report.failed.push(failure(&path, err.to_string()));
                    }
                }
            }
            Kind::Hardlink => {
                self.report.hardlinks += 1;
                self.has_hardlinks = true;
            }
            Kind::File => {
                self.report.files += 1;
                self.report.bytes += entry.size;
                self.restore_file(entry, path)?;
            }
        }
        Ok(())
    }

    /// Whether an existing entry at `path` may be replaced by `entry` (records why not).
    fn may_replace(&mut self, path: &Path, entry: &Entry) -> Result<bool> {
        let existing = match fs::symlink_metadata(path) {
            Ok(existing) => existing,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(err) => return Err(err).at(path),
        };
        if existing.is_dir() {
            self.report
                .failed
                .push(failure(path, "a folder is in the way".into()));
            return Ok(false);
        }
        let existing_mtime = existing.mtime() * 1_000_000_000 + existing.mtime_nsec();
        if existing_mtime > entry.mtime_ns && !self.options.force {
            self.report.kept_newer.push(path.display().to_string());
            return Ok(false);
        }
        Ok(true)
    }

    fn restore_file(&mut self, entry: Entry, path: PathBuf) -> Result<()> {
        if let Ok(existing) = fs::symlink_metadata(&path) {
            let existing_mtime = existing.mtime() * 1_000_000_000 + existing.mtime_nsec();
            if existing.is_file()
                && existing.len() == entry.size
                && existing_mtime == entry.mtime_ns
            {
                self.report.unchanged += 1;
                if let Err(err) = apply_metadata(&path, None, &entry, self.options.owners) {
                    self.report.failed.push(failure(&path, err.to_string()));
                }
                return Ok(());
            }
        }
        if !self.may_replace(&path, &entry)? {
            return Ok(());
        }
        let stored: u64 = entry.chunks.iter().map(|blob| blob.raw_length).sum();
        if stored != entry.size {
            return Err(Error::Corrupt {
                name: path.display().to_string(),
                reason: format!(
                    "manifest chunks hold {stored} bytes, size is {}",
                    entry.size
                ),
            });
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let missing = entry.chunks.len();
        let new = NewFile {
            temporary: temporary_name(&path),
            destination: path.clone(),
            owners: self.options.owners,
            entry,
        };
        let shared = if let [blob] = new.entry.chunks.as_slice() {
            self.batch.push(Piece {
                slot,
                blob: blob.clone(),
                into: Destination::Whole(Box::new(new)),
                offset: 0,
            });
            if self.batch.len() >= BATCH_PIECES {
                self.flush_batch()?;
            }
            None
        } else {
            let file = Arc::new(Mutex::new(new.create().at(&new.temporary)?));
            let mut offset = 0;
            for blob in &new.entry.chunks {
                self.batch.push(Piece {
                    slot,
                    into: Destination::Shared(Arc::clone(&file)),
                    blob: blob.clone(),
                    offset,
                });
                offset += blob.raw_length;
                self.flush_batch()?;
            }
            Some((new, file))
        };
        self.files.insert(
            slot,
            OpenFile {
                destination: path,
                shared,
                missing,
                failure: None,
            },
        );
        if missing == 0 {
            self.complete(slot);
        }
        while self.files.len() >= OPEN_FILES && self.wait_for_one()? {}
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<()> {
        if !self.batch.is_empty() {
            self.pool.submit(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }

    fn collect_ready(&mut self) -> Result<()> {
        while let Some(output) = self.pool.ready() {
            self.apply(output?);
        }
        Ok(())
    }

    fn wait_for_one(&mut self) -> Result<bool> {
        self.flush_batch()?;
        match self.pool.wait() {
            Some(output) => {
                self.apply(output?);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn apply(&mut self, outcomes: Vec<(u64, Option<String>)>) {
        for (slot, problem) in outcomes {
            let Some(open) = self.files.get_mut(&slot) else {
                continue;
            };
            if let Some(problem) = problem {
                open.failure.get_or_insert(problem);
            }
            open.missing -= 1;
            if open.missing == 0 {
                self.complete(slot);
            }
        }
        self.reporter
            .report(self.report.files, self.report.bytes, false);
    }

    /// Every piece of `slot` is written: finish the file (unless a worker did) and record a
    /// failure.
    fn complete(&mut self, slot: u64) {
        let Some(open) = self.files.remove(&slot) else {
            return;
        };
        let finished = match open.shared {
            Some((new, file)) => new.finish(&lock(&file), open.failure),
            None => open.failure.map_or(Ok(()), Err),
        };
        if let Err(reason) = finished {
            self.report.failed.push(failure(&open.destination, reason));
        }
    }
}

/// Whether `entry` is written around the page cache: a large file whose pieces all start at
/// aligned offsets (every chunk but the last a whole number of blocks).
fn writes_direct(entry: &Entry) -> bool {
    let aligned_chunk = |blob: &BlobRef| blob.raw_length % direct::ALIGN as u64 == 0;
    entry.size >= DIRECT_MIN
        && entry
            .chunks
            .split_last()
            .is_some_and(|(_, init)| init.iter().all(aligned_chunk))
}

/// Where relative manifest path `relative` goes below `target`; rejects paths that would escape.
fn destination(target: &Path, relative: &[u8]) -> Result<PathBuf> {
    if relative.is_empty() {
        return Ok(target.to_owned());
    }
    let safe = relative
        .split(|&byte| byte == b'/')
        .all(|part| !part.is_empty() && part != b"." && part != b"..");
    if !safe {
        return Err(Error::Corrupt {
            name: "manifest".into(),
            reason: format!("unsafe path {:?}", String::from_utf8_lossy(relative)),
        });
    }
    Ok(target.join(std::ffi::OsStr::from_bytes(relative)))
}

fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().as_bytes();
    let mut temporary = b".".to_vec();
    temporary.extend_from_slice(name);
    temporary.extend_from_slice(format!(".backplan-{}", std::process::id()).as_bytes());
    path.with_file_name(std::ffi::OsStr::from_bytes(&temporary))
}

fn failure(path: &Path, reason: String) -> Skipped {
    Skipped {
        path: path.display().to_string(),
        reason,
    }
}

fn make_dir(path: &Path, force: bool) -> std::result::Result<(), String> {
    match fs::symlink_metadata(path) {
        Ok(existing) if existing.is_dir() => return Ok(()),
        Ok(_) if force => fs::remove_file(path).map_err(|e| e.to_string())?,
        Ok(_) => return Err("a file or symlink is in the way (use force)".into()),
        Err(_) => {}
    }
    fs::create_dir(path).map_err(|e| e.to_string())
}

fn make_symlink(path: &Path, entry: &Entry, owners: bool) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let target = entry.target.as_deref().unwrap_or_default();
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path)?;
    apply_metadata(path, None, entry, owners)
}

fn restore_hardlink(
    entry: &Entry,
    options: &RestoreOptions,
    report: &mut RestoreReport,
) -> Result<()> {
    let path = destination(&options.target, &entry.path)?;
    let Some(first) = entry.target.as_deref() else {
        report
            .failed
            .push(failure(&path, "hard link without target".into()));
        return Ok(());
    };
    let first = destination(&options.target, first)?;
    let _ = fs::remove_file(&path);
    if let Err(err) = fs::hard_link(&first, &path) {
        report.failed.push(failure(
            &path,
            format!("link to {}: {err}", first.display()),
        ));
    }
    Ok(())
}

/// Sets owner (if `owners`), mode (not for symlinks) and mtime of `path` (through `file` if open).
fn apply_metadata(path: &Path, file: Option<&File>, entry: &Entry, owners: bool) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let is_symlink = entry.kind == Kind::Symlink;
    if owners {
        // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call.
        let result = unsafe { libc::lchown(c_path.as_ptr(), entry.uid, entry.gid) };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if !is_symlink {
        use std::os::unix::fs::PermissionsExt;
        let permissions = fs::Permissions::from_mode(entry.mode);
        match file {
            Some(file) => file.set_permissions(permissions)?,
            None => fs::set_permissions(path, permissions)?,
        }
    }
    let mtime = libc::timespec {
        tv_sec: entry.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: entry.mtime_ns.rem_euclid(1_000_000_000),
    };
    let times = [mtime, mtime];
    // SAFETY: `c_path` is NUL-terminated and `times` points to two valid timespecs.
    let result = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
