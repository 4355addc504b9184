//! Lists the bucket (or the configured prefixes) in parallel, streaming, in constant memory.
//!
//! S3 lists one prefix sequentially, 1,000 keys per call, so one listing of a big bucket is slow
//! however fast the client is. Parallelism comes from splitting the key space: delimiter listings
//! (`/`) discover sub-prefixes, level by level (counting the objects met on the way), until there
//! are at least `concurrency` of them. Sub-prefixes are then grouped by their first characters
//! (`job-0000/` … `job-0999/` become `job-000` … `job-099`) into about as many groups as needed
//! to keep `concurrency` listings busy, and each group is listed flat by its own task. Grouping
//! keeps the number of requests near the number of pages: a thousand 200-key prefixes would
//! otherwise cost a thousand requests where two hundred pages suffice (and servers that scan the
//! whole bucket per request, like the local stand-ins, pay per request).
//!
//! Each page is folded into per-task counters and samples and dropped, and a task's partial
//! result is merged as soon as it ends, so memory depends on the concurrency and sample sizes, not
//! on the bucket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use backplan_plugin_sdk::{Context, PluginError, PluginResult, Progress};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::aws;
use crate::expected::Expected;
use crate::sample::Selector;

/// Never discover deeper than this many levels below a configured prefix.
const MAX_DEPTH: usize = 3;

/// Count and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Amount {
    pub count: u64,
    pub bytes: u64,
}

/// What the listing counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Inventory {
    pub count: u64,
    pub bytes: u64,
    /// Per storage class.
    pub classes: BTreeMap<String, Amount>,
}

impl Inventory {
    fn add(&mut self, class: &str, size: u64) {
        self.count += 1;
        self.bytes += size;
        match self.classes.get_mut(class) {
            Some(amount) => {
                amount.count += 1;
                amount.bytes += size;
            }
            None => {
                self.classes.insert(
                    class.to_owned(),
                    Amount {
                        count: 1,
                        bytes: size,
                    },
                );
            }
        }
    }

    fn merge(&mut self, other: Inventory) {
        self.count += other.count;
        self.bytes += other.bytes;
        for (class, amount) in other.classes {
            let mine = self.classes.entry(class).or_default();
            mine.count += amount.count;
            mine.bytes += amount.bytes;
        }
    }
}

/// One task's share of the result.
#[derive(Debug)]
struct Partial {
    inventory: Inventory,
    reads: Selector,
    statuses: Selector,
}

/// The listing's result.
#[derive(Debug)]
pub(crate) struct Listed {
    pub inventory: Inventory,
    pub reads: Selector,
    pub statuses: Selector,
    /// Prefixes listed flat in parallel (after discovery).
    pub tasks: usize,
}

/// Shared by every task.
#[derive(Debug)]
struct Shared {
    client: Client,
    bucket: String,
    expected: Arc<Expected>,
    listed: AtomicU64,
}

/// One flat listing: every key under `prefix` that has at least `min_slashes` slashes (a group of
/// sub-prefixes also matches the objects beside them, which discovery already counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    pub prefix: String,
    pub min_slashes: usize,
}

/// A sub-prefix found by discovery, and the length of the prefix it was found under (`None` for
/// a configured prefix, which is never merged with others).
type Found = (String, Option<usize>);

/// Groups sibling sub-prefixes by their first characters beyond their parent: the shortest
/// extension that gives at least half of `target` groups. Groups never reach above a parent, so a
/// group only matches keys under one listed parent.
pub(crate) fn group(found: &[Found], target: usize) -> Vec<Scope> {
    let whole = |(prefix, _): &Found| Scope {
        prefix: prefix.clone(),
        min_slashes: 0,
    };
    let longest = found
        .iter()
        .filter_map(|(p, parent)| parent.map(|l| p.len().saturating_sub(l)))
        .max()
        .unwrap_or(0);
    for extra in 1..longest {
        let mut groups: Vec<Scope> = Vec::new();
        for (prefix, parent) in found {
            let Some(parent) = parent else {
                groups.push(whole(&(prefix.clone(), None)));
                continue;
            };
            let mut cut = (parent + extra).min(prefix.len());
            while !prefix.is_char_boundary(cut) {
                cut += 1;
            }
            let head = &prefix[..cut];
            if groups.last().is_none_or(|g| g.prefix != head) {
                groups.push(Scope {
                    prefix: head.to_owned(),
                    min_slashes: prefix.matches('/').count(),
                });
            }
        }
        // Half the target is close enough: fewer, longer listings cost fewer requests, and
        // the next extension usually multiplies the count by ten or more.
        if groups.len() * 2 >= target {
            return groups;
        }
    }
    found.iter().map(whole).collect()
}

/// Removes prefixes contained in another one (they would be counted twice).
fn disjoint(mut scopes: Vec<String>) -> Vec<String> {
    scopes.sort();
    scopes.dedup();
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if !out.iter().any(|kept| scope.starts_with(kept.as_str())) {
            out.push(scope);
        }
    }
    out
}

/// Lists one prefix to the end; with `delimiter`, returns the sub-prefixes instead of descending.
async fn list_prefix(
    shared: Arc<Shared>,
    scope: Scope,
    delimiter: bool,
    mut part: Partial,
) -> PluginResult<(Partial, Vec<Found>)> {
    let mut request = shared
        .client
        .list_objects_v2()
        .bucket(&shared.bucket)
        .prefix(&scope.prefix);
    if delimiter {
        request = request.delimiter("/");
    }
    let mut pages = request.into_paginator().send();
    let mut below = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws::error(&shared.bucket, "ListObjectsV2", e))?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            if scope.min_slashes > 0 && key.matches('/').count() < scope.min_slashes {
                continue;
            }
            let size = object.size().unwrap_or(0).max(0) as u64;
            let class = object
                .storage_class()
                .map(|c| c.as_str())
                .unwrap_or("STANDARD");
            part.inventory.add(class, size);
            part.reads.offer(key, size, object.e_tag());
            part.statuses.offer(key, size, object.e_tag());
            shared.expected.mark(key);
        }
        shared
            .listed
            .fetch_add(page.contents().len() as u64, Ordering::Relaxed);
        below.extend(
            page.common_prefixes()
                .iter()
                .filter_map(|p| p.prefix().map(|p| (p.to_owned(), Some(scope.prefix.len())))),
        );
    }
    Ok((part, below))
}

/// Runs `prefixes` through `list_prefix`, at most `concurrency` at a time, merging each result
/// as soon as it arrives; reports progress and stops on cancellation.
async fn run_level(
    ctx: &Context,
    shared: &Arc<Shared>,
    scopes: Vec<Scope>,
    delimiter: bool,
    concurrency: usize,
    total: &mut Partial,
) -> PluginResult<Vec<Found>> {
    let mut queue = scopes.into_iter();
    let mut set = JoinSet::new();
    let mut below = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        while set.len() < concurrency {
            let Some(scope) = queue.next() else { break };
            let part = Partial {
                inventory: Inventory::default(),
                reads: total.reads.fresh(),
                statuses: total.statuses.fresh(),
            };
            set.spawn(list_prefix(shared.clone(), scope, delimiter, part));
        }
        if set.is_empty() {
            return Ok(below);
        }
        tokio::select! {
            joined = set.join_next() => {
                let Some(joined) = joined else { continue };
                let (part, more) = joined
                    .map_err(|e| PluginError::new(backplan_plugin_sdk::ErrorKind::Internal, format!("listing task failed: {e}")))??;
                total.inventory.merge(part.inventory);
                total.reads.merge(part.reads);
                total.statuses.merge(part.statuses);
                below.extend(more);
            }
            _ = tick.tick() => {
                if ctx.is_cancelled() {
                    set.abort_all();
                    return Err(PluginError::cancelled());
                }
                ctx.progress(Progress {
                    done: shared.listed.load(Ordering::Relaxed),
                    total: None,
                    unit: "objects".into(),
                    message: format!("listing s3://{}", shared.bucket),
                });
            }
        }
    }
}

/// Lists `scopes` of `bucket`, feeding the read and status samples and marking expected keys.
pub(crate) async fn list(
    ctx: &Context,
    client: Client,
    bucket: &str,
    scopes: Vec<String>,
    concurrency: usize,
    (reads, statuses): (Selector, Selector),
    expected: Arc<Expected>,
) -> PluginResult<Listed> {
    let shared = Arc::new(Shared {
        client,
        bucket: bucket.to_owned(),
        expected,
        listed: AtomicU64::new(0),
    });
    let mut total = Partial {
        inventory: Inventory::default(),
        reads,
        statuses,
    };
    let mut frontier: Vec<Found> = disjoint(scopes).into_iter().map(|s| (s, None)).collect();
    for _ in 0..MAX_DEPTH {
        if frontier.len() >= concurrency {
            break;
        }
        let level = frontier
            .into_iter()
            .map(|(prefix, _)| Scope {
                prefix,
                min_slashes: 0,
            })
            .collect();
        frontier = run_level(ctx, &shared, level, true, concurrency, &mut total).await?;
        // Siblings arrive per parent in key order; groups need them sorted.
        frontier.sort();
        if frontier.is_empty() {
            break;
        }
    }
    let groups = group(&frontier, concurrency);
    let tasks = groups.len();
    run_level(ctx, &shared, groups, false, concurrency, &mut total).await?;
    Ok(Listed {
        inventory: total.inventory,
        reads: total.reads,
        statuses: total.statuses,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_prefixes_are_listed_once() {
        let scopes = vec![
            "a/".into(),
            "a/b/".into(),
            "c".into(),
            "a/".into(),
            "cd/".into(),
        ];
        assert_eq!(disjoint(scopes), ["a/", "c"]);
        assert_eq!(disjoint(vec![String::new(), "x/".into()]), [""]);
    }

    fn found(parent: &str, children: &[&str]) -> Vec<Found> {
        children
            .iter()
            .map(|c| (format!("{parent}{c}"), Some(parent.len())))
            .collect()
    }

    #[test]
    fn sibling_prefixes_are_grouped_by_their_first_characters() {
        let jobs: Vec<String> = (0..1000).map(|i| format!("job-{i:04}/")).collect();
        let jobs: Vec<&str> = jobs.iter().map(String::as_str).collect();
        let groups = group(&found("", &jobs), 32);
        assert_eq!(groups.len(), 100);
        assert_eq!(
            groups[0],
            Scope {
                prefix: "job-000".into(),
                min_slashes: 1
            }
        );
        assert_eq!(groups[99].prefix, "job-099");
        // Few siblings: each stays whole; configured prefixes are never merged.
        let few = found("a/", &["x/", "y/"]);
        assert_eq!(
            group(&few, 32)
                .iter()
                .map(|g| g.prefix.as_str())
                .collect::<Vec<_>>(),
            ["a/x/", "a/y/"]
        );
        let configured = vec![("logs/".to_owned(), None), ("tmp/".to_owned(), None)];
        assert_eq!(
            group(&configured, 1)[1],
            Scope {
                prefix: "tmp/".into(),
                min_slashes: 0
            }
        );
    }

    #[test]
    fn groups_stay_under_their_parent_and_on_char_boundaries() {
        let mut all = found("a/", &["b1/", "b2/", "c/"]);
        all.extend(found("ab/", &["x/", "y/"]));
        all.extend(found("é/", &["ü1/", "ü2/"]));
        all.sort();
        let groups = group(&all, 6);
        let prefixes: Vec<&str> = groups.iter().map(|g| g.prefix.as_str()).collect();
        assert_eq!(prefixes, ["a/b", "a/c", "ab/x", "ab/y", "é/ü"]);
        assert!(groups.iter().all(|g| g.min_slashes == 2));
    }

    #[test]
    fn inventory_counts_per_class() {
        let mut a = Inventory::default();
        a.add("STANDARD", 10);
        a.add("ONEZONE_IA", 5);
        let mut b = Inventory::default();
        b.add("ONEZONE_IA", 1);
        a.merge(b);
        assert_eq!((a.count, a.bytes), (3, 16));
        assert_eq!(a.classes["ONEZONE_IA"], Amount { count: 2, bytes: 6 });
    }
}
