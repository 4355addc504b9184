//! `postgres`: an example third-party backplan plugin that backs up PostgreSQL.
//!
//! `backup` runs `pg_dump --format=custom` for each configured database (or `pg_basebackup` of
//! the whole cluster with `method = "basebackup"`) and streams the output into
//! `<destination>/<run id>/`: each file is written under a temporary name, synced, then renamed,
//! so a failed dump never leaves a half-written file where a good one is expected. The record
//! holds, per database, its name, the server's version, the file, its size and sha256.
//! `verify` re-hashes every file and lists each dump with `pg_restore --list`. `restore` runs
//! `pg_restore` into a named database (created when missing), and refuses a database that
//! already holds objects unless the operator passes `--force`. `check` confirms the tools exist,
//! that `pg_dump` is at least as new as the server, and that the login works. `prune` keeps the
//! newest `keep_last` run folders.
//!
//! The password comes from an environment variable (`password_env`) or a libpq password file
//! (`password_file`) and reaches the tools only through their environment (`PGPASSWORD` /
//! `PGPASSFILE`): it is never in a command line, the record, a log line or an error message.
//!
//! ```toml
//! [[plugins]]
//! path = "/usr/lib/backplan/plugins/libbackplan_postgres.so"
//!
//! [[steps]]
//! id = "db"
//! plugin = "postgres"
//! [steps.config]
//! host = "127.0.0.1"
//! user = "circle"
//! databases = ["circle", "vms"]
//! password_env = "CIRCLE_DB_PASSWORD"
//! destination = "/var/backups/postgres"
//! ```

mod config;
mod conn;
mod tool;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use backplan_plugin_sdk::{
    Action, Context, PluginError, PluginResult, Progress, StepOutput, declare_plugin,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use config::{Config, Method};
use conn::{Connection, quote_ident, quote_literal};
use tool::{Tools, display_major, server_major};

/// The manifest each backup writes next to its files (the record, for a reader without the
/// catalog).
const MANIFEST: &str = "manifest.json";

/// Objects a restore would collide with: relations, functions and types outside the system
/// schemas. A fresh database (from `template1`) has none.
const USER_OBJECTS_SQL: &str = "SELECT \
    (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
        AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') \
  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')) \
  + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND t.typtype IN ('e', 'd', 'r', 'm'))";

/// What a backup of this plugin records; `verify`, `restore` and `prune` read it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// How the backup was made.
    pub method: Method,
    /// The server it came from (no password, ever).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The role that made it.
    pub user: String,
    /// The server's version, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    /// The server's `server_version_num`, e.g. `150018`.
    pub server_version_num: u32,
    /// The run's folder, `<destination>/<run id>`.
    pub folder: PathBuf,
    /// One entry per file.
    pub dumps: Vec<DumpRecord>,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpRecord {
    /// The database dumped (`*` for a base backup of the whole cluster).
    pub database: String,
    /// The server's version when it was dumped.
    pub server_version: String,
    /// The file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

/// One database a restore wrote (the restore's record lists them).
#[derive(Debug, Clone, Serialize)]
struct Restored {
    /// The database that was dumped.
    database: String,
    /// The database it was restored into.
    target: String,
    /// Whether the restore created `target`.
    created: bool,
    /// The dump restored.
    file: PathBuf,
}

/// The `postgres` plugin.
#[derive(Debug, Default)]
pub struct Postgres;

impl backplan_plugin_sdk::Plugin for Postgres {
    type Config = Config;
    const NAME: &'static str = "postgres";
    const SUMMARY: &'static str = "Backs up PostgreSQL databases with pg_dump (or pg_basebackup); verifies and restores them.";
    const DOCS: &'static str = include_str!("../README.md");
    const ACTIONS: &'static [Action] = &[
        Action::Check,
        Action::Backup,
        Action::Verify,
        Action::Restore,
        Action::Prune,
    ];

    fn check(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        config.validate()?;
        if let Some(value) = config.first_unresolved() {
            return Ok(StepOutput::new(format!(
                "configuration is valid; the server is not checked ({value} is known only at run time)"
            )));
        }
        if config.destination.exists() && !config.destination.is_dir() {
            return Err(PluginError::config(format!(
                "`destination` {} exists and is not a folder",
                config.destination.display()
            )));
        }
        let tools = Tools::new(config.bin_dir.clone());
        let action = ctx.request().check_for.unwrap_or(Action::Backup);
        let dump_tool = match (action, config.method) {
            (Action::Verify, _) => {
                tools.major_version("pg_restore")?;
                return Ok(StepOutput::new("pg_restore is installed"));
            }
            (Action::Prune, _) => return Ok(StepOutput::new("configuration is valid")),
            (Action::Restore, _) => "pg_restore",
            (_, Method::Dump) => "pg_dump",
            (_, Method::Basebackup) => "pg_basebackup",
        };
        let tool_major = tools.major_version(dump_tool)?;
        tools.major_version("psql")?;
        let conn = Connection::from_config(config)?;
        let server = ServerVersion::query(ctx, &tools, &conn, &config.maintenance_database)?;
        let major = server_major(server.num);
        if action != Action::Restore && tool_major < major {
            return Err(PluginError::config(format!(
                "{dump_tool} {} cannot back up a PostgreSQL {} server: install the version {} \
                 client tools (or newer) and point `bin_dir` at them",
                display_major(tool_major),
                display_major(major),
                display_major(major)
            )));
        }
        if action != Action::Restore && config.method == Method::Dump {
            let existing = tools.query(
                ctx,
                &conn,
                &config.maintenance_database,
                "SELECT datname FROM pg_database",
            )?;
            let existing: BTreeSet<&str> = existing.lines().collect();
            let missing: Vec<&str> = config
                .databases
                .iter()
                .map(String::as_str)
                .filter(|d| !existing.contains(d))
                .collect();
            if !missing.is_empty() {
                return Err(PluginError::config(format!(
                    "database(s) {} do not exist on {}:{}",
                    missing.join(", "),
                    config.host,
                    config.port
                )));
            }
        }
        Ok(StepOutput::new(format!(
            "PostgreSQL {} at {}:{} accepts {}; {dump_tool} {} fits",
            server.text,
            config.host,
            config.port,
            conn.user(),
            display_major(tool_major)
        )))
    }

    fn backup(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        config.validate()?;
        if let Some(value) = config.first_unresolved() {
            return Err(PluginError::config(format!(
                "{value:?} refers to a step output that does not exist in this run"
            )));
        }
        let request = ctx.request();
        let run_dir = config.destination.join(&request.run_id);
        let what = match config.method {
            Method::Dump => format!("pg_dump {}", config.databases.join(", ")),
            Method::Basebackup => "pg_basebackup the whole cluster".to_owned(),
        };
        if request.dry_run {
            return Ok(StepOutput::new(format!(
                "would {what} from {}:{} into {}",
                config.host,
                config.port,
                run_dir.display()
            )));
        }
        let conn = Connection::from_config(config)?;
        let tools = Tools::new(config.bin_dir.clone());
        let server = ServerVersion::query(ctx, &tools, &conn, &config.maintenance_database)?;
        fs::create_dir_all(&run_dir).map_err(|e| io_error("cannot create", &run_dir, &e))?;
        sync_dir(&config.destination)?;

        let mut dumps = Vec::new();
        match config.method {
            Method::Dump => {
                let mut names = BTreeSet::new();
                for database in &config.databases {
                    ctx.check_cancelled()?;
                    let mut name = config::dump_file_name(database);
                    if !names.insert(name.clone()) {
                        name = format!("{}-{}", names.len(), name);
                        names.insert(name.clone());
                    }
                    let file = run_dir.join(name);
                    ctx.info(format!("dumping {database} into {}", file.display()));
                    let args = vec![
                        "--format=custom".to_owned(),
                        "--no-password".to_owned(),
                        "--dbname".to_owned(),
                        conn.conninfo(database),
                    ];
                    let (size, sha256) = write_atomically(ctx, &file, database, |out| {
                        tools.run(ctx, &conn, "pg_dump", &args, out)
                    })?;
                    dumps.push(DumpRecord {
                        database: database.clone(),
                        server_version: server.text.clone(),
                        file,
                        size,
                        sha256,
                    });
                }
            }
            Method::Basebackup => {
                let file = run_dir.join("cluster.tar");
                ctx.info(format!("pg_basebackup into {}", file.display()));
                let args = vec![
                    "--no-password".to_owned(),
                    "--dbname".to_owned(),
                    conn.conninfo(&config.maintenance_database),
                    "--pgdata=-".to_owned(),
                    "--format=tar".to_owned(),
                    "--wal-method=fetch".to_owned(),
                    "--checkpoint=fast".to_owned(),
                ];
                let (size, sha256) = write_atomically(ctx, &file, "cluster", |out| {
                    tools.run(ctx, &conn, "pg_basebackup", &args, out)
                })?;
                dumps.push(DumpRecord {
                    database: "*".to_owned(),
                    server_version: server.text.clone(),
                    file,
                    size,
                    sha256,
                });
            }
        }
        let record = BackupRecord {
            method: config.method,
            host: config.host.clone(),
            port: config.port,
            user: config.user.clone(),
            server_version: server.text.clone(),
            server_version_num: server.num,
            folder: run_dir.clone(),
            dumps,
        };
        let manifest = serde_json::to_vec_pretty(&record)
            .map_err(|e| PluginError::permanent(format!("cannot encode the manifest: {e}")))?;
        write_atomically(ctx, &run_dir.join(MANIFEST), "manifest", |out| {
            out.write_all(&manifest)
                .map_err(|e| PluginError::permanent(format!("cannot write the manifest: {e}")))
        })?;
        let bytes: u64 = record.dumps.iter().map(|d| d.size).sum();
        let summary = match config.method {
            Method::Dump => format!(
                "dumped {} database(s) of PostgreSQL {} ({bytes} bytes) into {}",
                record.dumps.len(),
                server.text,
                run_dir.display()
            ),
            Method::Basebackup => format!(
                "base backup of PostgreSQL {} ({bytes} bytes) in {}",
                server.text,
                run_dir.display()
            ),
        };
        Ok(StepOutput::new(summary)
            .output("folder", &config.destination)
            .output("run_folder", &run_dir)
            .bytes(bytes)
            .record(record))
    }

    fn verify(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let record: BackupRecord = ctx.record()?;
        let tools = Tools::new(config.bin_dir.clone());
        let mut entries = 0;
        for dump in &record.dumps {
            ctx.check_cancelled()?;
            check_checksum(ctx, dump)?;
            if record.method == Method::Dump {
                let mut list = Vec::new();
                let args = vec!["--list".to_owned(), dump.file.display().to_string()];
                tools
                    .run(ctx, &Connection::offline(), "pg_restore", &args, &mut list)
                    .map_err(|e| {
                        PluginError::permanent(format!(
                            "{} is not a readable dump: {}",
                            dump.file.display(),
                            e.message
                        ))
                        .with_detail(e.detail.unwrap_or_default())
                    })?;
                entries += String::from_utf8_lossy(&list)
                    .lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
                    .count();
            }
        }
        let bytes = record.dumps.iter().map(|d| d.size).sum();
        Ok(StepOutput::new(format!(
            "{} file(s) intact ({bytes} bytes, checksums match{})",
            record.dumps.len(),
            if record.method == Method::Dump {
                format!(", {entries} archive entries readable")
            } else {
                String::new()
            }
        ))
        .bytes(bytes))
    }

    fn restore(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let record: BackupRecord = ctx.record()?;
        if record.method == Method::Basebackup {
            return Err(PluginError::permanent(format!(
                "a base backup is not restored into a running server: stop the server, extract \
                 {} into an empty data folder (owned by the server's user) and start it",
                record.dumps.first().map_or_else(
                    || record.folder.display().to_string(),
                    |d| d.file.display().to_string()
                )
            )));
        }
        config.validate()?;
        let request = ctx.request();
        let target = option_string(&request.options, "database")?
            .or_else(|| config.restore_database.clone());
        let source = option_string(&request.options, "source")?;
        let jobs = restore_jobs(&record, target.as_deref(), source.as_deref())?;
        for (_, target) in &jobs {
            config::check_database_name(target)?;
        }
        let conn = Connection::from_config(config)?;
        let tools = Tools::new(config.bin_dir.clone());

        // Look before touching anything: every file intact, every target usable.
        let mut plans = Vec::new();
        for (dump, target) in &jobs {
            ctx.check_cancelled()?;
            check_checksum(ctx, dump)?;
            let exists = tools.query(
                ctx,
                &conn,
                &config.maintenance_database,
                &format!(
                    "SELECT count(*) FROM pg_database WHERE datname = {}",
                    quote_literal(target)
                ),
            )? == "1";
            let objects: u64 = if exists {
                let count = tools.query(ctx, &conn, target, USER_OBJECTS_SQL)?;
                count.trim().parse().map_err(|_| {
                    PluginError::permanent(format!("unexpected answer from psql: {count:?}"))
                })?
            } else {
                0
            };
            if objects > 0 && !request.force {
                return Err(PluginError::permanent(format!(
                    "refusing to restore {} into database {target}: it is not empty ({objects} objects)",
                    dump.database
                ))
                .with_detail(
                    "restore with --force to drop and recreate the dump's objects in it \
                     (pg_restore --clean), or pick a new database with -o database=NAME",
                ));
            }
            plans.push((*dump, target.clone(), exists, objects));
        }
        if request.dry_run {
            let lines: Vec<String> = plans
                .iter()
                .map(|(dump, target, exists, objects)| {
                    let how = match (exists, objects) {
                        (false, _) => "create it and restore".to_owned(),
                        (true, 0) => "restore into the empty database".to_owned(),
                        (true, n) => {
                            format!("drop and recreate the dump's objects ({n} there now, --force)")
                        }
                    };
                    format!(
                        "{} → {target}: would {how} from {}",
                        dump.database,
                        dump.file.display()
                    )
                })
                .collect();
            return Ok(StepOutput::new(lines.join("; ")));
        }

        let mut restored = Vec::new();
        for (dump, target, exists, objects) in plans {
            ctx.check_cancelled()?;
            if !exists {
                ctx.info(format!("creating database {target}"));
                tools.query(
                    ctx,
                    &conn,
                    &config.maintenance_database,
                    &format!("CREATE DATABASE {}", quote_ident(&target)),
                )?;
            } else if objects > 0 {
                ctx.warn(format!(
                    "database {target} holds {objects} objects: replacing the dump's objects (--force)"
                ));
            }
            let mut args = vec![
                "--no-password".to_owned(),
                "--exit-on-error".to_owned(),
                "--dbname".to_owned(),
                conn.conninfo(&target),
            ];
            if objects > 0 {
                args.extend(["--clean".to_owned(), "--if-exists".to_owned()]);
            }
            if config.no_owner {
                args.extend(["--no-owner".to_owned(), "--no-acl".to_owned()]);
            }
            args.push(dump.file.display().to_string());
            ctx.info(format!("pg_restore {} into {target}", dump.file.display()));
            tools.run(ctx, &conn, "pg_restore", &args, &mut io::sink())?;
            restored.push(Restored {
                database: dump.database.clone(),
                target,
                created: !exists,
                file: dump.file.clone(),
            });
        }
        let bytes = jobs.iter().map(|(d, _)| d.size).sum();
        let summary = restored
            .iter()
            .map(|r| format!("{} → {}", r.database, r.target))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(StepOutput::new(format!("restored {summary}"))
            .bytes(bytes)
            .record(serde_json::json!({ "restored": restored })))
    }

    fn prune(&self, ctx: &Context, config: &Config) -> PluginResult<StepOutput> {
        let Some(keep) = config.keep_last else {
            return Ok(StepOutput::new("no `keep_last`: every backup is kept"));
        };
        let request = ctx.request();
        let history = &request.history;
        let doomed = history.len().saturating_sub(keep as usize);
        let mut removed = Vec::new();
        for entry in &history[..doomed] {
            ctx.check_cancelled()?;
            let Ok(record) = serde_json::from_value::<BackupRecord>(entry.record.clone()) else {
                ctx.warn(format!(
                    "run {}: unreadable record, left alone",
                    entry.run_id
                ));
                continue;
            };
            // Only ever a run folder this plugin made: named by its run, inside a destination.
            if record.folder.file_name().and_then(|n| n.to_str()) != Some(entry.run_id.as_str())
                || !record.folder.join(MANIFEST).exists()
            {
                ctx.debug(format!(
                    "run {}: {} is gone or not a backup folder",
                    entry.run_id,
                    record.folder.display()
                ));
                continue;
            }
            if !request.dry_run {
                fs::remove_dir_all(&record.folder)
                    .map_err(|e| io_error("cannot remove", &record.folder, &e))?;
                ctx.info(format!("removed {}", record.folder.display()));
            }
            removed.push(entry.run_id.clone());
        }
        let verb = if request.dry_run {
            "would remove"
        } else {
            "removed"
        };
        Ok(StepOutput::new(format!(
            "{verb} {} backup(s), keeping the newest {keep}",
            removed.len()
        ))
        .record(serde_json::json!({ "removed": removed, "dry_run": request.dry_run })))
    }
}

declare_plugin!(Postgres);

/// The server's version, as `SHOW server_version` and `server_version_num` say.
#[derive(Debug)]
struct ServerVersion {
    text: String,
    num: u32,
}

impl ServerVersion {
    fn query(
        ctx: &Context,
        tools: &Tools,
        conn: &Connection,
        database: &str,
    ) -> PluginResult<ServerVersion> {
        let answer = tools.query(
            ctx,
            conn,
            database,
            "SELECT current_setting('server_version_num'), current_setting('server_version')",
        )?;
        let (num, text) = answer.split_once('\t').ok_or_else(|| {
            PluginError::permanent(format!("unexpected answer from psql: {answer:?}"))
        })?;
        let num = num.trim().parse().map_err(|_| {
            PluginError::permanent(format!("unexpected server_version_num: {num:?}"))
        })?;
        Ok(ServerVersion {
            text: text.trim().to_owned(),
            num,
        })
    }
}

/// Which dump goes into which database. With a target, the backup must hold one dump (or
/// `source` must pick one); without, each dump goes back under its own name.
fn restore_jobs<'r>(
    record: &'r BackupRecord,
    target: Option<&str>,
    source: Option<&str>,
) -> PluginResult<Vec<(&'r DumpRecord, String)>> {
    let dumps: Vec<&DumpRecord> = match source {
        Some(source) => {
            let found: Vec<_> = record
                .dumps
                .iter()
                .filter(|d| d.database == source)
                .collect();
            if found.is_empty() {
                return Err(PluginError::config(format!(
                    "the backup holds no dump of database {source} (it has: {})",
                    database_list(record)
                )));
            }
            found
        }
        None => record.dumps.iter().collect(),
    };
    match target {
        Some(target) if dumps.len() == 1 => Ok(vec![(dumps[0], target.to_owned())]),
        Some(_) => Err(PluginError::config(format!(
            "the backup holds {} databases ({}): pick the one to restore with -o source=NAME",
            dumps.len(),
            database_list(record)
        ))),
        None => Ok(dumps.into_iter().map(|d| (d, d.database.clone())).collect()),
    }
}

fn database_list(record: &BackupRecord) -> String {
    record
        .dumps
        .iter()
        .map(|d| d.database.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A string option from the command line (`-o key=value`; a number is taken as its digits).
fn option_string(options: &serde_json::Value, key: &str) -> PluginResult<Option<String>> {
    match options.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(PluginError::config(format!(
            "option `{key}` must be a name, not {other}"
        ))),
    }
}

/// Re-reads `dump.file` and compares its size and sha256 with the record.
fn check_checksum(ctx: &Context, dump: &DumpRecord) -> PluginResult<()> {
    let mut file = File::open(&dump.file).map_err(|e| {
        PluginError::permanent(format!("{} cannot be read: {e}", dump.file.display()))
    })?;
    let label = dump.file.file_name().map_or_else(
        || dump.database.clone(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut out = HashingWriter::new(io::sink(), ctx, &label, Some(dump.size));
    io::copy(&mut file, &mut out).map_err(|e| io_error("cannot read", &dump.file, &e))?;
    let (_, size, sha256) = out.finish();
    if size != dump.size || sha256 != dump.sha256 {
        return Err(PluginError::permanent(format!(
            "{}: checksum mismatch (sha256 {sha256}, {size} bytes; the backup recorded {}, {} bytes)",
            dump.file.display(),
            dump.sha256,
            dump.size
        )));
    }
    Ok(())
}

/// Writes `path` through `write`: into a temporary file next to it, which is synced and renamed
/// into place only when `write` succeeded (and removed otherwise). Returns size and sha256.
fn write_atomically(
    ctx: &Context,
    path: &Path,
    label: &str,
    write: impl FnOnce(&mut (dyn Write + Send)) -> PluginResult<()>,
) -> PluginResult<(u64, String)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.partial"));
    let file = File::create(&temp).map_err(|e| io_error("cannot create", &temp, &e))?;
    let mut out = HashingWriter::new(file, ctx, label, None);
    let written =
        write(&mut out).and_then(|()| out.flush().map_err(|e| io_error("cannot write", &temp, &e)));
    let (file, size, sha256) = out.finish();
    let synced = written.and_then(|()| {
        file.sync_all()
            .map_err(|e| io_error("cannot sync", &temp, &e))
    });
    drop(file);
    if let Err(e) = synced {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    fs::rename(&temp, path).map_err(|e| io_error("cannot rename into", path, &e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok((size, sha256))
}

/// Makes a folder's entries (a new file, a rename) durable.
fn sync_dir(dir: &Path) -> PluginResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("cannot sync", dir, &e))
}

/// Passes bytes on while counting and hashing them, and reports progress.
struct HashingWriter<'c, W> {
    inner: W,
    hasher: Sha256,
    size: u64,
    ctx: &'c Context,
    label: String,
    total: Option<u64>,
}

impl<W> std::fmt::Debug for HashingWriter<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingWriter")
            .field("label", &self.label)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<'c, W: Write> HashingWriter<'c, W> {
    fn new(inner: W, ctx: &'c Context, label: &str, total: Option<u64>) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
            ctx,
            label: label.to_owned(),
            total,
        }
    }

    fn finish(self) -> (W, u64, String) {
        let digest = self.hasher.finalize();
        let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
        (self.inner, self.size, hex)
    }
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        self.ctx.progress(Progress {
            done: self.size,
            total: self.total,
            unit: "bytes".into(),
            message: self.label.clone(),
        });
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn io_error(what: &str, path: &Path, error: &io::Error) -> PluginError {
    PluginError::permanent(format!("{what} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    //! In-process tests through the SDK's harness, with fake client tools (shell scripts in a
    //! temporary `bin_dir`) standing in for a server. The real server is exercised by the
    //! end-to-end tests (`tests/tests/e2e/postgres.rs`).

    use std::os::unix::fs::PermissionsExt;
    use std::sync::Once;

    use backplan_plugin_sdk::testing::Harness;
    use backplan_plugin_sdk::{ErrorKind, HistoryEntry};
    use serde_json::{Value, json};

    use super::*;

    const PASSWORD_VAR: &str = "BACKPLAN_POSTGRES_UNIT_PASSWORD";
    const PASSWORD: &str = "s3cret-unit-pw";

    fn set_password() {
        static SET: Once = Once::new();
        // SAFETY: set once, before any test reads it, to the same value for every test; the
        // standard library serialises its own environment access.
        SET.call_once(|| unsafe { std::env::set_var(PASSWORD_VAR, PASSWORD) });
    }

    /// A temporary folder with fake `psql`, `pg_dump` and `pg_restore`. `pg_dump` reports
    /// `dump_major` and runs `dump_body` (a shell snippet; `$db` is the database).
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new(dump_major: u32, dump_body: &str) -> Fake {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            fs::create_dir(&bin).unwrap();
            let login = format!(
                "[ \"$PGPASSWORD\" = \"{PASSWORD}\" ] || {{ echo 'psql: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password authentication failed for user \"backup\"' >&2; exit 2; }}"
            );
            let db = "db=$(printf '%s\\n' \"$@\" | sed -n \"s/.*dbname='\\([^']*\\)'.*/\\1/p\")";
            let scripts = [
                (
                    "psql",
                    format!(
                        "[ \"$1\" = --version ] && {{ echo 'psql (PostgreSQL) 15.4'; exit 0; }}\n{login}\n\
                         case \"$*\" in\n\
                         *server_version_num*) printf '150004\\t15.4\\n' ;;\n\
                         *'SELECT datname'*) printf 'postgres\\napp\\n' ;;\n\
                         *'WHERE datname'*) echo 0 ;;\n\
                         esac"
                    ),
                ),
                (
                    "pg_dump",
                    format!(
                        "[ \"$1\" = --version ] && {{ echo 'pg_dump (PostgreSQL) {dump_major}.2'; exit 0; }}\n{login}\n{db}\n{dump_body}"
                    ),
                ),
                (
                    "pg_restore",
                    "[ \"$1\" = --version ] && { echo 'pg_restore (PostgreSQL) 15.4'; exit 0; }\n\
                     [ \"$1\" = --list ] && { echo '; Archive'; echo '1; 2 3 TABLE public builds'; exit 0; }\n\
                     exit 0"
                        .to_owned(),
                ),
            ];
            for (name, body) in scripts {
                let path = bin.join(name);
                fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            }
            Fake { dir }
        }

        fn destination(&self) -> PathBuf {
            self.dir.path().join("backups")
        }

        fn config(&self) -> Value {
            set_password();
            json!({
                "host": "127.0.0.1",
                "user": "backup",
                "databases": ["app"],
                "password_env": PASSWORD_VAR,
                "destination": self.destination(),
                "bin_dir": self.dir.path().join("bin"),
            })
        }
    }

    fn harness() -> Harness {
        Harness::new(plugin_descriptor())
    }

    #[test]
    fn describes_itself_with_a_strict_schema() {
        let description = harness().describe();
        assert_eq!(description.name, "postgres");
        assert_eq!(description.config_schema["additionalProperties"], false);
        assert!(description.config_schema["properties"]["password_env"].is_object());
        assert!(description.actions.contains(&Action::Restore));
    }

    #[test]
    fn check_confirms_tools_versions_and_login() {
        let fake = Fake::new(15, "");
        let out = harness().run(Action::Check, fake.config()).unwrap();
        assert!(out.summary.contains("PostgreSQL 15.4"), "{}", out.summary);
        assert!(out.summary.contains("pg_dump 15 fits"), "{}", out.summary);
    }

    #[test]
    fn check_refuses_a_pg_dump_older_than_the_server() {
        let fake = Fake::new(14, "");
        let err = harness().run(Action::Check, fake.config()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(
            err.message
                .contains("pg_dump 14 cannot back up a PostgreSQL 15"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_password_variable_is_a_config_error() {
        let fake = Fake::new(15, "");
        let mut config = fake.config();
        config["password_env"] = json!("BACKPLAN_POSTGRES_UNIT_UNSET");
        let err = harness().run(Action::Check, config).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(
            err.message.contains("BACKPLAN_POSTGRES_UNIT_UNSET"),
            "{err}"
        );
    }

    #[test]
    fn backup_streams_a_checksummed_dump_that_verify_rereads() {
        let fake = Fake::new(15, "printf 'PGDMP fake dump of %s\\n' \"$db\"");
        let h = harness();
        let out = h.run(Action::Backup, fake.config()).unwrap();
        let record: BackupRecord = serde_json::from_value(out.record.clone()).unwrap();
        let dump = &record.dumps[0];
        let run_dir = fake.destination().join("test-run");
        assert_eq!(dump.file, run_dir.join("app.pgdump"));
        let bytes = fs::read(&dump.file).unwrap();
        assert_eq!(bytes, b"PGDMP fake dump of app\n");
        assert_eq!(dump.size, bytes.len() as u64);
        let expected: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(dump.sha256, expected);
        assert_eq!(dump.server_version, "15.4");
        assert_eq!(record.server_version_num, 150004);
        assert_eq!(out.outputs["folder"], json!(fake.destination()));
        assert_eq!(out.outputs["run_folder"], json!(run_dir));
        let manifest: BackupRecord =
            serde_json::from_slice(&fs::read(run_dir.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(manifest, record);
        assert!(h.progress().iter().any(|p| p.unit == "bytes"));

        let mut request = h.request(Action::Verify, fake.config());
        request.record = Some(out.record.clone());
        let verified = h.run_request(&request).unwrap();
        assert!(
            verified.summary.contains("1 archive entries"),
            "{}",
            verified.summary
        );

        fs::write(&dump.file, b"PGDMP tampered\n").unwrap();
        let err = h.run_request(&request).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        assert!(err.message.contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_failed_dump_replaces_nothing_and_never_shows_the_password() {
        let fake = Fake::new(
            15,
            "printf 'PGDMP half'; echo \"pg_dump: error: query failed (password $PGPASSWORD)\" >&2; exit 1",
        );
        let run_dir = fake.destination().join("test-run");
        fs::create_dir_all(&run_dir).unwrap();
        fs::write(run_dir.join("app.pgdump"), b"an earlier good dump").unwrap();

        let err = harness().run(Action::Backup, fake.config()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Permanent);
        let text = format!("{} {}", err.message, err.detail.clone().unwrap_or_default());
        assert!(text.contains("query failed"), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
        assert_eq!(
            fs::read(run_dir.join("app.pgdump")).unwrap(),
            b"an earlier good dump"
        );
        let names: Vec<_> = fs::read_dir(&run_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["app.pgdump"], "no partial file is left");
    }

    #[test]
    fn cancelling_kills_the_dump_and_keeps_no_partial_file() {
        let fake = Fake::new(15, "printf 'PGDMP start'; exec sleep 30");
        let h = harness();
        let started = std::time::Instant::now();
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                h.set_cancelled(true);
            });
            h.run(Action::Backup, fake.config())
        });
        let err = result.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Cancelled, "{err}");
        assert!(started.elapsed().as_secs() < 10, "the dump was not killed");
        let run_dir = fake.destination().join("test-run");
        assert_eq!(
            fs::read_dir(&run_dir).unwrap().count(),
            0,
            "no partial file"
        );
    }

    #[test]
    fn a_refused_login_is_a_config_error() {
        set_password();
        let fake = Fake::new(15, "");
        let mut config = fake.config();
        config["password_env"] = json!("PATH");
        let err = harness().run(Action::Backup, config).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(
            err.message
                .contains("cannot log in to PostgreSQL as `backup` at 127.0.0.1:5432"),
            "{err}"
        );
    }

    fn record_with(databases: &[&str]) -> BackupRecord {
        BackupRecord {
            method: Method::Dump,
            host: "h".into(),
            port: 5432,
            user: "u".into(),
            server_version: "15.4".into(),
            server_version_num: 150004,
            folder: "/b/run".into(),
            dumps: databases
                .iter()
                .map(|d| DumpRecord {
                    database: (*d).into(),
                    server_version: "15.4".into(),
                    file: format!("/b/run/{d}.pgdump").into(),
                    size: 1,
                    sha256: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn restore_targets_follow_the_options() {
        let one = record_with(&["app"]);
        let jobs = restore_jobs(&one, Some("app_copy"), None).unwrap();
        assert_eq!(jobs[0].1, "app_copy");
        let jobs = restore_jobs(&one, None, None).unwrap();
        assert_eq!(jobs[0].1, "app");

        let two = record_with(&["app", "vms"]);
        let err = restore_jobs(&two, Some("copy"), None).unwrap_err();
        assert!(err.message.contains("-o source=NAME"), "{err}");
        let jobs = restore_jobs(&two, Some("copy"), Some("vms")).unwrap();
        assert_eq!(
            (jobs[0].0.database.as_str(), jobs[0].1.as_str()),
            ("vms", "copy")
        );
        let err = restore_jobs(&two, None, Some("nope")).unwrap_err();
        assert!(err.message.contains("app, vms"), "{err}");
        assert_eq!(
            option_string(&json!({"database": 2026}), "database").unwrap(),
            Some("2026".into())
        );
    }

    #[test]
    fn prune_keeps_the_newest_run_folders() {
        let fake = Fake::new(15, "");
        let h = harness();
        let mut history = Vec::new();
        for run in ["r1", "r2", "r3"] {
            let folder = fake.destination().join(run);
            fs::create_dir_all(&folder).unwrap();
            fs::write(folder.join(MANIFEST), b"{}").unwrap();
            let mut record = record_with(&["app"]);
            record.folder = folder;
            history.push(HistoryEntry {
                run_id: run.into(),
                started_at: "2026-01-01T00:00:00Z".into(),
                verified: false,
                record: serde_json::to_value(record).unwrap(),
            });
        }
        let mut config = fake.config();
        config["keep_last"] = json!(1);
        let mut request = h.request(Action::Prune, config);
        request.history = history;
        request.dry_run = true;
        let out = h.run_request(&request).unwrap();
        assert_eq!(out.record["removed"], json!(["r1", "r2"]));
        assert!(
            fake.destination().join("r1").exists(),
            "a dry run removes nothing"
        );
        request.dry_run = false;
        h.run_request(&request).unwrap();
        assert!(!fake.destination().join("r1").exists());
        assert!(!fake.destination().join("r2").exists());
        assert!(fake.destination().join("r3").exists());
    }
}
