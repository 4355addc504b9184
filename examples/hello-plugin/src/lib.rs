//! `checksum-file`: an example third-party backplan plugin.
//!
//! It backs up one file by copying it into a folder, with the copy's sha256 in the run record;
//! `verify` re-reads the copy and compares the checksum; `restore` puts the copy back (by default
//! where it came from), refusing to overwrite a different existing file unless the operator
//! passes `--force`. Every action honours `--dry-run`, reports progress in bytes, logs through the
//! context, and stops when the run is cancelled.
//!
//! It is small on purpose: it shows everything a plugin author needs — a documented
//! `deny_unknown_fields` config with a JSON Schema, typed errors that tell the runner whether a
//! retry may help, a record that `verify` and `restore` read back, `declare_plugin!` with the
//! `dynamic` feature for the `cdylib`, and in-process tests through
//! [`backplan_plugin_sdk::testing::Harness`].
//!
//! ```toml
//! [[plugins]]
//! path = "/usr/lib/backplan/plugins/libbackplan_checksum_file.so"
//!
//! [[steps]]
//! id = "replicated-config"
//! plugin = "checksum-file"
//! [steps.config]
//! source = "/etc/replicated.conf"
//! destination = "/var/backups/replicated"
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use backplan_plugin_sdk::{
    Action, Context, Plugin, PluginError, PluginResult, Progress, StepOutput, declare_plugin,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `config` table of a `checksum-file` step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file to back up, and where `restore` puts it back (an absolute path).
    pub source: PathBuf,
    /// The folder the copies go into (an absolute path; created when missing). Every backup
    /// writes a new `<run id>-<file name>` there, so earlier copies are kept.
    pub destination: PathBuf,
}

/// What a backup of this plugin records; `verify` and `restore` read it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// The file that was backed up.
    pub source: PathBuf,
    /// Where the copy is.
    pub copy: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

/// The `checksum-file` plugin.
#[derive(Debug, Default)]
pub struct ChecksumFile;

impl Plugin for ChecksumFile {
    type Config = Config;
    const NAME: &'static str = "checksum-file";
    const SUMMARY: &'static str =
        "Copies one file aside with its sha256; verifies and restores it.";
    const DOCS: &'static str = include_str!("../README.md");
    const ACTIONS: &'static [Action] = &[
        Action::Check,
        Action::Backup,
        Action::Verify,
        Action::Restore,
    ];

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        for (key, path) in [
            ("source", &config.source),
            ("destination", &config.destination),
        ] {
            if !path.is_absolute() {
                return Err(PluginError::config(format!(
                    "`{key}` must be an absolute path, not {}",
                    path.display()
                )));
            }
        }
        if config.destination.exists() && !config.destination.is_dir() {
            return Err(PluginError::config(format!(
                "`destination` {} exists and is not a folder",
                config.destination.display()
            )));
        }
        // Before a restore (possibly on a fresh machine) the source need not exist yet.
        if ctx.request().check_for == Some(Action::Restore) {
            return Ok(StepOutput::new("configuration is valid"));
        }
        let size = source_size(&config.source)?;
        Ok(StepOutput::new(format!(
            "{} is readable ({size} bytes)",
            config.source.display()
        )))
    }

    fn backup(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let size = source_size(&config.source)?;
        let name = config
            .source
            .file_name()
            .ok_or_else(|| PluginError::config("`source` has no file name"))?;
        let copy = config.destination.join(format!(
            "{}-{}",
            ctx.request().run_id,
            name.to_string_lossy()
        ));
        if ctx.request().dry_run {
            return Ok(StepOutput::new(format!(
                "would copy {} ({size} bytes) to {}",
                config.source.display(),
                copy.display()
            )));
        }
        fs::create_dir_all(&config.destination)
            .map_err(|e| io_error("cannot create", &config.destination, &e))?;
        ctx.info(format!(
            "copying {} to {}",
            config.source.display(),
            copy.display()
        ));
        let (size, sha256) = copy_checksummed(ctx, &config.source, &copy)?;
        let record = CopyRecord {
            source: config.source.clone(),
            copy: copy.clone(),
            size,
            sha256: sha256.clone(),
        };
        Ok(StepOutput::new(format!(
            "copied {} ({size} bytes, sha256 {}…) to {}",
            config.source.display(),
            &sha256[..12],
            copy.display()
        ))
        .output("copy", &copy)
        .output("sha256", &sha256)
        .bytes(size)
        .record(record))
    }

    fn verify(&self, ctx: &Context, _config: &Config) -> PluginResult<StepOutput> {
        let record: CopyRecord = ctx.record()?;
        check_copy(ctx, &record)?;
        Ok(StepOutput::new(format!(
            "{} is intact (sha256 {}…)",
            record.copy.display(),
            &record.sha256[..12.min(record.sha256.len())]
        ))
        .bytes(record.size))
    }

    fn restore(&self, ctx: &Context, _config: &Config) -> PluginResult<StepOutput> {
        let record: CopyRecord = ctx.record()?;
        let request = ctx.request();
        let target = match request.options.get("target").and_then(|t| t.as_str()) {
            Some(target) => PathBuf::from(target),
            None => record.source.clone(),
        };
        // Never put back a copy that is not the one backed up.
        check_copy(ctx, &record)?;
        if target.exists() {
            let (_, existing) = hash_file(ctx, &target, None)?;
            if existing == record.sha256 {
                return Ok(StepOutput::new(format!(
                    "{} already matches the backup",
                    target.display()
                )));
            }
            if !request.force {
                return Err(PluginError::permanent(format!(
                    "refusing to overwrite {}: it differs from the backup (sha256 {existing}, \
                     the backup has {})",
                    target.display(),
                    record.sha256
                ))
                .with_detail("restore with --force to overwrite it"));
            }
            ctx.warn(format!(
                "overwriting {}, which differs from the backup (--force)",
                target.display()
            ));
        }
        if request.dry_run {
            return Ok(StepOutput::new(format!(
                "would restore {} to {}",
                record.copy.display(),
                target.display()
            )));
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| io_error("cannot create", parent, &e))?;
        }
        let (size, sha256) = copy_checksummed(ctx, &record.copy, &target)?;
        if sha256 != record.sha256 {
            return Err(PluginError::transient(format!(
                "the restored {} has sha256 {sha256}, the backup has {}",
                target.display(),
                record.sha256
            )));
        }
        Ok(
            StepOutput::new(format!("restored {} ({size} bytes)", target.display()))
                .output("path", &target)
                .bytes(size),
        )
    }
}

declare_plugin!(ChecksumFile);

/// The size of the file to back up, or a clear error when it is not there.
fn source_size(source: &Path) -> PluginResult<u64> {
    match fs::metadata(source) {
        Ok(meta) if meta.is_file() => Ok(meta.len()),
        Ok(_) => Err(PluginError::permanent(format!(
            "the source {} is not a regular file",
            source.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PluginError::permanent(format!(
            "the source file {} does not exist",
            source.display()
        ))),
        Err(e) => Err(io_error("cannot read", source, &e)),
    }
}

/// Confirms the copy a record names has the recorded checksum.
fn check_copy(ctx: &Context, record: &CopyRecord) -> PluginResult<()> {
    if !record.copy.is_file() {
        return Err(PluginError::permanent(format!(
            "the copy {} is missing",
            record.copy.display()
        )));
    }
    let (size, sha256) = hash_file(ctx, &record.copy, None)?;
    if sha256 != record.sha256 || size != record.size {
        return Err(PluginError::permanent(format!(
            "checksum mismatch: {} has sha256 {sha256} ({size} bytes), the backup recorded {} \
             ({} bytes)",
            record.copy.display(),
            record.sha256,
            record.size
        )));
    }
    Ok(())
}

/// Copies `from` to `to` through a temporary file next to `to` (renamed when complete and
/// synced), returning the size and sha256 of the bytes written.
fn copy_checksummed(ctx: &Context, from: &Path, to: &Path) -> PluginResult<(u64, String)> {
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let partial = to.with_file_name(format!(".{name}.partial"));
    let result = (|| {
        let mut out =
            File::create(&partial).map_err(|e| io_error("cannot create", &partial, &e))?;
        let hashed = hash_file(ctx, from, Some(&mut out))?;
        out.sync_all()
            .map_err(|e| io_error("cannot write", &partial, &e))?;
        fs::rename(&partial, to).map_err(|e| io_error("cannot rename into", to, &e))?;
        Ok(hashed)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

/// Reads `path` once, hashing it and writing it to `sink` if given; reports progress and stops
/// when the run is cancelled.
fn hash_file(
    ctx: &Context,
    path: &Path,
    mut sink: Option<&mut File>,
) -> PluginResult<(u64, String)> {
    let mut file = File::open(path).map_err(|e| io_error("cannot open", path, &e))?;
    let total = file.metadata().map(|m| m.len()).ok();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    loop {
        ctx.check_cancelled()?;
        let n = file
            .read(&mut buf)
            .map_err(|e| io_error("cannot read", path, &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(out) = sink.as_mut() {
            out.write_all(&buf[..n])
                .map_err(|e| PluginError::permanent(format!("cannot write the copy: {e}")))?;
        }
        done += n as u64;
        ctx.progress(Progress {
            done,
            total,
            unit: "bytes".into(),
            message: format!("reading {}", path.display()),
        });
    }
    let digest = hasher.finalize();
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((done, hex))
}

/// An I/O failure: transient when the OS says it may pass, permanent otherwise.
fn io_error(what: &str, path: &Path, e: &io::Error) -> PluginError {
    let message = format!("{what} {}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            PluginError::transient(message)
        }
        _ => PluginError::permanent(message),
    }
}

#[cfg(test)]
mod tests {
    use backplan_plugin_sdk::testing::Harness;
    use backplan_plugin_sdk::{ErrorKind, Level};
    use serde_json::{Value, json};

    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        harness: Harness,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("app.conf"), b"listen = 10.0.0.12\n").unwrap();
            Fixture {
                dir,
                harness: Harness::new(plugin_descriptor()),
            }
        }

        fn source(&self) -> PathBuf {
            self.dir.path().join("app.conf")
        }

        fn config(&self) -> Value {
            json!({
                "source": self.source(),
                "destination": self.dir.path().join("backups"),
            })
        }

        /// Runs `action` against the record of an earlier backup.
        fn with_record(
            &self,
            action: Action,
            backup: &StepOutput,
            tweak: impl FnOnce(&mut backplan_plugin_sdk::Request),
        ) -> PluginResult<StepOutput> {
            let mut request = self.harness.request(action, self.config());
            request.source_run_id = Some("test-run".into());
            request.record = Some(backup.record.clone());
            tweak(&mut request);
            self.harness.run_request(&request)
        }
    }

    #[test]
    fn backup_verify_restore_round_trip() {
        let f = Fixture::new();
        let description = f.harness.describe();
        assert_eq!(description.name, "checksum-file");
        assert!(f.harness.run(Action::Check, f.config()).is_ok());

        let backup = f.harness.run(Action::Backup, f.config()).unwrap();
        let record: CopyRecord = serde_json::from_value(backup.record.clone()).unwrap();
        assert_eq!(record.size, 19);
        assert_eq!(
            fs::read(&record.copy).unwrap(),
            fs::read(f.source()).unwrap()
        );
        assert_eq!(backup.outputs["sha256"], record.sha256.as_str());
        assert!(
            f.harness
                .logs()
                .iter()
                .any(|(level, m)| *level == Level::Info && m.contains("copying"))
        );
        let last = f.harness.progress().pop().expect("progress was reported");
        assert_eq!((last.done, last.total), (19, Some(19)));

        let verified = f.with_record(Action::Verify, &backup, |_| {}).unwrap();
        assert!(verified.summary.contains("intact"), "{}", verified.summary);

        fs::remove_file(f.source()).unwrap();
        let restored = f.with_record(Action::Restore, &backup, |_| {}).unwrap();
        assert!(
            restored.summary.contains("restored"),
            "{}",
            restored.summary
        );
        assert_eq!(fs::read(f.source()).unwrap(), b"listen = 10.0.0.12\n");
    }

    #[test]
    fn a_changed_copy_fails_verify_with_a_checksum_mismatch() {
        let f = Fixture::new();
        let backup = f.harness.run(Action::Backup, f.config()).unwrap();
        let record: CopyRecord = serde_json::from_value(backup.record.clone()).unwrap();
        fs::write(&record.copy, b"listen = 10.0.0.99\n").unwrap();

        let err = f.with_record(Action::Verify, &backup, |_| {}).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.contains("checksum mismatch"), "{err}");
        // A corrupted copy is never restored either.
        let err = f
            .with_record(Action::Restore, &backup, |r| r.force = true)
            .unwrap_err();
        assert!(err.message.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_missing_source_is_a_clear_error() {
        let f = Fixture::new();
        fs::remove_file(f.source()).unwrap();
        for action in [Action::Check, Action::Backup] {
            let err = f.harness.run(action, f.config()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Permanent, "{action}");
            assert!(err.message.contains("does not exist"), "{err}");
            assert!(err.message.contains("app.conf"), "{err}");
        }
        assert!(!f.dir.path().join("backups").exists());
    }

    #[test]
    fn restore_refuses_to_overwrite_a_different_file_unless_forced() {
        let f = Fixture::new();
        let backup = f.harness.run(Action::Backup, f.config()).unwrap();
        fs::write(f.source(), b"changed since\n").unwrap();

        let err = f.with_record(Action::Restore, &backup, |_| {}).unwrap_err();
        assert!(err.message.contains("refusing to overwrite"), "{err}");
        assert_eq!(fs::read(f.source()).unwrap(), b"changed since\n");

        let dry = f.with_record(Action::Restore, &backup, |r| {
            r.force = true;
            r.dry_run = true;
        });
        assert!(dry.unwrap().summary.starts_with("would restore"));
        assert_eq!(fs::read(f.source()).unwrap(), b"changed since\n");

        f.with_record(Action::Restore, &backup, |r| r.force = true)
            .unwrap();
        assert_eq!(fs::read(f.source()).unwrap(), b"listen = 10.0.0.12\n");
    }

    #[test]
    fn restore_to_another_target_and_dry_run_backup_write_nothing_unexpected() {
        let f = Fixture::new();
        let mut request = f.harness.request(Action::Backup, f.config());
        request.dry_run = true;
        let dry = f.harness.run_request(&request).unwrap();
        assert!(dry.summary.starts_with("would copy"), "{}", dry.summary);
        assert!(!f.dir.path().join("backups").exists());

        let backup = f.harness.run(Action::Backup, f.config()).unwrap();
        let target = f.dir.path().join("drill/app.conf");
        let target_text = target.to_str().unwrap().to_owned();
        f.with_record(Action::Restore, &backup, |r| {
            r.options = json!({"target": target_text})
        })
        .unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"listen = 10.0.0.12\n");
    }

    #[test]
    fn config_mistakes_are_config_errors() {
        let f = Fixture::new();
        let typo = json!({"source": f.source(), "destinaton": "/tmp"});
        let err = f.harness.run(Action::Check, typo).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("destinaton"), "{err}");

        let relative = json!({"source": "app.conf", "destination": "/tmp/x"});
        let err = f.harness.run(Action::Check, relative).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(err.message.contains("absolute"), "{err}");
    }

    #[test]
    fn cancellation_stops_the_copy() {
        let f = Fixture::new();
        f.harness.set_cancelled(true);
        let err = f.harness.run(Action::Backup, f.config()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled);
        let partial = fs::read_dir(f.dir.path().join("backups")).unwrap().count();
        assert_eq!(partial, 0, "no partial copy is left behind");
    }
}
