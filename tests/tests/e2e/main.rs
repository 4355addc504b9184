//! End-to-end tests: one test binary, one module per area.

mod catalog_s3;
mod circleci_restore;
mod ebs;
mod json;
mod machine_gone;
mod monitoring;
mod nfs_objects;
mod nfs_objects_encrypted;
mod notify;
mod object_lock;
mod plugins;
mod postgres;
mod restore;
mod roles;
mod runs;
mod s3_verify;
mod schedule;
mod schemas;
mod status;
mod stops;
