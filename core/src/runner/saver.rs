//! When a run's record is written while the run goes on.
//!
//! Each write rewrites the whole record, so writing after every step of a plan of thousands of
//! quick steps would cost time quadratic in its size. Instead a change is written at once when
//! the last write is older than [`MIN_INTERVAL`] (or ten times what the last write took, if
//! more), and otherwise at that moment. A step that takes longer than that is therefore on disk
//! as soon as it finishes; after a crash at most the last half second of quick steps is missing
//! from the record, and those show as interrupted.

use std::time::{Duration, Instant};

use crate::catalog::{Catalog, CatalogError};
use crate::record::RunRecord;

/// The shortest time between two writes of one record.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Writes one run's record to the catalog, coalescing quick changes.
#[derive(Debug)]
pub(crate) struct RecordSaver<'c> {
    catalog: &'c Catalog,
    last: Option<Instant>,
    cost: Duration,
    dirty: bool,
}

impl<'c> RecordSaver<'c> {
    pub(crate) fn new(catalog: &'c Catalog) -> Self {
        RecordSaver {
            catalog,
            last: None,
            cost: Duration::ZERO,
            dirty: false,
        }
    }

    /// When the pending change is due.
    fn due(&self) -> Instant {
        let interval = MIN_INTERVAL.max(self.cost * 10);
        self.last.map_or_else(Instant::now, |last| last + interval)
    }

    /// The record changed: writes it now if due, else remembers to.
    pub(crate) fn changed(&mut self, record: &RunRecord) -> Result<(), CatalogError> {
        self.dirty = true;
        if Instant::now() >= self.due() {
            self.save(record)?;
        }
        Ok(())
    }

    /// Whether a change waits to be written.
    pub(crate) fn pending(&self) -> bool {
        self.dirty
    }

    /// Sleeps until the pending change is due (forever if there is none).
    pub(crate) async fn wait_due(&self) {
        if self.dirty {
            tokio::time::sleep_until(self.due().into()).await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    /// Writes the record now.
    pub(crate) fn save(&mut self, record: &RunRecord) -> Result<(), CatalogError> {
        let started = Instant::now();
        self.catalog.save(record)?;
        self.cost = started.elapsed();
        self.last = Some(Instant::now());
        self.dirty = false;
        Ok(())
    }
}
