//! The backplan runner.
pub mod catalog;
pub mod digest;
pub mod host;
pub mod plan;
pub mod record;
pub mod runner;
