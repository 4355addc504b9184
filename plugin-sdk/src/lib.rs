//! The SDK a backplan plugin is written against.
//!
//! A plugin is a type implementing [`Plugin`]: it describes its configuration with a JSON Schema
//! (derived with `schemars`), and implements some of the actions `check`, `backup`, `verify`,
//! `restore` and `prune`. [`declare_plugin!`] turns it into a [`abi::PluginDescriptor`]: built-in
//! plugins are linked into the `backplan` binary through that descriptor, and with the crate's
//! `dynamic` feature the same macro also exports the C entry symbol, so the plugin can be built as
//! a `cdylib` and loaded from a plan. Either way the host talks to it through the same stable C
//! ABI ([`abi`]), with JSON payloads, so a plugin built with another compiler still works.
//!
//! ```
//! use backplan_plugin_sdk::{declare_plugin, Action, Context, Plugin, PluginResult, StepOutput};
//! use schemars::JsonSchema;
//! use serde::Deserialize;
//!
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     type Config = Config;
//!     const NAME: &'static str = "hello";
//!     const SUMMARY: &'static str = "Greets, and records that it did.";
//!     const ACTIONS: &'static [Action] = &[Action::Check, Action::Backup];
//!
//!     fn backup(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
//!         ctx.info(format!("hello, {}", config.name));
//!         Ok(StepOutput::new("greeted").output("greeted", &config.name))
//!     }
//! }
//!
//! declare_plugin!(Hello);
//!
//! // In-process, through the real ABI, without the runner:
//! let harness = backplan_plugin_sdk::testing::Harness::new(plugin_descriptor());
//! let out = harness.run(Action::Backup, serde_json::json!({"name": "ops"})).unwrap();
//! assert_eq!(out.outputs["greeted"], "ops");
//! ```
//!
//! Errors say whether a retry may help ([`ErrorKind`]); long work reports [`Progress`] and checks
//! [`Context::is_cancelled`]; logs go through [`Context::log`] to the host's `tracing` output.
//! [`Context::options`], [`Context::dry_run`] and [`Context::force`] read what the operator asked
//! for, and [`IoResultExt::io_context`] turns an `io::Error` into a [`PluginError`] naming the path.
//!
//! The modules follow who uses them. A plugin author needs the crate root, [`files`] (atomic
//! writes, checksums, the restore's overwrite rule), [`testing`] and, to prune, `retention`.
//! [`abi`] holds only the `#[repr(C)]` shapes both sides agree on, [`host`] is what backplan-core
//! uses to call a plugin, and a hidden `__private` module is what `declare_plugin!` expands to.

#![warn(missing_docs, unreachable_pub)]

#[doc(hidden)]
pub mod __private;
pub mod abi;
mod context;
mod error;
pub mod files;
pub mod host;
mod permissions;
mod plugin;
mod protocol;
#[cfg(feature = "retention")]
pub mod retention;
pub mod testing;

pub use context::Context;
pub use error::{ErrorKind, IoResultExt, PluginError, PluginResult};
pub use permissions::{Permissions, Role};
pub use plugin::Plugin;
pub use protocol::{
    Action, Description, Discovered, DiscoveredBackup, HistoryEntry, KeyInfo, KeyOperation,
    KeySource, Keys, Level, Outputs, PlanStep, Progress, Request, Response, StepOutput,
};

/// Re-exported so plugin crates derive the same traits the SDK expects.
pub use schemars;
pub use serde_json;

/// The version of this SDK, recorded in every [`Description`].
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Declares the plugin of this crate.
///
/// `declare_plugin!(MyPlugin)` builds the plugin with `Default`; `declare_plugin!(MyPlugin,
/// MyPlugin::new())` with the given expression (evaluated once, on first use, inside the panic
/// guard). It defines `pub fn plugin_descriptor() -> &'static PluginDescriptor`, which the host
/// uses to link the plugin in statically, and, when the invoking crate's `dynamic` feature is on,
/// exports the C entry symbol `backplan_plugin_entry` for loading as a `cdylib`. Declare one
/// plugin per crate.
#[macro_export]
macro_rules! declare_plugin {
    ($plugin:ty) => {
        $crate::declare_plugin!($plugin, <$plugin as ::core::default::Default>::default());
    };
    ($plugin:ty, $constructor:expr) => {
        /// This crate's plugin, as the backplan host reaches it.
        pub fn plugin_descriptor() -> &'static $crate::abi::PluginDescriptor {
            struct Declared;
            impl $crate::__private::Declared for Declared {
                type Plugin = $plugin;
                const VERSION: &'static str = env!("CARGO_PKG_VERSION");
                fn instance() -> &'static $plugin {
                    static INSTANCE: ::std::sync::OnceLock<$plugin> = ::std::sync::OnceLock::new();
                    INSTANCE.get_or_init(|| $constructor)
                }
                fn descriptor_cell() -> &'static $crate::__private::DescriptorCell {
                    static DESCRIPTOR: $crate::__private::DescriptorCell =
                        $crate::__private::DescriptorCell::new();
                    &DESCRIPTOR
                }
            }
            $crate::__private::descriptor::<Declared>()
        }

        /// The exported entry symbol of a dynamically loaded plugin.
        #[cfg(feature = "dynamic")]
        #[unsafe(no_mangle)]
        pub extern "C" fn backplan_plugin_entry() -> *const $crate::abi::PluginDescriptor {
            ::std::panic::catch_unwind(plugin_descriptor)
                .map_or(::std::ptr::null(), |descriptor| descriptor)
        }
    };
}
