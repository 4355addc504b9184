//! `nfs-objects`: incremental, deduplicated backup of a local or NFS artifact tree into a
//! content-addressed repository, restored at the same mount path.
//!
//! The repository engine (everything except `plugin`) uses nothing of the plugin SDK but its
//! retention rules, so it can be tested and benchmarked on its own; the format it writes is
//! described in FORMAT.md.

pub mod backend;
pub mod backup;
pub mod blob;
pub mod chunker;
pub mod control;
pub mod crypto;
pub mod dedup;
pub mod dictionary;
pub mod direct;
pub mod encryption;
pub mod error;
pub mod existing;
pub mod fetch;
pub mod id;
pub mod index;
pub mod keyring;
pub mod kms;
pub mod manifest;
pub mod mount;
pub mod pack;
pub mod pipeline;
pub mod plugin;
pub mod pool;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod target;
pub mod verify;
pub mod walk;

pub use plugin::plugin_descriptor;
