//! `ebs`: AMI or EBS snapshots of the CircleCI Services machine (or any EC2 instance), waited on
//! until usable, copied across regions, pruned by retention, and launched again on restore.
//!
//! The modules each do one job:
//! - [`config`]: the step's table and `-o` options, validated before any AWS call;
//! - [`client`]: EC2 clients, retries on throttling, and EC2's errors (the runtime, the
//!   configuration chain and what an error means are `backplan-aws`'s);
//! - [`instance`], [`image`], [`snapshot`]: the EC2 resources; [`address`]: the old machine's
//!   Elastic IP and private IP, which a restore can carry over;
//! - [`wait`] and [`throttle`]: polling, backoff and EC2's rate limits;
//! - [`retention`]: what prune deletes in a region: the SDK's retention rules, sparing the newest
//!   verified backup (pure);
//! - [`backup`], [`verify`], [`restore`], [`prune`], [`discover`], [`check`], [`permissions`]:
//!   the actions;
//! - [`probe`]: DryRun permission probes, for `check` and a restore's preflight;
//! - [`plugin`]: the SDK trait, mapping actions onto the above.
//!
//! Everything the plugin makes is tagged `backplan:plan`, `backplan:step` and `backplan:run`
//! ([`tags`]): that is how a retried step finds its own work and how prune stays within it.
//! Backups are also tagged with the machine's facts ([`facts`]), so that `discover` can give a
//! lost catalog back the records they returned.

mod address;
mod backup;
mod check;
mod client;
mod config;
mod discover;
mod facts;
mod image;
mod instance;
mod permissions;
mod plugin;
mod probe;
mod prune;
mod record;
mod restore;
mod retention;
mod snapshot;
mod tags;
mod throttle;
mod verify;
mod wait;

backplan_plugin_sdk::declare_plugin!(plugin::Ebs);
