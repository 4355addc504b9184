//! Publishing objects: one PutObject up to the multipart threshold, a parallel multipart upload
//! above it.
//!
//! A pack of the default size (64 MiB, at most 80 MiB with its last blob) goes in one PutObject
//! streamed from its staged file: several workers upload their packs at once, so one connection
//! per pack already keeps the link busy, and a multipart upload costs the server a second pass
//! (it stores the parts, then joins them): against s3s-fs the full backup took 14 % less time
//! with packs in one request (BENCH.md, "Where a full backup into S3 spends its time"). Objects
//! above the threshold (`DEFAULT_MULTIPART_THRESHOLD`, 100 MiB, AWS's own guidance for when to
//! switch; packs of a larger configured `pack_size`) are cut into `PART_SIZE` parts read
//! straight from the staged file (never held in memory), `PARALLEL_PARTS` at a time, so a
//! failure resends one part, not the object. The object appears only when
//! CompleteMultipartUpload succeeds; a failed upload is aborted so no parts linger (a lifecycle
//! rule for incomplete uploads covers a crash). Every part carries a CRC32 that S3 checks
//! before acknowledging it.

use std::path::Path;
use std::sync::Arc;

use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use tokio::task::JoinSet;

use super::Inner;
use super::errors::classify;
use super::lock;
use crate::error::{Error, IoContext, Result};

/// Objects up to this size go in one PutObject unless the plan says otherwise.
pub(super) const DEFAULT_MULTIPART_THRESHOLD: u64 = 100 << 20;
/// Size of each part of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: u64 = 8 << 20;
/// Parts of one object in flight at once.
const PARALLEL_PARTS: usize = 4;

/// Publishes `data` as object `name`.
pub(super) async fn put_bytes(inner: &Inner, name: &str, data: Vec<u8>) -> Result<()> {
    put_object(inner, name, ByteStream::from(data)).await
}

/// One PutObject, with the backend's Object Lock retention if it has one.
async fn put_object(inner: &Inner, name: &str, body: ByteStream) -> Result<()> {
    let retention = lock::for_write(inner);
    inner
        .client
        .put_object()
        .bucket(inner.bucket())
        .key(inner.key(name))
        .body(body)
        .set_object_lock_mode(retention.as_ref().map(|r| r.0.clone()))
        .set_object_lock_retain_until_date(retention.as_ref().map(|r| r.1))
        .send()
        .await
        .map_err(|err| classify(inner.bucket(), name, "PutObject", err))?;
    if let Some((_, _, until)) = retention {
        lock::remember(inner, name, until);
    }
    Ok(())
}

/// Publishes a server-side copy of object `from` as `to`, with the backend's Object Lock
/// retention if it has one: no byte crosses the network.
pub(super) async fn copy_object(inner: &Inner, from: &str, to: &str) -> Result<()> {
    let retention = lock::for_write(inner);
    inner
        .client
        .copy_object()
        .bucket(inner.bucket())
        .key(inner.key(to))
        .copy_source(copy_source(inner.bucket(), &inner.key(from)))
        .set_object_lock_mode(retention.as_ref().map(|r| r.0.clone()))
        .set_object_lock_retain_until_date(retention.as_ref().map(|r| r.1))
        .send()
        .await
        .map_err(|err| classify(inner.bucket(), from, "CopyObject", err))?;
    if let Some((_, _, until)) = retention {
        lock::remember(inner, to, until);
    }
    Ok(())
}

/// CopyObject's `x-amz-copy-source`: `bucket/key`, URL-encoded except for the slashes.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut source = String::with_capacity(bucket.len() + key.len() + 1);
    for byte in format!("{bucket}/{key}").bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                source.push(char::from(byte));
            }
            _ => source.push_str(&format!("%{byte:02X}")),
        }
    }
    source
}

/// Publishes the local file `staged` as object `name`.
pub(super) async fn put_file(inner: &Arc<Inner>, name: &str, staged: &Path) -> Result<()> {
    let size = tokio::fs::metadata(staged).await.at(staged)?.len();
    if size <= inner.multipart_threshold {
        let body = ByteStream::from_path(staged)
            .await
            .map_err(|err| Error::Internal(format!("{}: {err}", staged.display())))?;
        return put_object(inner, name, body).await;
    }
    let retention = lock::for_write(inner);
    let created = inner
        .client
        .create_multipart_upload()
        .bucket(inner.bucket())
        .key(inner.key(name))
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .set_object_lock_mode(retention.as_ref().map(|r| r.0.clone()))
        .set_object_lock_retain_until_date(retention.as_ref().map(|r| r.1))
        .send()
        .await
        .map_err(|err| classify(inner.bucket(), name, "CreateMultipartUpload", err))?;
    let upload_id = created
        .upload_id()
        .ok_or_else(|| Error::Internal(format!("{name}: CreateMultipartUpload gave no upload id")))?
        .to_owned();
    let result = upload_parts(inner, name, staged, size, &upload_id).await;
    let completed = match result {
        Ok(parts) => inner
            .client
            .complete_multipart_upload()
            .bucket(inner.bucket())
            .key(inner.key(name))
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map(drop)
            .map_err(|err| classify(inner.bucket(), name, "CompleteMultipartUpload", err)),
        Err(err) => Err(err),
    };
    // Not remembered as locked: some S3 stand-ins drop the retention of a multipart upload, so
    // the backup's `protect` reads it back (HeadObject) and sets it if it is missing.
    if completed.is_err() {
        // Best effort: the original error is what the operator needs to see.
        let _ = inner
            .client
            .abort_multipart_upload()
            .bucket(inner.bucket())
            .key(inner.key(name))
            .upload_id(&upload_id)
            .send()
            .await;
    }
    completed
}

/// Uploads every part of `staged`, at most `PARALLEL_PARTS` at once; the parts in order.
async fn upload_parts(
    inner: &Arc<Inner>,
    name: &str,
    staged: &Path,
    size: u64,
    upload_id: &str,
) -> Result<Vec<CompletedPart>> {
    let count = size.div_ceil(PART_SIZE);
    let mut parts = Vec::with_capacity(count as usize);
    let mut running = JoinSet::new();
    for index in 0..count {
        if running.len() >= PARALLEL_PARTS {
            parts.push(next(&mut running).await?);
        }
        let offset = index * PART_SIZE;
        let length = PART_SIZE.min(size - offset);
        let (inner, name, staged, upload_id) = (
            inner.clone(),
            name.to_owned(),
            staged.to_owned(),
            upload_id.to_owned(),
        );
        running.spawn(async move {
            let number = i32::try_from(index + 1).expect("fewer than 10,000 parts");
            let body = ByteStream::read_from()
                .path(&staged)
                .offset(offset)
                .length(Length::Exact(length))
                .build()
                .await
                .map_err(|err| Error::Internal(format!("{}: {err}", staged.display())))?;
            let out = inner
                .client
                .upload_part()
                .bucket(inner.bucket())
                .key(inner.key(&name))
                .upload_id(upload_id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .body(body)
                .send()
                .await
                .map_err(|err| classify(inner.bucket(), &name, "UploadPart", err))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                .build())
        });
    }
    while !running.is_empty() {
        parts.push(next(&mut running).await?);
    }
    parts.sort_by_key(|part| part.part_number());
    Ok(parts)
}

async fn next(running: &mut JoinSet<Result<CompletedPart>>) -> Result<CompletedPart> {
    match running.join_next().await {
        Some(Ok(part)) => part,
        Some(Err(err)) => Err(Error::Internal(format!("upload task failed: {err}"))),
        None => Err(Error::Internal("no upload task left".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_source_is_url_encoded_except_for_its_slashes() {
        assert_eq!(
            copy_source("art", "backups/manifests/20261201T000000Z-ab.jsonl.zst"),
            "art/backups/manifests/20261201T000000Z-ab.jsonl.zst"
        );
        assert_eq!(
            copy_source("art", "a b/ü+%.json"),
            "art/a%20b/%C3%BC%2B%25.json"
        );
    }
}
