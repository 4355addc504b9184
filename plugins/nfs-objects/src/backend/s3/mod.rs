//! A repository under an S3 bucket and prefix (AWS or any S3-compatible endpoint).
//!
//! Object `name` is stored at key `<prefix>/<name>`, so the layout is the one of FORMAT.md.
//! S3 makes a PutObject or CompleteMultipartUpload visible all at once and only after the data
//! is stored, which is exactly the atomic, durable `put` the engine's write order relies on: a
//! snapshot header is put only after every pack it references has been acknowledged.
//!
//! The engine is synchronous and multi-threaded, the SDK asynchronous: the backend owns a small
//! tokio runtime (made by `backplan-aws`, like every AWS plugin's) and each call blocks its
//! worker thread on one request (several workers upload several packs at once, and each large
//! pack is itself uploaded in parallel parts, see `upload`). Credentials, region and endpoint
//! come from the standard AWS chain (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, profiles,
//! instance roles); the SDK's standard retry mode retries throttling, 5xx and network errors
//! with exponential backoff and jitter.

mod errors;
mod lock;
mod reader;
mod staging;
mod upload;

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;

use super::{Backend, Leftovers, ObjectInfo, split_ranges};
use crate::error::{Error, Result};
use errors::{body_error, classify};
use staging::StagingDir;

pub use lock::{Lock, LockMode, ObjectLock, STATE_OBJECT as LOCK_STATE_OBJECT};

/// Attempts per request before an error reaches the engine (throttling, 5xx, network).
const MAX_ATTEMPTS: u32 = 6;

/// Where an `s3://bucket/prefix` repository lives and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://bucket[/prefix]`; `None` when `repository` is not an S3 address.
    pub fn parse(repository: &str) -> Option<Result<Self>> {
        let rest = repository.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(Error::Invalid(format!(
                "{repository}: no bucket (expected s3://bucket/prefix)"
            ))));
        }
        Some(Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        }))
    }
}

/// Client settings beyond the standard AWS chain (all optional).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Region of the bucket (default: the chain's, else us-east-1).
    pub region: Option<String>,
    /// An S3-compatible endpoint (default: the chain's, e.g. `AWS_ENDPOINT_URL_S3`).
    pub endpoint_url: Option<String>,
    /// Path-style addressing; default on whenever an endpoint is configured.
    pub force_path_style: Option<bool>,
    /// Object Lock: the retention every object written gets (see `lock`).
    pub object_lock: Option<ObjectLock>,
    /// Objects larger than this go up as multipart uploads (default
    /// `DEFAULT_MULTIPART_THRESHOLD`; see `upload`).
    pub multipart_threshold: Option<u64>,
}

/// A repository under an S3 prefix.
#[derive(Debug)]
pub struct S3Backend {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Runtime,
    staging: StagingDir,
}

/// What requests need: shared with streamed readers and upload tasks.
#[derive(Debug)]
struct Inner {
    client: Client,
    location: S3Location,
    object_lock: Option<ObjectLock>,
    /// Objects larger than this go up as multipart uploads.
    multipart_threshold: u64,
    /// Retain-until dates this process set or read (see `lock`).
    known: Mutex<lock::Known>,
}

impl Inner {
    fn key(&self, name: &str) -> String {
        match self.location.prefix.as_str() {
            "" => name.to_owned(),
            prefix => format!("{prefix}/{name}"),
        }
    }

    fn bucket(&self) -> &str {
        &self.location.bucket
    }

    async fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let len = usize::try_from(len)
            .map_err(|_| Error::Invalid(format!("range of {name} does not fit in memory")))?;
        let mut bytes = vec![0; len];
        self.read_range(name, offset, &mut bytes).await?;
        Ok(bytes)
    }

    /// Reads `into.len()` bytes of `name` from `offset` into `into`, chunk by chunk as the body
    /// arrives; a body of another length is a corrupt object.
    async fn read_range(&self, name: &str, offset: u64, into: &mut [u8]) -> Result<()> {
        let len = into.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let out = self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(self.key(name))
            .range(format!("bytes={offset}-{}", offset + len - 1))
            .send()
            .await
            .map_err(|err| classify(self.bucket(), name, "GetObject", err))?;
        let mut body = out.body;
        let mut filled = 0;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|err| body_error(self.bucket(), name, err))?
        {
            let Some(area) = into.get_mut(filled..filled + chunk.len()) else {
                return Err(Error::Corrupt {
                    name: name.to_owned(),
                    reason: format!("more than the {len} bytes asked for at offset {offset}"),
                });
            };
            area.copy_from_slice(&chunk);
            filled += chunk.len();
        }
        if filled as u64 != len {
            return Err(Error::Corrupt {
                name: name.to_owned(),
                reason: format!("shorter than {} bytes", offset + len),
            });
        }
        Ok(())
    }

    async fn size(&self, name: &str) -> Result<u64> {
        let out = self
            .client
            .head_object()
            .bucket(self.bucket())
            .key(self.key(name))
            .send()
            .await
            .map_err(|err| classify(self.bucket(), name, "HeadObject", err))?;
        Ok(out.content_length().unwrap_or_default().max(0) as u64)
    }
}

impl S3Backend {
    /// Connects to `location` and checks that the bucket exists and is reachable, so a wrong
    /// bucket or credential fails here with a clear error instead of in the middle of a backup.
    pub fn connect(location: S3Location, options: &S3Options) -> Result<Self> {
        let runtime = backplan_aws::runtime::multi_thread(2, "nfs-objects-s3")
            .map_err(|err| Error::Internal(err.message))?;
        let client = runtime.block_on(client(options));
        let inner = Arc::new(Inner {
            client,
            location,
            object_lock: options.object_lock,
            multipart_threshold: options
                .multipart_threshold
                .unwrap_or(upload::DEFAULT_MULTIPART_THRESHOLD),
            known: Mutex::default(),
        });
        runtime.block_on(async {
            inner
                .client
                .head_bucket()
                .bucket(inner.bucket())
                .send()
                .await
                .map(drop)
                .map_err(
                    |err| match classify(inner.bucket(), "", "HeadBucket", err) {
                        Error::MissingObject(_) => {
                            Error::Access(format!("bucket `{}` does not exist", inner.bucket()))
                        }
                        other => other,
                    },
                )
        })?;
        Ok(Self {
            inner,
            runtime,
            staging: StagingDir::create()?,
        })
    }

    /// Whether nothing at all is stored under the prefix (check: may a repository be created?).
    pub fn is_empty(&self) -> Result<bool> {
        let inner = &self.inner;
        let prefix = inner.key("");
        self.runtime.block_on(async {
            let out = inner
                .client
                .list_objects_v2()
                .bucket(inner.bucket())
                .prefix(prefix)
                .max_keys(1)
                .send()
                .await
                .map_err(|err| classify(inner.bucket(), "", "ListObjectsV2", err))?;
            Ok(out.key_count().unwrap_or_default() == 0 && out.contents().is_empty())
        })
    }
}

impl S3Backend {
    /// Refuses a bucket without Object Lock enabled (GetObjectLockConfiguration): retention
    /// cannot be set on its objects, so `object_lock` would protect nothing.
    pub fn require_object_lock(&self) -> Result<()> {
        let bucket = self.inner.bucket();
        if self.runtime.block_on(lock::bucket_enabled(&self.inner))? {
            return Ok(());
        }
        Err(Error::Invalid(format!(
            "object_lock is set but bucket `{bucket}` does not have Object Lock enabled; \
             Object Lock can only be turned on for a versioned bucket (`aws s3api \
             put-object-lock-configuration --bucket {bucket} ...`), or remove object_lock"
        )))
    }

    /// What the repository's state says of retain-until dates (empty when it is missing or
    /// unreadable: it only ever saves requests).
    fn stored_dates(&self) -> lock::Known {
        match self.get(lock::STATE_OBJECT) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => lock::Known::default(),
        }
    }
}

/// Appends a GetObject body to `into`, chunk by chunk as it arrives: one copy per chunk.
/// (`AggregatedBytes::to_vec` copied byte by byte: a quarter of the CPU of a restore from S3.)
async fn read_body(
    mut body: aws_sdk_s3::primitives::ByteStream,
    into: &mut Vec<u8>,
    bucket: &str,
    name: &str,
) -> Result<()> {
    if let Some(size) = body.size_hint().1 {
        into.reserve(usize::try_from(size).unwrap_or(0));
    }
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|err| body_error(bucket, name, err))?
    {
        into.extend_from_slice(&chunk);
    }
    Ok(())
}

/// An S3 client from the standard chain, with `options` applied on top.
async fn client(options: &S3Options) -> Client {
    let sdk = backplan_aws::load(&backplan_aws::Settings {
        region: options.region.clone(),
        fallback_region: Some("us-east-1"),
        endpoint_url: options.endpoint_url.clone(),
        max_attempts: Some(MAX_ATTEMPTS),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
    })
    .await;
    backplan_aws::s3::client(&sdk, None, options.force_path_style)
}

impl Backend for S3Backend {
    fn staging_dir(&self) -> &Path {
        self.staging.path()
    }

    /// The staging folders of killed S3 backups, under `$TMPDIR` (the objects of a killed
    /// backup in the bucket are unreferenced and go with the next prune).
    fn collect_leftovers(&self, max_age: Duration, dry_run: bool) -> Leftovers {
        staging::collect_leftovers(&std::env::temp_dir(), max_age, dry_run)
    }

    fn put_file(&self, name: &str, staged: &Path) -> Result<()> {
        let result = self
            .runtime
            .block_on(upload::put_file(&self.inner, name, staged));
        // Published or not, the staged copy has served its purpose: a failed backup restarts
        // from the source, never from staging.
        let _ = std::fs::remove_file(staged);
        result
    }

    fn put_bytes(&self, name: &str, data: &[u8]) -> Result<()> {
        self.runtime
            .block_on(upload::put_bytes(&self.inner, name, data.to_vec()))
    }

    /// A server-side CopyObject. Should the server refuse it (an object above CopyObject's
    /// 5 GiB, a server without it), the bytes are downloaded and uploaded instead.
    fn copy(&self, from: &str, to: &str) -> Result<()> {
        match self
            .runtime
            .block_on(upload::copy_object(&self.inner, from, to))
        {
            Err(Error::MissingObject(name)) => Err(Error::MissingObject(name)),
            Err(_) => super::copy_through_staging(self, from, to),
            Ok(()) => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Result<Vec<u8>> {
        let inner = &self.inner;
        self.runtime.block_on(async {
            let out = inner
                .client
                .get_object()
                .bucket(inner.bucket())
                .key(inner.key(name))
                .send()
                .await
                .map_err(|err| classify(inner.bucket(), name, "GetObject", err))?;
            let mut bytes = Vec::new();
            read_body(out.body, &mut bytes, inner.bucket(), name).await?;
            Ok(bytes)
        })
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.runtime
            .block_on(self.inner.get_range(name, offset, len))
    }

    fn read_range(&self, name: &str, offset: u64, into: &mut [u8]) -> Result<()> {
        self.runtime
            .block_on(self.inner.read_range(name, offset, into))
    }

    /// All at once: a restore or verify batch's reads are a handful of ranged GETs, each
    /// mostly waiting on the server; made one after another, half the wall time was idle. Each
    /// read fills its own part of the caller's buffer as its body arrives.
    fn read_ranges(&self, ranges: &[(String, u64, u64)], into: &mut [u8]) -> Vec<Result<()>> {
        let reads = split_ranges(ranges, into)
            .map(|((name, offset, _), into)| self.inner.read_range(name, *offset, into));
        self.runtime.block_on(futures_util::future::join_all(reads))
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        let size = self.runtime.block_on(self.inner.size(name))?;
        Ok(Box::new(reader::RangeReader::new(
            self.inner.clone(),
            self.runtime.handle().clone(),
            name,
            size,
        )))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let inner = &self.inner;
        let strip = inner.key("").len();
        let mut out = Vec::new();
        self.runtime.block_on(async {
            let mut pages = inner
                .client
                .list_objects_v2()
                .bucket(inner.bucket())
                .prefix(inner.key(prefix))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page =
                    page.map_err(|err| classify(inner.bucket(), prefix, "ListObjectsV2", err))?;
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    let modified = object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push(ObjectInfo {
                        name: key[strip..].to_owned(),
                        size: object.size().unwrap_or_default().max(0) as u64,
                        modified,
                    });
                }
            }
            Ok::<_, Error>(())
        })?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        match self.runtime.block_on(self.inner.size(name)) {
            Ok(_) => Ok(true),
            Err(Error::MissingObject(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn protect(&self, names: &[String], time: jiff::Timestamp) -> Result<usize> {
        let Some(object_lock) = self.inner.object_lock else {
            return Ok(0);
        };
        let now = jiff::Timestamp::now();
        let stored = self.stored_dates();
        let mut known = stored.clone();
        known.merge(&self.inner.known.lock().expect("lock state"));
        let look: Vec<String> = names
            .iter()
            .filter(|name| object_lock.must_look(known.get(name), time, now))
            .cloned()
            .collect();
        let (dates, extended) = self.runtime.block_on(lock::ensure_all(
            &self.inner,
            look,
            object_lock,
            object_lock.needed(time),
            object_lock.retain_until(now),
        ))?;
        for (name, until) in dates {
            known.record(&name, until);
        }
        known.forget_expired(now);
        if known != stored {
            let bytes = serde_json::to_vec(&known).expect("lock state serialises");
            self.put_bytes(lock::STATE_OBJECT, &bytes)?;
        }
        Ok(extended)
    }

    fn lock(&self, name: &str) -> Result<Lock> {
        self.runtime.block_on(lock::head(&self.inner, name))
    }

    fn delete(&self, name: &str) -> Result<()> {
        let inner = &self.inner;
        self.runtime.block_on(async {
            inner
                .client
                .delete_object()
                .bucket(inner.bucket())
                .key(inner.key(name))
                .send()
                .await
                .map(drop)
                .map_err(|err| classify(inner.bucket(), name, "DeleteObject", err))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let at = |s: &str| S3Location::parse(s).map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(at("/srv/repo"), None);
        assert_eq!(
            at("s3://b/some/prefix/"),
            Some(Ok(S3Location {
                bucket: "b".into(),
                prefix: "some/prefix".into()
            }))
        );
        assert_eq!(
            at("s3://b"),
            Some(Ok(S3Location {
                bucket: "b".into(),
                prefix: String::new()
            }))
        );
        assert!(matches!(at("s3:///x"), Some(Err(_))));
    }
}
