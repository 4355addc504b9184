//! A minimal command line over the engine, for benchmarks and manual drills without a plan:
//!
//! ```text
//! engine backup  REPO SOURCE
//! engine restore REPO TARGET [SNAPSHOT]
//! engine verify  REPO [SNAPSHOT]
//! ```
//! SNAPSHOT defaults to the latest. With `ENGINE_PASSPHRASE` set, the repository is encrypted
//! (created so by `backup`, opened with it by the others). REPO is a folder or `s3://bucket/prefix` (reached through
//! the standard AWS environment, e.g. `AWS_ENDPOINT_URL_S3`). Prints one JSON line with the
//! result; for verify, the damaged files and what it found of the repository's indexes and packs
//! (`inconsistent`, `orphans`), and whether all is `sound`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use backplan_plugin_nfs_objects::backend::{
    Backend, LocalBackend, S3Backend, S3Location, S3Options,
};
use backplan_plugin_nfs_objects::backup::{BackupOptions, backup};
use backplan_plugin_nfs_objects::control::Control;
use backplan_plugin_nfs_objects::error::{Error, Result};
use backplan_plugin_nfs_objects::index::Finding;
use backplan_plugin_nfs_objects::keyring::Kek;
use backplan_plugin_nfs_objects::repo::{RepoConfig, Repository};
use backplan_plugin_nfs_objects::restore::{RestoreOptions, restore};
use backplan_plugin_nfs_objects::snapshot::{self, Snapshot};
use backplan_plugin_nfs_objects::verify::{VerifyOptions, verify};
use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<serde_json::Value> {
    let usage = || Error::Invalid("usage: engine backup|restore|verify REPO ...".into());
    let (command, repository) = match args {
        [command, repo, ..] => (command.as_str(), repo.as_str()),
        _ => return Err(usage()),
    };
    let backend: Arc<dyn Backend> = match S3Location::parse(repository) {
        Some(location) => Arc::new(S3Backend::connect(location?, &S3Options::default())?),
        None => Arc::new(LocalBackend::new(PathBuf::from(repository))?),
    };
    let kek = std::env::var("ENGINE_PASSPHRASE")
        .ok()
        .map(|passphrase| Kek::Passphrase {
            passphrase: passphrase.into_bytes(),
            from: "passphrase in $ENGINE_PASSPHRASE".into(),
        });
    match (command, &args[2..]) {
        ("backup", [source]) => {
            let repo = Repository::open_or_init_with(backend, RepoConfig::default(), kek.as_ref())?;
            let report = backup(&repo, &BackupOptions::new(source), Control::silent())?;
            Ok(
                json!({"snapshot": report.snapshot.id, "stats": report.snapshot.stats,
                      "skipped": report.skipped.len(), "torn": report.snapshot.torn}),
            )
        }
        ("restore", [target, rest @ ..]) => {
            let repo = Repository::open_with(backend, kek.as_ref())?;
            let snapshot = pick(&repo, rest.first())?;
            let options = RestoreOptions::new(target);
            let report = restore(&repo, &snapshot, &options, Control::silent())?;
            Ok(
                json!({"snapshot": snapshot.id, "files": report.files, "bytes": report.bytes,
                      "failed": report.failed.len(), "kept_newer": report.kept_newer.len()}),
            )
        }
        ("verify", rest) => {
            let repo = Repository::open_with(backend, kek.as_ref())?;
            let snapshot = pick(&repo, rest.first())?;
            let report = verify(
                &repo,
                &snapshot,
                &VerifyOptions::default(),
                Control::silent(),
            )?;
            let damaged: Vec<&str> = report.damaged.iter().map(|d| d.path.as_str()).collect();
            let findings = |found: &[Finding]| -> Vec<serde_json::Value> {
                found
                    .iter()
                    .map(|f| json!({"object": f.object, "problem": f.problem}))
                    .collect()
            };
            Ok(
                json!({"snapshot": snapshot.id, "files": report.files_checked,
                      "bytes": report.bytes_checked, "sound": report.is_sound(),
                      "damaged": damaged, "inconsistent": findings(&report.inconsistent),
                      "orphans": findings(&report.orphans)}),
            )
        }
        _ => Err(usage()),
    }
}

fn pick(repo: &Repository, id: Option<&String>) -> Result<Snapshot> {
    match id {
        Some(id) => snapshot::load(repo.backend().as_ref(), id),
        None => snapshot::list(repo.backend().as_ref())?
            .pop()
            .ok_or_else(|| Error::SnapshotNotFound("latest".into())),
    }
}
