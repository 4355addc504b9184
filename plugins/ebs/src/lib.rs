//! AMI and EBS snapshots of the Services machine: no-reboot images, waiting until usable,
//! retention, cross-region copy, launch on restore. Filled in by the ebs work; an empty crate
//! until then so the workspace layout is in place.
