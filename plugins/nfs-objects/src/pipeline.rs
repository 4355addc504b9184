//! The ordered worker pipeline that backup, restore and verify share.
//!
//! Each of them reads a sorted stream on one thread (the walk, a manifest), decides for each item
//! what slow work it needs (read, hash, compress, fetch, write), and hands that work to a few
//! workers on a [`Pool`]; what the workers give back is applied on the same thread, which alone
//! owns the operation's state and output. This module is that loop, written once, so the rules it
//! keeps hold for all three:
//!
//! - **Order.** Jobs are numbered as they are submitted and their outputs are applied in that
//!   order, whatever order the workers finish in: a [`Stage`] sees its outputs as if a single
//!   worker had done every job.
//! - **Bounded work in flight.** Between two items it applies every output already back, and it
//!   takes no new item while [`Stage::is_full`] says the stage holds as much as it may (its window
//!   of entries, its open files, a number of jobs): memory stays bounded whatever the stream's
//!   length. Outputs that came back early wait in a queue no longer than the jobs in flight.
//! - **Batches.** A stage may hold work back to fill a job ([`Batch`]); before the pipeline waits
//!   for an output it asks the stage to [`flush`](Stage::flush), so it never waits for a job that
//!   was not sent.
//! - **Cancellation and errors.** Cancellation is checked before every item. The first error,
//!   a worker's (a panic included, see `pool`) or the stage's, ends the run: no item is taken
//!   and no job submitted after it, and the workers stop once the jobs already queued are done.
//!
//! Per job this costs a sequence number and, for an output that comes back early, a place in the
//! queue; nothing per item.

use std::collections::VecDeque;

use crate::control::Control;
use crate::error::{Error, Result};
use crate::pool::{Pool, Worker};

/// The coordinating thread's side of a pipeline: what it makes of the stream and of the outputs.
pub trait Stage {
    /// What the stream yields.
    type Item;
    /// What the workers are given...
    type Job;
    /// ...and what they give back for each job.
    type Output;

    /// Takes the next item of the stream: submits the work it needs on `jobs`, or gathers it
    /// into a batch to submit in [`Stage::flush`].
    fn visit(&mut self, item: Self::Item, jobs: &mut Jobs<'_, Self::Job>) -> Result<()>;

    /// Applies the output of one job, in the order the jobs were submitted. It may submit more
    /// work (e.g. a file to read again); that work is waited for too before the run ends.
    fn apply(&mut self, output: Self::Output, jobs: &mut Jobs<'_, Self::Job>) -> Result<()>;

    /// Submits whatever is held back to fill a batch. Called before the pipeline waits for an
    /// output.
    fn flush(&mut self, jobs: &mut Jobs<'_, Self::Job>) -> Result<()>;

    /// Whether the stage holds as much unfinished work as it may, with `in_flight` jobs submitted
    /// and not yet applied: the pipeline then applies outputs, waiting for them, before it takes
    /// the next item.
    fn is_full(&self, in_flight: usize) -> bool;
}

/// Runs `stage` over `items` with `workers`: visits every item in order, applies every output
/// in submission order, and returns once all work is applied and every worker has finished.
pub fn run<S, W>(
    workers: Vec<W>,
    control: Control<'_>,
    items: impl IntoIterator<Item = S::Item>,
    stage: &mut S,
) -> Result<()>
where
    S: Stage,
    W: Worker<Job = S::Job, Output = S::Output>,
{
    std::thread::scope(|scope| {
        let mut pipeline = Pipeline {
            feed: Feed {
                pool: Pool::start(scope, workers.into_iter().map(Numbered).collect()),
                submitted: 0,
            },
            early: VecDeque::new(),
            applied: 0,
        };
        for item in items {
            control.check_cancelled()?;
            stage.visit(item, &mut pipeline.jobs())?;
            pipeline.apply_ready(stage)?;
            while stage.is_full(pipeline.in_flight()) && pipeline.apply_next(stage)? {}
        }
        while pipeline.apply_next(stage)? {}
        pipeline.feed.pool.finish()
    })
}

/// Where a stage submits its jobs, lent to it by the pipeline.
pub struct Jobs<'a, J> {
    feed: &'a mut dyn Submit<J>,
}

impl<J> std::fmt::Debug for Jobs<'_, J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").finish_non_exhaustive()
    }
}

impl<J> Jobs<'_, J> {
    /// Queues `job` as the next in order. Waits while the pool's queue is full (workers always
    /// make room), never for an output.
    pub fn submit(&mut self, job: J) -> Result<()> {
        self.feed.submit(job)
    }
}

/// The submitting end of a pipeline (so that a stage need not name its workers' type).
trait Submit<J> {
    fn submit(&mut self, job: J) -> Result<()>;
}

/// The pool and the numbering of the jobs given to it.
struct Feed<'scope, W: Worker + 'scope> {
    pool: Pool<'scope, Numbered<W>>,
    /// Jobs submitted so far; the next one's number.
    submitted: u64,
}

impl<'scope, W: Worker + 'scope> Submit<W::Job> for Feed<'scope, W> {
    fn submit(&mut self, job: W::Job) -> Result<()> {
        self.pool.submit((self.submitted, job))?;
        self.submitted += 1;
        Ok(())
    }
}

/// A running pipeline: the pool and the outputs waiting for their turn.
struct Pipeline<'scope, W: Worker> {
    feed: Feed<'scope, W>,
    /// Outputs back before an earlier job's, by number from `applied` (`None`: not back yet).
    early: VecDeque<Option<W::Output>>,
    /// Outputs applied so far; the number of the next one to apply.
    applied: u64,
}

impl<'scope, W: Worker + 'scope> Pipeline<'scope, W> {
    fn jobs(&mut self) -> Jobs<'_, W::Job> {
        Jobs {
            feed: &mut self.feed,
        }
    }

    fn in_flight(&self) -> usize {
        (self.feed.submitted - self.applied) as usize
    }

    /// Applies, in order, the outputs that are back, without waiting.
    fn apply_ready<S>(&mut self, stage: &mut S) -> Result<()>
    where
        S: Stage<Job = W::Job, Output = W::Output>,
    {
        while let Some(output) = self.feed.pool.ready() {
            self.arrived(output?);
        }
        self.apply_in_order(stage)
    }

    /// Submits what the stage holds back, then applies the next output in order (and those
    /// back after it), waiting for it; `false` if no job is in flight.
    fn apply_next<S>(&mut self, stage: &mut S) -> Result<bool>
    where
        S: Stage<Job = W::Job, Output = W::Output>,
    {
        stage.flush(&mut self.jobs())?;
        if self.in_flight() == 0 {
            return Ok(false);
        }
        while !matches!(self.early.front(), Some(Some(_))) {
            let output =
                self.feed.pool.wait().unwrap_or_else(|| {
                    Err(Error::Internal("a job in flight has no output".into()))
                });
            self.arrived(output?);
        }
        self.apply_in_order(stage)?;
        Ok(true)
    }

    /// Files the output of job `number` until its turn.
    fn arrived(&mut self, (number, output): (u64, W::Output)) {
        let place = (number - self.applied) as usize;
        if self.early.len() <= place {
            self.early.resize_with(place + 1, || None);
        }
        self.early[place] = Some(output);
    }

    /// Applies the outputs at the front of the queue, up to the first one not back yet.
    fn apply_in_order<S>(&mut self, stage: &mut S) -> Result<()>
    where
        S: Stage<Job = W::Job, Output = W::Output>,
    {
        while let Some(front) = self.early.front_mut() {
            let Some(output) = front.take() else {
                break;
            };
            self.early.pop_front();
            self.applied += 1;
            stage.apply(output, &mut self.jobs())?;
        }
        Ok(())
    }
}

/// A worker whose outputs carry the number of their job.
struct Numbered<W>(W);

impl<W: Worker> Worker for Numbered<W> {
    type Job = (u64, W::Job);
    type Output = (u64, W::Output);

    fn run(&mut self, (number, job): Self::Job) -> Result<Self::Output> {
        Ok((number, self.0.run(job)?))
    }

    fn finish(self) -> Result<()> {
        self.0.finish()
    }
}

/// Work items gathered into one job: many small files cost one hand-over, not one each.
#[derive(Debug)]
pub struct Batch<T> {
    items: Vec<T>,
    weight: u64,
    max_items: usize,
    max_weight: u64,
}

impl<T> Batch<T> {
    /// A batch that is full at `max_items` items or a total weight (e.g. bytes) of `max_weight`.
    pub fn new(max_items: usize, max_weight: u64) -> Self {
        Self {
            items: Vec::new(),
            weight: 0,
            max_items,
            max_weight,
        }
    }

    pub fn push(&mut self, item: T, weight: u64) {
        self.items.push(item);
        self.weight += weight;
    }

    /// Whether the batch should be sent now.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.max_items || self.weight >= self.max_weight
    }

    /// The items gathered, if any, leaving the batch empty.
    pub fn take(&mut self) -> Option<Vec<T>> {
        if self.items.is_empty() {
            return None;
        }
        self.weight = 0;
        Some(std::mem::take(&mut self.items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    /// Jobs are numbers; the output is the number, once `gate` lets the job finish.
    struct Echo<'a> {
        gate: &'a Gate,
    }

    impl Worker for Echo<'_> {
        type Job = u64;
        type Output = u64;
        fn run(&mut self, job: u64) -> Result<u64> {
            self.gate.pass(job)?;
            Ok(job)
        }
        fn finish(self) -> Result<()> {
            Ok(())
        }
    }

    /// Decides when each job may finish, and records the order they did.
    #[derive(Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
    }

    #[derive(Default)]
    struct GateState {
        /// Every job may finish once this is set.
        open: bool,
        /// An even job waits for the odd job after it to finish first.
        swap_pairs: bool,
        /// This job fails.
        failing: Option<u64>,
        finished: Vec<u64>,
    }

    impl Gate {
        fn pass(&self, job: u64) -> Result<()> {
            let mut state = self.state.lock().unwrap();
            if state.failing == Some(job) {
                return Err(Error::Invalid(format!("job {job} failed")));
            }
            loop {
                let partner_done = job % 2 == 1 || state.finished.contains(&(job + 1));
                if state.open && (!state.swap_pairs || partner_done) {
                    break;
                }
                state = self.changed.wait(state).unwrap();
            }
            state.finished.push(job);
            self.changed.notify_all();
            Ok(())
        }

        fn open(&self) {
            self.state.lock().unwrap().open = true;
            self.changed.notify_all();
        }

        fn finished(&self) -> Vec<u64> {
            self.state.lock().unwrap().finished.clone()
        }
    }

    /// Submits one job per item, or `per_batch` items per job; records what it applies.
    struct Recorder<'a> {
        gate: &'a Gate,
        batch: Batch<u64>,
        /// Items visited, jobs submitted and jobs applied so far.
        visited: usize,
        submitted: usize,
        applied: Vec<u64>,
        /// Jobs in flight when each item was visited.
        in_flight_at_visit: Vec<usize>,
        limit: usize,
        /// The gate opens once the pipeline finds the stage full, or at this item.
        open_at: usize,
        /// Applying this output submits one more job, numbered 1000 + it.
        follow_up: Option<u64>,
    }

    impl<'a> Recorder<'a> {
        fn new(gate: &'a Gate, limit: usize) -> Self {
            Self {
                gate,
                batch: Batch::new(1, u64::MAX),
                visited: 0,
                submitted: 0,
                applied: Vec::new(),
                in_flight_at_visit: Vec::new(),
                limit,
                open_at: usize::MAX,
                follow_up: None,
            }
        }
    }

    impl Stage for Recorder<'_> {
        type Item = u64;
        type Job = u64;
        type Output = u64;

        fn visit(&mut self, item: u64, jobs: &mut Jobs<'_, u64>) -> Result<()> {
            self.in_flight_at_visit
                .push(self.submitted - self.applied.len());
            self.visited += 1;
            if self.visited >= self.open_at {
                self.gate.open();
            }
            self.batch.push(item, 0);
            if self.batch.is_full() {
                self.flush(jobs)?;
            }
            Ok(())
        }

        fn apply(&mut self, output: u64, jobs: &mut Jobs<'_, u64>) -> Result<()> {
            self.applied.push(output);
            if self.follow_up == Some(output) {
                self.submitted += 1;
                jobs.submit(1000 + output)?;
            }
            Ok(())
        }

        fn flush(&mut self, jobs: &mut Jobs<'_, u64>) -> Result<()> {
            if let Some(items) = self.batch.take() {
                self.submitted += 1;
                jobs.submit(items[0])?;
            }
            Ok(())
        }

        fn is_full(&self, in_flight: usize) -> bool {
            let full = in_flight >= self.limit;
            if full {
                self.gate.open();
            }
            full
        }
    }

    fn workers(gate: &Gate, count: usize) -> Vec<Echo<'_>> {
        (0..count).map(|_| Echo { gate }).collect()
    }

    #[test]
    fn outputs_are_applied_in_submission_order_when_workers_finish_out_of_order() {
        let gate = Gate::default();
        gate.state.lock().unwrap().swap_pairs = true;
        gate.open();
        let mut stage = Recorder::new(&gate, 8);
        run(workers(&gate, 2), Control::silent(), 0..40, &mut stage).unwrap();
        let finished = gate.finished();
        assert_eq!(finished[..2], [1, 0], "the workers finished out of order");
        assert_eq!(stage.applied, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn no_item_is_taken_while_the_stage_is_full() {
        // The workers finish nothing until the stage is first found full (or the sixth item is
        // taken, which the pool's queue of four admits without waiting): a pipeline that took
        // items regardless would have five in flight.
        let gate = Gate::default();
        let mut stage = Recorder::new(&gate, 3);
        stage.open_at = 6;
        run(workers(&gate, 2), Control::silent(), 0..50, &mut stage).unwrap();
        assert_eq!(stage.applied.len(), 50);
        let most = stage.in_flight_at_visit.iter().max().copied();
        assert_eq!(most, Some(2), "{:?}", stage.in_flight_at_visit);
    }

    #[test]
    fn work_held_in_a_batch_is_sent_before_the_pipeline_waits() {
        let gate = Gate::default();
        gate.open();
        let mut stage = Recorder::new(&gate, 1);
        stage.batch = Batch::new(usize::MAX, 3);
        // Weighed 0, the items never fill the batch: only `flush` sends them.
        run(workers(&gate, 2), Control::silent(), 7..8, &mut stage).unwrap();
        assert_eq!(stage.applied, [7]);
    }

    #[test]
    fn work_submitted_while_applying_is_applied_before_the_run_ends() {
        let gate = Gate::default();
        gate.open();
        let mut stage = Recorder::new(&gate, 4);
        stage.follow_up = Some(9);
        run(workers(&gate, 2), Control::silent(), 0..10, &mut stage).unwrap();
        assert_eq!(stage.applied.last(), Some(&1009));
        assert_eq!(stage.applied.len(), 11);
    }

    #[test]
    fn a_failed_job_stops_the_run_before_another_item_is_taken() {
        let gate = Gate::default();
        gate.state.lock().unwrap().failing = Some(0);
        gate.open();
        let mut stage = Recorder::new(&gate, 1);
        let err = run(workers(&gate, 2), Control::silent(), 0..100, &mut stage).unwrap_err();
        assert!(err.to_string().contains("job 0 failed"), "{err}");
        assert_eq!(stage.visited, 1);
        assert!(stage.applied.is_empty());
    }

    #[test]
    fn a_cancelled_run_takes_no_further_item() {
        let gate = Gate::default();
        gate.open();
        let mut stage = Recorder::new(&gate, 4);
        let visited = AtomicUsize::new(0);
        let cancelled = || visited.fetch_add(1, Ordering::SeqCst) >= 5;
        let progress = |_: &crate::control::Progress| {};
        let control = Control::new(&cancelled, &progress);
        let err = run(workers(&gate, 2), control, 0..100, &mut stage).unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(stage.visited, 5);
    }

    #[test]
    fn a_batch_is_full_at_its_item_count_or_its_weight() {
        let mut batch = Batch::new(3, 10);
        assert_eq!(batch.take(), None);
        batch.push('a', 4);
        batch.push('b', 4);
        assert!(!batch.is_full());
        batch.push('c', 1);
        assert!(batch.is_full(), "3 items");
        assert_eq!(batch.take(), Some(vec!['a', 'b', 'c']));
        batch.push('d', 10);
        assert!(batch.is_full(), "weight 10");
        assert_eq!(batch.take(), Some(vec!['d']));
        assert!(!batch.is_full());
    }
}
