//! Lists the bucket (or the configured prefixes) in parallel, streaming, in constant memory.
//!
//! S3 lists one prefix sequentially, 1,000 keys per call, so one listing of a big bucket is slow
//! however fast the client is. Parallelism comes from splitting the key space: a few levels of
//! delimiter listings (`/`) discover sub-prefixes (counting the objects met on the way), then
//! each sub-prefix is listed flat by its own task, at most `concurrency` at a time. Each page is
//! folded into per-task counters and samples and dropped, and a task's partial result is merged
//! as soon as it ends, so memory depends on the concurrency and sample sizes, not on the bucket.

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

/// Stop splitting once there are this many prefixes per parallel task.
const PREFIXES_PER_TASK: usize = 4;
/// Never discover deeper than this many levels below a configured prefix.
const MAX_DEPTH: usize = 3;

/// Count and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub count: u64,
    pub bytes: u64,
}

/// What the listing counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
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
pub struct Listed {
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
    prefix: String,
    delimiter: bool,
    mut part: Partial,
) -> PluginResult<(Partial, Vec<String>)> {
    let mut request = shared
        .client
        .list_objects_v2()
        .bucket(&shared.bucket)
        .prefix(&prefix);
    if delimiter {
        request = request.delimiter("/");
    }
    let mut pages = request.into_paginator().send();
    let mut below = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws::error(&shared.bucket, "ListObjectsV2", e))?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
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
                .filter_map(|p| p.prefix().map(str::to_owned)),
        );
    }
    Ok((part, below))
}

/// Runs `prefixes` through `list_prefix`, at most `concurrency` at a time, merging each result
/// as soon as it arrives; reports progress and stops on cancellation.
async fn run_level(
    ctx: &Context,
    shared: &Arc<Shared>,
    prefixes: Vec<String>,
    delimiter: bool,
    concurrency: usize,
    total: &mut Partial,
) -> PluginResult<Vec<String>> {
    let mut queue = prefixes.into_iter();
    let mut set = JoinSet::new();
    let mut below = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        while set.len() < concurrency {
            let Some(prefix) = queue.next() else { break };
            let part = Partial {
                inventory: Inventory::default(),
                reads: total.reads.fresh(),
                statuses: total.statuses.fresh(),
            };
            set.spawn(list_prefix(shared.clone(), prefix, delimiter, part));
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
pub async fn list(
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
    let mut frontier = disjoint(scopes);
    for _ in 0..MAX_DEPTH {
        if frontier.len() >= concurrency * PREFIXES_PER_TASK {
            break;
        }
        let below = run_level(ctx, &shared, frontier, true, concurrency, &mut total).await?;
        frontier = below;
        if frontier.is_empty() {
            break;
        }
    }
    let tasks = frontier.len();
    run_level(ctx, &shared, frontier, false, concurrency, &mut total).await?;
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
