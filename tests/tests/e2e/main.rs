//! End-to-end tests: one test binary, one module per area.

mod circleci_restore;
mod ebs;
mod nfs_objects;
mod plugins;
mod postgres;
mod restore;
mod runs;
mod s3_verify;
mod schemas;
mod stops;
