//! A small pool of worker threads with a bounded job queue.
//!
//! The threads under `pipeline`: jobs go in through one bounded queue that the workers share,
//! outputs come back on another in the order the workers finish them. On 2 cores that needs no
//! more than scoped threads and two channels; a panic in a worker comes back as an error instead
//! of leaving the coordinating thread waiting for a result that never comes.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::{Scope, ScopedJoinHandle};

use crate::error::{Error, Result};

/// The per-thread state and logic of a pool.
pub trait Worker: Send {
    type Job: Send;
    type Output: Send;
    /// Handles one job. An `Err` stops the whole operation.
    fn run(&mut self, job: Self::Job) -> Result<Self::Output>;
    /// Called once when the queue is closed (e.g. to seal a half-full pack).
    fn finish(self) -> Result<()>;
}

/// A running pool; jobs go in with [`Pool::submit`], outputs come out in completion order.
pub struct Pool<'scope, W: Worker> {
    jobs: Option<SyncSender<W::Job>>,
    outputs: Receiver<Result<W::Output>>,
    pending: usize,
    threads: Vec<ScopedJoinHandle<'scope, Result<()>>>,
}

impl<W: Worker> std::fmt::Debug for Pool<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("pending", &self.pending)
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl<'scope, W: Worker + 'scope> Pool<'scope, W> {
    /// Starts one thread per worker in `scope`.
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>, workers: Vec<W>) -> Self {
        let (jobs, job_queue) = sync_channel::<W::Job>(workers.len() * 2);
        let job_queue = Arc::new(Mutex::new(job_queue));
        let (output_sender, outputs) = channel();
        let threads = workers
            .into_iter()
            .map(|worker| {
                let job_queue = Arc::clone(&job_queue);
                let output_sender = output_sender.clone();
                scope.spawn(move || work(worker, &job_queue, &output_sender))
            })
            .collect();
        Self {
            jobs: Some(jobs),
            outputs,
            pending: 0,
            threads,
        }
    }

    /// Queues a job, waiting while the queue is full.
    pub fn submit(&mut self, job: W::Job) -> Result<()> {
        let sent = self.jobs.as_ref().map(|jobs| jobs.send(job));
        if !matches!(sent, Some(Ok(()))) {
            return Err(Error::Internal("worker pool stopped".into()));
        }
        self.pending += 1;
        Ok(())
    }

    /// Jobs submitted whose output has not been taken yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The next output, waiting for one; `None` when nothing is pending.
    pub fn wait(&mut self) -> Option<Result<W::Output>> {
        if self.pending == 0 {
            return None;
        }
        let output = self
            .outputs
            .recv()
            .unwrap_or_else(|_| Err(Error::Internal("worker threads ended early".into())));
        self.pending -= 1;
        Some(output)
    }

    /// An output if one is ready now.
    pub fn ready(&mut self) -> Option<Result<W::Output>> {
        match self.outputs.try_recv() {
            Ok(output) => {
                self.pending -= 1;
                Some(output)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) if self.pending > 0 => {
                self.pending = 0;
                Some(Err(Error::Internal("worker threads ended early".into())))
            }
            Err(TryRecvError::Disconnected) => None,
        }
    }

    /// Closes the queue and waits for every worker's `finish`. Call after all outputs are taken.
    pub fn finish(mut self) -> Result<()> {
        self.jobs = None;
        let mut first_error = None;
        for thread in std::mem::take(&mut self.threads) {
            let result = thread
                .join()
                .unwrap_or_else(|panic| Err(Error::Internal(panic_message(&*panic))));
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn work<W: Worker>(
    mut worker: W,
    jobs: &Mutex<Receiver<W::Job>>,
    outputs: &Sender<Result<W::Output>>,
) -> Result<()> {
    loop {
        let job = match jobs.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return Err(Error::Internal("job queue poisoned".into())),
        };
        let Ok(job) = job else {
            return worker.finish();
        };
        let output = catch_unwind(AssertUnwindSafe(|| worker.run(job)))
            .unwrap_or_else(|panic| Err(Error::Internal(panic_message(&*panic))));
        let failed = output.is_err();
        if outputs.send(output).is_err() || failed {
            // The operation is over: stop without sealing anything more.
            return Ok(());
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("worker panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Doubler<'a> {
        finished: &'a AtomicUsize,
    }

    impl Worker for Doubler<'_> {
        type Job = u32;
        type Output = u32;
        fn run(&mut self, job: u32) -> Result<u32> {
            assert_ne!(job, 13, "unlucky");
            Ok(job * 2)
        }
        fn finish(self) -> Result<()> {
            self.finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn every_job_yields_one_output_and_workers_finish() {
        let finished = AtomicUsize::new(0);
        let mut sum = 0;
        std::thread::scope(|scope| {
            let workers = (0..3)
                .map(|_| Doubler {
                    finished: &finished,
                })
                .collect();
            let mut pool = Pool::start(scope, workers);
            for job in 1..=10 {
                pool.submit(job).unwrap();
                while let Some(output) = pool.ready() {
                    sum += output.unwrap();
                }
            }
            while let Some(output) = pool.wait() {
                sum += output.unwrap();
            }
            pool.finish().unwrap();
        });
        assert_eq!(sum, 110);
        assert_eq!(finished.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_panicking_job_becomes_an_error() {
        let finished = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let mut pool = Pool::start(
                scope,
                vec![Doubler {
                    finished: &finished,
                }],
            );
            pool.submit(13).unwrap();
            let err = pool.wait().unwrap().unwrap_err();
            assert!(err.to_string().contains("unlucky"), "{err}");
            assert!(pool.wait().is_none());
        });
    }
}
