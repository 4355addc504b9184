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

pub mod abi;
mod context;
mod error;
mod plugin;
mod protocol;
#[cfg(feature = "retention")]
pub mod retention;
pub mod testing;

pub use context::Context;
pub use error::{ErrorKind, PluginError, PluginResult};
pub use plugin::Plugin;
pub use protocol::{
    Action, Description, HistoryEntry, Level, Outputs, Permissions, Progress, Request, Response,
    StepOutput,
};

/// Re-exported so plugin crates derive the same traits the SDK expects.
pub use schemars;
pub use serde_json;

/// The version of this SDK, recorded in every [`Description`].
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the [`Description`] of plugin `P`.
pub fn describe<P: Plugin>(version: &str) -> Description {
    let schema = schemars::schema_for!(P::Config);
    Description {
        name: P::NAME.to_owned(),
        version: version.to_owned(),
        summary: P::SUMMARY.to_owned(),
        docs: P::DOCS.to_owned(),
        actions: P::ACTIONS.to_vec(),
        config_schema: serde_json::to_value(schema).unwrap_or_default(),
        sdk_version: SDK_VERSION.to_owned(),
    }
}

/// Deserialises the config and dispatches the request to the plugin's action.
fn run_action<P: Plugin>(plugin: &P, ctx: &Context) -> PluginResult<StepOutput> {
    let request = ctx.request();
    let config: P::Config = serde_json::from_value(request.config.clone()).map_err(|e| {
        PluginError::config(format!("step `{}`: invalid config: {e}", request.step_id))
    })?;
    let always = [Action::Check, Action::Permissions];
    if !always.contains(&request.action) && !P::ACTIONS.contains(&request.action) {
        return Err(PluginError::unsupported(request.action));
    }
    match request.action {
        Action::Permissions => {
            Ok(StepOutput::new("permissions").record(plugin.permissions(&config)))
        }
        Action::Check => plugin.check(ctx, &config),
        Action::Backup => plugin.backup(ctx, &config),
        Action::Verify => plugin.verify(ctx, &config),
        Action::Restore => plugin.restore(ctx, &config),
        Action::Prune => plugin.prune(ctx, &config),
        Action::Teardown => plugin.teardown(ctx, &config),
    }
}

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
            static INSTANCE: ::std::sync::OnceLock<$plugin> = ::std::sync::OnceLock::new();
            static DESCRIPTOR: $crate::abi::plugin_side::DescriptorCell =
                $crate::abi::plugin_side::DescriptorCell::new();
            fn instance() -> &'static $plugin {
                INSTANCE.get_or_init(|| $constructor)
            }
            unsafe extern "C" fn describe(out: *mut $crate::abi::Buffer) -> i32 {
                // SAFETY: the host upholds the ABI contract for `out`.
                unsafe {
                    $crate::abi::plugin_side::describe::<$plugin>(env!("CARGO_PKG_VERSION"), out)
                }
            }
            unsafe extern "C" fn invoke(
                request: *const u8,
                len: usize,
                host: *const $crate::abi::HostApi,
                out: *mut $crate::abi::Buffer,
            ) -> i32 {
                // SAFETY: the host upholds the ABI contract for every pointer.
                unsafe {
                    $crate::abi::plugin_side::invoke::<$plugin>(instance, request, len, host, out)
                }
            }
            DESCRIPTOR.get_or_init(
                <$plugin as $crate::Plugin>::NAME,
                env!("CARGO_PKG_VERSION"),
                describe,
                invoke,
            )
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
