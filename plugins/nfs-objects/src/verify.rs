//! Verify: re-read and re-hash a snapshot's data, and name every file that is damaged.
//!
//! Verification follows the manifest, not the packs, because the question an operator asks is
//! "which files could I not restore?". All files are checked, or a random fraction of them for a
//! cheaper routine check. The manifest's own digest is checked as it is streamed.

use crate::backend::Backend;
use crate::backup::Skipped;
use crate::blob::{BlobRef, Decoder};
use crate::control::{Control, Reporter};
use crate::error::{Error, Result};
use crate::fetch::fetch_each;
use crate::manifest::{Kind, ManifestReader};
use crate::pool::{Pool, Worker};
use crate::repo::Repository;
use crate::snapshot::Snapshot;

/// Pieces per job; neighbouring ones are fetched in one read.
const BATCH_PIECES: usize = 64;
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
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            fraction: 1.0,
            seed: None,
            workers: crate::backup::default_workers(),
        }
    }
}

/// What verify found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub files_checked: u64,
    pub bytes_checked: u64,
    /// Damaged files (and the manifest itself, if damaged), each named once.
    pub damaged: Vec<Skipped>,
}

/// Checks `snapshot` in `repo`.
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
    let backend = repo.backend();
    let mut rng = options
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let mut report = VerifyReport::default();
    let mut reporter = Reporter::new(control, "verify", Some(snapshot.stats.bytes));
    let workers = (0..options.workers.max(1))
        .map(|_| {
            Ok(BlobChecker {
                backend: backend.as_ref(),
                decoder: Decoder::new()?,
                fetched: Vec::new(),
            })
        })
        .collect::<Result<_>>()?;
    let manifest = ManifestReader::open(
        backend.as_ref(),
        &snapshot.manifest,
        snapshot.manifest_blake3,
    )?;

    std::thread::scope(|scope| -> Result<()> {
        let mut pool = Pool::start(scope, workers);
        let mut batch: Vec<(String, BlobRef)> = Vec::new();
        let take = |output: Result<Vec<Skipped>>, report: &mut VerifyReport| -> Result<()> {
            for damaged in output? {
                if report.damaged.last() != Some(&damaged) {
                    report.damaged.push(damaged);
                }
            }
            Ok(())
        };
        for entry in manifest {
            control.check_cancelled()?;
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    report.damaged.push(Skipped {
                        path: snapshot.manifest.clone(),
                        reason: err.to_string(),
                    });
                    break;
                }
            };
            if entry.kind != Kind::File || entry.chunks.is_empty() {
                continue;
            }
            if options.fraction < 1.0 && rng.f64() >= options.fraction {
                continue;
            }
            report.files_checked += 1;
            report.bytes_checked += entry.size;
            let path = String::from_utf8_lossy(&entry.path).into_owned();
            batch.extend(entry.chunks.into_iter().map(|blob| (path.clone(), blob)));
            if batch.len() >= BATCH_PIECES {
                pool.submit(std::mem::take(&mut batch))?;
            }
            while let Some(output) = pool.ready() {
                take(output, &mut report)?;
            }
            while pool.pending() >= IN_FLIGHT {
                if let Some(output) = pool.wait() {
                    take(output, &mut report)?;
                }
            }
            reporter.report(report.files_checked, report.bytes_checked, false);
        }
        if !batch.is_empty() {
            pool.submit(batch)?;
        }
        while let Some(output) = pool.wait() {
            take(output, &mut report)?;
        }
        pool.finish()
    })?;
    report.damaged.sort_by(|a, b| a.path.cmp(&b.path));
    report.damaged.dedup_by(|a, b| a.path == b.path);
    reporter.report(report.files_checked, report.bytes_checked, true);
    Ok(report)
}

/// A worker: fetches pieces and reports the files whose bytes do not check out.
struct BlobChecker<'a> {
    backend: &'a dyn Backend,
    decoder: Decoder,
    fetched: Vec<u8>,
}

impl Worker for BlobChecker<'_> {
    type Job = Vec<(String, BlobRef)>;
    type Output = Vec<Skipped>;

    fn run(&mut self, pieces: Vec<(String, BlobRef)>) -> Result<Vec<Skipped>> {
        let mut damaged = Vec::new();
        fetch_each(
            self.backend,
            &mut self.decoder,
            &mut self.fetched,
            pieces,
            |path, _, raw| {
                if let Err(reason) = raw {
                    damaged.push(Skipped { path, reason });
                }
            },
        );
        Ok(damaged)
    }

    fn finish(self) -> Result<()> {
        Ok(())
    }
}
