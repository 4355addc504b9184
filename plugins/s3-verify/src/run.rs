//! One run of every check, from the configuration to a [`Report`].
//!
//! The order matters for what a failure says: the bucket must answer first (HeadBucket, then its
//! region so that later calls go to the right endpoint), posture next, then the listing, and the
//! closer looks at sampled objects and expected keys last, because they depend on the listing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::types::ReplicationStatus;
use backplan_plugin_sdk::{Context, ErrorKind, PluginError, PluginResult};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::aws;
use crate::backup_buckets;
use crate::config::{Config, DEFAULT_SAMPLE, DEFAULT_STATUS_SAMPLE};
use crate::expected::Expected;
use crate::findings::{Check, Findings, Tally};
use crate::listing::{self, Amount, Inventory};
use crate::posture;
use crate::sample::{self, Read, Replication, Selector, Verdict};

/// At most this many keys are named per kind of problem in the record (counts are exact).
const EXAMPLES: usize = 20;

/// What the sampled reads found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct SampleReport {
    pub read: usize,
    pub bytes: u64,
    pub verified: usize,
    /// Verified objects per algorithm (`crc32`, `sha256`, `etag-md5`...).
    pub algorithms: BTreeMap<String, usize>,
    pub mismatched: Vec<Read>,
    pub unverifiable: usize,
    pub unverifiable_examples: Vec<Read>,
    /// Listed, then deleted before it was read.
    pub gone: usize,
}

/// What the replication-status lookups found.
#[derive(Debug, Default, Serialize)]
pub(crate) struct StatusReport {
    pub sampled: usize,
    pub completed: usize,
    pub pending: usize,
    pub failed_count: usize,
    pub failed: Vec<String>,
    pub pending_long_count: usize,
    pub pending_long: Vec<String>,
}

/// Expected keys.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ExpectedReport {
    pub checked: usize,
    pub missing_count: usize,
    pub missing: Vec<String>,
}

/// The last run this one is compared with.
#[derive(Debug, Serialize)]
pub(crate) struct Previous {
    pub run_id: String,
    pub count: u64,
    pub bytes: u64,
}

/// Everything one run found: the step's record.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub bucket: String,
    pub region: String,
    pub prefixes: Vec<String>,
    pub seed: u64,
    pub objects: Inventory,
    pub low_redundancy: Amount,
    pub sample: SampleReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_status: Option<StatusReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<ExpectedReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    /// The posture of each `backup_buckets` bucket.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backup_buckets: Vec<backup_buckets::Posture>,
    pub listing_tasks: usize,
    pub tally: Tally,
    pub findings: Findings,
}

/// Runs `f` over `items`, at most `limit` at a time; results in completion order.
async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> PluginResult<Vec<R>>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = PluginResult<R>> + Send + 'static,
    R: Send + 'static,
{
    let mut items = items.into_iter();
    let mut set = JoinSet::new();
    let mut out = Vec::new();
    loop {
        while set.len() < limit {
            let Some(item) = items.next() else { break };
            set.spawn(f(item));
        }
        match set.join_next().await {
            None => return Ok(out),
            Some(joined) => out.push(joined.map_err(|e| {
                PluginError::new(ErrorKind::Internal, format!("a check task failed: {e}"))
            })??),
        }
    }
}

/// HeadBucket: the bucket exists and these credentials may use it.
pub(crate) async fn head_bucket(client: &Client, bucket: &str) -> PluginResult<()> {
    client
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws::error(bucket, "HeadBucket", e))
}

/// The runtime a run uses: S3 calls are I/O, XML parsing is CPU, so one worker per core.
pub(crate) fn runtime() -> PluginResult<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    backplan_aws::runtime::multi_thread(workers, "s3-verify")
}

/// Every check; `previous` is the record of the run to compare with (`(run_id, record)`).
pub(crate) async fn run(
    ctx: &Context,
    config: &Config,
    previous: Option<(String, serde_json::Value)>,
    now: i64,
) -> PluginResult<Report> {
    let bucket = config.bucket.as_str();
    let expected = Arc::new(Expected::load(config)?);
    let sdk = aws::load(config).await;
    let first = aws::client(&sdk, config, None);
    head_bucket(&first, bucket).await?;
    let region = posture::bucket_region(&first, bucket).await?;
    let client = if sdk.region().is_some_and(|r| r.as_ref() == region) {
        first
    } else {
        aws::client(&sdk, config, Some(&region))
    };

    ctx.info(format!(
        "s3://{bucket}: reading the bucket configuration ({region})"
    ));
    let facts = posture::gather(&client, bucket, region.clone()).await?;
    let mut findings = Findings::default();
    posture::evaluate(&facts, config, now, &mut findings);
    let mut backup_postures = Vec::with_capacity(config.backup_buckets.len());
    for location in &config.backup_buckets {
        ctx.info(format!(
            "{location}: reading the backup bucket's configuration"
        ));
        let found = backup_buckets::gather(&sdk, config, location).await;
        backup_buckets::evaluate(&found, config, &mut findings);
        backup_postures.push(found);
    }

    let seed = config
        .seed
        .unwrap_or_else(|| sample::rank(0, &ctx.request().run_id));
    let reads = Selector::new(config.sample.unwrap_or(DEFAULT_SAMPLE), seed);
    let statuses = Selector::new(config.status_sample.unwrap_or(DEFAULT_STATUS_SAMPLE), seed);
    let listed = listing::list(
        ctx,
        client.clone(),
        bucket,
        config.scopes(),
        config.concurrency,
        (reads, statuses),
        expected.clone(),
    )
    .await?;
    let inventory = listed.inventory;
    ctx.info(format!(
        "s3://{bucket}: {} objects, {} bytes listed over {} prefixes",
        inventory.count, inventory.bytes, listed.tasks
    ));

    let mut low = Amount::default();
    for (class, amount) in &inventory.classes {
        if posture::is_low_redundancy(class) {
            low.count += amount.count;
            low.bytes += amount.bytes;
            findings.push_problem(
                Check::LowRedundancy,
                config.severity(Check::LowRedundancy),
                format!("{} objects ({} bytes) are in {class}, kept in one availability zone", amount.count, amount.bytes),
                "copy them onto themselves with --storage-class STANDARD (or STANDARD_IA), and fix the writer",
            );
        }
    }
    if low.count == 0 {
        findings.pass(
            Check::LowRedundancy,
            "no object is in a single-zone storage class",
        );
    }

    let previous = previous.and_then(|(run_id, record)| {
        Some(Previous {
            run_id,
            count: record["objects"]["count"].as_u64()?,
            bytes: record["objects"]["bytes"].as_u64()?,
        })
    });
    if let Some(previous) = &previous {
        compare(previous, &inventory, config, &mut findings);
    }

    // Sampled reads, then replication status of the other sampled objects.
    let to_read = listed.reads.into_sorted();
    let read_keys: std::collections::HashSet<String> =
        to_read.iter().map(|p| p.key.clone()).collect();
    ctx.info(format!(
        "s3://{bucket}: reading {} sampled objects in full",
        to_read.len()
    ));
    let mut reads = {
        let client = client.clone();
        let bucket = bucket.to_owned();
        bounded(to_read, config.concurrency, move |picked| {
            let client = client.clone();
            let bucket = bucket.clone();
            async move { sample::read(&client, &bucket, &picked.key).await }
        })
        .await?
    };
    reads.sort_by(|a, b| a.key.cmp(&b.key));
    let sample_report = judge_reads(&reads, config, &mut findings);

    let replication_status = if facts.replication.is_some() {
        let to_head: Vec<String> = listed
            .statuses
            .into_sorted()
            .into_iter()
            .map(|p| p.key)
            .filter(|k| !read_keys.contains(k))
            .collect();
        let client2 = client.clone();
        let bucket2 = bucket.to_owned();
        let headed = bounded(to_head, config.concurrency, move |key| {
            let client = client2.clone();
            let bucket = bucket2.clone();
            async move { Ok((key.clone(), sample::status(&client, &bucket, &key).await?)) }
        })
        .await?;
        let mut all: Vec<(String, Option<Replication>)> = reads
            .iter()
            .map(|r| (r.key.clone(), r.replication.clone()))
            .chain(headed)
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Some(judge_statuses(&all, config, now, &mut findings))
    } else {
        None
    };

    let expected_report = if expected.is_empty() {
        None
    } else {
        let unseen: Vec<String> = expected.unseen().into_iter().map(str::to_owned).collect();
        let client2 = client.clone();
        let bucket2 = bucket.to_owned();
        let confirmed = bounded(unseen, config.concurrency, move |key| {
            let client = client2.clone();
            let bucket = bucket2.clone();
            async move { Ok((key.clone(), exists(&client, &bucket, &key).await?)) }
        })
        .await?;
        let mut missing: Vec<String> = confirmed
            .into_iter()
            .filter(|(_, e)| !e)
            .map(|(k, _)| k)
            .collect();
        missing.sort();
        if missing.is_empty() {
            findings.pass(
                Check::Expected,
                format!("all {} expected keys exist", expected.len()),
            );
        } else {
            findings.push_problem(
                Check::Expected,
                config.severity(Check::Expected),
                format!(
                    "{} of {} expected keys are missing: {}",
                    missing.len(),
                    expected.len(),
                    examples(&missing)
                ),
                "restore them from a replica or a noncurrent version, or correct the expected list",
            );
        }
        Some(ExpectedReport {
            checked: expected.len(),
            missing_count: missing.len(),
            missing: missing.into_iter().take(EXAMPLES).collect(),
        })
    };

    Ok(Report {
        bucket: bucket.to_owned(),
        region,
        prefixes: config.prefixes.clone(),
        seed,
        objects: inventory,
        low_redundancy: low,
        sample: sample_report,
        replication_status,
        expected: expected_report,
        previous,
        backup_buckets: backup_postures,
        listing_tasks: listed.tasks,
        tally: findings.tally(),
        findings,
    })
}

/// The first few of `keys`, for a one-line message.
fn examples(keys: &[String]) -> String {
    let shown: Vec<&str> = keys.iter().take(5).map(String::as_str).collect();
    if keys.len() > shown.len() {
        format!("{}, …", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

async fn exists(client: &Client, bucket: &str, key: &str) -> PluginResult<bool> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
        Err(e) => Err(aws::error(bucket, &format!("HeadObject {key}"), e)),
    }
}

/// A fall in count or bytes beyond `max_drop_percent` since the previous run.
pub(crate) fn compare(
    previous: &Previous,
    now: &Inventory,
    config: &Config,
    findings: &mut Findings,
) {
    let drop = |before: u64, after: u64| {
        (before > 0 && after < before).then(|| (before - after) as f64 * 100.0 / before as f64)
    };
    let mut problems = Vec::new();
    for (what, before, after) in [
        ("objects", previous.count, now.count),
        ("bytes", previous.bytes, now.bytes),
    ] {
        if let Some(percent) = drop(before, after).filter(|p| *p > config.max_drop_percent) {
            problems.push(format!(
                "{what} fell by {percent:.1}% since run {} ({before} → {after})",
                previous.run_id
            ));
        }
    }
    if problems.is_empty() {
        findings.pass(
            Check::CountDrop,
            format!(
                "{} objects, {} bytes (run {}: {}, {})",
                now.count, now.bytes, previous.run_id, previous.count, previous.bytes
            ),
        );
    }
    for problem in problems {
        findings.push_problem(
            Check::CountDrop,
            config.severity(Check::CountDrop),
            format!("{problem}, more than max_drop_percent = {}", config.max_drop_percent),
            "find out what deleted them (CloudTrail, lifecycle rules); restore from noncurrent versions or the replica",
        );
    }
}

fn judge_reads(reads: &[Read], config: &Config, findings: &mut Findings) -> SampleReport {
    let mut report = SampleReport {
        read: reads.len(),
        ..SampleReport::default()
    };
    for read in reads {
        report.bytes += read.bytes;
        match &read.verdict {
            Verdict::Verified { algorithm } => {
                report.verified += 1;
                *report.algorithms.entry(algorithm.clone()).or_default() += 1;
            }
            Verdict::Mismatch { .. } => report.mismatched.push(read.clone()),
            Verdict::Unverifiable { .. } => {
                report.unverifiable += 1;
                if report.unverifiable_examples.len() < EXAMPLES {
                    report.unverifiable_examples.push(read.clone());
                }
            }
            Verdict::Gone => report.gone += 1,
        }
    }
    if report.mismatched.is_empty() {
        findings.pass(
            Check::Checksum,
            format!(
                "{} of {} sampled objects verified against their stored checksum",
                report.verified, report.read
            ),
        );
    } else {
        let keys: Vec<String> = report.mismatched.iter().map(|r| r.key.clone()).collect();
        findings.push_problem(
            Check::Checksum,
            config.severity(Check::Checksum),
            format!(
                "{} sampled objects do not match their stored checksum: {}",
                keys.len(),
                examples(&keys)
            ),
            "restore them from a replica or a noncurrent version; re-upload from the source",
        );
    }
    if report.unverifiable > 0 {
        findings.push_problem(
            Check::Unverifiable,
            config.severity(Check::Unverifiable),
            format!(
                "{} of {} sampled objects have no checksum that can be verified (e.g. {})",
                report.unverifiable,
                report.read,
                report.unverifiable_examples.first().map_or("", |r| r.key.as_str())
            ),
            "upload with an additional checksum (--checksum-algorithm CRC32C or SHA256); full-object checksums are verifiable",
        );
    }
    report.mismatched.truncate(EXAMPLES);
    report
}

fn judge_statuses(
    statuses: &[(String, Option<Replication>)],
    config: &Config,
    now: i64,
    findings: &mut Findings,
) -> StatusReport {
    let limit = i64::try_from(config.replication.pending_hours).unwrap_or(i64::MAX / 7200) * 3600;
    let mut report = StatusReport {
        sampled: statuses.len(),
        ..StatusReport::default()
    };
    for (key, status) in statuses {
        let Some(status) = status else { continue };
        match &status.status {
            ReplicationStatus::Failed => {
                report.failed_count += 1;
                if report.failed.len() < EXAMPLES {
                    report.failed.push(key.clone());
                }
            }
            ReplicationStatus::Pending => {
                report.pending += 1;
                if status.last_modified.is_some_and(|t| now - t > limit) {
                    report.pending_long_count += 1;
                    if report.pending_long.len() < EXAMPLES {
                        report.pending_long.push(key.clone());
                    }
                }
            }
            ReplicationStatus::Completed | ReplicationStatus::Complete => report.completed += 1,
            _ => {}
        }
    }
    let severity = config.severity(Check::ReplicationStatus);
    if report.failed_count > 0 {
        findings.push_problem(
            Check::ReplicationStatus,
            severity,
            format!("{} of {} sampled objects failed to replicate: {}", report.failed_count, report.sampled, examples(&report.failed)),
            "check the replication role's permissions and the destination bucket; re-replicate with S3 Batch Replication",
        );
    }
    if report.pending_long_count > 0 {
        findings.push_problem(
            Check::ReplicationStatus,
            severity,
            format!(
                "{} of {} sampled objects are still PENDING replication after {} hours: {}",
                report.pending_long_count,
                report.sampled,
                config.replication.pending_hours,
                examples(&report.pending_long)
            ),
            "check replication metrics and the destination; enable Replication Time Control for a bound",
        );
    }
    if report.failed_count == 0 && report.pending_long_count == 0 {
        findings.pass(
            Check::ReplicationStatus,
            format!(
                "{} sampled objects: {} replicated, {} pending",
                report.sampled, report.completed, report.pending
            ),
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Status;

    fn config(json: serde_json::Value) -> Config {
        let mut base = serde_json::json!({"bucket": "b"});
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_drop_beyond_the_threshold_is_a_finding() {
        let previous = Previous {
            run_id: "r1".into(),
            count: 1000,
            bytes: 10_000,
        };
        let now = Inventory {
            count: 850,
            bytes: 9_950,
            ..Inventory::default()
        };
        let mut findings = Findings::default();
        compare(
            &previous,
            &now,
            &config(serde_json::json!({})),
            &mut findings,
        );
        assert_eq!(findings.tally().fail, 1, "{findings:?}");
        assert!(findings.0[0].message.contains("objects fell by 15.0%"));
        let mut findings = Findings::default();
        compare(
            &previous,
            &now,
            &config(serde_json::json!({"max_drop_percent": 20.0})),
            &mut findings,
        );
        assert_eq!(findings.tally().pass, 1);
        let grown = Inventory {
            count: 2000,
            bytes: 1,
            ..Inventory::default()
        };
        let mut findings = Findings::default();
        compare(
            &Previous {
                bytes: 0,
                ..previous
            },
            &grown,
            &config(serde_json::json!({})),
            &mut findings,
        );
        assert_eq!(
            findings.tally().pass,
            1,
            "growth and an empty start are fine"
        );
    }

    #[test]
    fn failed_and_long_pending_replication_are_findings() {
        let now = 1_000_000;
        let status = |s: ReplicationStatus, age_hours: i64| {
            Some(Replication {
                status: s,
                last_modified: Some(now - age_hours * 3600),
            })
        };
        let statuses = vec![
            ("a".to_owned(), status(ReplicationStatus::Completed, 1)),
            ("b".to_owned(), status(ReplicationStatus::Failed, 1)),
            ("c".to_owned(), status(ReplicationStatus::Pending, 2)),
            ("d".to_owned(), status(ReplicationStatus::Pending, 48)),
            ("e".to_owned(), None),
        ];
        let mut findings = Findings::default();
        let report = judge_statuses(
            &statuses,
            &config(serde_json::json!({})),
            now,
            &mut findings,
        );
        assert_eq!(
            (report.failed, report.pending_long),
            (vec!["b".to_owned()], vec!["d".to_owned()])
        );
        assert_eq!(report.pending, 2);
        assert!(
            findings.0.iter().all(|f| f.status == Status::Warn),
            "{findings:?}"
        );
        assert_eq!(findings.0.len(), 2);
    }
}
