//! `services-host`: the host side of restoring a CircleCI Services machine from its image.
//!
//! CircleCI's restore guide is a list of manual steps on the new machine: stop the app, make sure
//! the hostname is right, replace the old public and private IP addresses in the Replicated
//! configuration files, remove `/opt/nomad`, start the app. At backup time this plugin records
//! the identity those steps need (hostname, addresses, which configuration files exist and their
//! checksums); at restore time it performs the steps, showing every replacement first.
//!
//! Everything happens under a configurable `root`, so tests (and a cautious operator) can work on
//! a copy of the filesystem instead of the real `/etc`; nothing below it is reached through a
//! symlink (see `rooted`).

mod config;
mod identity;
mod imds;
mod plugin;
mod rewrite;
mod rooted;

pub use plugin::plugin_descriptor;
