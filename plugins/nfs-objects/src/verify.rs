//! Verify: re-read and re-hash a snapshot's data, name every file that is damaged, and check the
//! repository's indexes against its packs.
//!
//! Verification follows the manifest, not the packs, because the question an operator asks is
//! "which files could I not restore?". All files are checked, or a random fraction of them for a
//! cheaper routine check; every reference of every file, sampled or not, is also checked against
//! one listing of the packs, so a missing pack or a range beyond a pack's end names its files
//! without any read. The manifest's own digest is checked as it is streamed.
//!
//! Backups trust the indexes to deduplicate, so first every index is read (on several threads:
//! on S3 each is a GET) and checked against its pack (see `index`): an index whose pack is
//! missing, or that does not describe its pack exactly, is reported. Deduplicated blobs (the only
//! ones a backup looks up) that verify reads intact must appear, identically, in their pack's
//! index. A pack without an index is reported when this snapshot uses it (its index was lost);
//! otherwise it is only noted, since a backup killed between a pack and its index leaves one, and
//! prune removes it. Packs younger than `grace` are not judged at all: a backup may be writing
//! them.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::backend::Backend;
use crate::blob::BlobRef;
use crate::control::{Control, Reporter};
use crate::dedup;
use crate::error::{Error, Result};
use crate::fetch::Fetcher;
use crate::index::{self, Finding, Findings, PackSizes};
use crate::manifest::{Entry, Kind, ManifestReader};
use crate::pipeline::{self, Batch, Jobs, Stage};
use crate::pool::Worker;
use crate::repo::{
    IN_PROGRESS_GRACE, INDEX_PREFIX, Repository, index_object, object_stem, pack_object,
};
use crate::snapshot::Snapshot;

/// Pieces per job; neighbouring ones are fetched in one read...
const BATCH_PIECES: usize = 64;
/// ...and stored bytes per job, at most (unless one piece is larger): a large file is checked by
/// several workers at once, and no job is so long that the outputs after it, applied in order,
/// hold up the jobs in flight.
const BATCH_BYTES: u64 = 16 << 20;
/// Jobs in flight at most.
const IN_FLIGHT: usize = 16;

/// How much to check.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Share of files to check, in `(0, 1]`.
    pub fraction: f64,
    /// Seed of the random choice (to repeat a sample); random when `None`.
    pub seed: Option<u64>,
    pub workers: usize,
    /// Packs younger than this are not judged for a missing index.
    pub grace: Duration,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            fraction: 1.0,
            seed: None,
            workers: crate::backup::default_workers(),
            grace: IN_PROGRESS_GRACE,
        }
    }
}

/// What verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// Damaged files (and the manifest itself, if damaged), each named once.
    pub damaged: Vec<Damaged>,
    /// Repository objects that contradict each other: an index whose pack is missing, an index
    /// that does not describe its pack, a pack this snapshot uses without an index.
    pub inconsistent: Vec<Finding>,
    /// Packs without an index that this snapshot does not use: left by an interrupted backup,
    /// or another snapshot's pack whose index was lost.
    pub orphans: Vec<Finding>,
}

/// A file that could not be restored as the snapshot has it (or the damaged manifest), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The file's path in the snapshot, or the manifest's object name.
    pub path: String,
    pub reason: String,
}

impl VerifyReport {
    /// Whether nothing is wrong (orphans aside).
    pub fn is_sound(&self) -> bool {
        self.damaged.is_empty() && self.inconsistent.is_empty()
    }
}

/// Checks `snapshot` in `repo`, and the repository's indexes.
pub fn verify(
    repo: &Repository,
    snapshot: &Snapshot,
    options: &VerifyOptions,
    control: Control<'_>,
) -> Result<VerifyReport> {
    if !(options.fraction > 0.0 && options.fraction <= 1.0) {
        return Err(Error::Invalid(format!(
            "verify fraction {} is not in (0, 1]",
            options.fraction
        )));
    }
    let backend = repo.backend().as_ref();
    // Indexes first: each one's pack was published before it, so the packs listed next include
    // them all (a pack sealed in between shows without an index, and is young).
    let index_names: Vec<String> = backend
        .list(INDEX_PREFIX)?
        .into_iter()
        .map(|o| o.name)
        .collect();
    let packs = PackSizes::list(backend, repo.keys().blob_overhead())?;
    let tracked = dedup::min_length(repo.config().chunk_size);
    let workers = options.workers.max(1);
    let indexes = check_indexes(backend, &index_names, &packs, tracked, workers)?;
    let rng = options
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let checkers = (0..workers)
        .map(|_| {
            Ok(BlobChecker {
                fetcher: Fetcher::new(
                    backend,
                    repo.keys().clone(),
                    Arc::clone(repo.dictionaries()),
                )?,
                tracked,
                indexes: &indexes,
            })
        })
        .collect::<Result<_>>()?;
    let manifest = ManifestReader::open(backend, &snapshot.manifest, snapshot.manifest_blake3)?;
    let mut check = Check {
        manifest: &snapshot.manifest,
        fraction: options.fraction,
        rng,
        packs: &packs,
        batch: Batch::new(BATCH_PIECES, BATCH_BYTES),
        report: VerifyReport::default(),
        used: HashSet::new(),
        disagreeing: Vec::new(),
        reporter: Reporter::new(control, "verify", Some(snapshot.stats.bytes)),
    };
    pipeline::run(checkers, control, manifest, &mut check)?;
    let Check {
        mut report,
        used,
        disagreeing,
        mut reporter,
        ..
    } = check;
    report.damaged.sort_by(|a, b| a.path.cmp(&b.path));
    report.damaged.dedup_by(|a, b| a.path == b.path);
    judge(
        &mut report,
        indexes,
        &packs,
        &used,
        &disagreeing,
        options.grace,
    );
    reporter.report(report.files_checked, report.bytes_checked, true);
    Ok(report)
}

/// The coordinating thread's state: which files to check, what was found.
struct Check<'a> {
    /// The manifest's object name, reported if it is damaged.
    manifest: &'a str,
    fraction: f64,
    rng: fastrand::Rng,
    packs: &'a PackSizes,
    /// Pieces to check, sent to a worker together.
    batch: Batch<(String, BlobRef)>,
    report: VerifyReport,
    /// Packs the snapshot uses.
    used: HashSet<String>,
    /// Intact deduplicated blobs that their pack's (otherwise sound) index does not list.
    disagreeing: Vec<BlobRef>,
    reporter: Reporter<'a>,
}

impl<'a> Stage for Check<'a> {
    type Item = Result<Entry>;
    type Job = Vec<(String, BlobRef)>;
    type Output = Checked;

    fn visit(
        &mut self,
        entry: Result<Entry>,
        jobs: &mut Jobs<'_, Vec<(String, BlobRef)>>,
    ) -> Result<()> {
        let entry = match entry {
            Ok(entry) => entry,
            // The manifest ends here (it yields nothing after an error).
            Err(err) => {
                self.report.damaged.push(Damaged {
                    path: self.manifest.to_owned(),
                    reason: err.to_string(),
                });
                return Ok(());
            }
        };
        if entry.kind != Kind::File || entry.chunks.is_empty() {
            return Ok(());
        }
        let sampled = self.fraction >= 1.0 || self.rng.f64() < self.fraction;
        for chunk in &entry.chunks {
            if !self.used.contains(&chunk.pack) {
                self.used.insert(chunk.pack.clone());
            }
        }
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        if let Some(flaw) = entry.chunks.iter().find_map(|c| self.packs.flaw(c)) {
            self.report.damaged.push(Damaged { path, reason: flaw });
            return Ok(());
        }
        if !sampled {
            return Ok(());
        }
        self.report.files_checked += 1;
        self.report.bytes_checked += entry.size;
        for blob in entry.chunks {
            let length = blob.length;
            self.batch.push((path.clone(), blob), length);
            if self.batch.is_full() {
                self.flush(jobs)?;
            }
        }
        let report = &self.report;
        self.reporter
            .report(report.files_checked, report.bytes_checked, false);
        Ok(())
    }

    fn apply(
        &mut self,
        checked: Checked,
        _jobs: &mut Jobs<'_, Vec<(String, BlobRef)>>,
    ) -> Result<()> {
        for damaged in checked.damaged {
            if self.report.damaged.last() != Some(&damaged) {
                self.report.damaged.push(damaged);
            }
        }
        self.disagreeing.extend(checked.disagreeing);
        Ok(())
    }

    fn flush(&mut self, jobs: &mut Jobs<'_, Vec<(String, BlobRef)>>) -> Result<()> {
        match self.batch.take() {
            Some(pieces) => jobs.submit(pieces),
            None => Ok(()),
        }
    }

    fn is_full(&self, in_flight: usize) -> bool {
        in_flight >= IN_FLIGHT
    }
}

/// What the index checker learnt.
#[derive(Debug, Default)]
struct Indexes {
    /// Packs that have an index object, sound or not.
    listed: HashSet<String>,
    /// Packs whose index describes them exactly.
    sound: HashSet<String>,
    /// Fingerprints of the deduplicated blobs of sound indexes.
    entries: HashSet<u64>,
    findings: Vec<Finding>,
}

impl Indexes {
    /// Whether `blob` is listed exactly so by its pack's index, or that index is missing or
    /// already found at fault (so not to be compared).
    fn lists(&self, blob: &BlobRef) -> bool {
        !self.sound.contains(&blob.pack) || self.entries.contains(&fingerprint(blob))
    }
}

/// Reads every index and checks it against the listed packs.
fn check_indexes(
    backend: &dyn Backend,
    names: &[String],
    packs: &PackSizes,
    tracked: u64,
    threads: usize,
) -> Result<Indexes> {
    let findings = Findings::default();
    let mut listed = HashSet::new();
    let mut readable = Vec::new();
    for name in names {
        let Some(pack) = object_stem(name, ".json").filter(|p| index::valid_pack_name(p)) else {
            findings.add(name, "is not named after a pack");
            continue;
        };
        listed.insert(pack.to_owned());
        if packs.get(pack).is_some() {
            readable.push(name.clone());
        } else if backend.exists(name)? {
            // (Still there: not an index a concurrent prune was deleting with its pack.)
            findings.add(
                name,
                format!(
                    "lists blobs of pack {}, which is missing (snapshots using it are damaged; \
                     prune deletes this index)",
                    pack_object(pack)
                ),
            );
        }
    }
    let found = Mutex::new((HashSet::new(), HashSet::new()));
    let failure = Mutex::new(None);
    index::read_each(backend, &readable, threads, |name, entries| {
        let pack = object_stem(name, ".json").unwrap_or_default();
        let size = packs.get(pack).map_or(0, |p| p.size);
        match entries {
            Ok(entries) => match index::index_flaw(pack, &entries, size, packs.overhead()) {
                Some(flaw) => findings.add(name, flaw),
                None => {
                    let mut found = found.lock().unwrap_or_else(|p| p.into_inner());
                    found.0.insert(pack.to_owned());
                    let tracked = entries.iter().filter(|b| b.raw_length >= tracked);
                    found.1.extend(tracked.map(fingerprint));
                }
            },
            Err(Error::MissingObject(_)) => {}
            Err(Error::Corrupt { reason, .. }) => {
                findings.add(name, format!("unreadable: {reason}"))
            }
            Err(err) => {
                failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(err);
            }
        }
    });
    if let Some(err) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(err);
    }
    let (sound, entries) = found.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(Indexes {
        listed,
        sound,
        entries,
        findings: findings.into_sorted(),
    })
}

/// Adds to `report` what the indexes, the packs and the snapshot's blobs say of each other.
fn judge(
    report: &mut VerifyReport,
    indexes: Indexes,
    packs: &PackSizes,
    used: &HashSet<String>,
    disagreeing: &[BlobRef],
    grace: Duration,
) {
    report.inconsistent = indexes.findings;
    let mut named = HashSet::new();
    for blob in disagreeing {
        let index = index_object(&blob.pack);
        if named.insert(index.clone()) {
            report.inconsistent.push(Finding {
                object: index,
                problem: format!(
                    "does not list blob {} at offset {} ({} bytes) as the snapshot reads it there",
                    blob.id, blob.offset, blob.length
                ),
            });
        }
    }
    let now = SystemTime::now();
    let mut orphans: Vec<(&str, bool)> = packs
        .iter()
        .filter(|(pack, info)| {
            !indexes.listed.contains(*pack)
                && now.duration_since(info.modified).unwrap_or_default() >= grace
        })
        .map(|(pack, _)| (pack, used.contains(pack)))
        .collect();
    orphans.sort();
    for (pack, used) in orphans {
        let problem = format!("has no index ({} is missing)", index_object(pack));
        if used {
            report.inconsistent.push(Finding {
                object: pack_object(pack),
                problem: format!("{problem}; this snapshot uses it, so the index was lost"),
            });
        } else {
            report.orphans.push(Finding {
                object: pack_object(pack),
                problem: format!(
                    "{problem}; this snapshot does not use it: left by an interrupted backup \
                     (prune removes it if no snapshot uses it), or another snapshot's pack whose \
                     index was lost"
                ),
            });
        }
    }
    report.inconsistent.sort_by(|a, b| a.object.cmp(&b.object));
}

/// Identifies a blob reference exactly, in 8 bytes.
fn fingerprint(blob: &BlobRef) -> u64 {
    let mut hasher = DefaultHasher::new();
    (
        blob.id,
        &blob.pack,
        blob.offset,
        blob.length,
        blob.raw_length,
        blob.zstd,
    )
        .hash(&mut hasher);
    hasher.finish()
}

/// What a worker found in one batch.
struct Checked {
    damaged: Vec<Damaged>,
    /// Intact deduplicated blobs that their pack's (otherwise sound) index does not list.
    disagreeing: Vec<BlobRef>,
}

/// A worker: fetches pieces, reports the files whose bytes do not check out, and the intact
/// deduplicated blobs their index does not list as they are.
struct BlobChecker<'a> {
    fetcher: Fetcher<'a>,
    tracked: u64,
    indexes: &'a Indexes,
}

impl Worker for BlobChecker<'_> {
    type Job = Vec<(String, BlobRef)>;
    type Output = Checked;

    fn run(&mut self, pieces: Vec<(String, BlobRef)>) -> Result<Checked> {
        let mut checked = Checked {
            damaged: Vec::new(),
            disagreeing: Vec::new(),
        };
        let (indexes, tracked) = (self.indexes, self.tracked);
        self.fetcher
            .fetch_each(pieces, |path, blob, raw| match raw {
                Err(reason) => checked.damaged.push(Damaged { path, reason }),
                Ok(_) if blob.raw_length >= tracked && !indexes.lists(blob) => {
                    checked.disagreeing.push(blob.clone());
                }
                Ok(_) => {}
            });
        Ok(checked)
    }

    fn finish(self) -> Result<()> {
        Ok(())
    }
}
