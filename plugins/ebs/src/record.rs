//! What the plugin returns to the catalog, and reads back in verify, restore, prune and
//! teardown. Plain serde types: a record written by this version must stay readable by later
//! ones, so fields are only ever added, with defaults.

use serde::{Deserialize, Serialize};

use crate::config::Mode;

/// The backed-up instance, as restore needs it to launch a replacement and the host fix-up
/// steps need it to rewrite old addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InstanceRecord {
    pub instance_id: String,
    #[serde(default)]
    pub instance_type: String,
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub private_ip: Option<String>,
    #[serde(default)]
    pub public_ip: Option<String>,
    /// The private DNS name (`ip-10-0-0-5.ec2.internal`).
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub root_device_name: Option<String>,
    /// Its IAM instance profile (`arn:aws:iam::…:instance-profile/NAME`): restore launches with
    /// it, so the new machine may do what the old one could.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile_arn: Option<String>,
    /// The Elastic IP associated with it (`eipalloc-…`), which restore can move to the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip_allocation_id: Option<String>,
}

/// One snapshot of one volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub snapshot_id: String,
    #[serde(default)]
    pub volume_id: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
}

/// The AMI's copy in another region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CopyRecord {
    pub region: String,
    pub image_id: String,
    #[serde(default)]
    pub snapshot_ids: Vec<String>,
}

/// The record of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BackupRecord {
    pub mode: Mode,
    pub region: String,
    pub instance: InstanceRecord,
    /// The AMI (`mode = "ami"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<SnapshotRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyRecord>,
}

impl BackupRecord {
    /// Every image of this backup with its region: the main one first, then the copies.
    pub(crate) fn images(&self) -> Vec<(String, String)> {
        let main = self
            .image_id
            .iter()
            .map(|id| (self.region.clone(), id.clone()));
        let copies = self
            .copies
            .iter()
            .map(|c| (c.region.clone(), c.image_id.clone()));
        main.chain(copies).collect()
    }
}

/// The record of a restore: what teardown undoes, and what the new machine was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RestoreRecord {
    pub instance_id: String,
    pub region: String,
    pub image_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_instance_profile: Option<String>,
    /// The old machine's private IP, when the new one was launched with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_private_ip: Option<String>,
    /// The Elastic IP moved to the new machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic_ip_allocation_id: Option<String>,
}
