//! The run catalog in S3: `catalog = "s3://BUCKET/PREFIX"` in a plan.
//!
//! ```text
//! PREFIX/PLAN/runs/RUN_ID.json   one record per run, one PutObject each time it is written
//! PREFIX/PLAN/lock               the plan's lock
//! ```
//!
//! The catalog then outlives the Services machine: a new admin machine with the plan file and
//! credentials lists the runs and restores. The lock uses S3's own conditional writes, so no
//! server of ours coordinates anything: it is created with `If-None-Match: *` (of two machines,
//! one gets 412), refreshed and taken over with `If-Match: <the ETag read>`, and released by
//! writing a "released" marker over it with `If-Match`, which the next run takes over with
//! `If-Match` in turn: nothing is ever deleted, so the credentials of the machine that backs up
//! need no `s3:DeleteObject` (a released lock reads as no lock). Opening the catalog proves the
//! server enforces conditional writes (a second conditional create of the probe object must
//! fail) and refuses one that does not, because a lock there could be held twice. Staleness compares S3's `LastModified` with this machine's clock: keep clocks
//! within minutes of each other (the expiry is ten).
//!
//! Listing follows every page (thousands of runs); records are fetched sixteen at a time. Many
//! plans may share one bucket and prefix: each has its own folder and its own lock.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use backplan_aws::Failure;
use backplan_core::catalog::CatalogStore;
use backplan_core::catalog::lock::{Held, LockStore};
use tokio::runtime::Runtime;

/// How many records are fetched at once when listing.
const FETCH_AT_ONCE: usize = 16;

/// The object the conditional-write probe creates, under the plan's folder.
const PROBE: &str = "probe/conditional-write";

/// What a released lock holds: no owner, so the next run takes it over.
const RELEASED: &[u8] = b"{\"released\": true}\n";

/// One plan's catalog in a bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    bucket: String,
    /// `PREFIX/PLAN/` (or `PLAN/` without a prefix).
    root: String,
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a command's own async code may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `runtime` from any thread, also from inside another runtime (the
/// command's), which may not block on a runtime itself.
fn block_on<T: Send>(runtime: &Runtime, future: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(future))
            .join()
            .expect("an S3 call does not panic")
    })
}

impl Inner {
    /// Runs `future` on the store's runtime.
    fn call<T: Send>(&self, future: impl Future<Output = T> + Send) -> T {
        block_on(self.runtime.as_ref().expect("not dropped"), future)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.root)
    }

    fn url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }
}

/// Why the catalog cannot be used; said at the plan's `catalog` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError(pub String);

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

/// A status code S3 answered with, if it answered.
fn status<E>(error: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    error.raw_response().map(|r| r.status().as_u16())
}

/// Whether a conditional write or delete lost: 412 Precondition Failed, 409 for two
/// conditional writes at one moment, or 404 for an If-Match on an object that is gone.
fn lost<E>(error: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    matches!(status(error), Some(404 | 409 | 412))
}

fn io_error<E>(
    what: String,
    error: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> io::Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    io::Error::other(format!("{what}: {}", Failure::of(error).words))
}

impl S3Store {
    /// Opens the catalog of `plan` in `bucket` under `prefix` to write (runs): the bucket must
    /// exist and be readable, the plan's folder must hold nothing but a catalog, and the server
    /// must enforce conditional writes (proved by writing a probe object twice).
    pub fn open(bucket: &str, prefix: &str, plan: &str) -> Result<S3Store, OpenError> {
        let store = Self::open_to_read(bucket, prefix, plan)?;
        store.check_conditional_writes()?;
        Ok(store)
    }

    /// Opens the catalog only to read it (`runs list`, `status`): the same checks but the
    /// conditional-write probe, so a read-only monitoring role suffices.
    pub fn open_to_read(bucket: &str, prefix: &str, plan: &str) -> Result<S3Store, OpenError> {
        let runtime = backplan_aws::runtime::multi_thread(2, "backplan-catalog")
            .map_err(|e| OpenError(e.message))?;
        let settings = backplan_aws::Settings {
            fallback_region: Some("us-east-1"),
            ..Default::default()
        };
        let sdk = block_on(&runtime, backplan_aws::load(&settings));
        let client = backplan_aws::s3::client(&sdk, None, None);
        let root = if prefix.is_empty() {
            format!("{plan}/")
        } else {
            format!("{prefix}/{plan}/")
        };
        let store = S3Store {
            inner: Arc::new(Inner {
                client,
                bucket: bucket.to_owned(),
                root,
                runtime: Some(runtime),
            }),
        };
        store.check_bucket()?;
        store.check_folder()?;
        Ok(store)
    }

    fn check_bucket(&self) -> Result<(), OpenError> {
        let inner = &self.inner;
        let head = inner.call(inner.client.head_bucket().bucket(&inner.bucket).send());
        match head {
            Ok(_) => Ok(()),
            Err(error) => Err(OpenError(match status(&error) {
                Some(404) => format!("the catalog bucket {} does not exist", inner.bucket),
                Some(301 | 400 | 403) => format!(
                    "the catalog bucket {} cannot be read with these credentials ({})",
                    inner.bucket,
                    Failure::of(&error).reason()
                ),
                _ => format!(
                    "the catalog bucket {} cannot be reached: {}",
                    inner.bucket,
                    Failure::of(&error).words
                ),
            })),
        }
    }

    /// The plan's folder holds only what a catalog writes: `runs/*.json`, `lock`, `probe/`.
    fn check_folder(&self) -> Result<(), OpenError> {
        let inner = &self.inner;
        let listed = inner.call(
            inner
                .client
                .list_objects_v2()
                .bucket(&inner.bucket)
                .prefix(&inner.root)
                .max_keys(1000)
                .send(),
        );
        let listed = listed.map_err(|e| {
            OpenError(format!(
                "the catalog {} cannot be listed: {}",
                inner.url(""),
                Failure::of(&e).words
            ))
        })?;
        let foreign = listed
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .find(|key| {
                let name = &key[inner.root.len().min(key.len())..];
                !(name == "lock"
                    || name.starts_with("probe/")
                    || (name.starts_with("runs/")
                        && name.ends_with(".json")
                        && !name[5..].contains('/')))
            });
        match foreign {
            Some(key) => Err(OpenError(format!(
                "s3://{}/{} holds {key}, which is not part of a backplan catalog: name another \
                 prefix",
                inner.bucket, inner.root
            ))),
            None => Ok(()),
        }
    }

    /// A second conditional create of one object must be refused; otherwise the plan's lock
    /// could be held by two machines at once. The probe object is always the same and stays,
    /// so that opening deletes nothing: the first create makes it (or finds it, 412) and the
    /// second must then be refused.
    fn check_conditional_writes(&self) -> Result<(), OpenError> {
        let inner = &self.inner;
        let probe = inner.key(PROBE);
        let put = || {
            inner
                .client
                .put_object()
                .bucket(&inner.bucket)
                .key(&probe)
                .if_none_match("*")
                .body(ByteStream::from_static(b"conditional write probe\n"))
                .send()
        };
        match inner.call(put()) {
            Ok(_) => {}
            Err(error) if lost(&error) => {}
            Err(error) => {
                return Err(OpenError(format!(
                    "the catalog {} cannot be written: {}",
                    inner.url(""),
                    Failure::of(&error).words
                )));
            }
        }
        let second = inner.call(put());
        match second {
            Err(error) if lost(&error) => Ok(()),
            Err(error) => Err(OpenError(format!(
                "the catalog {}: the conditional-write probe failed: {}",
                inner.url(""),
                Failure::of(&error).words
            ))),
            Ok(_) => Err(OpenError(format!(
                "the S3 server of {} ignores conditional writes (If-None-Match): the plan's lock \
                 there could be held twice; use a server that enforces them (AWS S3 does)",
                inner.url("")
            ))),
        }
    }
}

impl CatalogStore for S3Store {
    fn put_record(&self, run_id: &str, bytes: &[u8]) -> io::Result<()> {
        let inner = &self.inner;
        let key = inner.key(&format!("runs/{run_id}.json"));
        inner
            .call(
                inner
                    .client
                    .put_object()
                    .bucket(&inner.bucket)
                    .key(&key)
                    .content_type("application/json")
                    .body(ByteStream::from(bytes.to_vec()))
                    .send(),
            )
            .map(drop)
            .map_err(|e| io_error(format!("PutObject {key}"), &e))
    }

    fn get_record(&self, run_id: &str) -> io::Result<Option<Vec<u8>>> {
        self.get_records(&[run_id.to_owned()])
            .pop()
            .unwrap_or(Ok(None))
    }

    fn get_records(&self, run_ids: &[String]) -> Vec<io::Result<Option<Vec<u8>>>> {
        let inner = &self.inner;
        inner.call(async {
            let limit = Arc::new(tokio::sync::Semaphore::new(FETCH_AT_ONCE));
            let mut tasks = tokio::task::JoinSet::new();
            for (i, id) in run_ids.iter().enumerate() {
                let (client, bucket) = (inner.client.clone(), inner.bucket.clone());
                let key = inner.key(&format!("runs/{id}.json"));
                let limit = limit.clone();
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    (
                        i,
                        get(&client, &bucket, &key)
                            .await
                            .map(|o| o.map(|(bytes, ..)| bytes)),
                    )
                });
            }
            let mut results: Vec<io::Result<Option<Vec<u8>>>> =
                run_ids.iter().map(|_| Ok(None)).collect();
            while let Some(joined) = tasks.join_next().await {
                if let Ok((i, result)) = joined {
                    results[i] = result;
                }
            }
            results
        })
    }

    fn record_ids(&self) -> io::Result<Vec<String>> {
        let inner = &self.inner;
        let prefix = inner.key("runs/");
        inner.call(async {
            let mut ids = Vec::new();
            let mut pages = inner
                .client
                .list_objects_v2()
                .bucket(&inner.bucket)
                .prefix(&prefix)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| io_error(format!("ListObjectsV2 {prefix}"), &e))?;
                ids.extend(page.contents().iter().filter_map(|o| {
                    let name = o.key()?.strip_prefix(&prefix)?;
                    let id = name.strip_suffix(".json")?;
                    (!id.contains('/') && !id.starts_with('.')).then(|| id.to_owned())
                }));
            }
            Ok(ids)
        })
    }

    fn lock(&self) -> Box<dyn LockStore> {
        Box::new(S3Lock {
            inner: self.inner.clone(),
        })
    }

    fn location(&self, run_id: Option<&str>) -> String {
        match run_id {
            Some(id) => self.inner.url(&format!("runs/{id}.json")),
            None => self.inner.url(""),
        }
    }
}

/// An object's bytes, last write time and ETag; `None` if there is none.
async fn get(
    client: &Client,
    bucket: &str,
    key: &str,
) -> io::Result<Option<(Vec<u8>, SystemTime, String)>> {
    let response = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(response) => response,
        Err(error) if status(&error) == Some(404) => return Ok(None),
        Err(error) => return Err(io_error(format!("GetObject {key}"), &error)),
    };
    let written = response
        .last_modified()
        .and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or_else(SystemTime::now);
    let tag = response.e_tag().unwrap_or_default().to_owned();
    let bytes = response
        .body
        .collect()
        .await
        .map_err(|e| io::Error::other(format!("GetObject {key}: {e}")))?
        .into_bytes()
        .to_vec();
    Ok(Some((bytes, written, tag)))
}

/// The plan's lock object. It holds an owner while held and [`RELEASED`] once released; the
/// core's rules see the latter as no lock at all.
#[derive(Debug)]
struct S3Lock {
    inner: Arc<Inner>,
}

impl S3Lock {
    /// Writes `bytes` with one condition: `If-None-Match: *` (`expected` None) or `If-Match`.
    fn put(&self, bytes: &[u8], expected: Option<&Held>) -> io::Result<Option<Held>> {
        let inner = &self.inner;
        let key = inner.key("lock");
        let mut request = inner
            .client
            .put_object()
            .bucket(&inner.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(bytes.to_vec()));
        request = match expected {
            None => request.if_none_match("*"),
            Some(held) => request.if_match(&held.tag),
        };
        match inner.call(request.send()) {
            Ok(response) => Ok(Some(Held {
                bytes: bytes.to_vec(),
                written: SystemTime::now(),
                tag: response.e_tag().unwrap_or_default().to_owned(),
            })),
            Err(error) if lost(&error) => Ok(None),
            Err(error) => Err(io_error(format!("PutObject {key}"), &error)),
        }
    }

    /// The lock object as it is, released marker included.
    fn read_object(&self) -> io::Result<Option<Held>> {
        let inner = &self.inner;
        let key = inner.key("lock");
        Ok(inner
            .call(get(&inner.client, &inner.bucket, &key))?
            .map(|(bytes, written, tag)| Held {
                bytes,
                written,
                tag,
            }))
    }
}

/// Whether a lock object's bytes are the released marker.
fn is_released(bytes: &[u8]) -> bool {
    bytes == RELEASED
}

impl LockStore for S3Lock {
    /// Creates the lock object, or takes over a released one with `If-Match` on the marker read:
    /// of two takers, one wins and the other sees its lock.
    fn create(&self, bytes: &[u8]) -> io::Result<Option<Held>> {
        if let Some(held) = self.put(bytes, None)? {
            return Ok(Some(held));
        }
        match self.read_object()? {
            Some(current) if is_released(&current.bytes) => self.put(bytes, Some(&current)),
            // Held, or gone in between (by hand): the core reads again and retries.
            _ => Ok(None),
        }
    }

    fn read(&self) -> io::Result<Option<Held>> {
        Ok(self.read_object()?.filter(|held| !is_released(&held.bytes)))
    }

    fn replace(&self, expected: &Held, bytes: &[u8]) -> io::Result<Option<Held>> {
        self.put(bytes, Some(expected))
    }

    /// Releases by writing the marker over the lock if it is still `expected`: a conditional
    /// PutObject, not a delete.
    fn remove(&self, expected: &Held) -> io::Result<bool> {
        Ok(self.put(RELEASED, Some(expected))?.is_some())
    }

    fn describe(&self) -> String {
        self.inner.url("lock")
    }
}
