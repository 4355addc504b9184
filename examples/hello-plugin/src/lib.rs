//! `checksum-file`: an example third-party backplan plugin, and the smallest complete one.
//!
//! It backs up one file by copying it into a folder, with the copy's size and sha256 in the run
//! record; `verify` re-reads the copy and compares the checksum; `restore` puts the copy back (by
//! default where it came from, or to `-o target=PATH`), refusing to overwrite a different
//! existing file unless the operator passes `--force`. Every action honours `--dry-run`, reports
//! progress in bytes, logs through the context, and stops when the run is cancelled.
//!
//! It shows what a plugin author writes: a documented `deny_unknown_fields` config with a JSON
//! Schema, a record that `verify` and `restore` read back, errors that tell the runner whether a
//! retry may help, `declare_plugin!` with the `dynamic` feature for the `cdylib`, and in-process
//! tests through [`backplan_plugin_sdk::testing::Harness`]. The generic parts — writing a file
//! atomically, checksums, progress, cancellation, I/O errors that name the path — are the SDK's
//! [`files`] helpers.
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

use std::path::PathBuf;

use backplan_plugin_sdk::files::{self, Checksum};
use backplan_plugin_sdk::{Action, Context, Plugin, PluginResult, StepOutput, declare_plugin};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// The copy's size and sha256 (recorded as the fields `size` and `sha256`).
    #[serde(flatten)]
    pub checksum: Checksum,
}

/// The `-o KEY=VALUE` options of `restore`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreOptions {
    /// Where to put the file back instead of its `source`.
    target: Option<PathBuf>,
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
    // `check` is always callable, listed or not.
    const ACTIONS: &'static [Action] = &[Action::Backup, Action::Verify, Action::Restore];

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        files::require_absolute("source", &config.source)?;
        files::require_destination("destination", &config.destination)?;
        // Before a restore (possibly on a fresh machine) the source need not exist yet.
        if ctx.request().check_for == Some(Action::Restore) {
            return Ok(StepOutput::new("configuration is valid"));
        }
        let size = files::regular_file_size(&config.source)?;
        let source = config.source.display();
        Ok(StepOutput::new(format!(
            "{source} is readable ({size} bytes)"
        )))
    }

    fn backup(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let (source, destination) = (&config.source, &config.destination);
        let size = files::regular_file_size(source)?;
        // A regular file's path always ends in a file name.
        let name = source.file_name().unwrap_or_default().to_string_lossy();
        let copy = destination.join(format!("{}-{name}", ctx.request().run_id));
        let (from, to) = (source.display(), copy.display());
        if ctx.dry_run() {
            return Ok(StepOutput::new(format!(
                "would copy {from} ({size} bytes) to {to}"
            )));
        }
        ctx.info(format!("copying {from} to {to}"));
        // Creates `destination` when missing; the copy is complete and synced, or absent.
        let checksum = files::copy(ctx, source, &copy)?;
        let summary = format!("copied {from} ({checksum}) to {to}");
        let record = CopyRecord {
            source: source.clone(),
            copy: copy.clone(),
            checksum: checksum.clone(),
        };
        Ok(StepOutput::new(summary)
            .output("copy", &copy)
            .output("sha256", &checksum.sha256)
            .bytes(checksum.size)
            .record(record))
    }

    fn verify(&self, ctx: &Context, _config: &Config) -> PluginResult<StepOutput> {
        let record: CopyRecord = ctx.record()?;
        files::verify_checksum(ctx, &record.copy, &record.checksum)?;
        let summary = format!("{} is intact ({})", record.copy.display(), record.checksum);
        Ok(StepOutput::new(summary).bytes(record.checksum.size))
    }

    fn restore(&self, ctx: &Context, _config: &Config) -> PluginResult<StepOutput> {
        let record: CopyRecord = ctx.record()?;
        let target = ctx.options::<RestoreOptions>()?.target;
        let target = target.unwrap_or_else(|| record.source.clone());
        let (from, to) = (record.copy.display(), target.display());
        // Never put back a copy that is not the one backed up.
        files::verify_checksum(ctx, &record.copy, &record.checksum)?;
        if !files::needs_restore(ctx, &target, &record.checksum)? {
            return Ok(StepOutput::new(format!("{to} already matches the backup")));
        }
        if ctx.dry_run() {
            return Ok(StepOutput::new(format!("would restore {from} to {to}")));
        }
        // Put in place only if the bytes written are the backup's.
        files::copy_verified(ctx, &record.copy, &target, &record.checksum)?;
        let size = record.checksum.size;
        Ok(StepOutput::new(format!("restored {to} ({size} bytes)"))
            .output("path", &target)
            .bytes(size))
    }
}

declare_plugin!(ChecksumFile);

#[cfg(test)]
mod tests {
    use backplan_plugin_sdk::testing::Harness;
    use backplan_plugin_sdk::{ErrorKind, Level};
    use serde_json::{Value, json};

    use std::fs;

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
        assert_eq!(record.checksum.size, 19);
        assert_eq!(
            fs::read(&record.copy).unwrap(),
            fs::read(f.source()).unwrap()
        );
        assert_eq!(backup.outputs["sha256"], record.checksum.sha256.as_str());
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
