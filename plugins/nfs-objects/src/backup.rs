//! Incremental backup: walk the tree, reuse what did not change, store the rest, publish last.
//!
//! The walking thread merge-joins the sorted walk with the previous snapshot's sorted manifest.
//! A file whose size, mtime, ctime and inode all match its previous entry keeps its blob
//! references without being opened (CircleCI artifacts are write-once, so this is nearly every
//! file on a routine run). New and changed files are read by a few worker threads; small files
//! travel in batches, and large files are split into pieces of [`PIECE_CHUNKS`] `chunk_size`s
//! handled in parallel. A worker reads its piece front to back and cuts it into chunks where its
//! content says (see `chunker`).
//! Results are put back in walk order in a bounded window, so the new manifest is written as a
//! stream too; a run that changes nothing copies the parent's manifest instead (see
//! [`Likeness`]).
//!
//! After a file is read it is `lstat`ed again: if it changed meanwhile it is read once more, and
//! if it changed again it is stored marked `torn` and named in the report. Only when every pack
//! is sealed and durable is the manifest published, then the snapshot header: a crash at any
//! earlier point leaves the previous snapshots untouched and, at most, unreferenced packs.
//!
//! A new snapshot never references data that is not there. The backup lists the packs once at
//! the start, and an unchanged file is only taken over from the previous snapshot when every
//! reference it has lies inside an existing pack; otherwise it is read and stored again, like
//! content whose index cannot be believed (see `dedup`). Re-storing is always possible (the file
//! is there to read), so the backup never refuses for this: it repairs and names in its findings
//! what it did not trust. Staged files left in the staging area by killed runs are collected
//! first (see `backend::leftovers`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::iter::Peekable;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FileType;

use crate::backend::{Backend, Leftovers, leftovers};
use crate::blob::{BlobRef, Encoder};
use crate::chunker::{Chunker, Scan};
use crate::control::{Control, Reporter};
use crate::crypto::Keys;
use crate::dedup::{self, DedupIndex, Lookup};
use crate::dictionary;
use crate::direct::{self, AlignedBuffer};
use crate::error::{Error, IoContext, Result};
use crate::index::{Finding, PackSizes};
use crate::manifest::{Entry, Kind, ManifestReader, ManifestWriter, Prefetched, path_order};
use crate::pack::PackWriter;
use crate::pipeline::{self, Batch, Jobs, Stage};
use crate::pool::Worker;
use crate::repo::{
    CONFIG_OBJECT, Repository, dictionary_object, index_object, manifest_object, pack_object,
};
use crate::snapshot::{self, Origin, Snapshot, SnapshotStats};
use crate::target;
use crate::walk::{Found, Step, Walk};

/// Small files are sent to the workers in batches of about this many bytes...
const BATCH_BYTES: u64 = 1 << 20;
/// ...or this many files, whichever comes first.
const BATCH_FILES: usize = 64;
/// Entries waiting to be written in order; bounds memory whatever the tree's size.
const WINDOW: usize = 4096;
/// A large file is read in pieces of this many `chunk_size`s (128 MiB by default), each cut into
/// chunks by one worker. A piece's first chunk starts at the piece, whatever the content: the
/// larger the pieces, the fewer such forced cuts (each costs the deduplication of about one
/// chunk of content that moved), the smaller, the more workers share one large file.
const PIECE_CHUNKS: u64 = 32;

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The folder to back up (the mount point, for an NFS volume).
    pub source: PathBuf,
    /// Worker threads reading, hashing, compressing and writing.
    pub workers: usize,
    /// zstd level for compressible data.
    pub compression_level: i32,
    /// Compress with a dictionary of the repository (trained from the source if it has none),
    /// where its config allows them (see `dictionary`).
    pub dictionary: bool,
    /// Do not descend into other filesystems mounted below `source`.
    pub one_file_system: bool,
    /// Accept an empty source although the previous snapshot had files (normally the sign of
    /// a volume that is not mounted).
    pub allow_empty: bool,
    /// The backplan run making this backup, written into the snapshot header.
    pub origin: Option<Origin>,
    /// Read large files, and write staged packs, around the page cache (see `direct`).
    pub direct_reads: bool,
    pub direct_writes: bool,
}

impl BackupOptions {
    /// Defaults for backing up `source`: [`default_workers`] workers.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            workers: default_workers(),
            // Level 2: a full backup of the bench tree into S3 stored 1,146 MiB (level 1: 1,202;
            // rustic's repository, after the bench's three backups: 1,149) for ~1 s more CPU
            // than level 1 and the same wall time. Packs alone, level 3 stored 1,131 MiB against
            // level 2's 1,142, for 2-3 s more CPU and up to 1 s of wall time. Level 3 for files
            // under 256 KiB alone: the bench tree 0.05 % smaller for +15 % wall time, a Cargo
            // registry tree (57,500 source files) 2.4 % smaller for +25 %; a `target/` folder
            // of release builds, level 3 throughout: 4 % smaller for +37 % CPU (with fixed
            // chunks; with content-defined ones, 3 % smaller for +49 %). Blobs that compression
            // does not shrink by 1/16 are stored raw (see `blob`). Since 2026-12 level 2 searches
            // large blobs as level 3 does, with level 2's tables: most of level 3's gain for a
            // sixth of its cost (`blob::DOUBLE_FAST_LEVEL`).
            compression_level: 2,
            dictionary: true,
            one_file_system: true,
            allow_empty: false,
            origin: None,
            direct_reads: true,
            direct_writes: true,
        }
    }
}

/// Threads for I/O-and-CPU work: the cores, plus three to keep them busy while others wait on
/// the disk (direct reads and writes return only once the disk is done). Measured on 2 cores
/// (full backup of the bench tree, 3 runs each, noisy): 4 workers 3.9–4.3 s, 5 workers
/// 3.7–3.9 s, 6 workers 3.4–4.2 s with 28 MB more peak memory than 5.
pub fn default_workers() -> usize {
    cores() + 3
}

/// Threads for reading from S3 (restore, verify): a worker waits on its GETs, then decodes and
/// writes, so more of them keep the cores busy. Measured on 2 cores (restore of the bench tree
/// from s3s-fs, 3 rounds, medians): 5 workers 8.7 s, 8 workers 8.2 s (with 4 MiB in flight
/// each, 158 MB peak), 10 workers 7.7 s but 207 MB.
pub fn network_workers() -> usize {
    cores() * 2 + 4
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// A path left out of the snapshot, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// The outcome of a backup.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub snapshot: Snapshot,
    pub skipped: Vec<Skipped>,
    /// Repository objects the backup did not trust (a missing pack, an index that does not
    /// describe its pack), each with what was stored again instead.
    pub findings: Vec<Finding>,
    /// Staged files of killed runs removed before the backup started.
    pub leftovers: Leftovers,
    /// Older objects whose Object Lock retention was extended to cover the new snapshot.
    pub retention_extended: usize,
}

/// Backs up `options.source` into `repo` and publishes a new snapshot.
///
/// The latest snapshot of the source is the parent whose unchanged files are taken over. If its
/// manifest turns out missing or corrupt (its digest is checked before anything is published),
/// nothing it said is used: the backup starts again reading every file, and names the manifest
/// in its findings.
pub fn backup(
    repo: &Repository,
    options: &BackupOptions,
    control: Control<'_>,
) -> Result<BackupReport> {
    let backend = repo.backend();
    let leftovers = backend.collect_leftovers(leftovers::MAX_AGE, false);
    let source = options.source.display().to_string();
    let parent = snapshot::list(backend.as_ref())?
        .into_iter()
        .rev()
        .find(|snapshot| snapshot.source == source);
    let dictionary = dictionary(repo, options, parent.is_none())?;
    let dictionary = dictionary.as_deref();
    let mut report = match attempt(repo, options, control, parent.as_ref(), dictionary, true) {
        Err(Error::MissingObject(name) | Error::Corrupt { name, .. })
            if parent.as_ref().is_some_and(|p| p.manifest == name) =>
        {
            let mut report = attempt(repo, options, control, parent.as_ref(), dictionary, false)?;
            report.findings.insert(
                0,
                Finding {
                    object: name,
                    problem: "missing or corrupt: the parent snapshot's files were not taken \
                              over, every file was read again"
                        .into(),
                },
            );
            report
        }
        other => other?,
    };
    report.leftovers = leftovers;
    Ok(report)
}

/// The dictionary this backup compresses with, if the repository and `options` allow one: the
/// repository's own, or else, on the `first` backup of the source, one trained from it and
/// published now (see `dictionary`). Later backups of a source that gave none do not sample it
/// again: each would walk and read it once more, every night, for the same answer.
fn dictionary(
    repo: &Repository,
    options: &BackupOptions,
    first: bool,
) -> Result<Option<Arc<[u8]>>> {
    if !(options.dictionary && repo.config().dictionaries) {
        return Ok(None);
    }
    let dictionaries = repo.dictionaries();
    if let Some((_, bytes)) = dictionaries.for_backup()? {
        return Ok(Some(bytes));
    }
    if !first {
        return Ok(None);
    }
    let trained = dictionary::train(
        &options.source,
        options.one_file_system,
        options.compression_level,
    )?;
    let Some(trained) = trained else {
        return Ok(None);
    };
    let id = dictionaries.publish(trained)?;
    Ok(Some(dictionaries.get(id).map_err(Error::Internal)?))
}

/// One backup against `parent`, whose manifest's entries are taken over only if `compare`,
/// compressing with `dictionary`.
fn attempt(
    repo: &Repository,
    options: &BackupOptions,
    control: Control<'_>,
    parent: Option<&Snapshot>,
    dictionary: Option<&[u8]>,
    compare: bool,
) -> Result<BackupReport> {
    let backend = repo.backend();
    let source = options.source.display().to_string();
    // The parent whose entries are taken over, if any.
    let compared = parent.filter(|_| compare);
    let previous = compared
        .map(|p| {
            ManifestReader::open(backend.as_ref(), &p.manifest, p.manifest_blake3)?.prefetched()
        })
        .transpose()?
        .map(Iterator::peekable);
    let walk = Walk::new(&options.source, options.one_file_system)?;
    // After the snapshots: every pack the parent references was published before it.
    let packs = Arc::new(PackSizes::list(
        backend.as_ref(),
        repo.keys().blob_overhead(),
    )?);

    let time = jiff::Timestamp::now();
    let id = snapshot::new_id(time);
    let staged = StagedFile(backend.staging_file(".manifest"));
    let shared = Shared {
        source: Arc::new(walk.root_folder().at(&options.source)?),
        source_path: options.source.clone(),
        dedup: DedupIndex::new(
            Arc::clone(backend),
            dedup::min_length(repo.config().chunk_size),
            Arc::clone(&packs),
            options.workers.max(1),
        ),
        bytes_stored: AtomicU64::new(0),
        packs_written: AtomicU64::new(0),
    };
    let workers = (0..options.workers.max(1))
        .map(|_| {
            Ok(FileReader {
                packs: PackWriter::new(
                    Arc::clone(backend),
                    repo.config().pack_size,
                    repo.keys().clone(),
                )
                .direct(options.direct_writes),
                direct_reads: options.direct_reads,
                chunker: Chunker::new(repo.config().chunk_size, repo.keys()),
                keys: repo.keys().clone(),
                encoder: Encoder::new(options.compression_level, dictionary)?,
                shared: &shared,
                buffer: AlignedBuffer::with_capacity(0),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let reporter = Reporter::new(control, "backup", parent.map(|p| p.stats.bytes));

    let mut run = Run {
        piece_size: repo.config().chunk_size * PIECE_CHUNKS,
        manifest: ManifestWriter::create(&staged.0)?,
        likeness: match &previous {
            Some(_) => Likeness::Same { entries: 0 },
            None => Likeness::Different,
        },
        previous,
        parent: compared,
        backend: backend.as_ref(),
        packs: &packs,
        unusable: BTreeMap::new(),
        slots: VecDeque::new(),
        first_slot: 0,
        batch: Batch::new(BATCH_FILES, BATCH_BYTES),
        hardlinks: Hardlinks::default(),
        stats: SnapshotStats::default(),
        skipped: Vec::new(),
        torn: Vec::new(),
        referenced: BTreeSet::new(),
        reporter,
    };
    pipeline::run(workers, control, walk, &mut run)?;
    run.write_ready()?;
    debug_assert!(run.slots.is_empty());
    run.reporter
        .report(run.stats_entries(), run.stats.bytes, true);
    // Entries of the previous manifest past the last walked path were deleted since.
    if run.previous.as_mut().is_some_and(|p| p.peek().is_some()) {
        run.diverge()?;
    }
    // The rest of the previous manifest, so its digest is checked before anything that was
    // taken from it is published.
    if let Some(previous) = run.previous.as_mut() {
        for entry in previous {
            entry?;
        }
    }

    if run.stats_entries() <= 1 && !options.allow_empty {
        if let Some(parent) = parent.filter(|p| p.stats.files > 0) {
            return Err(Error::Mount(format!(
                "{source} is empty but snapshot {} had {} files; is the volume mounted?",
                parent.id, parent.stats.files
            )));
        }
    }
    run.stats.bytes_stored = shared.bytes_stored.load(Ordering::Relaxed);
    run.stats.packs_written = shared.packs_written.load(Ordering::Relaxed);
    let manifest_name = manifest_object(&id);
    let manifest_blake3 = match (&run.likeness, run.parent) {
        // Nothing changed: the parent's manifest, whose digest was just checked, is copied
        // instead of written again (a hard link, a server-side copy).
        (Likeness::Same { .. }, Some(parent)) => {
            drop(run.manifest);
            backend.copy(&parent.manifest, &manifest_name)?;
            parent.manifest_blake3
        }
        _ => {
            let manifest = run.manifest.finish()?;
            backend.put_file(&manifest_name, &manifest.staged)?;
            manifest.digest
        }
    };
    // Under Object Lock, everything the snapshot needs stays locked as long as it does, before
    // it is published: its packs may hold blobs compressed with any of the dictionaries.
    let needed: Vec<String> = [CONFIG_OBJECT.to_owned(), manifest_name.clone()]
        .into_iter()
        .chain(
            run.referenced
                .iter()
                .flat_map(|pack| [pack_object(pack), index_object(pack)]),
        )
        .chain(
            repo.dictionaries()
                .list()?
                .into_iter()
                .map(dictionary_object),
        )
        .collect();
    let retention_extended = backend.protect(&needed, time)?;
    let snapshot = Snapshot {
        id,
        time,
        source,
        host: snapshot::host_name(),
        parent: compared.map(|p| p.id.clone()),
        manifest: manifest_name,
        manifest_blake3,
        stats: run.stats,
        torn: run.torn,
        run: options.origin.clone(),
    };
    snapshot::publish(backend.as_ref(), &snapshot)?;
    let mut findings = shared.dedup.into_distrusted();
    findings.extend(
        run.unusable
            .into_iter()
            .map(|(object, (problem, files))| Finding {
                object,
                problem: format!(
                    "{problem}: {files} unchanged file(s) referencing it were read and stored again"
                ),
            }),
    );
    Ok(BackupReport {
        snapshot,
        skipped: run.skipped,
        findings,
        leftovers: Leftovers::default(),
        retention_extended,
    })
}

/// A staging file removed when the backup does not get to publish it.
struct StagedFile(PathBuf);

impl Drop for StagedFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// State shared by the worker threads.
struct Shared {
    /// The source folder, which files are opened below (see `target::open_beneath`)...
    source: target::Folder,
    /// ...and its path, which the paths of read tasks start with.
    source_path: PathBuf,
    dedup: DedupIndex,
    bytes_stored: AtomicU64,
    packs_written: AtomicU64,
}

/// One piece of one file to read.
struct ReadTask {
    slot: u64,
    piece: usize,
    path: Arc<Path>,
    offset: u64,
    length: u64,
}

/// What reading a task gave.
enum TaskResult {
    /// Stored (or found already stored) as these chunks; `short` if the file ended before
    /// `length` bytes.
    Stored { blobs: Vec<BlobRef>, short: bool },
    /// The file could not be read; `vanished` when it no longer exists.
    Failed { vanished: bool, reason: String },
}

impl TaskResult {
    fn failed(err: io::Error) -> Self {
        let reason = match err.raw_os_error() {
            Some(libc::ELOOP | libc::EXDEV) => {
                "it, or a folder on its path, was replaced by a symlink while being backed up \
                 (not followed)"
                    .to_owned()
            }
            _ => err.to_string(),
        };
        Self::Failed {
            vanished: err.kind() == io::ErrorKind::NotFound,
            reason,
        }
    }
}

struct TaskOutcome {
    slot: u64,
    piece: usize,
    result: TaskResult,
}

/// A worker: reads file pieces, hashes, deduplicates, compresses and packs them.
struct FileReader<'a> {
    packs: PackWriter,
    /// What blob ids are hashed with.
    keys: Keys,
    encoder: Encoder,
    chunker: Chunker,
    shared: &'a Shared,
    /// The bytes of the piece being read, from the start of the chunk being cut.
    buffer: AlignedBuffer,
    direct_reads: bool,
}

impl Worker for FileReader<'_> {
    type Job = Vec<ReadTask>;
    type Output = Vec<TaskOutcome>;

    fn run(&mut self, tasks: Vec<ReadTask>) -> Result<Vec<TaskOutcome>> {
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            let result = self.store_piece(&task)?;
            outcomes.push(TaskOutcome {
                slot: task.slot,
                piece: task.piece,
                result,
            });
        }
        Ok(outcomes)
    }

    fn finish(self) -> Result<()> {
        // Every worker seals its last pack at the same moment, each encoding an index: the read
        // buffer and compression state go first, so the backup's peak is not all of them at once.
        drop(self.buffer);
        drop(self.encoder);
        let packs = self.packs.finish()?;
        self.shared
            .packs_written
            .fetch_add(packs, Ordering::Relaxed);
        Ok(())
    }
}

impl FileReader<'_> {
    /// Reads piece `task` front to back and stores it cut into chunks; a file that cannot be
    /// read is a [`TaskResult::Failed`], not an error of the backup.
    ///
    /// The buffer holds at most two chunks and a block: bytes are read after what is left of
    /// the chunk being cut, which is moved to the front first when less than a chunk's room
    /// remains (to just before an aligned address, so direct reads land aligned).
    fn store_piece(&mut self, task: &ReadTask) -> Result<TaskResult> {
        let shared = self.shared;
        let opened =
            PieceSource::open(task, &shared.source, &shared.source_path, self.direct_reads);
        let mut source = match opened {
            Ok(source) => source,
            Err(err) => return Ok(TaskResult::failed(err)),
        };
        let max = self.chunker.max();
        if self.buffer.capacity() < 2 * max + direct::ALIGN {
            self.buffer = AlignedBuffer::with_capacity(2 * max + direct::ALIGN);
        }
        let capacity = self.buffer.capacity();
        self.buffer.fill_area(capacity);
        let (mut start, mut end) = (0, 0);
        let mut scan = Scan::default();
        let mut blobs = Vec::new();
        let mut ended = false;
        while !ended || start < end {
            if capacity - end < max {
                let left = end - start;
                let to = direct::align_up(left) - left;
                self.buffer.as_mut_slice().copy_within(start..end, to);
                (start, end) = (to, to + left);
            }
            if !ended {
                match source.read(&mut self.buffer.as_mut_slice()[end..]) {
                    Ok(0) => ended = true,
                    Ok(read) => end += read,
                    Err(err) => return Ok(TaskResult::failed(err)),
                }
            }
            while let Some(length) =
                self.chunker
                    .cut(&self.buffer.as_slice()[start..end], ended, &mut scan)
            {
                blobs.push(self.store(start, length)?);
                start += length;
            }
        }
        Ok(TaskResult::Stored {
            blobs,
            short: source.left > 0,
        })
    }

    /// Stores the `len` bytes of `self.buffer` at `at` unless the repository already has them.
    fn store(&mut self, at: usize, len: usize) -> Result<BlobRef> {
        let raw = &self.buffer.as_slice()[at..at + len];
        let id = self.keys.id_of(raw);
        let raw_length = raw.len() as u64;
        let claim = match self.shared.dedup.claim(&id, raw_length)? {
            Lookup::Stored(existing) => return Ok(existing),
            Lookup::Absent(claim) => claim,
        };
        let blob = match self.encoder.compress(raw) {
            Some(compressed) => self.packs.add(id, compressed, raw_length, true)?,
            None => {
                let raw = &mut self.buffer.as_mut_slice()[at..at + len];
                self.packs.add(id, raw, raw_length, false)?
            }
        };
        self.shared
            .bytes_stored
            .fetch_add(blob.length, Ordering::Relaxed);
        claim.stored(&blob)?;
        Ok(blob)
    }
}

/// Pieces at least this long are read around the page cache (`O_DIRECT`), when the filesystem
/// allows it: no copy out of the cache, and a backup does not evict the machine's working set.
const DIRECT_READ_MIN: u64 = 1 << 20;

/// One piece of a file, read front to back; directly (in whole aligned blocks, into aligned
/// memory) when it is large and the filesystem allows it.
struct PieceSource<'a> {
    file: File,
    /// The source folder and the file's path below it.
    folder: &'a target::Folder,
    relative: &'a [u8],
    direct: bool,
    /// Where the next read starts.
    offset: u64,
    /// Bytes of the piece not read yet.
    left: usize,
    /// The file ended before the piece did (a short direct read is its last).
    ended: bool,
}

impl<'a> PieceSource<'a> {
    /// Opens piece `task` of a file below `source` (at `source_path`).
    fn open(
        task: &'a ReadTask,
        source: &'a target::Folder,
        source_path: &Path,
        direct: bool,
    ) -> io::Result<Self> {
        let direct =
            direct && task.length >= DIRECT_READ_MIN && task.offset % direct::ALIGN as u64 == 0;
        let relative = task
            .path
            .strip_prefix(source_path)
            .map_err(io::Error::other)?
            .as_os_str()
            .as_bytes();
        let (file, direct) = open_for_reading(source, relative, direct)?;
        Ok(Self {
            file,
            folder: source,
            relative,
            direct,
            offset: task.offset,
            left: usize::try_from(task.length).map_err(io::Error::other)?,
            ended: false,
        })
    }

    /// Reads the next bytes of the piece into the start of `area` (aligned, and at least a
    /// block long, for a direct read); how many (only the piece's count), 0 at its end.
    fn read(&mut self, area: &mut [u8]) -> io::Result<usize> {
        while self.left > 0 && !self.ended {
            let want = if self.direct {
                direct::align_up(self.left).min(area.len() / direct::ALIGN * direct::ALIGN)
            } else {
                self.left.min(area.len())
            };
            match self.file.read_at(&mut area[..want], self.offset) {
                Ok(0) => self.ended = true,
                Ok(read) => {
                    self.ended = self.direct && read % direct::ALIGN != 0;
                    let read = read.min(self.left);
                    self.offset += read as u64;
                    self.left -= read;
                    return Ok(read);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The filesystem does not take direct reads after all: read it buffered.
                Err(err) if self.direct && err.raw_os_error() == Some(libc::EINVAL) => {
                    (self.file, self.direct) = open_for_reading(self.folder, self.relative, false)?;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(0)
    }
}

/// Opens `relative` below `folder` for reading, directly if asked and the filesystem allows it.
fn open_for_reading(
    folder: &target::Folder,
    relative: &[u8],
    direct: bool,
) -> io::Result<(File, bool)> {
    if direct {
        match target::open_beneath(folder, relative, true) {
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {}
            opened => return opened.map(|file| (file, true)),
        }
    }
    target::open_beneath(folder, relative, false).map(|file| (file, false))
}

/// An entry waiting for its turn to be written to the manifest.
struct Slot {
    entry: Entry,
    state: SlotState,
    /// The parent's entry at the same place, unchanged: while the manifests are alike it is
    /// not written (see [`Likeness`]).
    same: bool,
}

/// How the new manifest compares with the parent's so far.
///
/// A routine run changes nothing, and encoding a manifest that the parent already holds is
/// the bulk of its work (a million entries take seconds). So while every entry walked is the
/// parent's entry at the same place, unchanged, nothing is written: at the end the parent's
/// manifest is copied. At the first difference the parent's first `entries` are read again
/// from its manifest into the writer, and that second reader carries on the merge-join.
enum Likeness {
    /// The new manifest so far is the parent's first `entries`, none of them written yet.
    Same { entries: u64 },
    /// The manifests differ (or there is no parent to compare with): every entry is written.
    Different,
}

enum SlotState {
    Ready,
    /// Left out of the snapshot (already reported).
    Dropped,
    Reading {
        path: Arc<Path>,
        /// The chunks of each piece, once read.
        pieces: Vec<Option<Vec<BlobRef>>>,
        missing: usize,
        /// 0 for the first read, 1 for the re-read after a change.
        attempt: u8,
        short: bool,
        failure: Option<(bool, String)>,
    },
}

/// The walking thread's state during one backup.
struct Run<'env> {
    /// Large files are read in pieces of this many bytes.
    piece_size: u64,
    manifest: ManifestWriter,
    likeness: Likeness,
    previous: Option<Peekable<Prefetched>>,
    /// The snapshot `previous` reads, and where from: to read it again (see [`Likeness`]).
    parent: Option<&'env Snapshot>,
    backend: &'env dyn Backend,
    /// The packs listed at the start, to check what is taken over from `previous`.
    packs: &'env PackSizes,
    /// Packs the previous snapshot references that cannot hold what it says, by object name:
    /// the first problem found and how many files were stored again because of it.
    unusable: BTreeMap<String, (String, u64)>,
    slots: VecDeque<Slot>,
    first_slot: u64,
    /// Small files waiting to be sent to a worker together.
    batch: Batch<ReadTask>,
    hardlinks: Hardlinks,
    stats: SnapshotStats,
    skipped: Vec<Skipped>,
    torn: Vec<String>,
    /// The packs the new manifest references.
    referenced: BTreeSet<String>,
    reporter: Reporter<'env>,
}

impl<'env> Stage for Run<'env> {
    type Item = Step;
    type Job = Vec<ReadTask>;
    type Output = Vec<TaskOutcome>;

    fn visit(&mut self, step: Step, jobs: &mut Jobs<'_, Vec<ReadTask>>) -> Result<()> {
        match step {
            Step::Found(found) => self.add(found, jobs),
            Step::Skipped { path, reason } => {
                self.skip(&path, reason);
                Ok(())
            }
        }
    }

    fn apply(
        &mut self,
        outcomes: Vec<TaskOutcome>,
        jobs: &mut Jobs<'_, Vec<ReadTask>>,
    ) -> Result<()> {
        for outcome in outcomes {
            let index = (outcome.slot - self.first_slot) as usize;
            let SlotState::Reading {
                pieces,
                missing,
                short,
                failure,
                ..
            } = &mut self.slots[index].state
            else {
                return Err(Error::Internal(
                    "read result for an entry not being read".into(),
                ));
            };
            match outcome.result {
                TaskResult::Stored {
                    blobs,
                    short: was_short,
                } => {
                    pieces[outcome.piece] = Some(blobs);
                    *short |= was_short;
                }
                TaskResult::Failed { vanished, reason } => {
                    failure.get_or_insert((vanished, reason));
                }
            }
            *missing -= 1;
            if *missing == 0 {
                self.settle(index, jobs)?;
            }
        }
        self.write_ready()
    }

    fn flush(&mut self, jobs: &mut Jobs<'_, Vec<ReadTask>>) -> Result<()> {
        match self.batch.take() {
            Some(tasks) => jobs.submit(tasks),
            None => Ok(()),
        }
    }

    /// The window of entries waiting to be written in order is full.
    fn is_full(&self, _in_flight: usize) -> bool {
        self.slots.len() >= WINDOW
    }
}

impl<'env> Run<'env> {
    fn skip(&mut self, path: &Path, reason: String) {
        self.skipped.push(Skipped {
            path: path.display().to_string(),
            reason,
        });
    }

    /// Takes one walked entry: decides between reuse and reading, and queues it in order.
    fn add(&mut self, mut found: Found, jobs: &mut Jobs<'_, Vec<ReadTask>>) -> Result<()> {
        let Some(mut entry) = entry_from(&mut found)? else {
            self.skip(&found.absolute, "not a file, folder or symlink".into());
            return Ok(());
        };
        let meta = &found.metadata;
        if entry.kind == Kind::File && meta.links > 1 {
            let inode = (meta.device, meta.inode);
            if let Some(first) = self.hardlinks.see(inode, meta.links, &entry.path) {
                entry.kind = Kind::Hardlink;
                entry.target = Some(first);
            }
        }
        let same = self.next_is_same(&entry)?;
        if !same {
            self.diverge()?;
        }
        let previous = self.previous_entry(&entry.path)?;
        let mut state = SlotState::Ready;
        if entry.kind == Kind::File && entry.size > 0 {
            let unchanged = previous
                .filter(|p| p.kind == Kind::File && !p.torn && same_version(p, &entry))
                // (`same` already found every chunk inside its pack.)
                .filter(|p| same || self.all_present(&p.chunks));
            match unchanged {
                Some(previous) => {
                    entry.chunks = previous.chunks;
                    self.stats.files_reused += 1;
                }
                None => {
                    let path = found.absolute.into();
                    state = self.start_reading(&entry, path, 0, jobs)?;
                }
            }
        }
        if let Likeness::Same { entries } = &mut self.likeness {
            *entries += 1;
        }
        self.slots.push_back(Slot { entry, state, same });
        self.write_ready()
    }

    /// Whether `entry` (not yet given its chunks) will be, unchanged, the parent's entry at
    /// the same place while the manifests are alike: the next one of the parent's manifest,
    /// equal in every field, and for a file with content one taken over whole.
    fn next_is_same(&mut self, entry: &Entry) -> Result<bool> {
        let (Likeness::Same { .. }, Some(previous)) = (&self.likeness, self.previous.as_mut())
        else {
            return Ok(false);
        };
        let parent = match previous.peek() {
            None => return Ok(false),
            Some(Err(_)) => return previous.next().transpose().map(|_| false),
            Some(Ok(parent)) => parent,
        };
        let takes_chunks = entry.kind == Kind::File && entry.size > 0;
        let chunks_alike = if takes_chunks {
            !parent.chunks.is_empty() && parent.chunks.iter().all(|c| self.packs.flaw(c).is_none())
        } else {
            parent.chunks.is_empty()
        };
        Ok(chunks_alike && alike_but_chunks(entry, parent))
    }

    /// The manifests stop being alike: the entries so far, the parent's first ones, are
    /// written from a second reader of its manifest, which then replaces the first one, read
    /// no further than them. Nothing taken from the first reader outlives it unchecked: the
    /// second is read to the end, so its digest covers every entry written.
    fn diverge(&mut self) -> Result<()> {
        let Likeness::Same { entries } = std::mem::replace(&mut self.likeness, Likeness::Different)
        else {
            return Ok(());
        };
        let Some(parent) = self.parent.filter(|_| entries > 0) else {
            return Ok(());
        };
        let mut again =
            ManifestReader::open(self.backend, &parent.manifest, parent.manifest_blake3)?;
        for _ in 0..entries {
            let entry = again.next().transpose()?.ok_or_else(|| Error::Corrupt {
                name: parent.manifest.clone(),
                reason: "it ended sooner when read again".into(),
            })?;
            self.refer_to(&entry);
            self.manifest.push(&entry)?;
        }
        self.previous = Some(again.prefetched()?.peekable());
        Ok(())
    }

    /// Records the packs `entry` references.
    fn refer_to(&mut self, entry: &Entry) {
        for blob in &entry.chunks {
            if !self.referenced.contains(&blob.pack) {
                self.referenced.insert(blob.pack.clone());
            }
        }
    }

    /// Whether every one of `chunks` lies inside an existing pack; if not, the first that does
    /// not is recorded against its pack.
    fn all_present(&mut self, chunks: &[BlobRef]) -> bool {
        let Some((pack, problem)) = chunks.iter().find_map(|c| {
            let flaw = self.packs.flaw(c)?;
            let missing = self.packs.get(&c.pack).is_none();
            Some((
                pack_object(&c.pack),
                if missing { "missing".into() } else { flaw },
            ))
        }) else {
            return true;
        };
        self.unusable.entry(pack).or_insert((problem, 0)).1 += 1;
        false
    }

    /// The previous snapshot's entry for `path`, if it has one (entries before it are skipped).
    fn previous_entry(&mut self, path: &[u8]) -> Result<Option<Entry>> {
        let Some(previous) = self.previous.as_mut() else {
            return Ok(None);
        };
        loop {
            let order = match previous.peek() {
                None => return Ok(None),
                Some(Err(_)) => return previous.next().transpose(),
                Some(Ok(entry)) => path_order(&entry.path, path),
            };
            match order {
                std::cmp::Ordering::Less => {
                    previous.next();
                }
                std::cmp::Ordering::Equal => return previous.next().transpose(),
                std::cmp::Ordering::Greater => return Ok(None),
            }
        }
    }

    /// Queues the reading of the file of `entry` (the slot about to be pushed, or re-read).
    fn start_reading(
        &mut self,
        entry: &Entry,
        path: Arc<Path>,
        attempt: u8,
        jobs: &mut Jobs<'_, Vec<ReadTask>>,
    ) -> Result<SlotState> {
        let slot = self.first_slot + self.slots.len() as u64;
        self.queue_reads(slot, entry.size, &path, jobs)?;
        Ok(reading_state(entry.size, self.piece_size, path, attempt))
    }

    /// Sends a large file's pieces to the workers one by one, a small file into the batch.
    fn queue_reads(
        &mut self,
        slot: u64,
        size: u64,
        path: &Arc<Path>,
        jobs: &mut Jobs<'_, Vec<ReadTask>>,
    ) -> Result<()> {
        let pieces = size.div_ceil(self.piece_size);
        for piece in 0..pieces {
            let offset = piece * self.piece_size;
            let task = ReadTask {
                slot,
                piece: piece as usize,
                path: Arc::clone(path),
                offset,
                length: self.piece_size.min(size - offset),
            };
            if pieces > 1 {
                jobs.submit(vec![task])?;
            } else {
                let length = task.length;
                self.batch.push(task, length);
                if self.batch.is_full() {
                    self.flush(jobs)?;
                }
            }
        }
        Ok(())
    }

    fn stats_entries(&self) -> u64 {
        self.stats.files + self.stats.dirs + self.stats.symlinks + self.stats.hardlinks
    }

    /// All pieces of slot `index` are in: accept the file, re-read it, or leave it out.
    fn settle(&mut self, index: usize, jobs: &mut Jobs<'_, Vec<ReadTask>>) -> Result<()> {
        let slot = &mut self.slots[index];
        let SlotState::Reading {
            path,
            pieces,
            attempt,
            short,
            failure,
            ..
        } = std::mem::replace(&mut slot.state, SlotState::Dropped)
        else {
            return Ok(());
        };
        if let Some((vanished, reason)) = failure {
            let reason = if vanished {
                "deleted while being backed up".to_owned()
            } else {
                reason
            };
            self.skip(&path, reason);
            return Ok(());
        }
        let now = match target::Found::of_path(&path) {
            Ok(meta) if meta.kind == FileType::RegularFile => meta,
            _ => {
                self.skip(&path, "deleted or replaced while being backed up".into());
                return Ok(());
            }
        };
        let chunks: Vec<BlobRef> = pieces.into_iter().flatten().flatten().collect();
        let read_bytes: u64 = chunks.iter().map(|c| c.raw_length).sum();
        self.stats.files_read += 1;
        self.stats.bytes_read += read_bytes;
        let mut current = slot.entry.clone();
        fill_metadata(&mut current, &now);
        let stable = !short && same_version(&current, &slot.entry);
        if stable {
            slot.entry.chunks = chunks;
            slot.state = SlotState::Ready;
        } else if attempt == 0 {
            slot.entry = current;
            let slot_number = self.first_slot + index as u64;
            let size = self.slots[index].entry.size;
            self.slots[index].state = reading_state(size, self.piece_size, Arc::clone(&path), 1);
            if size == 0 {
                self.slots[index].state = SlotState::Ready;
            } else {
                self.queue_reads(slot_number, size, &path, jobs)?;
            }
        } else {
            slot.entry.chunks = chunks;
            slot.entry.size = read_bytes;
            slot.entry.torn = true;
            slot.state = SlotState::Ready;
            self.torn.push(path.display().to_string());
        }
        Ok(())
    }

    /// Writes the entries at the front of the window that are complete.
    fn write_ready(&mut self) -> Result<()> {
        while let Some(slot) = self.slots.front() {
            if matches!(slot.state, SlotState::Reading { .. }) {
                break;
            }
            let slot = self.slots.pop_front().expect("the front slot");
            self.first_slot += 1;
            if let SlotState::Ready = slot.state {
                let entry = &slot.entry;
                match entry.kind {
                    Kind::File => {
                        self.stats.files += 1;
                        self.stats.bytes += entry.size;
                    }
                    Kind::Dir => self.stats.dirs += 1,
                    Kind::Symlink => self.stats.symlinks += 1,
                    Kind::Hardlink => self.stats.hardlinks += 1,
                }
                if !slot.same {
                    self.manifest.push(entry)?;
                }
                self.refer_to(entry);
            }
        }
        let entries = self.stats_entries();
        self.reporter.report(entries, self.stats.bytes, false);
        Ok(())
    }
}

fn reading_state(size: u64, piece_size: u64, path: Arc<Path>, attempt: u8) -> SlotState {
    let pieces = size.div_ceil(piece_size) as usize;
    SlotState::Reading {
        path,
        pieces: vec![None; pieces],
        missing: pieces,
        attempt,
        short: false,
        failure: None,
    }
}

/// Whether two entries are equal in every field but their chunks.
fn alike_but_chunks(a: &Entry, b: &Entry) -> bool {
    let Entry {
        path,
        kind,
        size,
        mode,
        uid,
        gid,
        mtime_ns,
        ctime_ns,
        inode,
        target,
        chunks: _,
        torn,
    } = a;
    *path == b.path
        && *kind == b.kind
        && *size == b.size
        && *mode == b.mode
        && *uid == b.uid
        && *gid == b.gid
        && *mtime_ns == b.mtime_ns
        && *ctime_ns == b.ctime_ns
        && *inode == b.inode
        && *target == b.target
        && *torn == b.torn
}

/// Whether two entries describe the same version of a file.
fn same_version(a: &Entry, b: &Entry) -> bool {
    a.size == b.size && a.mtime_ns == b.mtime_ns && a.ctime_ns == b.ctime_ns && a.inode == b.inode
}

/// The manifest entry for a walked path (its relative path moved into it); `None` for sockets,
/// FIFOs and device nodes.
fn entry_from(found: &mut Found) -> Result<Option<Entry>> {
    let (kind, target) = match found.metadata.kind {
        FileType::RegularFile => (Kind::File, None),
        FileType::Directory => (Kind::Dir, None),
        FileType::Symlink => {
            let target = match found.link_target.take() {
                Some(target) => target,
                None => fs::read_link(&found.absolute)
                    .map_err(|source| Error::Io {
                        path: found.absolute.clone(),
                        source,
                    })?
                    .into_os_string()
                    .into_vec(),
            };
            (Kind::Symlink, Some(target))
        }
        _ => return Ok(None),
    };
    let mut entry = Entry {
        path: std::mem::take(&mut found.relative),
        kind,
        size: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        target,
        chunks: Vec::new(),
        torn: false,
    };
    fill_metadata(&mut entry, &found.metadata);
    Ok(Some(entry))
}

fn fill_metadata(entry: &mut Entry, meta: &target::Found) {
    entry.size = if entry.kind == Kind::Dir {
        0
    } else {
        meta.size
    };
    entry.mode = meta.mode;
    entry.uid = meta.uid;
    entry.gid = meta.gid;
    entry.mtime_ns = meta.mtime_ns;
    entry.ctime_ns = meta.ctime_ns;
    entry.inode = meta.inode;
}

/// The first path seen of each multiply-linked inode, by (device, inode), until all its links
/// were seen: a tree of hard-linked copies (`cp -al` snapshots, a pnpm store) would otherwise
/// cost memory for every such file until the backup ends.
#[derive(Debug, Default)]
struct Hardlinks {
    /// The first path, and how many of the inode's links are still to come.
    first: HashMap<(u64, u64), (Vec<u8>, u64)>,
}

impl Hardlinks {
    /// Takes a path of `inode`, which has `links` links: the first path seen of it, if this is
    /// not the first. A link made after the others were all seen is backed up as a file.
    fn see(&mut self, inode: (u64, u64), links: u64, path: &[u8]) -> Option<Vec<u8>> {
        let Some((first, to_come)) = self.first.get_mut(&inode) else {
            self.first
                .insert(inode, (path.to_vec(), links.saturating_sub(1)));
            return None;
        };
        let first = first.clone();
        *to_come = to_come.saturating_sub(1);
        if *to_come == 0 {
            self.first.remove(&inode);
        }
        Some(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inode_is_forgotten_once_all_its_links_were_seen() {
        let mut hardlinks = Hardlinks::default();
        assert_eq!(hardlinks.see((1, 7), 3, b"a"), None);
        assert_eq!(hardlinks.see((1, 8), 2, b"x"), None);
        assert_eq!(hardlinks.see((1, 7), 3, b"b").as_deref(), Some(&b"a"[..]));
        assert_eq!(hardlinks.first.len(), 2);
        assert_eq!(hardlinks.see((1, 7), 3, b"c").as_deref(), Some(&b"a"[..]));
        assert_eq!(hardlinks.see((1, 8), 2, b"y").as_deref(), Some(&b"x"[..]));
        assert!(hardlinks.first.is_empty(), "every link was seen");
        // A link made after the others were seen starts again as a file of its own.
        assert_eq!(hardlinks.see((1, 7), 4, b"d"), None);
    }

    /// Regression: workers opened the files the walk found by absolute path, so a folder of the
    /// source swapped for a link meanwhile made them read outside the source.
    #[test]
    fn a_file_behind_a_folder_swapped_for_a_link_is_not_read() {
        let (source, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::write(outside.path().join("secret"), b"secret").unwrap();
        fs::create_dir(source.path().join("job")).unwrap();
        fs::write(source.path().join("job/log"), b"log").unwrap();
        let walk = Walk::new(source.path(), true).unwrap();
        let folder = Arc::new(walk.root_folder().unwrap());
        let task = |name: &str| ReadTask {
            slot: 0,
            piece: 0,
            path: source.path().join(name).into(),
            offset: 0,
            length: 6,
        };
        let readable = task("job/log");
        assert!(PieceSource::open(&readable, &folder, source.path(), false).is_ok());
        // The walk saw `job/secret` in a folder; the folder is now a link to `outside`.
        fs::rename(source.path().join("job"), source.path().join("old")).unwrap();
        std::os::unix::fs::symlink(outside.path(), source.path().join("job")).unwrap();
        fs::rename(outside.path().join("secret"), outside.path().join("log")).unwrap();
        let swapped = task("job/log");
        let Err(err) = PieceSource::open(&swapped, &folder, source.path(), false) else {
            panic!("read through the link");
        };
        let TaskResult::Failed { reason, .. } = TaskResult::failed(err) else {
            unreachable!()
        };
        assert!(reason.contains("replaced by a symlink"), "{reason}");
    }
}
