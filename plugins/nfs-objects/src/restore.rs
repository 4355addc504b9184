//! Restore: put a snapshot (or a sub-path of it) back, byte-checked, with its metadata.
//!
//! Nothing is written outside the target, nor through a link found in it: every path is made
//! relative to a folder opened on the way down without following links (see `target`), and
//! the snapshot's symlinks and hard links are made as links, never followed, by the entry itself
//! or by the entries after it. What is already in the target is kept, compared or replaced by the
//! rules of `existing`: in short, a file with the snapshot's size and mtime is read and compared
//! with the snapshot's content ids and left alone only if it holds the same bytes (unless
//! `trust_metadata`), anything newer than the snapshot's entry is kept unless `force`, and a
//! link in the way of a file or folder is replaced only with `force`.
//!
//! The manifest is streamed three times, each pass cheap next to the data: first folders,
//! symlinks and file contents (workers fetch, verify against the content id and write pieces in
//! parallel; all-zero blocks are skipped so sparse files stay sparse; existing files to compare
//! are read and hashed by the workers too); then hard links, which need their first name in
//! place; last folder modes, owners and mtimes, which every earlier write into the folder would
//! have changed. A file (or a replacing link) is made under a temporary name and renamed over its
//! final name only once complete and checked, so an interrupted restore never leaves a truncated
//! file under a real name.
//!
//! Large files are written around the page cache (see `direct`); a file of one piece (most
//! small files) is created, written and finished by the worker that fetched it, so the
//! coordinating thread makes no system calls per small file but the `lstat` of its name.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::blob::BlobRef;
use crate::control::{Control, Reporter};
use crate::crypto::Keys;
use crate::direct::{self, AlignedBuffer, DirectFile};
use crate::error::{Error, IoContext, Result};
use crate::existing::{self, Verdict};
use crate::fetch::Fetcher;
use crate::manifest::{Entry, Kind, ManifestReader, is_within};
use crate::pipeline::{self, Batch, Jobs, Stage};
use crate::pool::Worker;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::target::{self, Folder, Folders, Found, split_last};

/// Files of several pieces being written, plus existing files being compared, at once: each
/// holds a descriptor until it is done.
const OPEN_FILES: usize = 256;
/// Files waiting for their pieces at once, all kinds: bounds memory (an entry each). Files of
/// one piece (most small files) hold no descriptor while they wait, so they are bounded here
/// only: counted under [`OPEN_FILES`], a restore from S3 had no more than 4 jobs of small files
/// in flight whatever the workers, and spent half its time waiting on them.
const PENDING_FILES: usize = 4096;
/// Pieces (or existing files to compare) per job...
const BATCH_PIECES: usize = 64;
/// ...and stored bytes of pieces per job, at most (unless one piece is larger). A file's pieces
/// go out in jobs this large, so its GETs are made together and spread over the workers.
const BATCH_BYTES: u64 = 4 << 20;
/// Bytes of existing files to compare per job, at most (unless one file is larger).
const COMPARE_BYTES: u64 = 16 << 20;
/// Zero runs shorter than this are written, not skipped (a multiple of `direct::ALIGN`, so the
/// writes between holes stay aligned).
const HOLE_BLOCK: usize = 64 * 1024;
/// Files at least this large are written around the page cache (see `direct`); smaller ones are
/// many and short, and a synchronous direct write each would cost more than the copy it saves.
const DIRECT_MIN: u64 = 1 << 20;

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The folder the snapshot's root maps to (the original source, or another folder for a
    /// drill). Must not be empty. It may be a symlink: it is resolved once, at the start.
    pub target: PathBuf,
    /// Only entries at or below this relative path (`/`-separated, no `.` or `..`; empty for
    /// everything).
    pub subpath: Vec<u8>,
    /// Overwrite existing files even when they are newer than the snapshot's, and replace
    /// symlinks and special files in the way.
    pub force: bool,
    /// Take an existing file with the snapshot's size and mtime as restored without reading it
    /// (by default it is read and compared with the snapshot's content).
    pub trust_metadata: bool,
    /// Restore owners and groups (needs root).
    pub owners: bool,
    pub workers: usize,
    /// Write large files around the page cache (see `direct`).
    pub direct_writes: bool,
}

impl RestoreOptions {
    /// Everything into `target`; owners restored when running as root.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            subpath: Vec::new(),
            force: false,
            trust_metadata: false,
            // SAFETY: geteuid has no preconditions and cannot fail.
            owners: unsafe { libc::geteuid() } == 0,
            workers: crate::backup::default_workers(),
            direct_writes: true,
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
    /// Files already in place and left alone: same content as the snapshot's (or same size and
    /// mtime, with `trust_metadata`).
    pub unchanged: u64,
    /// Existing entries newer than the snapshot's, kept because `force` was off.
    pub kept_newer: Vec<String>,
    /// Entries that could not be restored (damaged data, conflicts), with the reason.
    pub failed: Vec<RestoreFailure>,
}

/// An entry that could not be restored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFailure {
    /// Where it was to be restored: below the target as given.
    pub path: String,
    pub reason: String,
}

/// Restores `snapshot` from `repo` as `options` say.
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    options: &RestoreOptions,
    control: Control<'_>,
) -> Result<RestoreReport> {
    check_options(options)?;
    let backend = repo.backend();
    let open_manifest = || {
        ManifestReader::open(
            backend.as_ref(),
            &snapshot.manifest,
            snapshot.manifest_blake3,
        )
    };
    let root = target::open_root(&options.target).at(&options.target)?;

    let workers = (0..options.workers.max(1))
        .map(|_| {
            Ok(PieceWriter {
                fetcher: Fetcher::new(
                    backend.as_ref(),
                    repo.keys().clone(),
                    Arc::clone(repo.dictionaries()),
                )?,
                keys: repo.keys().clone(),
                aligned: AlignedBuffer::with_capacity(0),
                gathered: Gatherer::default(),
                compared: Vec::new(),
                owners: options.owners,
            })
        })
        .collect::<Result<_>>()?;
    let mut report = RestoreReport::default();
    let reporter = Reporter::new(control, "restore", Some(snapshot.stats.bytes));
    let mut run = Run {
        options,
        folders: Folders::new(Arc::clone(&root)),
        files: HashMap::new(),
        open_shared: 0,
        comparing: 0,
        next_slot: 0,
        pieces: Batch::new(BATCH_PIECES, BATCH_BYTES),
        compares: Batch::new(BATCH_PIECES, COMPARE_BYTES),
        report: &mut report,
        reporter,
        ancestors: Vec::new(),
        done: FirstPass::default(),
    };
    pipeline::run(workers, control, open_manifest()?, &mut run)?;
    let first_pass = run.done;
    let subpath = options.subpath.as_slice();
    if !subpath.is_empty() && !first_pass.matched {
        return Err(Error::Invalid(format!(
            "{} is not in snapshot {}",
            String::from_utf8_lossy(subpath),
            snapshot.id
        )));
    }

    if first_pass.has_hardlinks {
        let mut links = HardLinks {
            links: Folders::new(Arc::clone(&root)),
            firsts: Folders::new(Arc::clone(&root)),
            options,
            report: &mut report,
        };
        for entry in open_manifest()? {
            let entry = entry?;
            if entry.kind == Kind::Hardlink && is_within(&entry.path, subpath) {
                links.restore(&entry)?;
            }
        }
    }
    let mut folders = Folders::new(root);
    for entry in open_manifest()? {
        let entry = entry?;
        if entry.kind == Kind::Dir
            && is_within(&entry.path, subpath)
            && !first_pass.failed_dirs.contains(&entry.path)
        {
            let owner = options.owners.then_some((entry.uid, entry.gid));
            let set = folders.open(&entry.path).and_then(|folder| {
                target::set_metadata_of(&folder, owner, Some(entry.mode), Some(entry.mtime_ns))
            });
            if let Err(err) = set {
                let path = shown(&options.target, &entry.path);
                report.failed.push(failure(path, err.to_string()));
            }
        }
    }
    Ok(report)
}

/// Refuses a request that could write somewhere the user did not mean.
fn check_options(options: &RestoreOptions) -> Result<()> {
    if options.target.as_os_str().is_empty() {
        return Err(Error::Invalid(
            "the restore target is empty: name the folder to restore into".into(),
        ));
    }
    if !options.subpath.is_empty() && !is_relative(&options.subpath) {
        return Err(Error::Invalid(format!(
            "restore path {:?} must be relative to the snapshot's root, without empty, `.` or \
             `..` components",
            String::from_utf8_lossy(&options.subpath)
        )));
    }
    Ok(())
}

/// Whether `path` (non-empty) is a plain relative path: no empty, `.` or `..` component.
fn is_relative(path: &[u8]) -> bool {
    path.split(|&byte| byte == b'/')
        .all(|part| !part.is_empty() && part != b"." && part != b"..")
}

/// Refuses a manifest path that could escape the target.
fn check_path(path: &[u8]) -> Result<()> {
    if path.is_empty() || is_relative(path) {
        return Ok(());
    }
    Err(Error::Corrupt {
        name: "manifest".into(),
        reason: format!("unsafe path {:?}", String::from_utf8_lossy(path)),
    })
}

/// How relative path `path` is shown to the user: below the target as given.
fn shown(target: &std::path::Path, path: &[u8]) -> String {
    if path.is_empty() {
        return target.display().to_string();
    }
    target
        .join(std::ffi::OsStr::from_bytes(path))
        .display()
        .to_string()
}

fn failure(path: String, reason: String) -> RestoreFailure {
    RestoreFailure { path, reason }
}

/// What the first pass leaves for the others.
#[derive(Debug, Default)]
struct FirstPass {
    /// The sub-path was found in the snapshot.
    matched: bool,
    has_hardlinks: bool,
    /// Folders that could not be made: their failure is reported, their metadata not set.
    failed_dirs: HashSet<Vec<u8>>,
}

/// A file to write or compare, and the folder it goes in.
struct Pending {
    entry: Entry,
    parent: Folder,
}

/// A file whose pieces are being written.
struct OpenFile {
    path: Vec<u8>,
    /// A file of several pieces, finished by the coordinating thread once all are in; `None`
    /// for a file a worker writes and finishes whole.
    shared: Option<(NewFile, Vec<u8>, Arc<Mutex<SharedFile>>)>,
    missing: usize,
    failure: Option<String>,
}

/// A restored file, from creation under a temporary name to its move into place.
struct NewFile {
    entry: Entry,
    parent: Folder,
    owners: bool,
    /// Large files may be written around the page cache (the step's `direct_io`).
    direct: bool,
}

impl NewFile {
    /// Creates the file under a fresh temporary name at its full size (direct writes for large
    /// files); returns the name.
    fn create(&self) -> io::Result<(Vec<u8>, DirectFile)> {
        let (temporary, file) =
            target::with_temporary_name(|name| target::create_file(&self.parent, name))?;
        let sized = (|| {
            let direct = self.direct && writes_direct(&self.entry) && target::try_direct(&file)?;
            file.set_len(self.entry.size)?;
            Ok(direct)
        })();
        match sized {
            Ok(direct) => Ok((temporary, DirectFile::from_open(file, direct))),
            Err(err) => {
                let _ = target::remove(&self.parent, &temporary);
                Err(err)
            }
        }
    }

    /// Renames the written file `temporary` over its name with its metadata, or removes it after
    /// a `failure`. Direct writes padded the last block, so such a file is first cut back to its
    /// size (buffered ones already have it from `create`).
    fn finish(
        &self,
        temporary: &[u8],
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
        let entry = &self.entry;
        let finished = match failure {
            Some(reason) => Err(reason),
            None => cut_back()
                .and_then(|()| {
                    let owner = self.owners.then_some((entry.uid, entry.gid));
                    target::set_metadata_of(
                        file.file(),
                        owner,
                        Some(entry.mode),
                        Some(entry.mtime_ns),
                    )
                })
                .and_then(|()| target::rename(&self.parent, temporary, split_last(&entry.path).1))
                .map_err(|err| err.to_string()),
        };
        if finished.is_err() {
            let _ = target::remove(&self.parent, temporary);
        }
        finished
    }

    /// Creates, writes and finishes a file whose content is all in `raw`.
    fn write_whole(
        &self,
        raw: &[u8],
        aligned: &mut AlignedBuffer,
    ) -> std::result::Result<(), String> {
        let (temporary, mut file) = self.create().map_err(|err| err.to_string())?;
        let written = write_sparse(&mut file, 0, raw, aligned).err();
        self.finish(&temporary, &file, written.map(|err| err.to_string()))
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
    Shared(Arc<Mutex<SharedFile>>),
    /// It is the whole file: the worker creates, writes and finishes it, so the many small
    /// files of a tree cost the coordinating thread no system calls of their own.
    Whole(Box<NewFile>),
}

/// Work for a worker.
enum Job {
    /// Fetch these pieces and write them.
    Pieces(Vec<Piece>),
    /// Compare these existing files with the snapshot's content.
    Compare(Vec<Pending>),
}

/// What a worker did with one piece or file.
enum Outcome {
    /// A piece of file `slot` is written (or why not).
    Written { slot: u64, problem: Option<String> },
    /// An existing file holds the snapshot's content; a path and reason if its owner or mode
    /// could not be fixed.
    Unchanged(Option<(Vec<u8>, String)>),
    /// An existing file does not hold the snapshot's content (or could not be read): it is to
    /// be written.
    Differs(Pending),
}

/// A worker: fetches pieces, checks them and writes them into their files; compares existing
/// files with the snapshot's.
struct PieceWriter<'a> {
    fetcher: Fetcher<'a>,
    /// What content ids are hashed with, to compare existing files.
    keys: Keys,
    /// Where the blocks two pieces of a file share are put together (see [`SharedFile`]).
    aligned: AlignedBuffer,
    /// Consecutive pieces of one file, written together; its buffer also takes a whole file's
    /// content (a slice of a fetched range, at any address) for a direct write.
    gathered: Gatherer,
    /// One chunk of an existing file being compared.
    compared: Vec<u8>,
    owners: bool,
}

impl Worker for PieceWriter<'_> {
    type Job = Job;
    type Output = Vec<Outcome>;

    fn run(&mut self, job: Job) -> Result<Self::Output> {
        match job {
            Job::Pieces(pieces) => Ok(self.write(pieces)),
            Job::Compare(files) => Ok(files.into_iter().map(|file| self.compare(file)).collect()),
        }
    }

    fn finish(self) -> Result<()> {
        Ok(())
    }
}

impl PieceWriter<'_> {
    fn write(&mut self, pieces: Vec<Piece>) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(pieces.len());
        let wanted = pieces
            .into_iter()
            .map(|piece| ((piece.slot, piece.into, piece.offset), piece.blob))
            .collect();
        let (aligned, gathered) = (&mut self.aligned, &mut self.gathered);
        self.fetcher
            .fetch_each(wanted, |(slot, into, offset), _, raw| {
                let problem = match (into, raw) {
                    // (A failed write is the file's own failure, see `SharedFile`.)
                    (Destination::Shared(file), Ok(raw)) => {
                        gathered.add(&file, offset, raw, aligned);
                        None
                    }
                    (Destination::Whole(file), Ok(raw)) => {
                        file.write_whole(raw, gathered.lend(aligned)).err()
                    }
                    (_, Err(reason)) => Some(reason),
                };
                outcomes.push(Outcome::Written { slot, problem });
            });
        // Written before the coordinating thread hears of it.
        gathered.write_out(aligned);
        outcomes
    }

    /// Reads the existing file of `pending` and compares it with the snapshot's content; fixes
    /// its owner and mode if that is all that differs.
    fn compare(&mut self, pending: Pending) -> Outcome {
        let entry = &pending.entry;
        let name = split_last(&entry.path).1;
        let same = target::open_file(&pending.parent, name).and_then(|file| {
            let found = target::look_open(&file)?;
            let same =
                existing::holds_content(&file, &found, entry, &self.keys, &mut self.compared)?;
            Ok(same.then_some((file, found)))
        });
        match same {
            Ok(Some((file, found))) => Outcome::Unchanged(
                fix_metadata(&file, &found, entry, self.owners)
                    .err()
                    .map(|err| (entry.path.clone(), err.to_string())),
            ),
            // Unreadable is not known to be right: it is rewritten.
            Ok(None) | Err(_) => Outcome::Differs(pending),
        }
    }
}

/// Gives the existing file `file` (`found`) the owner and mode of `entry`, where they differ.
fn fix_metadata(file: &File, found: &Found, entry: &Entry, owners: bool) -> io::Result<()> {
    match existing::metadata_to_fix(found, entry, owners) {
        (None, None) => Ok(()),
        (owner, mode) => target::set_metadata_of(file, owner, mode, None),
    }
}

/// The file behind `shared`; a worker that panicked while writing is reported by the pool.
fn lock(shared: &Mutex<SharedFile>) -> std::sync::MutexGuard<'_, SharedFile> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bytes of consecutive pieces of one file a worker gathers before writing them.
const GATHER_BYTES: usize = 4 << 20;

/// Consecutive pieces of one file (as a pack holds them), gathered by a worker to be written
/// together: content-defined chunks (512 KiB on average, ending anywhere) would otherwise cost a
/// synchronous direct write each, and more for the blocks they share with their neighbours.
/// `buffer[0]` is the byte at `base` of the file, an aligned offset, so whole blocks are
/// written straight from the buffer.
#[derive(Default)]
struct Gatherer {
    /// Allocated when a worker first gathers.
    aligned: Option<AlignedBuffer>,
    run: Option<Gathering>,
}

struct Gathering {
    file: Arc<Mutex<SharedFile>>,
    base: u64,
    /// The file's bytes gathered: `start..end`.
    start: u64,
    end: u64,
}

impl Gatherer {
    /// Gathers piece `raw` of `file` at `offset`, after writing out what was gathered when
    /// the piece does not continue it.
    fn add(
        &mut self,
        file: &Arc<Mutex<SharedFile>>,
        offset: u64,
        mut raw: &[u8],
        scratch: &mut AlignedBuffer,
    ) {
        let continues = self
            .run
            .as_ref()
            .is_some_and(|run| Arc::ptr_eq(&run.file, file) && run.end == offset);
        if !continues {
            self.write_out(scratch);
            let base = offset / direct::ALIGN as u64 * direct::ALIGN as u64;
            self.run = Some(Gathering {
                file: Arc::clone(file),
                base,
                start: offset,
                end: offset,
            });
        }
        let buffer = gathering_buffer(&mut self.aligned);
        buffer.fill_area(GATHER_BYTES);
        while !raw.is_empty() {
            let run = self.run.as_mut().expect("a run was just started");
            let at = (run.end - run.base) as usize;
            let taken = raw.len().min(GATHER_BYTES - at);
            buffer.as_mut_slice()[at..at + taken].copy_from_slice(&raw[..taken]);
            run.end += taken as u64;
            raw = &raw[taken..];
            if at + taken == GATHER_BYTES {
                write_gathered(run, buffer, scratch);
                (run.base, run.start) = (run.end, run.end);
            }
        }
    }

    /// The buffer, to copy a whole file's content into for a direct write, once what was
    /// gathered in it is written out.
    fn lend(&mut self, scratch: &mut AlignedBuffer) -> &mut AlignedBuffer {
        self.write_out(scratch);
        gathering_buffer(&mut self.aligned)
    }

    /// Writes out what is gathered.
    fn write_out(&mut self, scratch: &mut AlignedBuffer) {
        if let (Some(run), Some(buffer)) = (self.run.take(), self.aligned.as_mut()) {
            write_gathered(&run, buffer, scratch);
        }
    }
}

/// A worker's gathering buffer, allocated the first time it is needed.
fn gathering_buffer(buffer: &mut Option<AlignedBuffer>) -> &mut AlignedBuffer {
    buffer.get_or_insert_with(|| AlignedBuffer::with_capacity(GATHER_BYTES))
}

/// Writes the bytes `run` gathered in `buffer` into its file (unless the file failed already:
/// its first failure is kept to be reported).
fn write_gathered(run: &Gathering, buffer: &AlignedBuffer, scratch: &mut AlignedBuffer) {
    let mut file = lock(&run.file);
    if file.failure.is_some() || run.start == run.end {
        return;
    }
    let from = (run.start - run.base) as usize;
    let to = (run.end - run.base) as usize;
    if let Err(err) = file.write(run.start, &buffer.as_slice()[from..to], scratch) {
        file.failure = Some(err.to_string());
    }
}

/// A file of several pieces, written by whichever worker fetched each.
struct SharedFile {
    file: DirectFile,
    size: u64,
    /// The first write into it that failed.
    failure: Option<String>,
    /// Blocks of a direct file that two pieces share, as filled so far: a content-defined chunk
    /// starts and ends anywhere, and a direct write only takes whole aligned blocks. A shared
    /// block is written once both pieces have put their part in.
    edges: HashMap<u64, (Box<[u8; direct::ALIGN]>, usize)>,
}

impl SharedFile {
    fn new(file: DirectFile, size: u64) -> Self {
        Self {
            file,
            size,
            failure: None,
            edges: HashMap::new(),
        }
    }

    /// Writes piece `data` at `offset`: into a direct file, the whole blocks it covers at once,
    /// its parts of the blocks at either end once those are complete.
    fn write(&mut self, offset: u64, data: &[u8], aligned: &mut AlignedBuffer) -> io::Result<()> {
        if !self.file.is_direct() {
            return write_sparse(&mut self.file, offset, data, aligned);
        }
        let block = direct::ALIGN as u64;
        let end = offset + data.len() as u64;
        let body_start = offset.next_multiple_of(block).min(end);
        let body_end = (end / block * block).max(body_start);
        let at = |position: u64| (position - offset) as usize;
        self.join(offset, &data[..at(body_start)], aligned)?;
        write_sparse(
            &mut self.file,
            body_start,
            &data[at(body_start)..at(body_end)],
            aligned,
        )?;
        self.join(body_end, &data[at(body_end)..], aligned)
    }

    /// Puts `part`, which lies inside one block, at `offset` into that block, and writes the
    /// block once it holds all of its bytes (the file's last block: up to its end, zero-padded;
    /// the file is cut back to its size when complete). An all-zero block stays a hole.
    fn join(&mut self, offset: u64, part: &[u8], aligned: &mut AlignedBuffer) -> io::Result<()> {
        if part.is_empty() {
            return Ok(());
        }
        let length = direct::ALIGN as u64;
        let block = offset / length;
        let start = block * length;
        let needed = (self.size - start).min(length) as usize;
        let (bytes, filled) = self
            .edges
            .entry(block)
            .or_insert_with(|| (Box::new([0; direct::ALIGN]), 0));
        let from = (offset - start) as usize;
        bytes[from..from + part.len()].copy_from_slice(part);
        *filled += part.len();
        if *filled < needed {
            return Ok(());
        }
        let (bytes, _) = self.edges.remove(&block).expect("the block just filled");
        if bytes.iter().all(|&byte| byte == 0) {
            return Ok(());
        }
        aligned.copy_from(&bytes[..]);
        self.file.write_all_at(aligned.padded(), start)
    }
}

/// Writes `data` at `offset`, leaving all-zero blocks as holes (the file is pre-sized). Into a
/// direct file, each write is made aligned: copied into `aligned` when the data does not start
/// at an aligned address, and zero-padded to a whole block at the file's end (the file is cut
/// back to its size when complete; the caller gives a direct file data that starts at an
/// aligned offset).
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
struct Run<'env> {
    options: &'env RestoreOptions,
    folders: Folders,
    files: HashMap<u64, OpenFile>,
    /// Files of `files` the coordinating thread holds open (of several pieces).
    open_shared: usize,
    /// Existing files sent to be compared, not yet answered.
    comparing: usize,
    next_slot: u64,
    /// Pieces of small files, sent to a worker together.
    pieces: Batch<Piece>,
    /// Existing files to compare, sent to a worker together.
    compares: Batch<Pending>,
    report: &'env mut RestoreReport,
    reporter: Reporter<'env>,
    /// Folders above the sub-path, made once an entry of the sub-path is found.
    ancestors: Vec<Entry>,
    done: FirstPass,
}

impl<'env> Stage for Run<'env> {
    type Item = Result<Entry>;
    type Job = Job;
    type Output = Vec<Outcome>;

    fn visit(&mut self, entry: Result<Entry>, jobs: &mut Jobs<'_, Job>) -> Result<()> {
        self.visit_entry(entry?, jobs)
    }

    fn apply(&mut self, outcomes: Vec<Outcome>, jobs: &mut Jobs<'_, Job>) -> Result<()> {
        for outcome in outcomes {
            match outcome {
                Outcome::Written { slot, problem } => {
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
                Outcome::Unchanged(problem) => {
                    self.comparing -= 1;
                    self.report.unchanged += 1;
                    if let Some((path, reason)) = problem {
                        self.fail(&path, reason);
                    }
                }
                Outcome::Differs(pending) => {
                    self.comparing -= 1;
                    self.write_file(pending, jobs)?;
                }
            }
        }
        self.reporter
            .report(self.report.files, self.report.bytes, false);
        Ok(())
    }

    fn flush(&mut self, jobs: &mut Jobs<'_, Job>) -> Result<()> {
        if let Some(pieces) = self.pieces.take() {
            jobs.submit(Job::Pieces(pieces))?;
        }
        if let Some(files) = self.compares.take() {
            jobs.submit(Job::Compare(files))?;
        }
        Ok(())
    }

    /// As many files are open, or waiting for their pieces, as may be at once.
    fn is_full(&self, _in_flight: usize) -> bool {
        self.open_shared + self.comparing >= OPEN_FILES || self.files.len() >= PENDING_FILES
    }
}

impl<'env> Run<'env> {
    /// Restores `entry` if it is in the sub-path (after the folders above the sub-path).
    fn visit_entry(&mut self, entry: Entry, jobs: &mut Jobs<'_, Job>) -> Result<()> {
        let options = self.options;
        let subpath = options.subpath.as_slice();
        if is_within(&entry.path, subpath) {
            check_path(&entry.path)?;
            if !self.done.matched {
                self.done.matched = true;
                for ancestor in std::mem::take(&mut self.ancestors) {
                    if let Err(reason) = self.make_folder(&ancestor) {
                        self.fail(&ancestor.path, reason);
                    }
                }
            }
            return self.restore_entry(entry, jobs);
        }
        if entry.kind == Kind::Dir && is_within(subpath, &entry.path) && !self.done.matched {
            check_path(&entry.path)?;
            self.ancestors.push(entry);
        }
        Ok(())
    }

    fn restore_entry(&mut self, entry: Entry, jobs: &mut Jobs<'_, Job>) -> Result<()> {
        match entry.kind {
            Kind::Dir => {
                self.report.dirs += 1;
                if let Err(reason) = self.make_folder(&entry) {
                    self.fail(&entry.path, reason);
                    self.done.failed_dirs.insert(entry.path);
                }
            }
            Kind::Symlink => {
                self.report.symlinks += 1;
                if let Err(reason) = self.make_symlink(&entry) {
                    self.fail(&entry.path, reason);
                }
            }
            Kind::Hardlink => {
                self.report.hardlinks += 1;
                self.done.has_hardlinks = true;
            }
            Kind::File => {
                self.report.files += 1;
                self.report.bytes += entry.size;
                self.restore_file(entry, jobs)?;
            }
        }
        Ok(())
    }

    fn fail(&mut self, path: &[u8], reason: String) {
        let path = shown(&self.options.target, path);
        self.report.failed.push(failure(path, reason));
    }

    /// Makes the folder of `entry` (the target itself is there already).
    fn make_folder(&mut self, entry: &Entry) -> std::result::Result<(), String> {
        if entry.path.is_empty() {
            return Ok(());
        }
        let (parent, name) = self.folders.parent_of(&entry.path).map_err(text)?;
        let found = target::look(&parent, name).map_err(text)?;
        match existing::decide(found.as_ref(), entry, self.options.force) {
            Verdict::Keep => Ok(()),
            Verdict::Make => target::make_folder(&parent, name).map_err(text),
            Verdict::Replace => target::remove(&parent, name)
                .and_then(|()| target::make_folder(&parent, name))
                .map_err(text),
            Verdict::Refuse(reason) => Err(reason),
        }
    }

    fn make_symlink(&mut self, entry: &Entry) -> std::result::Result<(), String> {
        let (parent, name) = self.folders.parent_of(&entry.path).map_err(text)?;
        let found = target::look(&parent, name).map_err(text)?;
        let link = entry.target.as_deref().unwrap_or_default();
        let owner = self.options.owners.then_some((entry.uid, entry.gid));
        match existing::decide(found.as_ref(), entry, self.options.force) {
            Verdict::Make => target::symlink(link, &parent, name)
                .and_then(|()| target::set_link_metadata(&parent, name, owner, entry.mtime_ns))
                .map_err(text),
            Verdict::Replace => {
                let (temporary, ()) = target::with_temporary_name(|temporary| {
                    target::symlink(link, &parent, temporary)
                })
                .map_err(text)?;
                let done = target::set_link_metadata(&parent, &temporary, owner, entry.mtime_ns)
                    .and_then(|()| target::rename(&parent, &temporary, name));
                if done.is_err() {
                    let _ = target::remove(&parent, &temporary);
                }
                done.map_err(text)
            }
            Verdict::Keep => {
                let path = shown(&self.options.target, &entry.path);
                self.report.kept_newer.push(path);
                Ok(())
            }
            Verdict::Refuse(reason) => Err(reason),
        }
    }

    fn restore_file(&mut self, entry: Entry, jobs: &mut Jobs<'_, Job>) -> Result<()> {
        let stored: u64 = entry.chunks.iter().map(|blob| blob.raw_length).sum();
        if stored != entry.size {
            return Err(Error::Corrupt {
                name: shown(&self.options.target, &entry.path),
                reason: format!(
                    "manifest chunks hold {stored} bytes, size is {}",
                    entry.size
                ),
            });
        }
        let looked = self
            .folders
            .parent_of(&entry.path)
            .and_then(|(parent, name)| Ok((target::look(&parent, name)?, parent)));
        let (found, parent) = match looked {
            Ok(looked) => looked,
            Err(err) => {
                self.fail(&entry.path, err.to_string());
                return Ok(());
            }
        };
        let pending = Pending { entry, parent };
        let Some(found) = found else {
            return self.write_file(pending, jobs);
        };
        if existing::same_size_and_mtime(&found, &pending.entry) {
            if self.options.trust_metadata {
                self.report.unchanged += 1;
                if let Err(err) = fix_trusted(&pending, &found, self.options.owners) {
                    self.fail(&pending.entry.path, err.to_string());
                }
                return Ok(());
            }
            return self.compare(pending, jobs);
        }
        match existing::decide(Some(&found), &pending.entry, self.options.force) {
            Verdict::Make | Verdict::Replace => self.write_file(pending, jobs)?,
            Verdict::Keep => {
                let path = shown(&self.options.target, &pending.entry.path);
                self.report.kept_newer.push(path);
            }
            Verdict::Refuse(reason) => self.fail(&pending.entry.path, reason),
        }
        Ok(())
    }

    /// Sends the existing file of `pending` to be compared with the snapshot's content.
    fn compare(&mut self, pending: Pending, jobs: &mut Jobs<'_, Job>) -> Result<()> {
        self.comparing += 1;
        let size = pending.entry.size;
        self.compares.push(pending, size);
        if self.compares.is_full() {
            self.flush(jobs)?;
        }
        Ok(())
    }

    /// Writes the file of `pending` under a temporary name, moved over its name when complete.
    fn write_file(&mut self, pending: Pending, jobs: &mut Jobs<'_, Job>) -> Result<()> {
        let Pending { entry, parent } = pending;
        let slot = self.next_slot;
        self.next_slot += 1;
        let missing = entry.chunks.len();
        let path = entry.path.clone();
        let new = NewFile {
            parent,
            owners: self.options.owners,
            direct: self.options.direct_writes,
            entry,
        };
        let shared = if let [blob] = new.entry.chunks.as_slice() {
            let stored = blob.length;
            let piece = Piece {
                slot,
                blob: blob.clone(),
                into: Destination::Whole(Box::new(new)),
                offset: 0,
            };
            self.pieces.push(piece, stored);
            if self.pieces.is_full() {
                self.flush(jobs)?;
            }
            None
        } else {
            let (temporary, file) = match new.create() {
                Ok(created) => created,
                Err(err) => {
                    self.fail(&path, err.to_string());
                    return Ok(());
                }
            };
            let file = Arc::new(Mutex::new(SharedFile::new(file, new.entry.size)));
            self.open_shared += 1;
            let mut offset = 0;
            for blob in &new.entry.chunks {
                let piece = Piece {
                    slot,
                    into: Destination::Shared(Arc::clone(&file)),
                    blob: blob.clone(),
                    offset,
                };
                self.pieces.push(piece, blob.length);
                offset += blob.raw_length;
                if self.pieces.is_full() {
                    self.flush(jobs)?;
                }
            }
            Some((new, temporary, file))
        };
        self.files.insert(
            slot,
            OpenFile {
                path,
                shared,
                missing,
                failure: None,
            },
        );
        if missing == 0 {
            self.complete(slot);
        }
        Ok(())
    }

    /// Every piece of `slot` is written: finish the file (unless a worker did) and record a
    /// failure.
    fn complete(&mut self, slot: u64) {
        let Some(open) = self.files.remove(&slot) else {
            return;
        };
        let finished = match open.shared {
            Some((new, temporary, file)) => {
                self.open_shared -= 1;
                let mut file = lock(&file);
                let failure = open.failure.or(file.failure.take());
                new.finish(&temporary, &file.file, failure)
            }
            None => open.failure.map_or(Ok(()), Err),
        };
        if let Err(reason) = finished {
            self.fail(&open.path, reason);
        }
    }
}

/// Gives a file taken as restored on its size and mtime the owner and mode of its entry, where
/// they differ (opened without following a link, and only then).
fn fix_trusted(pending: &Pending, found: &Found, owners: bool) -> io::Result<()> {
    if existing::metadata_to_fix(found, &pending.entry, owners) == (None, None) {
        return Ok(());
    }
    let file = target::open_file(&pending.parent, split_last(&pending.entry.path).1)?;
    let now = target::look_open(&file)?;
    if !now.is_same_file(found) {
        return Err(io::Error::other("replaced while being restored"));
    }
    fix_metadata(&file, &now, &pending.entry, owners)
}

/// The second pass: hard links, made once every first name is in place.
struct HardLinks<'a> {
    /// The folders of the links.
    links: Folders,
    /// The folders of the names they link to, anywhere in the tree.
    firsts: Folders,
    options: &'a RestoreOptions,
    report: &'a mut RestoreReport,
}

impl HardLinks<'_> {
    fn restore(&mut self, entry: &Entry) -> Result<()> {
        check_path(&entry.path)?;
        let linked = match entry.target.as_deref() {
            Some(first) => {
                check_path(first)?;
                self.link(entry, first)
            }
            None => Err("hard link without target".into()),
        };
        if let Err(reason) = linked {
            let path = shown(&self.options.target, &entry.path);
            self.report.failed.push(failure(path, reason));
        }
        Ok(())
    }

    /// Makes `entry` a hard link to `first`, by the rules of `existing` for what is there.
    fn link(&mut self, entry: &Entry, first: &[u8]) -> std::result::Result<(), String> {
        let (first_parent, first_name) = self.firsts.parent_of(first).map_err(text)?;
        let not_a_file = || {
            format!(
                "link to {}: not restored as a file",
                String::from_utf8_lossy(first)
            )
        };
        let first_found = target::look(&first_parent, first_name)
            .map_err(text)?
            .filter(|found| found.kind == rustix::fs::FileType::RegularFile)
            .ok_or_else(not_a_file)?;
        let (parent, name) = self.links.parent_of(&entry.path).map_err(text)?;
        let found = target::look(&parent, name).map_err(text)?;
        if found.is_some_and(|found| found.is_same_file(&first_found)) {
            return Ok(());
        }
        match existing::decide(found.as_ref(), entry, self.options.force) {
            Verdict::Make => {
                target::hard_link(&first_parent, first_name, &parent, name).map_err(text)
            }
            Verdict::Replace => {
                let (temporary, ()) = target::with_temporary_name(|temporary| {
                    target::hard_link(&first_parent, first_name, &parent, temporary)
                })
                .map_err(text)?;
                let renamed = target::rename(&parent, &temporary, name);
                if renamed.is_err() {
                    let _ = target::remove(&parent, &temporary);
                }
                renamed.map_err(text)
            }
            Verdict::Keep => {
                let path = shown(&self.options.target, &entry.path);
                self.report.kept_newer.push(path);
                Ok(())
            }
            Verdict::Refuse(reason) => Err(reason),
        }
    }
}

fn text(err: io::Error) -> String {
    err.to_string()
}

/// Whether `entry` is written around the page cache: a large file (its pieces may end anywhere,
/// see [`SharedFile`]).
fn writes_direct(entry: &Entry) -> bool {
    entry.size >= DIRECT_MIN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `content` cut into pieces of 1 byte to 300 KiB, as (offset, length).
    fn pieces(content: &[u8], rng: &mut fastrand::Rng) -> Vec<(u64, usize)> {
        let mut cut = Vec::new();
        let mut at = 0;
        while at < content.len() {
            let length = match rng.u8(..4) {
                0 => rng.usize(1..4096),
                _ => rng.usize(4096..300 << 10),
            }
            .min(content.len() - at);
            cut.push((at as u64, length));
            at += length;
        }
        cut
    }

    #[test]
    fn pieces_ending_anywhere_and_arriving_in_any_order_make_the_file() {
        let mut rng = fastrand::Rng::with_seed(9);
        let size = (3 << 20) + 1234;
        let mut content: Vec<u8> = (0..size).map(|_| rng.u8(1..)).collect();
        content[1 << 20..(1 << 20) + (200 << 10)].fill(0);
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("file");
            let file = if direct {
                DirectFile::create(&path).unwrap()
            } else {
                DirectFile::create_buffered(&path).unwrap()
            };
            file.file().set_len(size as u64).unwrap();
            let shared = Arc::new(Mutex::new(SharedFile::new(file, size as u64)));
            // Runs of consecutive pieces (as a pack holds them) in a shuffled order, taken by
            // two workers in turn.
            let mut runs: Vec<Vec<(u64, usize)>> = pieces(&content, &mut rng)
                .chunks(3)
                .map(<[_]>::to_vec)
                .collect();
            rng.shuffle(&mut runs);
            let mut workers =
                [(); 2].map(|()| (Gatherer::default(), AlignedBuffer::with_capacity(0)));
            for (number, run) in runs.iter().enumerate() {
                let (gatherer, scratch) = &mut workers[number % 2];
                for &(offset, length) in run {
                    let at = offset as usize;
                    gatherer.add(&shared, offset, &content[at..at + length], scratch);
                }
                // (Otherwise the next piece, not continuing this run, writes it out.)
                if number % 3 == 0 {
                    gatherer.write_out(scratch);
                }
            }
            for (gatherer, scratch) in &mut workers {
                gatherer.write_out(scratch);
            }
            let shared = lock(&shared);
            assert_eq!(shared.failure, None);
            assert!(shared.edges.is_empty(), "every shared block was written");
            shared.file.file().set_len(size as u64).unwrap();
            assert!(std::fs::read(&path).unwrap() == content, "direct: {direct}");
        }
    }
}
