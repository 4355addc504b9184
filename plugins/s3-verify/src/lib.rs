//! Proves the artifact bucket is redundant and intact: posture checks, replication status,
//! sampled integrity. Filled in by the s3-verify work; an empty crate until then so the
//! workspace layout is in place.
