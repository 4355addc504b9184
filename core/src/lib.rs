//! The backplan runner.
pub mod digest;
pub mod plan;
