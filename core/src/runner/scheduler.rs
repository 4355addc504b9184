//! Which step runs next: a state machine over the steps' states, with no I/O and no clock, so
//! every scheduling rule is tested in microseconds.
//!
//! Steps are numbered in the run's order (backup or restore). A step is *ready* once every step
//! it runs after has finished and all of them succeeded; it is *skipped* once they have all
//! finished and one did not succeed (naming the first such dependency, in the order the plan
//! lists them). Ready steps start in run order, at most `limit` at once; skips take no slot.
//! Once stopped (Ctrl-C, SIGTERM, a lost lock) nothing more starts or is skipped: what never
//! started is [`Scheduler::unstarted`]. Every event is O(the step's edges), so a run of ten
//! thousand steps schedules in linear time.

use std::collections::BTreeSet;

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
    ready: BTreeSet<usize>,
    to_skip: BTreeSet<usize>,
    running: usize,
    limit: usize,
    stopped: bool,
}

impl Scheduler {
    /// A schedule of `deps.len()` steps, where `deps[i]` are the steps step `i` runs after,
    /// with at most `limit` (at least 1) running at once.
    pub fn new(deps: Vec<Vec<usize>>, limit: usize) -> Self {
        let n = deps.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, list) in deps.iter().enumerate() {
            for &d in list {
                dependents[d].push(i);
            }
        }
        let unfinished_deps: Vec<usize> = deps.iter().map(Vec::len).collect();
        let ready: BTreeSet<usize> = (0..n).filter(|&i| unfinished_deps[i] == 0).collect();
        let mut state = vec![State::Waiting; n];
        for &i in &ready {
            state[i] = State::Ready;
        }
        Scheduler {
            deps,
            dependents,
            unfinished_deps,
            state,
            ready,
            to_skip: BTreeSet::new(),
            running: 0,
            limit: limit.max(1),
            stopped: false,
        }
    }

    /// The next thing to do now, or `None` until a running step finishes.
    pub fn decide(&mut self) -> Option<Decision> {
        if self.stopped {
            return None;
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
        for &d in &self.dependents[step] {
            self.unfinished_deps[d] -= 1;
            if self.unfinished_deps[d] > 0 {
                continue;
            }
            let all_succeeded = self.deps[d]
                .iter()
                .all(|&x| self.state[x] == State::Succeeded);
            if all_succeeded {
                self.state[d] = State::Ready;
                self.ready.insert(d);
            } else {
                self.to_skip.insert(d);
            }
        }
    }

    /// Starts and skips nothing more.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// How many steps are running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// The steps that never started and were not skipped, in run order.
    pub fn unstarted(&self) -> Vec<usize> {
        (0..self.state.len())
            .filter(|&i| matches!(self.state[i], State::Waiting | State::Ready))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Skip, Start};

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
    fn a_stopped_schedule_starts_nothing_and_reports_what_never_started() {
        let mut s = Scheduler::new(vec![vec![], vec![0], vec![]], 1);
        assert_eq!(drain(&mut s), [Start(0)]);
        s.stop();
        s.finished(0, true);
        assert_eq!(drain(&mut s), []);
        assert_eq!(s.unstarted(), [1, 2]);
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
