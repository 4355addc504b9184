//! Which step runs next: a state machine over the steps' states, with no I/O and no clock, so
//! every scheduling rule is tested in microseconds.
//!
//! Steps are numbered in the run's order (backup or restore). A step waits until every step it
//! runs after has finished; then what happens depends on its [`When`]:
//!
//! - `OnSuccess` (the default): it is *ready* if all of them succeeded, else *skipped*, naming the
//!   first that did not (in the order the plan lists them);
//! - `Always`: it is ready whatever they did (restart the app after a stop hook);
//! - `OnFailure`: it is ready if one of them did not succeed, else not needed.
//!
//! Ready steps start in run order, at most `limit` at once; skips take no slot. Once stopped
//! (Ctrl-C, SIGTERM, a lost lock) no ordinary step starts any more: each one is cancelled when
//! its turn comes (and counts as not succeeded), while `Always` and `OnFailure` steps still start
//! when their dependencies are over — a stopped app is started again even when the run is
//! cancelled, and only after what it runs after has stopped. Every event is O(the step's edges), so a run of ten thousand steps schedules in
//! linear time.

use std::collections::BTreeSet;

pub use crate::plan::When;

/// What the runner should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start this step.
    Start(usize),
    /// Record this step as not run, because this dependency of it did not succeed.
    Skip {
        /// The step not run.
        step: usize,
        /// Its dependency that did not succeed.
        because: usize,
    },
    /// Record this `OnFailure` step as not needed: every dependency succeeded.
    NotNeeded(usize),
    /// Record this step as not started: the run was stopped before its turn.
    Cancel(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Ready,
    Running,
    Succeeded,
    NotSucceeded,
}

/// The schedule of one run.
#[derive(Debug)]
pub struct Scheduler {
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    unfinished_deps: Vec<usize>,
    state: Vec<State>,
    when: Vec<When>,
    ready: BTreeSet<usize>,
    to_skip: BTreeSet<usize>,
    not_needed: BTreeSet<usize>,
    to_cancel: BTreeSet<usize>,
    running: usize,
    limit: usize,
    stopped: bool,
}

impl Scheduler {
    /// A schedule of `deps.len()` steps, where `deps[i]` are the steps step `i` runs after, all
    /// of them run on success of their dependencies, with at most `limit` (at least 1) running
    /// at once.
    pub fn new(deps: Vec<Vec<usize>>, limit: usize) -> Self {
        let when = vec![When::OnSuccess; deps.len()];
        Self::with_when(deps, when, limit)
    }

    /// As [`Scheduler::new`], with each step's own [`When`].
    pub fn with_when(deps: Vec<Vec<usize>>, when: Vec<When>, limit: usize) -> Self {
        let n = deps.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, list) in deps.iter().enumerate() {
            for &d in list {
                dependents[d].push(i);
            }
        }
        let unfinished_deps: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut scheduler = Scheduler {
            deps,
            dependents,
            unfinished_deps,
            state: vec![State::Waiting; n],
            when,
            ready: BTreeSet::new(),
            to_skip: BTreeSet::new(),
            not_needed: BTreeSet::new(),
            to_cancel: BTreeSet::new(),
            running: 0,
            limit: limit.max(1),
            stopped: false,
        };
        for i in 0..n {
            if scheduler.unfinished_deps[i] == 0 {
                scheduler.deps_over(i);
            }
        }
        scheduler
    }

    /// The next thing to do now, or `None` until a running step finishes.
    pub fn decide(&mut self) -> Option<Decision> {
        if let Some(step) = self.to_cancel.pop_first() {
            self.settle(step, false);
            return Some(Decision::Cancel(step));
        }
        if let Some(step) = self.not_needed.pop_first() {
            self.settle(step, false);
            return Some(Decision::NotNeeded(step));
        }
        if let Some(step) = self.to_skip.pop_first() {
            let because = self.deps[step]
                .iter()
                .copied()
                .find(|&d| self.state[d] == State::NotSucceeded)
                .expect("a step is skipped only for a dependency that did not succeed");
            self.settle(step, false);
            return Some(Decision::Skip { step, because });
        }
        if self.running >= self.limit {
            return None;
        }
        let step = self.ready.pop_first()?;
        self.state[step] = State::Running;
        self.running += 1;
        Some(Decision::Start(step))
    }

    /// A started step is over: it succeeded or not (failed, timed out, had nothing to do).
    pub fn finished(&mut self, step: usize, succeeded: bool) {
        debug_assert_eq!(
            self.state[step],
            State::Running,
            "step {step} was not running"
        );
        self.running -= 1;
        self.settle(step, succeeded);
    }

    fn settle(&mut self, step: usize, succeeded: bool) {
        self.state[step] = if succeeded {
            State::Succeeded
        } else {
            State::NotSucceeded
        };
        for i in 0..self.dependents[step].len() {
            let d = self.dependents[step][i];
            self.unfinished_deps[d] -= 1;
            if self.unfinished_deps[d] == 0 && self.state[d] == State::Waiting {
                self.deps_over(d);
            }
        }
    }

    /// Every dependency of waiting step `step` is over: it becomes ready, skipped or not needed.
    fn deps_over(&mut self, step: usize) {
        let all_succeeded = self.deps[step]
            .iter()
            .all(|&x| self.state[x] == State::Succeeded);
        let runs = match self.when[step] {
            When::OnSuccess => all_succeeded,
            When::Always => true,
            When::OnFailure => !all_succeeded,
        };
        if self.stopped && self.when[step] == When::OnSuccess {
            self.to_cancel.insert(step);
        } else if runs {
            self.state[step] = State::Ready;
            self.ready.insert(step);
        } else if self.when[step] == When::OnFailure {
            self.not_needed.insert(step);
        } else {
            self.to_skip.insert(step);
        }
    }

    /// Starts no ordinary step any more: each is cancelled when its dependencies are over
    /// ([`Decision::Cancel`]), so that `Always` and `OnFailure` steps after them still run, in
    /// order.
    pub fn stop(&mut self) {
        self.stopped = true;
        let due: Vec<usize> = self
            .ready
            .iter()
            .copied()
            .filter(|&i| self.when[i] == When::OnSuccess)
            .chain(std::mem::take(&mut self.to_skip))
            .collect();
        for i in due {
            self.ready.remove(&i);
            self.to_cancel.insert(i);
        }
    }

    /// Whether the schedule was stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// How many steps are running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// The steps that never started and were not skipped (only after a stop: `Always` steps
    /// whose dependencies never ended), in run order.
    pub fn unstarted(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| matches!(self.state[i], State::Waiting | State::Ready))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Cancel, NotNeeded, Skip, Start};

    fn drain(s: &mut Scheduler) -> Vec<Decision> {
        std::iter::from_fn(|| s.decide()).collect()
    }

    #[test]
    fn independent_steps_start_in_order_up_to_the_limit() {
        let mut s = Scheduler::new(vec![vec![], vec![], vec![]], 2);
        assert_eq!(drain(&mut s), [Start(0), Start(1)]);
        s.finished(1, true);
        assert_eq!(drain(&mut s), [Start(2)]);
        assert_eq!(s.running(), 2);
    }

    #[test]
    fn a_step_starts_only_after_all_its_dependencies_succeeded() {
        // 2 runs after 0 and 1.
        let mut s = Scheduler::new(vec![vec![], vec![], vec![0, 1]], 4);
        assert_eq!(drain(&mut s), [Start(0), Start(1)]);
        s.finished(0, true);
        assert_eq!(drain(&mut s), []);
        s.finished(1, true);
        assert_eq!(drain(&mut s), [Start(2)]);
    }

    #[test]
    fn a_failure_skips_its_dependents_transitively_but_not_independent_branches() {
        // 0 → 1 → 2, and 3 alone.
        let mut s = Scheduler::new(vec![vec![], vec![0], vec![1], vec![]], 4);
        assert_eq!(drain(&mut s), [Start(0), Start(3)]);
        s.finished(0, false);
        assert_eq!(
            drain(&mut s),
            [
                Skip {
                    step: 1,
                    because: 0
                },
                Skip {
                    step: 2,
                    because: 1
                }
            ]
        );
        s.finished(3, true);
        assert_eq!(drain(&mut s), []);
        assert!(s.unstarted().is_empty());
    }

    #[test]
    fn a_skip_waits_until_every_dependency_finished_and_names_the_first_that_failed() {
        // 2 runs after 0 and 1; 1 fails first, 0 is still running.
        let mut s = Scheduler::new(vec![vec![], vec![], vec![0, 1]], 4);
        drain(&mut s);
        s.finished(1, false);
        assert_eq!(drain(&mut s), []);
        s.finished(0, false);
        assert_eq!(
            drain(&mut s),
            [Skip {
                step: 2,
                because: 0
            }]
        );
    }

    #[test]
    fn a_stopped_schedule_cancels_what_never_started_and_starts_nothing_more() {
        let mut s = Scheduler::new(vec![vec![], vec![0], vec![]], 1);
        assert_eq!(drain(&mut s), [Start(0)]);
        s.stop();
        assert_eq!(drain(&mut s), [Cancel(2)]);
        s.finished(0, true);
        assert_eq!(drain(&mut s), [Cancel(1)]);
        assert!(s.unstarted().is_empty());
    }

    #[test]
    fn an_always_step_runs_after_a_failure_and_an_on_failure_step_only_then() {
        // 0 fails; 1 (always) and 2 (on failure) run after it; 3 runs after 1 on success.
        // 4 succeeds; 5 (on failure, after 4) is not needed.
        let deps = vec![vec![], vec![0], vec![0], vec![1], vec![], vec![4]];
        let when = vec![
            When::OnSuccess,
            When::Always,
            When::OnFailure,
            When::OnSuccess,
            When::OnSuccess,
            When::OnFailure,
        ];
        let mut s = Scheduler::with_when(deps, when, 8);
        assert_eq!(drain(&mut s), [Start(0), Start(4)]);
        s.finished(4, true);
        assert_eq!(drain(&mut s), [NotNeeded(5)]);
        s.finished(0, false);
        assert_eq!(drain(&mut s), [Start(1), Start(2)]);
        s.finished(1, true);
        s.finished(2, true);
        assert_eq!(drain(&mut s), [Start(3)]);
    }

    #[test]
    fn an_always_step_still_runs_when_the_run_is_stopped() {
        // stop-app → ami → start-app (always): a Ctrl-C during stop-app cancels the AMI, and
        // the app is started again all the same.
        let deps = vec![vec![], vec![0], vec![1]];
        let when = vec![When::OnSuccess, When::OnSuccess, When::Always];
        let mut s = Scheduler::with_when(deps, when, 4);
        assert_eq!(drain(&mut s), [Start(0)]);
        s.stop();
        assert_eq!(
            drain(&mut s),
            [],
            "start-app waits until stop-app has stopped"
        );
        s.finished(0, false);
        assert_eq!(drain(&mut s), [Cancel(1), Start(2)]);
    }

    #[test]
    fn ten_thousand_chained_steps_schedule_in_linear_time() {
        let n = 10_000;
        let deps = (0..n)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        let mut s = Scheduler::new(deps, 4);
        for i in 0..n {
            assert_eq!(s.decide(), Some(Start(i)));
            assert_eq!(s.decide(), None);
            s.finished(i, true);
        }
    }
}
