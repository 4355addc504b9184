//! The step's `config` table, and the request options that can override parts of it.
//!
//! Everything a plan can get wrong is caught here, before any AWS call: unknown keys (serde's
//! `deny_unknown_fields`), durations that do not parse, an instance given two ways or none,
//! retention rules that would keep nothing. The rest of the crate works with [`Settings`], the
//! validated form, and never re-checks.

use std::collections::BTreeMap;
use std::time::Duration;

use backplan_plugin_sdk::retention::Retention;
use backplan_plugin_sdk::{PluginError, PluginResult, Request};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest pause between two polls, whatever `poll_interval` starts at (unless it starts
/// higher).
const POLL_CAP: Duration = Duration::from_secs(60);
/// The longest first pause between polls.
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest wait for one image, snapshot or instance (the runner's longest step timeout).
const MAX_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most tags EC2 allows on a resource, the `backplan:*` ones included.
const MAX_TAGS: usize = 50;
/// The `backplan:*` tags a resource may carry besides the machine's facts: plan, step, run,
/// restored-from (instances) or device (snapshots), verified.
const OWN_TAGS: usize = 5;
/// Tags kept free for the machine's facts (`facts`): three hold 768 characters, more than a
/// machine with a long instance profile path needs (a typical one takes two).
const MACHINE_TAGS: usize = 3;

/// What to make of the instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// An AMI (CreateImage): every attached volume, restorable with one RunInstances.
    #[default]
    Ami,
    /// Plain EBS snapshots (CreateSnapshot) of the volumes chosen by `volumes`.
    Snapshots,
}

/// Which volumes `mode = "snapshots"` snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Volumes {
    /// Only the root volume.
    #[default]
    Root,
    /// Every attached EBS volume.
    All,
}

/// One cross-region copy of the AMI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopyConfig {
    /// The region the AMI is copied to, e.g. `us-west-2`.
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Retention of the copies in that region (default: the step's `retention`).
    pub retention: Option<Retention>,
}

/// Settings of the instance launched by `restore`; each one defaults to the backed-up
/// instance's, and `-o KEY=VALUE` overrides both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LaunchConfig {
    /// e.g. `m5.2xlarge`.
    #[schemars(length(min = 1, max = 64))]
    pub instance_type: Option<String>,
    /// The subnet to launch into (its VPC must hold the security groups).
    #[schemars(length(min = 1, max = 255))]
    pub subnet_id: Option<String>,
    /// Security groups of the new instance.
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    pub security_group_ids: Option<Vec<String>>,
    /// The EC2 key pair.
    #[schemars(length(min = 1, max = 255))]
    pub key_name: Option<String>,
    /// The IAM instance profile, by ARN (`arn:aws:iam::…:instance-profile/NAME`) or name, or
    /// `none` to launch without one: what lets the machine reach S3 and whatever else its role
    /// allows.
    #[schemars(length(min = 1, max = 2048))]
    pub iam_instance_profile: Option<String>,
    /// The role inside that instance profile (`arn:aws:iam::…:role/NAME`): `plan permissions`
    /// then allows `iam:PassRole` for it alone, instead of for any role passed to EC2. Only
    /// used for the policy; `plan check` names the profile the instance has.
    #[schemars(length(min = 1, max = 2048))]
    pub iam_role_arn: Option<String>,
    /// Launch with the old machine's private IP (it must be free: the old machine gone), so the
    /// addresses Replicated and the rest were set up with stay valid. Needs the old subnet.
    #[serde(default)]
    pub reuse_private_ip: bool,
    /// Move the Elastic IP the old machine had (recorded at backup) to the new one, so its
    /// public address, and the GitHub OAuth callback naming it, stay valid.
    #[serde(default)]
    pub reuse_elastic_ip: bool,
}

/// The step's `config` table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `i-...`, or `self` for the machine backplan runs on (found through IMDSv2).
    #[schemars(length(min = 1, max = 255))]
    pub instance: Option<String>,
    /// Find the instance by tags instead, e.g. `{ Name = "circleci-services" }`: exactly one
    /// running instance must match.
    pub instance_tags: Option<BTreeMap<String, String>>,
    /// The region (default: the standard AWS chain: `AWS_REGION`, profile, IMDS).
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
    /// `ami` (default) or `snapshots`.
    #[serde(default)]
    pub mode: Mode,
    /// For `mode = "snapshots"`: `root` (default) or `all`.
    #[serde(default)]
    pub volumes: Volumes,
    /// Image without rebooting the instance (default true, as CircleCI's guide says).
    #[serde(default = "yes")]
    pub no_reboot: bool,
    /// Extra tags on everything made, besides the `backplan:*` ones.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// First pause between polls while waiting (default `15s`, at most `1h`); it doubles up to
    /// a minute.
    #[schemars(length(min = 1))]
    pub poll_interval: Option<String>,
    /// How long to wait for images, snapshots and instances (default `2h`, at most 30 days).
    #[schemars(length(min = 1))]
    pub wait_timeout: Option<String>,
    /// Cross-region copies of the AMI (`mode = "ami"` only).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub copy_to: Vec<CopyConfig>,
    /// Retention applied by `prune` in the main region.
    #[serde(default)]
    pub retention: Retention,
    /// Overrides for the instance `restore` launches.
    #[serde(default)]
    pub launch: LaunchConfig,
}

fn yes() -> bool {
    true
}

/// How the instance is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// An instance id.
    Id(String),
    /// The machine this runs on (IMDSv2).
    Myself,
    /// The one running instance with all these tags.
    Tags(BTreeMap<String, String>),
}

/// Polling and waiting limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// First pause between polls.
    pub poll_start: Duration,
    /// Longest pause between polls.
    pub poll_cap: Duration,
    /// How long one wait may last.
    pub timeout: Duration,
}

/// A copy region with its resolved retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyTarget {
    pub region: String,
    pub retention: Retention,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `None` when the step only restores (no source instance is needed then).
    pub target: Option<Target>,
    pub region: Option<String>,
    pub mode: Mode,
    pub volumes: Volumes,
    pub no_reboot: bool,
    pub tags: BTreeMap<String, String>,
    pub timing: Timing,
    pub copies: Vec<CopyTarget>,
    pub retention: Retention,
    pub launch: LaunchConfig,
}

impl Settings {
    /// Validates `config`.
    pub(crate) fn new(config: &Config) -> PluginResult<Settings> {
        let target = match (&config.instance, &config.instance_tags) {
            (Some(_), Some(_)) => {
                return Err(PluginError::config(
                    "give either `instance` or `instance_tags`, not both",
                ));
            }
            (Some(id), None) if id == "self" => Some(Target::Myself),
            (Some(id), None) => {
                if !id.starts_with("i-") && !Request::is_unresolved(id) {
                    return Err(PluginError::config(format!(
                        "instance {id:?} is neither an instance id (i-...) nor \"self\""
                    )));
                }
                Some(Target::Id(id.clone()))
            }
            (None, Some(tags)) if tags.is_empty() => {
                return Err(PluginError::config("`instance_tags` is empty"));
            }
            (None, Some(tags)) => Some(Target::Tags(tags.clone())),
            (None, None) => None,
        };
        tag_keys("instance_tags", config.instance_tags.iter().flatten())?;
        tag_keys("tags", &config.tags)?;
        if config.tags.len() > MAX_TAGS - OWN_TAGS - MACHINE_TAGS {
            return Err(PluginError::config(format!(
                "`tags` has {} tags: EC2 allows {MAX_TAGS} per resource, {} of them backplan's",
                config.tags.len(),
                OWN_TAGS + MACHINE_TAGS
            )));
        }
        if let Some(key) = config.tags.keys().find(|k| k.starts_with("backplan:")) {
            return Err(PluginError::config(format!(
                "tag {key:?}: the `backplan:` prefix is reserved for the tags backplan sets"
            )));
        }
        if config.mode == Mode::Snapshots && !config.copy_to.is_empty() {
            return Err(PluginError::config(
                "`copy_to` copies AMIs: it needs mode = \"ami\"",
            ));
        }
        let mut copies = Vec::new();
        for copy in &config.copy_to {
            if copies.iter().any(|c: &CopyTarget| c.region == copy.region) {
                return Err(PluginError::config(format!(
                    "copy_to lists region {} twice",
                    copy.region
                )));
            }
            if config.region.as_deref() == Some(copy.region.as_str()) {
                return Err(PluginError::config(format!(
                    "copy_to region {} is the step's own region",
                    copy.region
                )));
            }
            let rules = copy.retention.unwrap_or(config.retention);
            rules
                .validate()
                .map_err(|e| PluginError::config(format!("copy_to {}: {e}", copy.region)))?;
            copies.push(CopyTarget {
                region: copy.region.clone(),
                retention: rules,
            });
        }
        let retention = config.retention;
        retention.validate().map_err(PluginError::config)?;
        let poll_start = duration(
            "poll_interval",
            config.poll_interval.as_deref(),
            "15s",
            MAX_POLL_INTERVAL,
        )?;
        let timeout = duration(
            "wait_timeout",
            config.wait_timeout.as_deref(),
            "2h",
            MAX_WAIT,
        )?;
        Ok(Settings {
            target,
            region: config.region.clone(),
            mode: config.mode,
            volumes: config.volumes,
            no_reboot: config.no_reboot,
            tags: config.tags.clone(),
            timing: Timing {
                poll_start,
                poll_cap: POLL_CAP.max(poll_start),
                timeout,
            },
            copies,
            retention,
            launch: launch(&config.launch)?,
        })
    }

    /// How many tags are left for the machine's facts beside `tags` and backplan's own: at
    /// least three.
    pub(crate) fn machine_tag_room(&self) -> usize {
        MAX_TAGS - OWN_TAGS - self.tags.len()
    }

    /// The instance to back up, or a config error saying how to name one.
    pub(crate) fn require_target(&self) -> PluginResult<&Target> {
        let target = self.target.as_ref().ok_or_else(|| {
            PluginError::config("name the instance to back up: `instance` or `instance_tags`")
        })?;
        if let Target::Id(id) = target {
            Request::require_resolved([id.as_str()])?;
        }
        Ok(target)
    }
}

/// `launch`, with the IAM names checked.
fn launch(launch: &LaunchConfig) -> PluginResult<LaunchConfig> {
    if let Some(profile) = &launch.iam_instance_profile {
        instance_profile("launch.iam_instance_profile", profile)?;
    }
    if let Some(role) = &launch.iam_role_arn {
        let is_role =
            role.starts_with("arn:") && role.contains(":iam::") && role.contains(":role/");
        if !is_role && !Request::is_unresolved(role) {
            return Err(PluginError::config(format!(
                "launch.iam_role_arn = {role:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"
            )));
        }
    }
    Ok(launch.clone())
}

/// An instance profile as RunInstances takes it: an ARN, a name, or `none`. A role's ARN is the
/// usual mistake (a role and its profile often share a name), so it is named.
pub(crate) fn instance_profile(key: &str, value: &str) -> PluginResult<()> {
    if value.trim().is_empty() {
        return Err(PluginError::config(format!(
            "{key} is empty: give an instance profile's ARN or name, or \"none\""
        )));
    }
    if value.starts_with("arn:") && !value.contains(":instance-profile/") {
        let hint = if value.contains(":role/") {
            ": that is a role's ARN; RunInstances takes the instance profile holding it"
        } else {
            ""
        };
        return Err(PluginError::config(format!(
            "{key} = {value:?} is not an instance profile ARN (arn:aws:iam::ACCOUNT:instance-profile/NAME){hint}"
        )));
    }
    Ok(())
}

/// The duration `key` gives, more than zero and at most `max`.
fn duration(
    key: &str,
    value: Option<&str>,
    default: &str,
    max: Duration,
) -> PluginResult<Duration> {
    let text = value.unwrap_or(default);
    let parsed = humantime::parse_duration(text).map_err(|e| {
        PluginError::config(format!("{key} = {text:?}: {e} (e.g. \"30s\", \"2h\")"))
    })?;
    if parsed.is_zero() {
        return Err(PluginError::config(format!("{key} must be more than 0")));
    }
    if parsed > max {
        return Err(PluginError::config(format!(
            "{key} = {text:?} is longer than the most allowed, {}",
            humantime::format_duration(max)
        )));
    }
    Ok(parsed)
}

/// Tag keys EC2 accepts: 1 to 128 characters.
fn tag_keys<'a>(
    table: &str,
    tags: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> PluginResult<()> {
    for (key, value) in tags {
        if key.trim().is_empty() || key.chars().count() > 128 {
            return Err(PluginError::config(format!(
                "`{table}` has the tag key {key:?}: a tag key is 1 to 128 characters"
            )));
        }
        if value.chars().count() > 256 {
            return Err(PluginError::config(format!(
                "`{table}` tag {key:?}: a tag value is at most 256 characters"
            )));
        }
    }
    Ok(())
}

/// Restore options given with `-o KEY=VALUE`: they win over `launch` and the record. Every step
/// of a restore sees the same options, so keys meant for other plugins (`target`, `path`...)
/// are ignored rather than refused.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LaunchOptions {
    pub instance_type: Option<String>,
    pub subnet_id: Option<String>,
    /// An array, or one string of comma-separated ids.
    pub security_group_ids: Option<StringList>,
    pub key_name: Option<String>,
    /// An instance profile's ARN or name, or `none`.
    pub iam_instance_profile: Option<String>,
    /// Launch in this region, from the copy made there (disaster recovery).
    pub region: Option<String>,
    pub reuse_private_ip: Option<bool>,
    pub reuse_elastic_ip: Option<bool>,
    /// This restore is a drill (`backplan drill` sets it): it must not land in production.
    pub drill: Option<bool>,
    /// Let a drill launch into the backed-up instance's own subnet.
    pub allow_production_subnet: Option<bool>,
}

/// A list given either as a JSON array or as one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum StringList {
    List(Vec<String>),
    Joined(String),
}

impl StringList {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            StringList::List(list) => list,
            StringList::Joined(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

impl LaunchOptions {
    /// Reads the request's options (none is fine).
    pub(crate) fn from_request(options: &Value) -> PluginResult<LaunchOptions> {
        if options.is_null() {
            return Ok(LaunchOptions::default());
        }
        serde_json::from_value(options.clone()).map_err(|e| {
            PluginError::config(format!(
                "restore options: {e} (ebs reads instance_type, subnet_id, security_group_ids, key_name, iam_instance_profile, region, reuse_private_ip, reuse_elastic_ip, allow_production_subnet)"
            ))
        })
    }

    /// Whether this restore is a drill.
    pub(crate) fn is_drill(&self) -> bool {
        self.drill == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(value: Value) -> PluginResult<Settings> {
        let config: Config =
            serde_json::from_value(value).map_err(|e| PluginError::config(e.to_string()))?;
        Settings::new(&config)
    }

    #[test]
    fn defaults_are_an_ami_without_reboot_polled_from_15s_for_2h() {
        let s = settings(json!({"instance": "i-0abc"})).unwrap();
        assert_eq!(s.target, Some(Target::Id("i-0abc".into())));
        assert_eq!(s.mode, Mode::Ami);
        assert!(s.no_reboot);
        assert_eq!(s.timing.poll_start, Duration::from_secs(15));
        assert_eq!(s.timing.poll_cap, Duration::from_secs(60));
        assert_eq!(s.timing.timeout, Duration::from_secs(7200));
        assert!(s.retention.is_empty());
    }

    #[test]
    fn self_and_tags_name_the_instance() {
        assert_eq!(
            settings(json!({"instance": "self"})).unwrap().target,
            Some(Target::Myself)
        );
        let s = settings(json!({"instance_tags": {"Name": "circleci-services"}})).unwrap();
        assert!(matches!(s.target, Some(Target::Tags(t)) if t["Name"] == "circleci-services"));
    }

    #[test]
    fn mistakes_are_config_errors() {
        for (value, expected) in [
            (
                json!({"instance": "i-1", "instance_tags": {"a": "b"}}),
                "not both",
            ),
            (json!({"instance": "web"}), "neither an instance id"),
            (json!({"instance": "i-1", "instnce": 1}), "unknown field"),
            (
                json!({"instance": "i-1", "poll_interval": "soon"}),
                "poll_interval",
            ),
            (
                json!({"instance": "i-1", "tags": {"backplan:run": "x"}}),
                "reserved",
            ),
            (
                json!({"instance": "i-1", "mode": "snapshots", "copy_to": [{"region": "us-west-2"}]}),
                "needs mode",
            ),
            (
                json!({"instance": "i-1", "retention": {"keep_last": 0}}),
                "keep nothing",
            ),
            (
                json!({"instance": "i-1", "copy_to": [{"region": "a"}, {"region": "a"}]}),
                "twice",
            ),
            (
                json!({"instance": "i-1", "poll_interval": "0s"}),
                "poll_interval must be more than 0",
            ),
            (
                json!({"instance": "i-1", "tags": {"": "x"}}),
                "a tag key is 1 to 128",
            ),
            (
                json!({"instance_tags": {" ": "x"}}),
                "`instance_tags` has the tag key",
            ),
        ] {
            let error = settings(value.clone()).unwrap_err();
            assert!(
                error.message.contains(expected),
                "{value}: {}",
                error.message
            );
        }
    }

    #[test]
    fn a_wait_timeout_of_centuries_or_an_hour_between_polls_is_refused() {
        let error =
            settings(json!({"instance": "i-1", "wait_timeout": "100000000years"})).unwrap_err();
        assert!(
            error
                .message
                .contains("longer than the most allowed, 30days"),
            "{}",
            error.message
        );
        let error = settings(json!({"instance": "i-1", "poll_interval": "2h"})).unwrap_err();
        assert!(error.message.contains("poll_interval"), "{}", error.message);
        assert!(settings(json!({"instance": "i-1", "wait_timeout": "30days"})).is_ok());
    }

    #[test]
    fn more_tags_than_ec2_allows_are_refused() {
        let tags = |n: usize| -> serde_json::Map<String, Value> {
            (0..n).map(|i| (format!("k{i}"), json!("v"))).collect()
        };
        let error = settings(json!({"instance": "i-1", "tags": tags(43)})).unwrap_err();
        assert!(
            error
                .message
                .contains("EC2 allows 50 per resource, 8 of them backplan's"),
            "{}",
            error.message
        );
        let most = settings(json!({"instance": "i-1", "tags": tags(42)})).unwrap();
        assert_eq!(most.machine_tag_room(), 3, "the machine's facts still fit");
    }

    #[test]
    fn copies_inherit_the_main_retention_unless_they_have_their_own() {
        let s = settings(json!({
            "instance": "i-1",
            "retention": {"keep_last": 7},
            "copy_to": [{"region": "us-west-2"}, {"region": "eu-west-1", "retention": {"keep_monthly": 3}}]
        }))
        .unwrap();
        assert_eq!(s.copies[0].retention.keep_last, Some(7));
        assert_eq!(s.copies[1].retention.keep_last, None);
        assert_eq!(s.copies[1].retention.keep_monthly, Some(3));
    }

    #[test]
    fn launch_options_take_lists_or_comma_separated_text() {
        let o = LaunchOptions::from_request(&json!({"security_group_ids": "sg-1, sg-2"})).unwrap();
        assert_eq!(o.security_group_ids.unwrap().into_vec(), ["sg-1", "sg-2"]);
        let o = LaunchOptions::from_request(&json!({"security_group_ids": ["sg-3"]})).unwrap();
        assert_eq!(o.security_group_ids.unwrap().into_vec(), ["sg-3"]);
        let o =
            LaunchOptions::from_request(&json!({"target": "/mnt/x", "key_name": "dr"})).unwrap();
        assert_eq!(
            o.key_name.as_deref(),
            Some("dr"),
            "other plugins' options are ignored"
        );
        assert!(LaunchOptions::from_request(&json!({"subnet_id": 5})).is_err());
    }
}
