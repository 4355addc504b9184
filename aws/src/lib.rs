//! `backplan-aws`: what the plugins that call AWS (ebs, s3-verify, nfs-objects' S3 repository)
//! share, so that they agree.
//!
//! Before this crate each plugin loaded the SDK, found endpoints and read AWS errors its own
//! way, and they disagreed: the same "unauthorized" was a permanent error in one plugin and a
//! configuration error in another, and the lists of error codes were copies. Here is the one
//! version of each:
//! - [`runtime`]: the tokio runtime an action drives the SDK on;
//! - [`config`]: the standard AWS configuration chain with a step's region, endpoint, retries
//!   and timeouts on top, and the credential check `check` runs;
//! - [`s3`] (feature `s3`): S3 clients, path-style on a configured endpoint;
//! - [`kms`] (feature `kms`): KMS clients, data keys generated and decrypted;
//! - [`error`]: the one error policy: denied or unresolved credentials are configuration
//!   errors, throttling, 5xx and no answer are transient, the rest is permanent, and the SDK's
//!   own words go into the error's detail.
//!
//! A plugin words its own messages (it knows the bucket or the instance) and may be more
//! precise than the policy where it knows more: a bucket that the plan names and that does not
//! exist is the plan's mistake. Retrying beyond the SDK's standard retry (ebs paces EC2's rate
//! limits) stays in the plugin that needs it.

pub mod config;
pub mod error;
#[cfg(feature = "kms")]
pub mod kms;
pub mod runtime;
#[cfg(feature = "s3")]
pub mod s3;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use aws_config::SdkConfig;
pub use config::{Settings, check_credentials, load};
pub use error::{Failure, Meaning};
