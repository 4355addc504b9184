//! `s3-verify`: proves the artifact bucket is really redundant and intact.
//!
//! A check that runs as a backup step (each run records its findings) and again in verify:
//! bucket posture ([`posture`]), a parallel constant-memory listing with per-storage-class counts
//! ([`listing`]), seeded samples read in full against their stored checksums and looked up for
//! their replication status ([`sample`]), keys that must exist ([`expected`]), and a comparison
//! with the last run ([`run`]). What is a warning and what fails the step is configuration
//! ([`config`], [`findings`]); [`plugin`] maps it all onto the SDK's actions.

mod aws;
mod backup_buckets;
mod config;
mod expected;
mod findings;
mod listing;
mod plugin;
mod posture;
mod run;
mod sample;

pub use plugin::plugin_descriptor;
