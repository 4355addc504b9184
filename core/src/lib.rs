//! The backplan runner: plans, the plugin host, the graph runner and the run catalog.
//!
//! - [`plan`] reads a TOML plan in two phases (raw with spans → validated) and reports every
//!   problem with file, line and column.
//! - [`host`] holds the plugins: built-ins from their static descriptors, third-party `cdylib`s
//!   loaded after ownership, permission and pin checks. All go through the SDK's C ABI.
//! - [`runner`] checks every step, then runs the graph with a concurrency limit, timeouts,
//!   retries with backoff, and clean cancellation.
//! - [`catalog`] keeps one JSON [`record::RunRecord`] per run, written atomically, and the
//!   plan's lock.
//!
//! This crate never depends on a cloud SDK: plugins that talk to AWS bring their own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use backplan_core::{catalog::Catalog, host::PluginHost, plan::Plan, record::RunKind};
//! use backplan_core::runner::{RunRequest, Runner};
//!
//! let plan = Plan::load("examples/plans/local.toml".as_ref())?;
//! let host = PluginHost::new(); // register built-ins, then host.load_for_plan(&plan)?
//! plan.check_configs(&host)?;
//! let state = backplan_core::state::state_root(None);
//! let catalog = Catalog::open(&state.join("catalog"), &plan.name)?;
//! let record = Runner::new(&plan, &host, state).run(&catalog, &RunRequest::new(RunKind::Backup)).await?;
//! println!("{:?}", record.status);
//! # Ok(()) }
//! ```

pub mod catalog;
pub mod digest;
pub mod exit;
pub mod health;
pub mod host;
pub mod iam;
pub mod notify;
pub mod plan;
pub mod rebuild;
pub mod record;
pub mod runner;
pub mod state;
