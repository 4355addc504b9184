//! The `ebs` plugin: the SDK's actions mapped onto the modules that do the work.
//!
//! Each action validates the configuration into [`Settings`], connects ([`Aws`]: its own
//! current-thread runtime, the standard AWS configuration chain) and hands over to the module
//! for that action. Nothing here talks to AWS itself.

use backplan_plugin_sdk::{Action, Context, Permissions, Plugin, PluginResult, StepOutput};

use crate::client::Aws;
use crate::config::{Config, LaunchOptions, Settings};
use crate::record::{BackupRecord, RestoreRecord};
use crate::restore::Launch;
use crate::tags::Owner;
use crate::{backup, check, discover, permissions, prune, restore, verify};

/// The plugin.
#[derive(Debug, Default)]
pub(crate) struct Ebs;

/// The tags that say "this step of this plan, in this run".
fn owner(ctx: &Context) -> Owner {
    let request = ctx.request();
    Owner {
        plan: request.plan.clone(),
        step: request.step_id.clone(),
        run: request.run_id.clone(),
    }
}

impl Plugin for Ebs {
    type Config = Config;
    const NAME: &'static str = "ebs";
    const SUMMARY: &'static str = "AMI or EBS snapshots of an EC2 instance (the CircleCI Services machine): waits until usable, copies across regions, prunes, launches on restore.";
    const DOCS: &'static str = include_str!("../README.md");
    const ACTIONS: &'static [Action] = &[
        Action::Check,
        Action::Backup,
        Action::Verify,
        Action::Restore,
        Action::Prune,
        Action::Teardown,
        Action::Discover,
    ];

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let settings = Settings::new(config)?;
        let aws = Aws::connect(settings.region.as_deref())?;
        aws.block_on(check::run(ctx, &aws, &settings, &owner(ctx)))
    }

    fn backup(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let settings = Settings::new(config)?;
        let target = settings.require_target()?;
        let aws = Aws::connect(settings.region.as_deref())?;
        aws.block_on(backup::run(ctx, &aws, &settings, target, &owner(ctx)))
    }

    fn verify(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        Settings::new(config)?;
        let record: BackupRecord = ctx.record()?;
        let aws = Aws::connect(Some(&record.region))?;
        aws.block_on(verify::run(ctx, &aws, &record))
    }

    fn restore(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let settings = Settings::new(config)?;
        let record: BackupRecord = ctx.record()?;
        let plan = Launch::plan(
            &record,
            &settings,
            LaunchOptions::from_request(&ctx.request().options)?,
        )?;
        let aws = Aws::connect(Some(&plan.region))?;
        aws.block_on(restore::launch(
            ctx,
            &aws,
            &settings,
            &record,
            &plan,
            &owner(ctx),
        ))
    }

    fn prune(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let settings = Settings::new(config)?;
        let aws = Aws::connect(settings.region.as_deref())?;
        aws.block_on(prune::run(ctx, &aws, &settings, &owner(ctx)))
    }

    fn teardown(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let settings = Settings::new(config)?;
        let record: RestoreRecord = ctx.record()?;
        let aws = Aws::connect(Some(&record.region))?;
        aws.block_on(restore::teardown(ctx, &aws, &record, &settings.timing))
    }

    fn discover(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let settings = Settings::new(config)?;
        let aws = Aws::connect(settings.region.as_deref())?;
        aws.block_on(discover::run(ctx, &aws, &settings, &owner(ctx)))
    }

    fn permissions(&self, config: &Config) -> Permissions {
        match Settings::new(config) {
            Ok(settings) => permissions::for_settings(&settings),
            Err(_) => Permissions::default(),
        }
    }
}
