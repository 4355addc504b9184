//! The example PostgreSQL plugin (`examples/postgres-plugin`), built standalone as a `cdylib`
//! with its own lock file and loaded from a plan by path, against a real PostgreSQL server that
//! each test starts for itself through `scripts/local-postgres`. Nothing is skipped: no server
//! means a failed test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use backplan_e2e::{Fixture, LocalPostgres, Outcome, Sandbox, build_plugin};
use serde_json::Value;

/// The variable the plans name in `password_env`.
const PASSWORD_VAR: &str = "BACKPLAN_E2E_PG_PASSWORD";
const CONFIG_ERROR: i32 = 78;

fn postgres_lib() -> PathBuf {
    build_plugin(
        Fixture::Standalone("examples/postgres-plugin/Cargo.toml"),
        "backplan_postgres",
    )
}

/// A sandbox with the plugin installed (folder 0755, file 0644, as the host requires) and a
/// plan backing up `databases` of `pg` into `<sandbox>/backups`.
struct Setup {
    sandbox: Sandbox,
    plan: PathBuf,
    backups: PathBuf,
}

impl Setup {
    fn new(pg: &LocalPostgres, databases: &[&str], extra: &str) -> Setup {
        let sandbox = Sandbox::new();
        let dir = sandbox.path().join("plugins");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lib = dir.join("libbackplan_postgres.so");
        std::fs::copy(postgres_lib(), &lib).unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        let backups = sandbox.path().join("backups");
        let databases: Vec<String> = databases.iter().map(|d| toml_str(d)).collect();
        let plan = sandbox.write(
            "plan.toml",
            &format!(
                "[plan]\nname = \"pg\"\n\n[[plugins]]\npath = {lib}\n\n[[steps]]\nid = \"db\"\n\
                 plugin = \"postgres\"\n[steps.config]\nhost = {host}\nport = {port}\n\
                 user = {user}\ndatabases = [{databases}]\npassword_env = \"{PASSWORD_VAR}\"\n\
                 destination = {backups}\nbin_dir = {bin}\n{extra}",
                lib = toml_str(lib.to_str().unwrap()),
                host = toml_str(pg.host()),
                port = pg.port(),
                user = toml_str(pg.superuser()),
                databases = databases.join(", "),
                backups = toml_str(backups.to_str().unwrap()),
                bin = toml_str(pg.bin().to_str().unwrap()),
            ),
        );
        Setup {
            sandbox,
            plan,
            backups,
        }
    }

    /// Runs `backplan args` (the plan path is appended after the first `PLAN` placeholder)
    /// with `password` in the plan's variable and none of the caller's libpq settings.
    fn run(&self, password: &str, args: &[&str]) -> Outcome {
        let plan = self.plan.to_str().unwrap();
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "PLAN" { plan } else { a })
            .collect();
        let mut cmd = self.sandbox.cmd(&args);
        cmd.env(PASSWORD_VAR, password);
        for var in ["PGPASSWORD", "PGPASSFILE", "PGHOST", "PGPORT", "PGUSER"] {
            cmd.env_remove(var);
        }
        Outcome(cmd.output().expect("run backplan"))
    }
}

/// A string as a TOML basic string.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn only_step(record: &Value) -> &Value {
    let steps = record["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{record:#}");
    &steps[0]
}

/// A database with a table, rows, a sequence, an index and a function.
fn seed(pg: &LocalPostgres, database: &str) {
    pg.psql("postgres", &format!("CREATE DATABASE {database}"));
    pg.psql(
        database,
        "CREATE TABLE builds (id serial PRIMARY KEY, project text NOT NULL, status text, \
           started timestamptz DEFAULT '2026-01-02 03:04:05+00'); \
         CREATE INDEX builds_project ON builds (project); \
         INSERT INTO builds (project, status) \
           SELECT 'project-' || (i % 7), CASE WHEN i % 3 = 0 THEN 'failed' ELSE 'success' END \
           FROM generate_series(1, 500) AS i; \
         CREATE FUNCTION failed_builds() RETURNS bigint LANGUAGE sql \
           AS $$ SELECT count(*) FROM builds WHERE status = 'failed' $$;",
    );
}

/// Everything a restore must bring back, as text.
fn contents(pg: &LocalPostgres, database: &str) -> String {
    pg.psql(
        database,
        "SELECT count(*) || ' rows, md5 ' \
           || md5(string_agg(id || ':' || project || ':' || status || ':' || started, ',' ORDER BY id)) \
           || ', failed=' || failed_builds() \
           || ', sequence at ' || (SELECT last_value FROM builds_id_seq) FROM builds",
    )
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn assert_secret_absent(secret: &str, place: &str, haystack: &[u8]) {
    let found = haystack
        .windows(secret.len())
        .any(|w| w == secret.as_bytes());
    assert!(!found, "the password appears in {place}");
}

#[test]
fn backup_then_restore_into_a_new_database_brings_the_data_back() {
    let pg = LocalPostgres::start();
    seed(&pg, "app");
    let expected = contents(&pg, "app");
    let setup = Setup::new(&pg, &["app"], "");
    let password = pg.password();

    // The plugin, built in its own crate with its own dependency versions, loads and says so.
    let info = setup.run(
        &password,
        &["plugins", "info", "postgres", "--plan", "PLAN", "--json"],
    );
    let info = info.expect_code(0).json();
    assert_eq!(info["name"], "postgres");
    assert_eq!(
        info["config_schema"]["additionalProperties"], false,
        "{info:#}"
    );
    let own_lock = std::fs::read_to_string(
        backplan_e2e::workspace_root().join("examples/postgres-plugin/Cargo.lock"),
    )
    .expect("the example has its own Cargo.lock");
    assert!(own_lock.contains("name = \"backplan-postgres\""));

    // Check: tools, versions and login.
    let checked = setup.run(&password, &["plan", "check", "PLAN", "--json"]);
    let checked = checked.expect_code(0).json();
    assert_eq!(checked["checks"][0]["ok"], true, "{checked:#}");

    // Backup.
    let run = setup.run(&password, &["run", "PLAN", "--json"]);
    let run = run.expect_code(0).json();
    assert_eq!(run["status"], "Succeeded", "{run:#}");
    let step = only_step(&run);
    let record = &step["record"];
    let dump = &record["dumps"][0];
    assert_eq!(dump["database"], "app", "{record:#}");
    assert!(
        dump["server_version"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "{}.",
                pg.psql("postgres", "SHOW server_version_num")
                    .parse::<u32>()
                    .unwrap()
                    / 10_000
            )),
        "{record:#}"
    );
    let file = PathBuf::from(dump["file"].as_str().unwrap());
    let run_id = run["run_id"].as_str().unwrap();
    assert_eq!(file, setup.backups.join(run_id).join("app.pgdump"));
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"PGDMP"), "a custom-format archive");
    assert_eq!(dump["size"], bytes.len() as u64);
    assert_eq!(
        dump["sha256"],
        backplan_core::digest::sha256_hex(&bytes),
        "{record:#}"
    );
    assert_eq!(step["outputs"]["folder"], setup.backups.to_str().unwrap());
    assert!(setup.backups.join(run_id).join("manifest.json").is_file());
    let leftovers: Vec<_> = files_under(&setup.backups)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Verify.
    let verified = setup.run(&password, &["verify", "PLAN", "--json"]);
    let verified = verified.expect_code(0).json();
    assert_eq!(verified["status"], "Succeeded", "{verified:#}");

    // Restore into a database that does not exist yet: created, then filled.
    let dry = setup.run(
        &password,
        &[
            "restore",
            "PLAN",
            "--run",
            "latest",
            "-o",
            "database=app_copy",
            "--dry-run",
            "--json",
        ],
    );
    let dry = dry.expect_code(0).json();
    let summary = only_step(&dry)["summary"].as_str().unwrap().to_owned();
    assert!(summary.contains("would create it and restore"), "{summary}");
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'app_copy'"
        ),
        "0",
        "a dry run creates nothing"
    );
    let restored = setup.run(
        &password,
        &[
            "restore",
            "PLAN",
            "--run",
            "latest",
            "-o",
            "database=app_copy",
            "--json",
        ],
    );
    let restored = restored.expect_code(0).json();
    assert_eq!(restored["status"], "Succeeded", "{restored:#}");
    assert_eq!(contents(&pg, "app_copy"), expected);
}

#[test]
fn a_wrong_password_is_a_clear_config_error_and_recorded_as_failed() {
    let pg = LocalPostgres::start();
    seed(&pg, "app");
    let setup = Setup::new(&pg, &["app"], "");
    let wrong = "not-the-password-7f3a9c";

    let out = setup.run(wrong, &["run", "PLAN"]);
    out.expect_code(CONFIG_ERROR);
    // The report (stdout) says what is wrong, naming user and host.
    let report = out.stdout();
    assert!(report.contains("password was refused"), "{report}");
    assert!(
        report.contains(&format!(
            "`{}` at {}:{}",
            pg.superuser(),
            pg.host(),
            pg.port()
        )),
        "names user and host: {report}"
    );
    for (place, text) in [("stdout", report.as_str()), ("stderr", &out.stderr())] {
        assert_secret_absent(wrong, place, text.as_bytes());
        assert_secret_absent(&pg.password(), place, text.as_bytes());
    }

    let records = setup.sandbox.records("pg");
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["status"], "Failed", "{:#}", records[0]);
    let step = only_step(&records[0]);
    assert_eq!(step["status"], "Failed");
    assert_eq!(step["error"]["kind"], "config", "{step:#}");
    assert_secret_absent(wrong, "the record", records[0].to_string().as_bytes());
    assert!(files_under(&setup.backups).is_empty(), "nothing was dumped");
}

#[test]
fn the_password_appears_in_no_record_output_log_or_backup_file() {
    let pg = LocalPostgres::start();
    seed(&pg, "app");
    let setup = Setup::new(&pg, &["app"], "keep_last = 1\n");
    let password = pg.password();

    let mut outputs = Vec::new();
    for args in [
        &["-v", "-v", "plan", "check", "PLAN"][..],
        &["-v", "-v", "run", "PLAN"],
        &["-v", "-v", "run", "PLAN", "--json"],
        &["-v", "-v", "verify", "PLAN"],
        &[
            "-v",
            "-v",
            "restore",
            "PLAN",
            "--run",
            "latest",
            "-o",
            "database=app2",
        ],
        &["-v", "-v", "prune", "PLAN", "--json"],
    ] {
        let out = setup.run(&password, args);
        out.expect_code(0);
        outputs.push((format!("{args:?}"), out));
    }
    for (args, out) in &outputs {
        assert_secret_absent(&password, &format!("stdout of {args}"), &out.0.stdout);
        assert_secret_absent(&password, &format!("stderr of {args}"), &out.0.stderr);
    }
    let state_files = files_under(&setup.sandbox.state_dir());
    assert!(!state_files.is_empty());
    for path in state_files.iter().chain(files_under(&setup.backups).iter()) {
        let bytes = std::fs::read(path).unwrap();
        assert_secret_absent(&password, &path.display().to_string(), &bytes);
    }
    // keep_last = 1: the older of the two backups is gone, the newer stays.
    let runs: Vec<_> = std::fs::read_dir(&setup.backups)
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
}

#[test]
fn restore_into_a_non_empty_database_needs_force() {
    let pg = LocalPostgres::start();
    seed(&pg, "app");
    let expected = contents(&pg, "app");
    let setup = Setup::new(&pg, &["app"], "");
    let password = pg.password();
    setup.run(&password, &["run", "PLAN"]).expect_code(0);

    // Changes after the backup, that a forced restore undoes.
    pg.psql(
        "app",
        "UPDATE builds SET status = 'tampered' WHERE id <= 10",
    );
    let changed = contents(&pg, "app");
    assert_ne!(changed, expected);

    let refused = setup.run(&password, &["restore", "PLAN", "--run", "latest"]);
    refused.expect_code(1);
    let stderr = refused.stderr();
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        contents(&pg, "app"),
        changed,
        "a refused restore writes nothing"
    );

    let dry = setup.run(
        &password,
        &[
            "restore",
            "PLAN",
            "--run",
            "latest",
            "--force",
            "--dry-run",
            "--json",
        ],
    );
    let summary = only_step(&dry.expect_code(0).json())["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(summary.contains("drop and recreate"), "{summary}");
    assert_eq!(contents(&pg, "app"), changed);

    let forced = setup.run(
        &password,
        &["restore", "PLAN", "--run", "latest", "--force"],
    );
    forced.expect_code(0);
    assert_eq!(contents(&pg, "app"), expected);
}

#[test]
fn a_base_backup_of_the_cluster_is_recorded_and_verified() {
    let pg = LocalPostgres::start();
    seed(&pg, "app");
    let setup = Setup::new(&pg, &[], "method = \"basebackup\"\n");
    let password = pg.password();
    let run = setup.run(&password, &["run", "PLAN", "--json"]);
    let run = run.expect_code(0).json();
    let dump = &only_step(&run)["record"]["dumps"][0];
    assert_eq!(dump["database"], "*", "{run:#}");
    let file = PathBuf::from(dump["file"].as_str().unwrap());
    assert!(file.ends_with("cluster.tar"));
    assert!(
        std::fs::metadata(&file).unwrap().len() > 1_000_000,
        "a whole cluster"
    );
    setup.run(&password, &["verify", "PLAN"]).expect_code(0);
    // Not something to pg_restore into a live server: a clear refusal.
    let restore = setup.run(&password, &["restore", "PLAN", "--run", "latest"]);
    restore.expect_code(1);
    assert!(
        restore.stderr().contains("empty data folder"),
        "{}",
        restore.stderr()
    );
}

#[test]
fn an_unreachable_server_is_a_transient_error() {
    let pg = LocalPostgres::start();
    seed(&pg, "app");
    let setup = Setup::new(&pg, &["app"], "");
    let password = pg.password();
    setup
        .run(&password, &["plan", "check", "PLAN"])
        .expect_code(0);
    pg.stop();

    let out = setup.run(&password, &["run", "PLAN", "--json"]);
    out.expect_code(1);
    let step = only_step(&out.json()).clone();
    assert_eq!(step["status"], "Failed", "{step:#}");
    assert_eq!(step["error"]["kind"], "transient", "{step:#}");
    let message = step["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot reach PostgreSQL"), "{message}");
    assert_secret_absent(&password, "the record", step.to_string().as_bytes());
}
