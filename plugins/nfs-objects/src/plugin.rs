//! The `nfs-objects` plugin: the SDK's actions mapped onto the repository engine.
//!
//! This module only translates: step configuration and request options into engine options,
//! engine reports into records and warnings, engine errors into error kinds the runner acts on.
//! The backup record names the repository and snapshot, which is all that verify, restore and
//! prune need on a fresh machine; the snapshot header names the plan, step and run, which is
//! all that `discover` needs to give a lost catalog that record back.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use backplan_plugin_sdk::{
    Action, Context, Discovered, DiscoveredBackup, ErrorKind, KeyOperation, Permissions, Plugin,
    PluginError, PluginResult, Progress, Request, Role, StepOutput,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::backend::{
    Backend, LocalBackend, ObjectLock, S3Backend, S3Location, S3Options, leftovers,
};
use crate::backup::{BackupOptions, Skipped, backup, default_workers, network_workers};
use crate::control::{self, Control};
use crate::encryption::{Encryption, keys_action};
use crate::error::Error;
use crate::keyring::Kek;
use crate::mount::{MountExpectation, SourceKind, check_current};
use crate::prune::{PruneOptions, Retention, prune};
use crate::repo::{CONFIG_OBJECT, IN_PROGRESS_GRACE, RepoConfig, Repository};
use crate::restore::{RestoreOptions, restore};
use crate::snapshot::{self, Origin, Snapshot};
use crate::verify::{VerifyOptions, verify};

/// What the source is stored on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An NFS mount: backup and restore refuse to run unless it is mounted.
    Nfs,
    /// A folder on a local disk.
    #[default]
    Local,
}

/// Most worker threads a step may ask for (the schema's bound of `workers`, and the cap of the
/// default on a machine with many cores): each holds a few MiB of buffers, a chunk as read, its
/// compressed form and a pack buffer.
pub const MAX_WORKERS: usize = 64;

/// The step's `config` table. Every number is bounded and every string must be non-empty in the
/// schema, so an absurd value is a plan error at its line, before anything runs; what the
/// schema cannot say (absolute paths, a repository inside the source, retention rules that keep
/// nothing) is refused by `check`, and again by the action when a value came from an earlier
/// step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The folder to back up, an absolute path; restore puts files back here.
    #[schemars(length(min = 1))]
    pub source: PathBuf,
    /// The repository: an absolute path of a local folder (outside `source`), or
    /// `s3://bucket/prefix`.
    #[schemars(length(min = 1))]
    pub repository: String,
    /// S3 repository: the bucket's region (default: the AWS chain's, else us-east-1).
    #[schemars(length(min = 1))]
    pub region: Option<String>,
    /// S3 repository: an S3-compatible endpoint (default: the AWS chain's, e.g.
    /// `AWS_ENDPOINT_URL_S3`).
    #[schemars(length(min = 1))]
    pub endpoint_url: Option<String>,
    /// S3 repository: path-style addressing (default: on when an endpoint is configured).
    pub force_path_style: Option<bool>,
    /// S3 repository: objects larger than this many bytes go up as multipart uploads of 8 MiB
    /// parts, 4 in flight (default 104857600, 100 MiB: a pack of the default size goes in one
    /// PutObject). From 5 MiB, S3's smallest part, to 5 GiB, its largest PutObject.
    #[schemars(range(min = 5_242_880, max = 5_368_709_120_u64))]
    pub multipart_threshold: Option<u64>,
    /// `nfs` or `local` (default).
    #[serde(default)]
    pub kind: Kind,
    /// Exact filesystem type the source must be on, e.g. `nfs4`.
    #[schemars(length(min = 1))]
    pub expect_fs_type: Option<String>,
    /// Exact mount source the source must be on, e.g. `10.0.0.5:/exports/circleci`.
    #[schemars(length(min = 1))]
    pub expect_device: Option<String>,
    /// Worker threads, 1 to 64 (default: cores + 3, and 2 × cores + 4 for a restore or verify
    /// from S3, at most 64).
    #[schemars(range(min = 1, max = 64))]
    pub workers: Option<usize>,
    /// Large reads and writes around the page cache (`O_DIRECT`): `auto` (default: on for
    /// local filesystems, off on NFS and other network filesystems, where it would bypass the
    /// client's cache), `on` or `off`. Decided for the source, the repository's staging folder
    /// and a restore's target each.
    #[serde(default)]
    pub direct_io: crate::direct::DirectIo,
    /// zstd level for compressible data, 1 to 9 (default 2, which searches blobs over 256 KiB
    /// as level 3 does, with level 2's smaller tables). Higher levels are not offered: each
    /// worker would need 40 to 60 MB more and compress several times slower, for little gain on
    /// build logs.
    #[schemars(range(min = 1, max = 9))]
    pub compression_level: Option<i32>,
    /// Compress with a zstd dictionary trained from the source's own small files (default
    /// true): the first backup into a new repository trains it, once. `false` makes a new
    /// repository that binaries from before dictionaries (2026-12) can still read, and stops
    /// an existing one from using its dictionary for new data.
    pub compression_dictionary: Option<bool>,
    /// Share of files `verify` re-reads, in (0, 1] (default 1: all).
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0))]
    pub verify_fraction: Option<f64>,
    /// Restore: take a file already in place with the snapshot's size and mtime as restored,
    /// without reading it (default false: it is read and compared with the snapshot's content).
    /// Also `-o trust_metadata=true`.
    pub restore_trust_metadata: Option<bool>,
    #[serde(default)]
    pub retention: Retention,
    /// S3 repository in a bucket with Object Lock enabled: every object written gets this
    /// retention (`{ mode = "governance" | "compliance", days = N }`), and each backup extends
    /// that of the older objects it references, so no snapshot can be deleted before it is
    /// `days` old. See FORMAT.md, "Object Lock".
    pub object_lock: Option<ObjectLock>,
    /// Encrypts a new repository (format version 2) and opens an encrypted one: exactly one of
    /// `passphrase_file`, `passphrase_env`, `kms_key_id`. Set on an existing plaintext
    /// repository, or missing for an encrypted one, it is a configuration error.
    pub encryption: Option<Encryption>,
}

impl Config {
    fn expectation(&self) -> MountExpectation {
        MountExpectation {
            kind: match self.kind {
                Kind::Nfs => SourceKind::Nfs,
                Kind::Local => SourceKind::Local,
            },
            fs_type: self.expect_fs_type.clone(),
            device: self.expect_device.clone(),
        }
    }

    fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(default_workers)
            .clamp(1, MAX_WORKERS)
    }

    /// Threads for a restore or verify of `repository`: as configured, else [`default_workers`]
    /// for a folder and [`network_workers`] for S3.
    fn reading_workers(&self, repository: &str) -> usize {
        match (self.workers, S3Location::parse(repository)) {
            (None, Some(_)) => network_workers().clamp(1, MAX_WORKERS),
            _ => self.workers(),
        }
    }

    /// What the schema cannot say about this config (see [`Config`]). Values that come from an
    /// earlier step are judged once they are known.
    fn validate(&self) -> PluginResult<()> {
        if let Some(fraction) = self.verify_fraction {
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(PluginError::config("verify_fraction must be in (0, 1]"));
            }
        }
        self.retention.validate().map_err(PluginError::config)?;
        if let Some(flaw) = self.object_lock.as_ref().and_then(ObjectLock::flaw) {
            return Err(PluginError::config(flaw));
        }
        if let Some(encryption) = &self.encryption {
            encryption.validate()?;
        }
        let source = self.source.to_string_lossy();
        let source_known = !Request::is_unresolved(&source);
        if source_known && !self.source.is_absolute() {
            return Err(PluginError::config(format!(
                "source {source:?} must be an absolute path"
            )));
        }
        if Request::is_unresolved(&self.repository) || S3Location::parse(&self.repository).is_some()
        {
            return Ok(());
        }
        let repository = local_path(&self.repository)?;
        if self.object_lock.is_some() {
            return Err(PluginError::config(format!(
                "object_lock needs an S3 repository in a bucket with Object Lock enabled; {} is \
                 a local folder",
                self.repository
            )));
        }
        if !repository.is_absolute() {
            return Err(PluginError::config(format!(
                "repository {:?} must be an absolute path or s3://bucket/prefix (a relative \
                 one would depend on the folder backplan is started from)",
                self.repository
            )));
        }
        if source_known {
            let (source, repository) = (resolved(&self.source), resolved(repository));
            if repository.starts_with(&source) {
                return Err(PluginError::config(format!(
                    "repository {} is inside source {}: the backup would contain itself",
                    repository.display(),
                    source.display()
                )));
            }
            if source.starts_with(&repository) {
                return Err(PluginError::config(format!(
                    "source {} is inside repository {}",
                    source.display(),
                    repository.display()
                )));
            }
        }
        Ok(())
    }

    /// The key-encryption key the step names, read now; `None` for a plaintext repository.
    fn kek(&self) -> PluginResult<Option<Kek>> {
        self.encryption
            .as_ref()
            .map(|encryption| encryption.kek(self.region.as_deref()))
            .transpose()
    }

    /// The repository in `backend`, opened with the step's key.
    fn open(&self, backend: Arc<dyn Backend>) -> PluginResult<Repository> {
        Repository::open_with(backend, self.kek()?.as_ref()).map_err(to_plugin_error)
    }

    /// For `check`: whether the repository in `backend` is of this format, and encrypted exactly
    /// when the step names a key, whose source is read. The key itself is tried by the action
    /// (opening costs an argon2id derivation, which `check` before every run would double).
    fn check_key_choice(&self, backend: &dyn Backend) -> PluginResult<()> {
        let found = Repository::peek(backend).map_err(to_plugin_error)?;
        let kek = self.kek()?;
        found
            .check_key_choice(kek.as_ref())
            .map_err(to_plugin_error)
    }

    /// This step's repository, to write into (backup, prune): a missing local folder is made.
    fn backend(&self) -> PluginResult<Arc<dyn Backend>> {
        Request::require_resolved([self.repository.as_str()])?;
        let backend: Arc<dyn Backend> = match S3Location::parse(&self.repository) {
            Some(location) => Arc::new(self.s3(location.map_err(to_plugin_error)?)?),
            None => {
                Arc::new(LocalBackend::new(local_path(&self.repository)?).map_err(to_plugin_error)?)
            }
        };
        Ok(backend)
    }

    /// The repository at `repository` (this step's, or the one a backup recorded), to read
    /// from (check, discover, verify, restore): nothing is created, not even a local folder.
    fn reader_at(&self, repository: &str) -> PluginResult<Arc<dyn Backend>> {
        let backend: Arc<dyn Backend> = match S3Location::parse(repository) {
            Some(location) => Arc::new(self.s3(location.map_err(to_plugin_error)?)?),
            None => Arc::new(LocalBackend::reading(local_path(repository)?)),
        };
        Ok(backend)
    }

    fn s3(&self, location: S3Location) -> PluginResult<S3Backend> {
        let options = S3Options {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            object_lock: self.object_lock,
            multipart_threshold: self.multipart_threshold,
        };
        S3Backend::connect(location, &options).map_err(to_plugin_error)
    }

    /// With `object_lock`, refuses a bucket without Object Lock enabled (before anything is
    /// written into it).
    fn require_object_lock(&self) -> PluginResult<()> {
        let (Some(_), Some(location)) = (self.object_lock, S3Location::parse(&self.repository))
        else {
            return Ok(());
        };
        let backend = self.s3(location.map_err(to_plugin_error)?)?;
        backend.require_object_lock().map_err(to_plugin_error)
    }

    /// What `check` finds at the repository address, without creating anything.
    fn repository_state(&self) -> PluginResult<RepositoryState> {
        if let Some(location) = S3Location::parse(&self.repository) {
            let backend = self.s3(location.map_err(to_plugin_error)?)?;
            return Ok(if backend.exists(CONFIG_OBJECT).map_err(to_plugin_error)? {
                self.check_key_choice(&backend)?;
                RepositoryState::Readable
            } else if backend.is_empty().map_err(to_plugin_error)? {
                RepositoryState::Empty
            } else {
                RepositoryState::Foreign
            });
        }
        let folder = local_path(&self.repository)?;
        Ok(if folder.join(CONFIG_OBJECT).exists() {
            self.check_key_choice(self.reader_at(&self.repository)?.as_ref())?;
            RepositoryState::Readable
        } else if LocalBackend::holds_only_staged_files(folder) == Some(false) {
            RepositoryState::Foreign
        } else {
            RepositoryState::Empty
        })
    }
}

/// What is found where a step's repository should be.
enum RepositoryState {
    /// A repository of this format that opens.
    Readable,
    /// Nothing yet: the first backup creates the repository.
    Empty,
    /// Something else: never written into.
    Foreign,
}

/// What a backup returns, and verify/restore read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub repository: String,
    pub snapshot: String,
    pub source: String,
    pub files: u64,
    pub bytes: u64,
    pub manifest_blake3: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub torn: Vec<String>,
}

impl Record {
    /// The record of `snapshot` in `repository`: everything in it is in the snapshot's header,
    /// so `discover` gives back exactly what `backup` returned.
    fn of(repository: &str, snapshot: &Snapshot) -> Record {
        Record {
            repository: repository.to_owned(),
            snapshot: snapshot.id.clone(),
            source: snapshot.source.clone(),
            files: snapshot.stats.files,
            bytes: snapshot.stats.bytes,
            manifest_blake3: snapshot.manifest_blake3.to_hex(),
            torn: snapshot.torn.clone(),
        }
    }
}

/// The one-line summary of a backup that made `snapshot`.
fn summary_of(snapshot: &Snapshot) -> String {
    let stats = &snapshot.stats;
    format!(
        "snapshot {}: {} files, {} read ({} bytes), {} bytes stored",
        snapshot.id, stats.files, stats.files_read, stats.bytes_read, stats.bytes_stored
    )
}

/// The run a backup belongs to, for its snapshot header.
fn origin(request: &Request) -> Origin {
    Origin {
        plan: request.plan.clone(),
        step: request.step_id.clone(),
        id: request.run_id.clone(),
        started_at: run_started(&request.run_id).unwrap_or_else(jiff::Timestamp::now),
    }
}

/// When run `run_id` started, to the second: the runner's run ids begin with the UTC second the
/// run started (`20261124T182700Z-…`), and the request says no more. `None` for an id of
/// another shape.
fn run_started(run_id: &str) -> Option<jiff::Timestamp> {
    let stamp = run_id.split('-').next()?;
    let civil = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp).ok()?;
    jiff::tz::TimeZone::UTC.to_timestamp(civil).ok()
}

/// When a discovered run started, as closely as its snapshot shows. The header's run start is
/// only known to the second (from the run id), so two runs within one second would be ordered
/// at random in the rebuilt catalog — and `latest` could name the older. Runs of a plan never
/// overlap (the lock), so their snapshots were taken in the order the runs started: the time
/// from the run's second to its snapshot, squeezed into that second by a strictly increasing
/// map, orders them and never claims a start outside the second the run id names.
fn started_at(run: &Origin, snapshot: &Snapshot) -> jiff::Timestamp {
    let second = run.started_at;
    if second.subsec_nanosecond() != 0 {
        return second;
    }
    let after = snapshot.time.duration_since(second).as_secs_f64();
    if after.is_nan() || after <= 0.0 {
        return second;
    }
    let fraction = after / (1.0 + after);
    let nanos = ((fraction * 1e9) as i64).min(999_999_999);
    second + jiff::SignedDuration::from_nanos(nanos)
}

/// What `discover` makes of a repository's snapshots (oldest first): the backups of step `step`
/// of plan `plan`, one per run (the latest snapshot, should a retried step have made two), and
/// the number of snapshots of `source` that name no run (made before headers named theirs).
fn discovered(
    repository: &str,
    plan: &str,
    step: &str,
    source: Option<&str>,
    snapshots: &[Snapshot],
) -> (Vec<DiscoveredBackup>, usize) {
    let mut runs = std::collections::BTreeMap::new();
    let mut unnamed = 0;
    for snapshot in snapshots {
        match &snapshot.run {
            Some(run) if run.plan == plan && run.step == step => {
                runs.insert(run.id.clone(), (run, snapshot));
            }
            Some(_) => {}
            None => unnamed += usize::from(source == Some(snapshot.source.as_str())),
        }
    }
    let backups = runs
        .into_values()
        .map(|(run, snapshot)| DiscoveredBackup {
            run_id: run.id.clone(),
            started_at: started_at(run, snapshot).to_string(),
            record: serde_json::to_value(Record::of(repository, snapshot))
                .expect("records serialise"),
            outputs: [("snapshot".to_owned(), snapshot.id.clone().into())].into(),
            bytes: snapshot.stats.bytes_read,
            summary: summary_of(snapshot),
        })
        .collect();
    (backups, unnamed)
}

/// Request options understood by `restore` (`backplan restore ... --option target=...`).
/// Options go to every step of a run, so other plugins' keys are ignored.
#[derive(Debug, Default, Deserialize)]
struct RestoreRequest {
    /// Restore into this folder instead of the source (a drill); no mount check.
    target: Option<PathBuf>,
    /// Only this path, relative to the source.
    path: Option<String>,
    /// Take files with the snapshot's size and mtime as restored without reading them.
    trust_metadata: Option<bool>,
}

impl RestoreRequest {
    /// The request options of `ctx`, refused when they name no folder or an unsafe path: an
    /// empty value (`-o target=`, a variable that expanded to nothing) must never mean "the
    /// current folder" or "everything".
    fn parse(ctx: &Context) -> PluginResult<Self> {
        let request: Self = options(ctx)?;
        if request
            .target
            .as_ref()
            .is_some_and(|target| target.as_os_str().is_empty())
        {
            return Err(PluginError::config(
                "option target is empty: name the folder to restore into, or leave the option \
                 out to restore into the source",
            ));
        }
        if let Some(path) = &request.path {
            if path.is_empty() {
                return Err(PluginError::config(
                    "option path is empty: name a path in the snapshot, or leave the option out \
                     to restore everything",
                ));
            }
            if path.split('/').any(|part| part == "." || part == "..") {
                return Err(PluginError::config(format!(
                    "option path {path:?} must not contain `.` or `..`: it is relative to the \
                     snapshot's root"
                )));
            }
        }
        Ok(request)
    }

    /// The sub-path to restore, `/`-separated without empty components (empty for everything).
    fn subpath(&self) -> Vec<u8> {
        let parts: Vec<&str> = self
            .path
            .as_deref()
            .unwrap_or_default()
            .split('/')
            .filter(|part| !part.is_empty())
            .collect();
        parts.join("/").into_bytes()
    }
}

/// Request options understood by `verify`; other plugins' keys are ignored.
#[derive(Debug, Default, Deserialize)]
struct VerifyRequest {
    fraction: Option<f64>,
    seed: Option<u64>,
}

/// The plugin.
#[derive(Debug, Default)]
pub struct NfsObjects;

impl Plugin for NfsObjects {
    type Config = Config;
    const NAME: &'static str = "nfs-objects";
    const SUMMARY: &'static str =
        "Incremental, deduplicated backup of a local or NFS folder, restored at the same path.";
    const DOCS: &'static str = include_str!("../FORMAT.md");
    const ACTIONS: &'static [Action] = &[
        Action::Check,
        Action::Backup,
        Action::Verify,
        Action::Restore,
        Action::Prune,
        Action::Discover,
        Action::Keys,
    ];

    /// An S3 repository: every role lists the bucket and reads objects under its prefix; backup
    /// alone writes them (and sets their Object Lock retention), prune alone deletes them. An
    /// `encryption.kms_key_id` adds that key: backup encrypts and decrypts with it, restore and
    /// prune decrypt. A local repository needs nothing from AWS. The key is read from the step's
    /// configuration as written, so this does not depend on how the configuration is typed.
    fn permissions_in(&self, ctx: &Context, config: &Config) -> Permissions {
        let Some(Ok(at)) = S3Location::parse(&config.repository) else {
            return Permissions::default();
        };
        let bucket = &at.bucket;
        let objects = if at.prefix.is_empty() {
            format!("arn:aws:s3:::{bucket}/*")
        } else {
            format!("arn:aws:s3:::{bucket}/{}/*", at.prefix)
        };
        let statement = |sid: &str, actions: &[&str], resource: &str| serde_json::json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resource});
        let bucket_arn = format!("arn:aws:s3:::{bucket}");
        let mut permissions = Permissions::default()
            .grant(
                &Role::ALL,
                statement(
                    "NfsObjectsRepositoryBucket",
                    &["s3:ListBucket", "s3:GetBucketLocation"],
                    &bucket_arn,
                ),
            )
            .grant(
                &Role::ALL,
                statement("NfsObjectsRepositoryRead", &["s3:GetObject"], &objects),
            )
            .grant(
                &[Role::Backup],
                statement(
                    "NfsObjectsRepositoryWrite",
                    &[
                        "s3:PutObject",
                        "s3:AbortMultipartUpload",
                        "s3:PutObjectRetention",
                        "s3:GetObjectRetention",
                    ],
                    &objects,
                ),
            )
            .grant(
                &[Role::Backup],
                statement(
                    "NfsObjectsRepositoryObjectLock",
                    &["s3:GetBucketObjectLockConfiguration"],
                    &bucket_arn,
                ),
            )
            .grant(
                &[Role::Prune],
                statement(
                    "NfsObjectsRepositoryPrune",
                    &["s3:DeleteObject", "s3:GetObjectRetention"],
                    &objects,
                ),
            );
        let key = ctx.request().config["encryption"]["kms_key_id"].as_str();
        if let Some(key) = key.filter(|k| !k.trim().is_empty()) {
            let (backup, read) = kms_statements(key);
            permissions = permissions
                .grant(&[Role::Backup], backup)
                .grant(&[Role::Prune, Role::Restore], read);
        }
        permissions
    }

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        config.validate()?;
        let restoring = ctx.request().check_for == Some(Action::Restore);
        if restoring {
            RestoreRequest::parse(ctx)?;
        }
        // A source or repository made by an earlier step (`${steps...}`) is only known once that
        // step has run; the action itself validates it then.
        let source_known = !Request::is_unresolved(&config.source.to_string_lossy());
        if Request::is_unresolved(&config.repository) {
            return Ok(StepOutput::new(format!(
                "repository {} comes from an earlier step; checked when the step runs",
                config.repository
            )));
        }
        // Only a backup reads the source and only a restore writes it: a prune or verify (often
        // from an admin machine where the artifact volume is not mounted) never touches it.
        let touches_source = matches!(
            ctx.request().check_for,
            None | Some(Action::Backup) | Some(Action::Restore)
        );
        if source_known && touches_source && (!restoring || !ctx.request().force) {
            if !restoring && !config.source.is_dir() {
                return Err(PluginError::config(format!(
                    "source {} is not a folder",
                    config.source.display()
                )));
            }
            check_current(&config.source, &config.expectation()).map_err(to_plugin_error)?;
        }
        config.require_object_lock()?;
        let repository = match config.repository_state()? {
            RepositoryState::Readable => "repository is readable",
            RepositoryState::Empty | RepositoryState::Foreign if restoring => {
                return Err(PluginError::config(format!(
                    "{} is not a repository",
                    config.repository
                )));
            }
            RepositoryState::Foreign => {
                return Err(PluginError::config(format!(
                    "{} is neither a repository nor empty",
                    config.repository
                )));
            }
            RepositoryState::Empty => {
                // The key source is read now, so a missing passphrase shows before a run.
                config.kek()?;
                if config.encryption.is_some() {
                    "an encrypted repository will be created"
                } else {
                    "repository will be created"
                }
            }
        };
        let mut output =
            StepOutput::new(format!("{} ready; {repository}", config.source.display()));
        if let Some(warning) = config
            .object_lock
            .and_then(|lock| lock_shorter_than_retention(&lock, &config.retention))
        {
            output = output.warning(warning);
        }
        Ok(output)
    }

    fn backup(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        Request::require_resolved([&*config.source.to_string_lossy()])?;
        config.validate()?;
        check_current(&config.source, &config.expectation()).map_err(to_plugin_error)?;
        if ctx.request().dry_run {
            return dry_backup(config);
        }
        config.require_object_lock()?;
        // The key first: a key source that cannot be read fails before anything is written.
        let kek = config.kek()?;
        let dictionary = config.compression_dictionary.unwrap_or(true);
        let defaults = RepoConfig {
            dictionaries: dictionary,
            ..RepoConfig::default()
        };
        let repo = Repository::open_or_init_with(config.backend()?, defaults, kek.as_ref())
            .map_err(to_plugin_error)?;
        let mut options = BackupOptions::new(&config.source);
        options.workers = config.workers();
        options.direct_reads = config.direct_io.applies_to(&config.source);
        options.direct_writes = config.direct_io.applies_to(repo.backend().staging_dir());
        options.allow_empty = ctx.request().force;
        options.origin = Some(origin(ctx.request()));
        options.dictionary = dictionary;
        if let Some(level) = config.compression_level {
            options.compression_level = level;
        }
        let report = with_control(ctx, |control| backup(&repo, &options, control))?;
        let snapshot = &report.snapshot;
        let mut summary = summary_of(snapshot);
        let leftovers = report.leftovers;
        if leftovers.files > 0 {
            summary.push_str(&format!(
                "; removed {} staged file(s) ({} bytes) left by killed runs",
                leftovers.files, leftovers.bytes
            ));
        }
        if report.retention_extended > 0 {
            summary.push_str(&format!(
                "; Object Lock retention of {} older object(s) extended",
                report.retention_extended
            ));
        }
        let mut output = StepOutput::new(summary)
            .record(Record::of(&config.repository, snapshot))
            .output("snapshot", &snapshot.id)
            .bytes(snapshot.stats.bytes_read);
        for torn in &snapshot.torn {
            output = output.warning(format!(
                "{torn} kept changing while read; stored marked torn"
            ));
        }
        for finding in &report.findings {
            output = output.warning(format!("{}: {}", finding.object, finding.problem));
        }
        Ok(with_warnings(output, &report.skipped, "skipped"))
    }

    fn verify(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let record: Record = ctx.record()?;
        let request: VerifyRequest = options(ctx)?;
        let repo = config.open(config.reader_at(&record.repository)?)?;
        let snapshot =
            snapshot::load(repo.backend().as_ref(), &record.snapshot).map_err(to_plugin_error)?;
        let options = VerifyOptions {
            fraction: request.fraction.or(config.verify_fraction).unwrap_or(1.0),
            seed: request.seed,
            workers: config.reading_workers(&record.repository),
            grace: IN_PROGRESS_GRACE,
        };
        let report = with_control(ctx, |control| verify(&repo, &snapshot, &options, control))?;
        let orphans = report
            .orphans
            .iter()
            .map(|o| format!("{}: {}", o.object, o.problem));
        if !report.is_sound() {
            let lines: Vec<String> = report
                .damaged
                .iter()
                .map(|d| format!("{}: {}", d.path, d.reason))
                .chain(
                    report
                        .inconsistent
                        .iter()
                        .map(|f| format!("{}: {}", f.object, f.problem)),
                )
                .chain(orphans)
                .collect();
            return Err(PluginError::permanent(format!(
                "snapshot {}: {} damaged file(s); repository: {} inconsistent object(s)",
                snapshot.id,
                report.damaged.len(),
                report.inconsistent.len()
            ))
            .with_detail(lines.join("\n")));
        }
        let mut output = StepOutput::new(format!(
            "snapshot {}: {} files ({} bytes) verified; indexes match the packs",
            snapshot.id, report.files_checked, report.bytes_checked
        ))
        .bytes(report.bytes_checked);
        for orphan in orphans {
            output = output.warning(orphan);
        }
        Ok(output)
    }

    fn restore(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let record: Record = ctx.record()?;
        // The same mount path as at backup time: the configured one, or, when an earlier step
        // names it and has not run in this restore, the one the backup recorded.
        let source = if Request::is_unresolved(&config.source.to_string_lossy()) {
            PathBuf::from(&record.source)
        } else {
            config.source.clone()
        };
        let request = RestoreRequest::parse(ctx)?;
        let force = ctx.request().force;
        let subpath = request.subpath();
        let target = match request.target {
            Some(target) => target,
            None if source.as_os_str().is_empty() => {
                return Err(PluginError::config(
                    "source is empty: set the folder the backup was taken of, or restore with \
                     -o target=FOLDER",
                ));
            }
            None => {
                if !force {
                    check_current(&source, &config.expectation()).map_err(to_plugin_error)?;
                }
                source
            }
        };
        let repo = config.open(config.reader_at(&record.repository)?)?;
        let snapshot =
            snapshot::load(repo.backend().as_ref(), &record.snapshot).map_err(to_plugin_error)?;
        let mut options = RestoreOptions::new(&target);
        options.force = force;
        options.workers = config.reading_workers(&record.repository);
        options.direct_writes = config.direct_io.applies_to(&target);
        options.subpath = subpath;
        options.trust_metadata = request
            .trust_metadata
            .or(config.restore_trust_metadata)
            .unwrap_or(false);
        if ctx.request().dry_run {
            return Ok(StepOutput::new(format!(
                "would restore snapshot {} ({} files) into {}",
                snapshot.id,
                snapshot.stats.files,
                target.display()
            )));
        }
        let report = with_control(ctx, |control| restore(&repo, &snapshot, &options, control))?;
        if !report.failed.is_empty() {
            let lines: Vec<String> = report
                .failed
                .iter()
                .map(|f| format!("{}: {}", f.path, f.reason))
                .collect();
            return Err(PluginError::permanent(format!(
                "{} entries could not be restored into {}",
                report.failed.len(),
                target.display()
            ))
            .with_detail(lines.join("\n")));
        }
        let mut output = StepOutput::new(format!(
            "snapshot {} restored into {}: {} files ({} bytes), {} already up to date",
            snapshot.id,
            target.display(),
            report.files,
            report.bytes,
            report.unchanged
        ))
        .bytes(report.bytes)
        .record(serde_json::json!({
            "snapshot": snapshot.id,
            "target": target.display().to_string(),
            "files": report.files,
            "bytes": report.bytes,
            "unchanged": report.unchanged,
            "kept_newer": report.kept_newer,
        }));
        for kept in &report.kept_newer {
            output = output.warning(format!(
                "{kept} is newer than the backup; kept (use --force)"
            ));
        }
        Ok(output)
    }

    fn prune(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        config.retention.validate().map_err(PluginError::config)?;
        let repo = config.open(config.backend()?)?;
        // Only this step's snapshots are pruned. A source made by an earlier step is not known
        // at prune time; the backups this step recorded say which it was.
        let source = config.source.display().to_string();
        let source = if Request::is_unresolved(&source) {
            let recorded = ctx.request().history.iter().rev().find_map(|entry| {
                serde_json::from_value::<Record>(entry.record.clone())
                    .ok()
                    .map(|record| record.source)
            });
            match recorded {
                Some(source) => source,
                None => {
                    return Ok(StepOutput::new(
                        "nothing to prune: the catalog has no backup of this step",
                    ));
                }
            }
        } else {
            source
        };
        let options = PruneOptions {
            retention: config.retention,
            source: Some(source),
            dry_run: ctx.request().dry_run,
            // A backup of another plan sharing the repository may be writing right now.
            min_age: IN_PROGRESS_GRACE,
            leftover_age: leftovers::MAX_AGE,
        };
        let report = with_control(ctx, |control| prune(&repo, &options, control))?;
        let (verb, remove) = if report.dry_run {
            ("would forget", "would remove")
        } else {
            ("forgot", "removed")
        };
        let locked = if report.locked.is_empty() && report.locked_objects.is_empty() {
            String::new()
        } else {
            format!(
                " ({} snapshot(s) and {} other object(s) kept: still locked)",
                report.locked.len(),
                report.locked_objects.len()
            )
        };
        let mut output = StepOutput::new(format!(
            "{verb} {} snapshot(s), kept {}{locked}; {} object(s), {} bytes; {remove} {} \
             staged file(s) of killed runs, {} bytes",
            report.forgotten.len(),
            report.kept.len(),
            report.deleted_objects.len(),
            report.freed_bytes,
            report.leftovers.files,
            report.leftovers.bytes
        ))
        .record(serde_json::json!({
            "forgotten": report.forgotten,
            "kept": report.kept,
            "locked": report
                .locked
                .iter()
                .map(|(id, why)| serde_json::json!({"snapshot": id, "why": why}))
                .collect::<Vec<_>>(),
            "locked_objects": report.locked_objects,
            "deleted_objects": report.deleted_objects,
            "freed_bytes": report.freed_bytes,
            "leftovers": {"files": report.leftovers.files, "bytes": report.leftovers.bytes},
            "dry_run": report.dry_run,
        }));
        for (id, why) in &report.locked {
            output = output.warning(format!(
                "snapshot {id} is past its retention but kept: {why}"
            ));
        }
        if report.dry_run {
            for name in &report.deleted_objects {
                output = output.warning(format!("would delete {name}"));
            }
        }
        Ok(output)
    }

    fn keys(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        Self::keys_of(ctx, config)
    }

    /// This step's snapshots in its repository, each with the record its backup
    /// returned. Reads headers only: no lock, no staged leftovers collected, nothing written.
    fn discover(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        if Request::is_unresolved(&config.repository) {
            return Err(PluginError::config(format!(
                "repository {} comes from an earlier step's output, which a catalog rebuild does \
                 not have: name the repository in the plan to rediscover its snapshots",
                config.repository
            )));
        }
        let in_repository = |err: Error| {
            let mut err = to_plugin_error(err);
            err.message = format!("{}: {}", config.repository, err.message);
            err
        };
        let kek = config.kek()?;
        let repo = Repository::open_with(config.reader_at(&config.repository)?, kek.as_ref())
            .map_err(in_repository)?;
        let (snapshots, unreadable) =
            snapshot::list_readable(repo.backend().as_ref()).map_err(in_repository)?;
        let request = ctx.request();
        let source = config.source.to_string_lossy();
        let source = (!Request::is_unresolved(&source)).then_some(&*source);
        let (backups, unnamed) = discovered(
            &config.repository,
            &request.plan,
            &request.step_id,
            source,
            &snapshots,
        );
        let mut warnings: Vec<String> = unreadable
            .iter()
            .map(|err| format!("not rediscovered: {err}"))
            .collect();
        if unnamed > 0 {
            warnings.push(format!(
                "{unnamed} snapshot(s) of {} name no run (made before snapshot headers named \
                 theirs): not rediscovered; FORMAT.md says how to read one by hand",
                source.unwrap_or_default()
            ));
        }
        let mut output = StepOutput::new(format!(
            "{} backup(s) of step {} in {} ({} snapshot(s) in all)",
            backups.len(),
            request.step_id,
            config.repository,
            snapshots.len()
        ));
        for warning in warnings {
            // Logged too: `catalog rebuild` shows a step's log, not its output's warnings.
            ctx.warn(&warning);
            output = output.warning(warning);
        }
        Ok(output.record(Discovered { backups }))
    }
}

/// The statements for the KMS key `key` (a key ARN, a key id, an alias name or an alias ARN):
/// encrypting and decrypting (backup), and decrypting only (prune, restore). An alias is
/// matched by the key's aliases, since IAM names keys, not aliases, as resources.
fn kms_statements(key: &str) -> (serde_json::Value, serde_json::Value) {
    let key = key.trim();
    let alias = if key.starts_with("alias/") {
        Some(key)
    } else if key.starts_with("arn:") {
        key.find(":alias/").map(|at| &key[at + 1..])
    } else {
        None
    };
    let (resource, condition) = match alias {
        Some(alias) => (
            "*".to_owned(),
            Some(serde_json::json!({"ForAnyValue:StringEquals": {"kms:ResourceAliases": alias}})),
        ),
        None if key.starts_with("arn:") => (key.to_owned(), None),
        None => (format!("arn:aws:kms:*:*:key/{key}"), None),
    };
    let statement = |sid: &str, actions: &[&str]| {
        let mut s = serde_json::json!({
            "Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resource,
        });
        if let Some(condition) = &condition {
            s["Condition"] = condition.clone();
        }
        s
    };
    (
        statement(
            "NfsObjectsRepositoryKeyEncrypt",
            &["kms:GenerateDataKey", "kms:Decrypt"],
        ),
        statement("NfsObjectsRepositoryKeyDecrypt", &["kms:Decrypt"]),
    )
}

#[cfg(test)]
mod kms_tests {
    use super::kms_statements;

    #[test]
    fn a_key_is_named_by_arn_and_an_alias_by_the_keys_aliases() {
        let arn = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let (backup, read) = kms_statements(arn);
        assert_eq!(backup["Resource"], arn);
        assert_eq!(
            backup["Action"],
            serde_json::json!(["kms:GenerateDataKey", "kms:Decrypt"])
        );
        assert_eq!(read["Action"], serde_json::json!(["kms:Decrypt"]));
        let (bare, _) = kms_statements("1234abcd-12ab-34cd-56ef-1234567890ab");
        assert_eq!(
            bare["Resource"],
            "arn:aws:kms:*:*:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        );
        for alias in [
            "alias/backups",
            "arn:aws:kms:us-west-2:123456789012:alias/backups",
        ] {
            let (backup, read) = kms_statements(alias);
            for statement in [backup, read] {
                assert_eq!(statement["Resource"], "*");
                assert_eq!(
                    statement["Condition"]["ForAnyValue:StringEquals"]["kms:ResourceAliases"],
                    "alias/backups",
                    "{alias}"
                );
            }
        }
    }
}

backplan_plugin_sdk::declare_plugin!(NfsObjects);

/// The warning `check` gives when `lock` ends before `retention` lets prune forget a snapshot:
/// the oldest snapshots kept would be deletable by anyone holding the backup's credentials.
fn lock_shorter_than_retention(lock: &ObjectLock, retention: &Retention) -> Option<String> {
    let (window, rule) = [
        (retention.keep_daily, 1, "keep_daily"),
        (retention.keep_weekly, 7, "keep_weekly"),
        (retention.keep_monthly, 31, "keep_monthly"),
    ]
    .into_iter()
    .filter_map(|(count, days, rule)| count.map(|n| (u64::from(n) * days, rule)))
    .max()?;
    (u64::from(lock.days) < window).then(|| {
        format!(
            "object_lock.days = {} is shorter than the {window} days {rule} keeps snapshots: \
             the older ones are kept unlocked and could be deleted with the backup's credentials",
            lock.days
        )
    })
}

impl NfsObjects {
    /// Lists, adds or removes the keys of the step's encrypted repository (`backplan keys`),
    /// opening it with the step's key. Only `keys/` changes; no data is read or rewritten.
    fn keys_of(ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let operation: KeyOperation = ctx.options()?;
        Request::require_resolved([config.repository.as_str()])?;
        let Some(kek) = config.kek()? else {
            return Err(PluginError::config(
                "the step has no `encryption`: its repository is not encrypted and has no keys",
            ));
        };
        // Read first: a mistyped path is refused, not made into an empty folder.
        let reader = config.reader_at(&config.repository)?;
        Repository::peek(reader.as_ref()).map_err(to_plugin_error)?;
        let backend = match operation {
            KeyOperation::List => reader,
            _ => config.backend()?,
        };
        let (summary, keys, warnings) =
            keys_action(backend.as_ref(), &kek, &operation, config.region.as_deref())?;
        let output = StepOutput::new(summary).record(keys);
        Ok(warnings.into_iter().fold(output, StepOutput::warning))
    }
}

/// What a backup would do, writing nothing: where it would go and what it would compare with.
fn dry_backup(config: &Config) -> PluginResult<StepOutput> {
    let source = config.source.display().to_string();
    let against = match config.repository_state()? {
        RepositoryState::Foreign => {
            return Err(PluginError::config(format!(
                "{} is neither a repository nor empty",
                config.repository
            )));
        }
        RepositoryState::Empty => "a new repository".to_owned(),
        RepositoryState::Readable => {
            let repo = config.open(config.backend()?)?;
            let snapshots = snapshot::list(repo.backend().as_ref()).map_err(to_plugin_error)?;
            match snapshots.into_iter().rev().find(|s| s.source == source) {
                Some(parent) => format!(
                    "the repository, reading only what changed since snapshot {} ({} files, {} \
                     bytes)",
                    parent.id, parent.stats.files, parent.stats.bytes
                ),
                None => "the repository, reading every file (no snapshot of it yet)".to_owned(),
            }
        }
    };
    Ok(StepOutput::new(format!(
        "would back up {source} into {} ({against}); nothing written",
        config.repository
    )))
}

/// Runs `action` with the context's cancellation flag and progress reporting.
fn with_control<T>(
    ctx: &Context,
    action: impl FnOnce(Control<'_>) -> crate::error::Result<T>,
) -> PluginResult<T> {
    let cancelled = || ctx.is_cancelled();
    let progress = |p: &control::Progress| {
        let seconds = p.elapsed.as_secs_f64().max(0.001);
        let rate = p.bytes as f64 / seconds / 1e6;
        let eta = p
            .total_bytes
            .filter(|&total| total > p.bytes && p.bytes > 0)
            .map(|total| format!(", ETA {:.0} s", (total - p.bytes) as f64 / (rate * 1e6)))
            .unwrap_or_default();
        ctx.progress(Progress {
            done: p.bytes,
            total: p.total_bytes,
            unit: "bytes".into(),
            message: format!("{}: {} entries, {rate:.0} MB/s{eta}", p.action, p.entries),
        });
    };
    action(Control::new(&cancelled, &progress)).map_err(to_plugin_error)
}

fn with_warnings(mut output: StepOutput, skipped: &[Skipped], what: &str) -> StepOutput {
    for item in skipped {
        output = output.warning(format!("{what} {}: {}", item.path, item.reason));
    }
    output
}

fn options<T: for<'de> Deserialize<'de> + Default>(ctx: &Context) -> PluginResult<T> {
    match &ctx.request().options {
        serde_json::Value::Null => Ok(T::default()),
        value => serde_json::from_value(value.clone())
            .map_err(|err| PluginError::config(format!("options: {err}"))),
    }
}

/// `path` made absolute, with the symlinks of the part that exists resolved and `.`/`..` of the
/// rest applied, so two paths compare as the places they name.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    for existing in absolute.ancestors() {
        let Ok(mut real) = existing.canonicalize() else {
            continue;
        };
        for part in absolute
            .strip_prefix(existing)
            .unwrap_or(Path::new(""))
            .components()
        {
            match part {
                Component::ParentDir => {
                    real.pop();
                }
                Component::Normal(name) => real.push(name),
                _ => {}
            }
        }
        return real;
    }
    absolute
}

/// The folder of a local repository; an address of another kind is refused.
fn local_path(repository: &str) -> PluginResult<&Path> {
    if repository.contains("://") {
        return Err(PluginError::config(format!(
            "{repository}: a repository is a local folder or s3://bucket/prefix"
        )));
    }
    Ok(Path::new(repository))
}

/// The runner's view of an engine error: may a retry help, or is it the plan's fault?
pub(crate) fn to_plugin_error(err: Error) -> PluginError {
    let kind = match &err {
        Error::Cancelled => return PluginError::cancelled(),
        Error::Backend {
            transient: true, ..
        } => ErrorKind::Transient,
        Error::Backend {
            transient: false, ..
        } => ErrorKind::Permanent,
        Error::Invalid(_) | Error::NotARepository(_) | Error::Access(_) | Error::Encryption(_) => {
            ErrorKind::Config
        }
        Error::Internal(_) => ErrorKind::Internal,
        Error::Io { .. }
        | Error::MissingObject(_)
        | Error::Corrupt { .. }
        | Error::SnapshotNotFound(_)
        | Error::Mount(_) => ErrorKind::Permanent,
    };
    PluginError::new(kind, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ContentId;
    use crate::snapshot::SnapshotStats;

    #[test]
    fn a_permanent_repository_failure_is_not_retried_and_a_transient_one_is() {
        let failed = |transient| {
            to_plugin_error(Error::Backend {
                name: "s3://art/snapshots/x.json".into(),
                source: std::io::Error::other("GetObject failed: InvalidObjectState"),
                transient,
            })
            .kind
        };
        assert_eq!(failed(false), ErrorKind::Permanent);
        assert_eq!(failed(true), ErrorKind::Transient);
    }

    fn snapshot(id: &str, second: i64, run: Option<(&str, &str, &str)>) -> Snapshot {
        Snapshot {
            id: id.into(),
            time: jiff::Timestamp::from_second(second).unwrap(),
            source: "/data".into(),
            host: "h".into(),
            parent: None,
            manifest: format!("manifests/{id}.jsonl.zst"),
            manifest_blake3: ContentId::of(id.as_bytes()),
            stats: SnapshotStats {
                files: 3,
                bytes_read: second as u64,
                ..SnapshotStats::default()
            },
            torn: Vec::new(),
            run: run.map(|(plan, step, id)| Origin {
                plan: plan.into(),
                step: step.into(),
                id: id.into(),
                started_at: run_started(id).unwrap(),
            }),
        }
    }

    #[test]
    fn discovery_keeps_this_steps_snapshots_one_per_run_and_counts_those_naming_none() {
        let run = "20260101T030000Z-aaaaaa";
        let snapshots = [
            snapshot("old", 1, None),
            snapshot("first-attempt", 2, Some(("p", "files", run))),
            snapshot("retried", 3, Some(("p", "files", run))),
            snapshot("other-step", 4, Some(("p", "db", run))),
            snapshot("other-plan", 5, Some(("q", "files", run))),
            snapshot("next", 6, Some(("p", "files", "20260102T030000Z-bbbbbb"))),
        ];
        let (found, unnamed) = discovered("/repo", "p", "files", Some("/data"), &snapshots);
        let ids: Vec<(&str, &str)> = found
            .iter()
            .map(|b| (b.run_id.as_str(), b.record["snapshot"].as_str().unwrap()))
            .collect();
        assert_eq!(
            ids,
            [(run, "retried"), ("20260102T030000Z-bbbbbb", "next")],
            "the latest snapshot of a run is the one its record named"
        );
        assert_eq!(found[0].started_at, "2026-01-01T03:00:00Z");
        assert_eq!(found[0].outputs["snapshot"], "retried");
        assert_eq!(found[0].bytes, 3);
        assert_eq!(unnamed, 1);
        assert_eq!(
            discovered("/repo", "p", "files", Some("/elsewhere"), &snapshots).1,
            0
        );
    }

    #[test]
    fn two_runs_started_in_one_second_are_rediscovered_in_the_order_they_ran() {
        // Run ids sort against the order they ran; the second run's snapshot is taken after
        // the id's second has ended, the first's within it.
        let (early, late) = ("20260101T030000Z-ffffff", "20260101T030000Z-000000");
        let mut first = snapshot("first", 1, Some(("p", "files", early)));
        first.time = "2026-01-01T03:00:00.7Z".parse().unwrap();
        let mut second = snapshot("second", 2, Some(("p", "files", late)));
        second.time = "2026-01-01T03:00:01.2Z".parse().unwrap();
        let (found, _) = discovered("/repo", "p", "files", None, &[first, second]);
        let at = |run: &str| -> jiff::Timestamp {
            let found = found.iter().find(|b| b.run_id == run).unwrap();
            found.started_at.parse().unwrap()
        };
        assert!(at(early) < at(late), "{found:#?}");
        let id_second: jiff::Timestamp = "2026-01-01T03:00:00Z".parse().unwrap();
        let next_second = id_second + jiff::SignedDuration::from_secs(1);
        for run in [early, late] {
            assert!(
                at(run) >= id_second && at(run) < next_second,
                "{run}: {}",
                at(run)
            );
        }
        // A snapshot stamped before its run's second (a clock step back) leaves the second.
        let mut odd = snapshot("odd", 3, Some(("p", "files", early)));
        odd.time = "2026-01-01T02:59:00Z".parse().unwrap();
        let (found, _) = discovered("/repo", "p", "files", None, &[odd]);
        assert_eq!(found[0].started_at, "2026-01-01T03:00:00Z");
    }

    #[test]
    fn check_warns_when_object_lock_days_are_shorter_than_what_the_retention_keeps() {
        let lock = |days| ObjectLock {
            mode: crate::backend::LockMode::Governance,
            days,
        };
        let retention = Retention {
            keep_last: Some(100),
            keep_daily: Some(14),
            keep_weekly: Some(8),
            ..Retention::default()
        };
        let warning = lock_shorter_than_retention(&lock(30), &retention).unwrap();
        assert!(
            warning.contains("object_lock.days = 30 is shorter than the 56 days keep_weekly"),
            "{warning}"
        );
        assert_eq!(lock_shorter_than_retention(&lock(56), &retention), None);
        let monthly = Retention {
            keep_monthly: Some(12),
            ..Retention::default()
        };
        assert!(lock_shorter_than_retention(&lock(365), &monthly).is_some());
        assert_eq!(lock_shorter_than_retention(&lock(372), &monthly), None);
        // keep_last alone says nothing about days.
        assert_eq!(
            lock_shorter_than_retention(
                &lock(1),
                &Retention {
                    keep_last: Some(3),
                    ..Retention::default()
                }
            ),
            None
        );
    }

    #[test]
    fn object_lock_on_a_local_repository_or_with_absurd_days_is_a_config_error() {
        let config = |repository: &str, days: u32| -> Config {
            serde_json::from_value(serde_json::json!({
                "source": "/data",
                "repository": repository,
                "object_lock": {"mode": "compliance", "days": days},
            }))
            .unwrap()
        };
        let err = config("/srv/repo", 30).validate().unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(
            err.message.contains("object_lock needs an S3 repository"),
            "{}",
            err.message
        );
        config("s3://bucket/repo", 30).validate().unwrap();
        let err = config("s3://bucket/repo", 0).validate().unwrap_err();
        assert!(
            err.message
                .contains("object_lock.days 0 is not between 1 and 36500")
        );
        assert!(config("s3://bucket/repo", 36_501).validate().is_err());
        let bad_mode = serde_json::from_value::<Config>(serde_json::json!({
            "source": "/data",
            "repository": "s3://bucket/repo",
            "object_lock": {"mode": "strict", "days": 3},
        }));
        assert!(bad_mode.is_err());
    }

    #[test]
    fn a_run_id_gives_the_second_its_run_started_and_another_shape_gives_none() {
        assert_eq!(
            run_started("20261124T182700Z-0a1b2c").map(|t| t.to_string()),
            Some("2026-11-24T18:27:00Z".into())
        );
        assert_eq!(run_started("test-run"), None);
        assert_eq!(run_started(""), None);
    }
}
