//! The one trait every plugin implements, built-in or third-party.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::{Action, Context, Permissions, PluginError, PluginResult, StepOutput};

/// A kind of data backplan can back up, verify, restore and prune.
///
/// Each action receives the step's configuration already deserialised into [`Plugin::Config`]
/// (a configuration that does not deserialise is reported as a config error before the action
/// runs) and a [`Context`] for progress, logs, cancellation and the outputs of earlier steps.
/// Actions are called from a blocking thread: plain blocking code is right here, and a plugin
/// that needs async (an SDK client) runs its own runtime inside the action.
///
/// Actions not listed in [`Plugin::ACTIONS`] are never called; their default bodies answer
/// "unsupported" all the same. `check` and `permissions` are always callable.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a backplan plugin",
    label = "`declare_plugin!` needs a type that implements `backplan_plugin_sdk::Plugin`",
    note = "implement `Plugin` for `{Self}`: its `Config`, `NAME`, `SUMMARY`, `ACTIONS` and actions"
)]
pub trait Plugin: Send + Sync + 'static {
    /// The step's `config` table. Derive `Deserialize` and `JsonSchema`, and use
    /// `#[serde(deny_unknown_fields)]` so that a typo in a plan is an error, not a silent default.
    type Config: DeserializeOwned + JsonSchema;

    /// The name plans use in `plugin = "..."`: lower case, digits and dashes.
    const NAME: &'static str;
    /// One line: what the plugin backs up.
    const SUMMARY: &'static str;
    /// Longer Markdown documentation shown by `backplan plugins info`.
    const DOCS: &'static str = "";
    /// The actions this plugin implements. `check` is always callable.
    const ACTIONS: &'static [Action];

    /// Validates the configuration and preflights (credentials, permissions, paths).
    /// Must change nothing. The default accepts any configuration that deserialised.
    fn check(&self, ctx: &Context, config: &Self::Config) -> PluginResult<StepOutput> {
        let _ = (ctx, config);
        Ok(StepOutput::new("configuration is valid"))
    }

    /// Makes a backup and returns its record.
    fn backup(&self, ctx: &Context, config: &Self::Config) -> PluginResult<StepOutput> {
        let _ = (ctx, config);
        Err(PluginError::unsupported(Action::Backup))
    }

    /// Confirms that the backup described by `ctx.request().record` is intact.
    fn verify(&self, ctx: &Context, config: &Self::Config) -> PluginResult<StepOutput> {
        let _ = (ctx, config);
        Err(PluginError::unsupported(Action::Verify))
    }

    /// Puts back the backup described by `ctx.request().record`.
    fn restore(&self, ctx: &Context, config: &Self::Config) -> PluginResult<StepOutput> {
        let _ = (ctx, config);
        Err(PluginError::unsupported(Action::Restore))
    }

    /// The cloud permissions this configuration needs, for `backplan plan permissions`, with
    /// the roles that need each ([`Permissions::grant`]; see [`Role`](crate::Role)). Calls
    /// nothing. The default: none.
    fn permissions(&self, config: &Self::Config) -> Permissions {
        let _ = config;
        Permissions::default()
    }

    /// The same, for a plugin that also needs the request: the plan's name, or the step's
    /// configuration as written (`ctx.request().config`). Calls nothing. The default:
    /// [`Plugin::permissions`].
    fn permissions_in(&self, ctx: &Context, config: &Self::Config) -> Permissions {
        let _ = ctx;
        self.permissions(config)
    }

    /// Applies retention to the backups listed in `ctx.request().history`.
    fn prune(&self, ctx: &Context, config: &Self::Config) -> PluginResult<StepOutput> {
        let _ = (ctx, config);
        Err(PluginError::unsupported(Action::Prune))
    }

    /// Undoes the drill restore described by `ctx.request().record` (what `restore` returned),
    /// e.g. terminates the instance launched from the image.
    ///
    /// `backplan drill` calls it for every step whose restore succeeded, in reverse restore
    /// order, once the health check is over — **whether or not it passed**, and also when it was
    /// never tried because another step's restore failed or the run was cancelled: a drill must
    /// never leave a launched machine behind. It runs even after Ctrl-C, with a cancellation flag
    /// of its own that the run's Ctrl-C does not raise (the step's timeout still applies). It is
    /// not called in a dry run. So it must work from the record alone, and succeed when what it
    /// would remove is already gone.
    fn teardown(&self, ctx: &Context, config: &Self::Config) -> PluginResult<StepOutput> {
        let _ = (ctx, config);
        Err(PluginError::unsupported(Action::Teardown))
    }

    /// Finds the backups this step made, from what they left behind, for `backplan catalog
    /// rebuild`: ebs reads its AMIs' tags, nfs-objects its snapshot headers. The output's record
    /// is a [`crate::Discovered`] (build it with `StepOutput::record`); each backup names the
    /// run that made it and the record that run stored, so restore works from the rebuilt
    /// catalog. Must change nothing. Optional: list `Action::Discover` in [`Plugin::ACTIONS`].
    fn discover(&self, ctx: &Context, config: &Self::Config) -> PluginResult<StepOutput> {
        let _ = (ctx, config);
        Err(PluginError::unsupported(Action::Discover))
    }

    /// Lists, adds or removes the keys that open this step's encrypted backups, for `backplan
    /// keys`: the operation is the request's options, read with
    /// `ctx.options::<KeyOperation>()`; the output's record is a [`crate::Keys`]. Must not
    /// touch backed-up data. Optional: list `Action::Keys` in [`Plugin::ACTIONS`].
    fn keys(&self, ctx: &Context, config: &Self::Config) -> PluginResult<StepOutput> {
        let _ = (ctx, config);
        Err(PluginError::unsupported(Action::Keys))
    }
}
