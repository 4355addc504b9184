//! The `backplan:*` tags: how the plugin finds its own images, snapshots and instances again.
//!
//! Tags, not the catalog, are the source of truth in AWS: a retried step finds what its first
//! attempt made by `plan`+`step`+`run`, prune only ever looks at resources tagged with this
//! plan and step, so it cannot touch anything it did not make, and `discover` rebuilds a lost
//! catalog's records from them (with the machine's facts, see `facts`).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

pub(crate) const PLAN: &str = "backplan:plan";
pub(crate) const STEP: &str = "backplan:step";
pub(crate) const RUN: &str = "backplan:run";
/// On an instance launched by restore: the backup run it came from.
pub(crate) const RESTORED_FROM: &str = "backplan:restored-from";
/// Set by hand (or a later verify) on an image proven usable: prune never deletes the newest.
pub(crate) const VERIFIED: &str = "backplan:verified";
/// On a snapshot of `mode = "snapshots"`: the device its volume was attached as.
pub(crate) const DEVICE: &str = "backplan:device";

/// Who made something: the identity tags of one step in one run.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub plan: String,
    pub step: String,
    pub run: String,
}

impl Owner {
    /// The three identity tags, then the user's.
    pub(crate) fn tags(&self, extra: &BTreeMap<String, String>) -> Vec<Tag> {
        let own = [(PLAN, &self.plan), (STEP, &self.step), (RUN, &self.run)];
        own.into_iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .chain(extra.iter().map(|(k, v)| (k.clone(), v.clone())))
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }

    /// `tags` for each resource type.
    pub(crate) fn specs(
        &self,
        extra: &BTreeMap<String, String>,
        types: &[ResourceType],
    ) -> Vec<TagSpecification> {
        types
            .iter()
            .map(|t| {
                TagSpecification::builder()
                    .resource_type(t.clone())
                    .set_tags(Some(self.tags(extra)))
                    .build()
            })
            .collect()
    }

    /// Filters matching this step of this plan (any run).
    pub(crate) fn step_filters(&self) -> Vec<Filter> {
        vec![
            filter(&format!("tag:{PLAN}"), &self.plan),
            filter(&format!("tag:{STEP}"), &self.step),
        ]
    }

    /// Filters matching this step in this run only.
    pub(crate) fn run_filters(&self) -> Vec<Filter> {
        let mut filters = self.step_filters();
        filters.push(filter(&format!("tag:{RUN}"), &self.run));
        filters
    }
}

/// A one-value filter.
pub(crate) fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The value of tag `key` in `tags`.
pub(crate) fn value<'t>(tags: &'t [Tag], key: &str) -> Option<&'t str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(Tag::value)
}

/// A name AWS accepts for an AMI (letters, digits and `()[] ./-'@_`, at most 128 characters).
pub(crate) fn image_name(owner: &Owner) -> String {
    let raw = format!("backplan-{}-{}-{}", owner.plan, owner.step, owner.run);
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_valid_and_unique_per_run() {
        let owner = Owner {
            plan: "circle ci:prod".into(),
            step: "root".into(),
            run: "20260101T000000Z-abc".into(),
        };
        assert_eq!(
            image_name(&owner),
            "backplan-circle ci-prod-root-20260101T000000Z-abc"
        );
        let tags = owner.tags(&BTreeMap::from([("team".to_owned(), "ops".to_owned())]));
        assert_eq!(value(&tags, RUN), Some("20260101T000000Z-abc"));
        assert_eq!(value(&tags, "team"), Some("ops"));
    }
}
