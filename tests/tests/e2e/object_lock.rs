//! S3 Object Lock through the real binary, against moto and ministack (both enforce it): an
//! nfs-objects repository whose every object carries a retention that backups extend, a prune
//! that keeps locked snapshots, a check that refuses `object_lock` on a bucket without it, the
//! S3 catalog on a locked bucket with a default retention, and s3-verify reporting the posture of
//! the buckets holding backups.

use std::fs;
use std::path::Path;

use backplan_e2e::{LocalAws, Sandbox};
use serde_json::Value;

const CONFIG_ERROR: i32 = 78;
const DAY: i64 = 86_400;

/// The two S3 servers the helpers start: ministack (the default) and moto.
const SERVERS: [&[&str]; 2] = [&[], &["--s3", "moto"]];

/// A plan backing up `source` into `repository`, with `extra` lines in the step's config; objects
/// over 16 MiB go up as multipart uploads, whose retention some stand-ins drop.
fn plan(sandbox: &Sandbox, source: &Path, repository: &str, extra: &str) -> String {
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"artifacts\"\n\n[[steps]]\nid = \"artifacts\"\n\
             plugin = \"nfs-objects\"\n[steps.config]\nsource = \"{}\"\n\
             repository = \"{repository}\"\nworkers = 1\nmultipart_threshold = 16777216\n\
             {extra}\n",
            source.display()
        ),
    );
    path.to_str().unwrap().to_owned()
}

/// A small tree and one 20 MiB file of noise, whose pack goes up as a multipart upload.
fn tree(source: &Path) {
    fs::create_dir_all(source.join("logs")).unwrap();
    for i in 0..5 {
        fs::write(source.join(format!("logs/{i}.txt")), format!("log {i}\n")).unwrap();
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..20 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(source.join("big.bin"), noise).unwrap();
}

fn step(run: &Value) -> &Value {
    &run["steps"][0]
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every version under `prefix` in `bucket`: key, retention mode and retain-until (seconds).
fn retentions(aws: &LocalAws, bucket: &str, prefix: &str) -> Vec<(String, Value, i64)> {
    let found = aws.boto(&format!(
        "v = s3.list_object_versions(Bucket='{bucket}', Prefix='{prefix}').get('Versions', [])\n\
         r = []\n\
         for o in v:\n\
         \x20   h = s3.head_object(Bucket='{bucket}', Key=o['Key'], VersionId=o['VersionId'])\n\
         \x20   u = h.get('ObjectLockRetainUntilDate')\n\
         \x20   r.append([o['Key'], h.get('ObjectLockMode'), int(u.timestamp()) if u else 0, \
         o['IsLatest']])\n\
         out(r)"
    ));
    found
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v[3] == true)
        .map(|v| {
            (
                v[0].as_str().unwrap().to_owned(),
                v[1].clone(),
                v[2].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn an_object_lock_repository_locks_every_object_extends_what_backups_reference_and_prune_keeps_locked_snapshots()
 {
    for server in SERVERS {
        let aws = LocalAws::start(server);
        aws.script("s3.create_bucket(Bucket='vault', ObjectLockEnabledForBucket=True)");
        let sandbox = Sandbox::new();
        let source = sandbox.path().join("data");
        tree(&source);
        let lock = |days: u32| {
            format!(
                "object_lock = {{ mode = \"governance\", days = {days} }}\n\
                 [steps.config.retention]\nkeep_last = 1"
            )
        };
        let plan_at = |days| plan(&sandbox, &source, "s3://vault/artifacts", &lock(days));

        // Day 1: everything written is locked for a day plus the margin.
        let path = plan_at(1);
        let started = now();
        let first = sandbox.run_on(&aws, &["--json", "run", &path]);
        assert_eq!(step(&first.expect_code(0).json())["status"], "Succeeded");
        let written = retentions(&aws, "vault", "artifacts/");
        assert!(written.len() >= 5, "{server:?}: {written:?}");
        assert!(
            written
                .iter()
                .any(|(key, ..)| key == "artifacts/locks/retention.json"),
            "{server:?}: what the backend knows of retentions is kept: {written:?}"
        );
        assert!(
            written.iter().any(|(key, ..)| key.ends_with(".pack")),
            "{written:?}"
        );
        for (key, mode, until) in &written {
            assert_eq!(mode, "GOVERNANCE", "{server:?}: {key}");
            assert!(
                *until >= started + DAY - 60,
                "{server:?}: {key} is locked only until {until}"
            );
        }

        // Then a backup locking for 5 days: the older objects the new snapshot still
        // references (config, packs, indexes) get their retention extended to cover it.
        let path = plan_at(5);
        fs::write(source.join("logs/0.txt"), "changed\n").unwrap();
        let second = sandbox.run_on(&aws, &["--json", "run", &path]);
        let second = second.expect_code(0).json();
        let summary = step(&second)["summary"].as_str().unwrap().to_owned();
        assert!(summary.contains("retention of"), "{server:?}: {summary}");
        let referenced = retentions(&aws, "vault", "artifacts/");
        for (key, _, until) in &referenced {
            if key.contains("/data/") || key.contains("/index/") || key.ends_with("config.json") {
                assert!(
                    *until >= started + 5 * DAY - 60,
                    "{server:?}: {key} was not extended ({until})"
                );
            }
        }
        // A backup that changes nothing extends nothing.
        let third = sandbox.run_on(&aws, &["--json", "run", &path]);
        let summary = step(&third.expect_code(0).json())["summary"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(!summary.contains("retention of"), "{server:?}: {summary}");
        // Its manifest, a server-side copy of the second's, is locked as long as a fresh write.
        let manifests = retentions(&aws, "vault", "artifacts/manifests/");
        let locked_long = manifests
            .iter()
            .filter(|(_, _, until)| *until >= started + 5 * DAY - 60)
            .count();
        assert_eq!(manifests.len(), 3, "{server:?}: {manifests:?}");
        assert_eq!(locked_long, 2, "{server:?}: {manifests:?}");

        // Prune keeps the two older snapshots: they are still locked.
        let pruned = sandbox.run_on(&aws, &["--json", "prune", &path]);
        let pruned = pruned.expect_code(0).json();
        let record = &step(&pruned)["record"];
        assert_eq!(record["forgotten"], serde_json::json!([]), "{pruned:#}");
        assert_eq!(record["locked"].as_array().unwrap().len(), 2, "{pruned:#}");
        assert!(
            record["locked"][0]["why"]
                .as_str()
                .unwrap()
                .starts_with("locked until 20"),
            "{pruned:#}"
        );
        let warnings = step(&pruned)["warnings"].to_string();
        assert!(warnings.contains("locked until"), "{warnings}");
        let headers = aws.boto(
            "out(len(s3.list_objects_v2(Bucket='vault', Prefix='artifacts/snapshots/')['Contents']))",
        );
        assert_eq!(headers, 3, "{server:?}: no snapshot header was hidden");
        sandbox
            .run_on(&aws, &["--json", "verify", &path])
            .expect_code(0);

        // The protection is real: the server itself refuses to delete a locked version.
        let refused = aws.boto(
            "v = s3.list_object_versions(Bucket='vault', Prefix='artifacts/snapshots/')['Versions'][0]\n\
             try:\n\
             \x20   s3.delete_object(Bucket='vault', Key=v['Key'], VersionId=v['VersionId'])\n\
             \x20   out('deleted')\n\
             except Exception as e:\n\
             \x20   out(e.response['Error']['Code'])",
        );
        assert_eq!(refused, "AccessDenied", "{server:?}");
    }
}

#[test]
fn check_refuses_object_lock_on_a_bucket_without_it() {
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='plain')");
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    fs::create_dir_all(&source).unwrap();
    let path = plan(
        &sandbox,
        &source,
        "s3://plain/artifacts",
        "object_lock = { mode = \"compliance\", days = 30 }",
    );
    for args in [["plan", "check"], ["run", "--no-progress"]] {
        let out = sandbox.run_on(&aws, &[args[0], args[1], &path]);
        out.expect_code(CONFIG_ERROR);
        let text = format!("{}{}", out.stdout(), out.stderr());
        assert!(
            text.contains("bucket `plain` does not have Object Lock enabled"),
            "{text}"
        );
    }
    let keys = aws.boto("out(s3.list_objects_v2(Bucket='plain').get('KeyCount', 0))");
    assert_eq!(keys, 0, "nothing was written");
}

#[test]
fn check_warns_when_the_lock_is_shorter_than_what_prune_keeps() {
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='vault', ObjectLockEnabledForBucket=True)");
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    fs::create_dir_all(&source).unwrap();
    let path = plan(
        &sandbox,
        &source,
        "s3://vault/artifacts",
        "object_lock = { mode = \"governance\", days = 7 }\n\
         [steps.config.retention]\nkeep_daily = 30",
    );
    let out = sandbox.run_on(&aws, &["--json", "plan", "check", &path]);
    let text = out.expect_code(0).stdout();
    assert!(
        text.contains("object_lock.days = 7 is shorter than the 30 days keep_daily"),
        "{text}"
    );
}

/// An Object Lock bucket whose default retention locks every object written for a day.
fn locked_bucket_with_default_retention(aws: &LocalAws, bucket: &str) {
    aws.script(&format!(
        "s3.create_bucket(Bucket='{bucket}', ObjectLockEnabledForBucket=True)\n\
         s3.put_object_lock_configuration(Bucket='{bucket}', ObjectLockConfiguration=\
         {{'ObjectLockEnabled': 'Enabled', 'Rule': {{'DefaultRetention': \
         {{'Mode': 'GOVERNANCE', 'Days': 1}}}}}})"
    ));
}

const LOCK_CONTRACT_CHILD: &str = "BACKPLAN_E2E_S3_LOCK_CONTRACT_ON_OBJECT_LOCK";

#[test]
fn the_s3_catalog_lock_passes_the_lock_contract_on_an_object_lock_bucket() {
    use backplan_catalog_s3::S3Store;
    use backplan_core::catalog::CatalogStore;
    use backplan_core::catalog::lock::conformance;
    if std::env::var_os(LOCK_CONTRACT_CHILD).is_some() {
        let next = std::sync::atomic::AtomicU32::new(0);
        conformance::check_all(|| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let plan = format!("p{:08x}-{n}", std::process::id() ^ now() as u32);
            let store = S3Store::open("vault", "contract", &plan).expect("open the S3 catalog");
            move || store.lock()
        });
        return;
    }
    for server in SERVERS {
        let aws = LocalAws::start(server);
        locked_bucket_with_default_retention(&aws, "vault");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args([
            "object_lock::the_s3_catalog_lock_passes_the_lock_contract_on_an_object_lock_bucket",
            "--exact",
            "--nocapture",
        ]);
        aws.apply(&mut child).env(LOCK_CONTRACT_CHILD, "1");
        let out = child.output().unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{server:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_s3_catalog_works_on_an_object_lock_bucket_with_a_default_retention() {
    for server in SERVERS {
        let aws = LocalAws::start(server);
        locked_bucket_with_default_retention(&aws, "vault");
        let sandbox = Sandbox::new();
        let path = sandbox.write(
            "services.toml",
            "[plan]\nname = \"services\"\ncatalog = \"s3://vault/fleet\"\n\
             [[steps]]\nid = \"dump\"\nplugin = \"exec\"\n[steps.config]\n\
             command = [\"sh\", \"-c\", \"echo dumped\"]\nrestore_command = [\"true\"]\n",
        );
        let path = path.to_str().unwrap();
        let first = sandbox
            .run_on(&aws, &["--json", "run", path])
            .expect_code(0)
            .json();
        let second = sandbox
            .run_on(&aws, &["--json", "run", path])
            .expect_code(0)
            .json();
        // Another machine sees both runs and restores the latest.
        let other = Sandbox::new();
        let other_path = other.write("services.toml", &fs::read_to_string(path).unwrap());
        let other_path = other_path.to_str().unwrap();
        let runs = other
            .run_on(&aws, &["--json", "runs", "list", other_path])
            .expect_code(0)
            .json();
        let ids: Vec<&Value> = runs
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["run_id"])
            .collect();
        assert!(
            ids.contains(&&first["run_id"]) && ids.contains(&&second["run_id"]),
            "{server:?}: {runs:#}"
        );
        let restored = other
            .run_on(&aws, &["--json", "restore", other_path, "--run", "latest"])
            .expect_code(0)
            .json();
        assert_eq!(restored["source_run"], second["run_id"], "{server:?}");
        // Every run took the plan's lock and released it (the lock object holds the released
        // marker: a run deletes nothing), and the records written were locked by the bucket's
        // default retention.
        let keys = aws
            .boto("out(sorted(o['Key'] for o in s3.list_objects_v2(Bucket='vault')['Contents']))");
        let lock = aws.boto(
            "out(json.loads(s3.get_object(Bucket='vault', Key='fleet/services/lock')['Body'].read()))",
        );
        assert_eq!(
            lock["released"], true,
            "{server:?}: the lock is held: {lock}"
        );
        let records = retentions(&aws, "vault", "fleet/services/runs/");
        assert!(!records.is_empty(), "{server:?}: {keys}");
        assert!(
            records.iter().all(|(_, mode, _)| mode == "GOVERNANCE"),
            "{records:?}"
        );
    }
}

#[test]
fn s3_verify_reports_the_object_lock_versioning_and_mfa_delete_of_the_backup_buckets() {
    for server in SERVERS {
        let aws = LocalAws::start(server);
        aws.script(
            "s3.create_bucket(Bucket='artifacts')\n\
             s3.put_bucket_versioning(Bucket='artifacts', \
             VersioningConfiguration={'Status': 'Enabled'})\n\
             s3.put_object(Bucket='artifacts', Key='a.txt', Body=b'a')\n\
             s3.create_bucket(Bucket='plain')",
        );
        locked_bucket_with_default_retention(&aws, "vault");
        aws.script(
            "s3.put_object_lock_configuration(Bucket='vault', ObjectLockConfiguration=\
             {'ObjectLockEnabled': 'Enabled', 'Rule': {'DefaultRetention': \
             {'Mode': 'COMPLIANCE', 'Days': 30}}})",
        );
        let sandbox = Sandbox::new();
        let write = |buckets: &str| {
            let path = sandbox.write(
                "verify.toml",
                &format!(
                    "[plan]\nname = \"s3\"\n\n[[steps]]\nid = \"bucket\"\nplugin = \"s3-verify\"\n\
                     [steps.config]\nbucket = \"artifacts\"\nbackup_buckets = [{buckets}]\n\
                     [steps.config.replication]\nrequired = false\n"
                ),
            );
            path.to_str().unwrap().to_owned()
        };
        let path = write("\"s3://vault/artifacts\"");
        let out = sandbox.run_on(&aws, &["--json", "run", &path]);
        let run = out.expect_code(0).json();
        let record = &step(&run)["record"];
        let posture = &record["backup_buckets"][0];
        assert_eq!(posture["location"], "s3://vault/artifacts", "{record:#}");
        assert_eq!(posture["versioning"], "Enabled", "{server:?}: {posture}");
        assert_eq!(posture["mfa_delete"], false);
        assert_eq!(posture["object_lock"]["enabled"], true);
        assert_eq!(posture["object_lock"]["mode"], "COMPLIANCE");
        assert_eq!(posture["object_lock"]["retention_days"], 30);
        let lines: Vec<String> = record["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "backup_bucket")
            .map(|f| format!("{} {}", f["status"], f["message"]))
            .collect();
        assert!(
            lines.iter().any(|l| l.contains(
                "pass\" \"backup bucket s3://vault/artifacts: object lock is on, default retention COMPLIANCE 30 days"
            )),
            "{server:?}: {lines:?}"
        );

        // A backup bucket that anyone holding the credentials could empty fails the step.
        let path = write("\"s3://vault/artifacts\", \"s3://plain/catalog\"");
        let out = sandbox.run_on(&aws, &["--json", "run", &path]);
        out.expect_code(1);
        let text = format!("{}{}", out.stdout(), out.stderr());
        assert!(
            text.contains("backup bucket s3://plain/catalog: object lock is not enabled"),
            "{server:?}: {text}"
        );
        assert!(
            text.contains("backup bucket s3://plain/catalog: versioning is not enabled"),
            "{server:?}: {text}"
        );
    }
}
