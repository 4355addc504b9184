//! Mount safety: never back up an empty mount point, never restore into the wrong filesystem.
//!
//! When an NFS volume is not mounted, its mount point is an empty folder on the root disk. A
//! backup of it would publish an empty snapshot (and prune could then drop the good ones); a
//! restore into it would fill the root disk. So the source is checked against
//! `/proc/self/mountinfo`: the filesystem holding it must be of the expected type (and device,
//! when configured) before anything is read or written.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// What kind of storage the source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An NFS mount: the filesystem holding the source must be `nfs` or `nfs4`.
    Nfs,
    /// A local folder: only the explicit expectations are checked.
    Local,
}

/// What the filesystem holding the source must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountExpectation {
    pub kind: SourceKind,
    /// Exact filesystem type, e.g. `nfs4` or `ext4`.
    pub fs_type: Option<String>,
    /// Exact mount source, e.g. `10.0.0.5:/exports/circleci` or `/dev/nvme1n1`.
    pub device: Option<String>,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub device: String,
}

/// Parses the text of `/proc/self/mountinfo` (lines it cannot read are ignored).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|&f| f == "-")?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fs_type: unescape(fields.get(separator + 1)?),
                device: unescape(fields.get(separator + 2)?),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount holding absolute path `path`: the longest mount point above it, the last mounted
/// when several are stacked on one point.
pub fn mount_of<'m>(path: &Path, mounts: &'m [Mount]) -> Option<&'m Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .and_then(|best| {
            mounts
                .iter()
                .rev()
                .find(|m| m.mount_point == best.mount_point)
        })
}

/// Checks `path` against `expectation` using `mounts`; returns the mount holding it.
pub fn check<'m>(
    path: &Path,
    expectation: &MountExpectation,
    mounts: &'m [Mount],
) -> Result<&'m Mount> {
    let absolute = normalize(path);
    let mount = mount_of(&absolute, mounts)
        .ok_or_else(|| Error::Mount(format!("no mount holds {}", absolute.display())))?;
    let describe = || {
        format!(
            "{} is on {} ({}) mounted at {}",
            absolute.display(),
            mount.fs_type,
            mount.device,
            mount.mount_point.display()
        )
    };
    if let Some(fs_type) = &expectation.fs_type {
        if &mount.fs_type != fs_type {
            return Err(Error::Mount(format!("{}, expected {fs_type}", describe())));
        }
    } else if expectation.kind == SourceKind::Nfs && !mount.fs_type.starts_with("nfs") {
        return Err(Error::Mount(format!(
            "{}, expected an NFS mount: is the volume mounted?",
            describe()
        )));
    }
    if let Some(device) = &expectation.device {
        if &mount.device != device {
            return Err(Error::Mount(format!("{}, expected {device}", describe())));
        }
    }
    Ok(mount)
}

/// Checks `path` against the mounts of this process.
pub fn check_current(path: &Path, expectation: &MountExpectation) -> Result<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").at("/proc/self/mountinfo")?;
    let mounts = parse_mountinfo(&text);
    check(path, expectation, &mounts).cloned()
}

/// `path` made absolute, symlinks resolved where it exists, `.`/`..` removed lexically where not.
fn normalize(path: &Path) -> PathBuf {
    if let Ok(real) = path.canonicalize() {
        return real;
    }
    let mut out = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    for component in path.components() {
        match component {
            Component::RootDir => out = PathBuf::from("/"),
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /data rw,relatime shared:2 - ext4 /dev/sdb1 rw
41 22 0:51 / /data/circle\\040ci rw,relatime shared:3 - nfs4 10.0.0.5:/exports/ci rw,vers=4.1
42 41 0:52 / /data/circle\\040ci rw - tmpfs tmpfs rw
";

    fn expect(kind: SourceKind) -> MountExpectation {
        MountExpectation {
            kind,
            fs_type: None,
            device: None,
        }
    }

    #[test]
    fn parses_and_finds_the_innermost_top_mount() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[2].mount_point, Path::new("/data/circle ci"));
        assert_eq!(mounts[2].device, "10.0.0.5:/exports/ci");
        assert_eq!(
            mount_of(Path::new("/data/x"), &mounts).unwrap().device,
            "/dev/sdb1"
        );
        assert_eq!(
            mount_of(Path::new("/datax"), &mounts).unwrap().device,
            "/dev/sda1"
        );
        // Stacked mounts: the last one is the one visible.
        assert_eq!(
            mount_of(Path::new("/data/circle ci/a"), &mounts)
                .unwrap()
                .fs_type,
            "tmpfs"
        );
    }

    #[test]
    fn an_unmounted_nfs_mount_point_is_refused() {
        let mounts = parse_mountinfo(MOUNTINFO);
        let err = check(Path::new("/mnt/nfs"), &expect(SourceKind::Nfs), &mounts).unwrap_err();
        assert!(err.to_string().contains("is the volume mounted"), "{err}");
        assert!(check(Path::new("/mnt/nfs"), &expect(SourceKind::Local), &mounts).is_ok());

        let mounts = parse_mountinfo(
            &MOUNTINFO.replace("42 41 0:52 / /data/circle\\040ci rw - tmpfs tmpfs rw\n", ""),
        );
        let found = check(
            Path::new("/data/circle ci/x"),
            &expect(SourceKind::Nfs),
            &mounts,
        )
        .unwrap();
        assert_eq!(found.fs_type, "nfs4");
    }

    #[test]
    fn explicit_type_and_device_must_match() {
        let mounts = parse_mountinfo(MOUNTINFO);
        let mut expectation = expect(SourceKind::Local);
        expectation.fs_type = Some("ext4".into());
        expectation.device = Some("/dev/sdb1".into());
        assert!(check(Path::new("/data/a"), &expectation, &mounts).is_ok());
        expectation.device = Some("/dev/sdc1".into());
        assert!(check(Path::new("/data/a"), &expectation, &mounts).is_err());
        expectation.device = None;
        expectation.fs_type = Some("xfs".into());
        assert!(check(Path::new("/data/a"), &expectation, &mounts).is_err());
    }
}
