//! The backed-up machine, written into tags at backup so that a lost catalog can be rebuilt.
//!
//! A backup's record holds what restore needs to launch the same machine again (its type,
//! subnet, security groups, key pair, instance profile, Elastic IP) and what later steps read
//! (its addresses and host name). DescribeImages tells none of it, so backup writes it onto the
//! image, its snapshots and its copies (and, in snapshots mode, each snapshot): one compact JSON
//! object with short keys, empty fields left out, cut into tag values of at most 256 characters
//! (EC2's limit) under `backplan:machine`, `backplan:machine.2`, `backplan:machine.3`...
//! `discover` joins them in that order and reads the machine back. A typical machine takes two
//! tags; the README lists the keys.

use aws_sdk_ec2::types::Tag;
use serde::{Deserialize, Serialize};

use crate::record::InstanceRecord;
use crate::tags::value;

/// The first tag's key; the next ones add `.2`, `.3`...
pub(crate) const MACHINE: &str = "backplan:machine";
/// The longest tag value EC2 takes, in characters.
const VALUE_CHARS: usize = 256;

/// [`InstanceRecord`] under short keys.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Facts {
    id: String,
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    instance_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vpc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    az: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sg: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eip: Option<String>,
}

/// The tags describing `machine`, if they fit in `room` tags; otherwise how many it would take.
pub(crate) fn tags(machine: &InstanceRecord, room: usize) -> Result<Vec<(String, String)>, usize> {
    let facts = Facts {
        id: machine.instance_id.clone(),
        instance_type: machine.instance_type.clone(),
        subnet: machine.subnet_id.clone(),
        vpc: machine.vpc_id.clone(),
        az: machine.availability_zone.clone(),
        sg: machine.security_group_ids.clone(),
        key: machine.key_name.clone(),
        ip: machine.private_ip.clone(),
        public: machine.public_ip.clone(),
        host: machine.hostname.clone(),
        root: machine.root_device_name.clone(),
        profile: machine.iam_instance_profile_arn.clone(),
        eip: machine.elastic_ip_allocation_id.clone(),
    };
    let text: Vec<char> = serde_json::to_string(&facts)
        .expect("facts serialise")
        .chars()
        .collect();
    let values: Vec<String> = text
        .chunks(VALUE_CHARS)
        .map(|c| c.iter().collect())
        .collect();
    if values.len() > room {
        return Err(values.len());
    }
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| (key(i), value))
        .collect())
}

/// The `i`th tag's key (from 0).
fn key(i: usize) -> String {
    match i {
        0 => MACHINE.to_owned(),
        _ => format!("{MACHINE}.{}", i + 1),
    }
}

/// The machine `tags` describe: `None` when they say nothing of it (a backup made before
/// backups were tagged so), an error when what they say does not read.
pub(crate) fn read(tags: &[Tag]) -> Option<Result<InstanceRecord, String>> {
    let mut text = value(tags, MACHINE)?.to_owned();
    for i in 1.. {
        match value(tags, &key(i)) {
            Some(more) => text.push_str(more),
            None => break,
        }
    }
    Some(
        serde_json::from_str::<Facts>(&text)
            .map(|f| InstanceRecord {
                instance_id: f.id,
                instance_type: f.instance_type,
                subnet_id: f.subnet,
                vpc_id: f.vpc,
                availability_zone: f.az,
                security_group_ids: f.sg,
                key_name: f.key,
                private_ip: f.ip,
                public_ip: f.public,
                hostname: f.host,
                root_device_name: f.root,
                iam_instance_profile_arn: f.profile,
                elastic_ip_allocation_id: f.eip,
            })
            .map_err(|e| format!("its {MACHINE} tags do not read: {e}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> InstanceRecord {
        InstanceRecord {
            instance_id: "i-0123456789abcdef0".into(),
            instance_type: "m5.xlarge".into(),
            subnet_id: Some("subnet-0123456789abcdef0".into()),
            vpc_id: Some("vpc-0123456789abcdef0".into()),
            availability_zone: Some("us-east-1a".into()),
            security_group_ids: vec!["sg-0123456789abcdef0".into(), "sg-0fedcba9876543210".into()],
            key_name: Some("ops key".into()),
            private_ip: Some("10.0.1.5".into()),
            public_ip: Some("54.1.2.3".into()),
            hostname: Some("ip-10-0-1-5.ec2.internal".into()),
            root_device_name: Some("/dev/sda1".into()),
            iam_instance_profile_arn: Some(
                "arn:aws:iam::123456789012:instance-profile/circleci-services".into(),
            ),
            elastic_ip_allocation_id: Some("eipalloc-0123456789abcdef0".into()),
        }
    }

    fn as_tags(pairs: &[(String, String)]) -> Vec<Tag> {
        pairs
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }

    #[test]
    fn a_machine_fits_in_two_tags_and_reads_back_whole() {
        let tags = tags(&machine(), 3).unwrap();
        let keys: Vec<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, [MACHINE, "backplan:machine.2"]);
        assert!(tags.iter().all(|(_, v)| v.chars().count() <= 256));
        assert_eq!(read(&as_tags(&tags)), Some(Ok(machine())));
        // Shuffled, as EC2 lists them.
        let mut reversed = tags.clone();
        reversed.reverse();
        assert_eq!(read(&as_tags(&reversed)), Some(Ok(machine())));
    }

    #[test]
    fn a_machine_too_long_for_the_room_left_says_how_many_tags_it_needs() {
        let mut long = machine();
        long.iam_instance_profile_arn = Some(format!(
            "arn:aws:iam::123456789012:instance-profile/{}/p",
            "deep/".repeat(100)
        ));
        assert_eq!(tags(&long, 2), Err(4));
        let pairs = tags(&long, 4).unwrap();
        assert_eq!(read(&as_tags(&pairs)), Some(Ok(long)));
    }

    #[test]
    fn no_tag_says_nothing_and_a_cut_tag_is_an_error() {
        assert_eq!(read(&[]), None);
        let mut pairs = tags(&machine(), 3).unwrap();
        pairs.pop();
        assert!(read(&as_tags(&pairs)).unwrap().is_err());
    }
}
