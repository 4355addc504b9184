//! The s3-verify plugin through the real binary against a local AWS endpoint (being written).
