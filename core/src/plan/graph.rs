//! The step graph: dependency edges of each order, a topological order that keeps the file's
//! order where it can, cycles reported with their path, and ancestor walks.
//!
//! Nothing here stores the transitive closure: a plan of thousands of chained steps would need
//! memory quadratic in its size. Ancestors are walked on demand, and a walk stops as soon as it
//! has found what it looks for.

use std::collections::{BTreeMap, BTreeSet};

use super::location::Problems;
use super::raw::RawStep;

/// Which dependencies a run follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Order {
    /// `after`: backups, verifies and prunes.
    Backup,
    /// `restore_after` where written, else `after`: restores and drills.
    Restore,
}

impl Order {
    /// Both orders.
    pub const BOTH: [Order; 2] = [Order::Backup, Order::Restore];

    /// The plan key that states this order's dependencies.
    pub fn key(self) -> &'static str {
        match self {
            Order::Backup => "after",
            Order::Restore => "restore_after",
        }
    }

    /// `[0]` for backup, `[1]` for restore: the slot in per-order arrays.
    pub(crate) fn slot(self) -> usize {
        match self {
            Order::Backup => 0,
            Order::Restore => 1,
        }
    }

    /// The dependency list a step has in this order, as written (restore falls back to `after`),
    /// and whether the step wrote it itself.
    pub(crate) fn written(self, step: &RawStep) -> (&[toml::Spanned<String>], bool) {
        match (self, &step.restore_after) {
            (Order::Restore, Some(list)) => (list, true),
            (Order::Restore, None) => (&step.after, false),
            (Order::Backup, _) => (&step.after, true),
        }
    }
}

/// The dependency edges of one order (raw index → the raw indices it runs after), with unknown
/// ids and self-dependencies reported where they are written.
pub(crate) fn edges(
    problems: &mut Problems<'_>,
    raw: &[toml::Spanned<RawStep>],
    ids: &BTreeMap<&str, usize>,
    order: Order,
) -> Vec<Vec<usize>> {
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); raw.len()];
    for (i, step) in raw.iter().enumerate() {
        let (list, own) = order.written(step.get_ref());
        for dep in list {
            match ids.get(dep.get_ref().as_str()) {
                Some(&j) if j == i && own => {
                    problems.add(Some(dep.span()), "a step cannot run after itself");
                }
                Some(&j) if j == i => {}
                Some(&j) => edges[i].push(j),
                None if own => problems.add(
                    Some(dep.span()),
                    format!(
                        "`{}` names an unknown step `{}`",
                        order.key(),
                        dep.get_ref()
                    ),
                ),
                None => {}
            }
        }
    }
    edges
}

/// Kahn's algorithm, taking ready steps in file order. Reports a cycle with its path.
pub(crate) fn topological_order(
    problems: &mut Problems<'_>,
    raw: &[toml::Spanned<RawStep>],
    edges: &[Vec<usize>],
    order: Order,
) -> Option<Vec<usize>> {
    let n = raw.len();
    let mut waiting: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in edges.iter().enumerate() {
        for &j in deps {
            dependents[j].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut sorted = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        sorted.push(i);
        for &k in &dependents[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.insert(k);
            }
        }
    }
    if sorted.len() == n {
        return Some(sorted);
    }
    report_cycle(problems, raw, edges, &waiting, order);
    None
}

/// Walks edges among the steps that never became ready until one repeats: that is a cycle.
fn report_cycle(
    problems: &mut Problems<'_>,
    raw: &[toml::Spanned<RawStep>],
    edges: &[Vec<usize>],
    waiting: &[usize],
    order: Order,
) -> Option<()> {
    let stuck: BTreeSet<usize> = (0..raw.len()).filter(|&i| waiting[i] > 0).collect();
    let start = *stuck.first()?;
    let mut path = vec![start];
    let mut on_path: BTreeMap<usize, usize> = [(start, 0)].into();
    let mut at = start;
    loop {
        at = *edges[at].iter().find(|j| stuck.contains(j))?;
        if let Some(&pos) = on_path.get(&at) {
            let cycle: Vec<&str> = path[pos..]
                .iter()
                .chain(std::iter::once(&at))
                .map(|&i| raw[i].get_ref().id.get_ref().as_str())
                .collect();
            let first = raw[path[pos]].get_ref();
            let span = order
                .written(first)
                .0
                .first()
                .map(|a| a.span())
                .unwrap_or_else(|| first.id.span());
            let which = match order {
                Order::Backup => "",
                Order::Restore => " in restore order",
            };
            problems.add(
                Some(span),
                format!("the steps form a cycle{which}: {}", cycle.join(" → ")),
            );
            return Some(());
        }
        on_path.insert(at, path.len());
        path.push(at);
    }
}

/// Every step `from` depends on, directly or not, following `deps` (index → indices), in no
/// particular order. Stops early once every index in `wanted` is found, if `wanted` is given.
pub(crate) fn ancestors(
    deps: &[Vec<usize>],
    from: usize,
    mut wanted: Option<&mut BTreeSet<usize>>,
) -> Vec<usize> {
    let mut seen = vec![false; deps.len()];
    let mut found = Vec::new();
    let mut stack: Vec<usize> = deps[from].clone();
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        found.push(i);
        if let Some(wanted) = wanted.as_deref_mut() {
            wanted.remove(&i);
            if wanted.is_empty() {
                break;
            }
        }
        stack.extend(deps[i].iter().copied().filter(|&j| !seen[j]));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_are_walked_and_the_walk_stops_once_everything_wanted_is_found() {
        // 0 ← 1 ← 2 ← 3, and 4 alone.
        let deps = vec![vec![], vec![0], vec![1], vec![2], vec![]];
        let mut all = ancestors(&deps, 3, None);
        all.sort();
        assert_eq!(all, [0, 1, 2]);
        assert!(ancestors(&deps, 4, None).is_empty());
        let mut wanted = BTreeSet::from([2]);
        assert_eq!(ancestors(&deps, 3, Some(&mut wanted)), [2]);
        assert!(wanted.is_empty());
        let mut unreachable = BTreeSet::from([4]);
        ancestors(&deps, 3, Some(&mut unreachable));
        assert_eq!(unreachable, BTreeSet::from([4]));
    }
}
