//! The nfs-objects plugin with an S3 repository, through the real binary against the local S3
//! endpoint (ministack), which the plugin finds only through the standard `AWS_ENDPOINT_URL_S3`.

use std::collections::BTreeMap;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use backplan_e2e::{LocalAws, Sandbox};
use serde_json::Value;

const CONFIG_ERROR: i32 = 78;

/// A plan with one nfs-objects step backing up `source` into `repository`.
fn plan(sandbox: &Sandbox, source: &Path, repository: &str) -> String {
    plan_with(sandbox, source, repository, "")
}

/// [`plan`] with `config` (lines of TOML) added to the step's config.
fn plan_with(sandbox: &Sandbox, source: &Path, repository: &str, config: &str) -> String {
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"artifacts\"\n\n[[steps]]\nid = \"artifacts\"\n\
             plugin = \"nfs-objects\"\n[steps.config]\nsource = \"{}\"\nrepository = \"{repository}\"\n\
             {config}",
            source.display()
        ),
    );
    path.to_str().unwrap().to_owned()
}

/// Deterministic bytes that zstd cannot shrink.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Small text files, an executable, a symlink, an empty folder and 40 MiB of incompressible
/// data (so at least one pack is above a 16 MiB multipart threshold).
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("artifacts/job-1")).unwrap();
    fs::create_dir_all(root.join("artifacts/empty")).unwrap();
    for i in 0..50 {
        fs::write(
            root.join(format!("artifacts/job-1/log-{i}.txt")),
            format!("line {i}\n").repeat(200),
        )
        .unwrap();
    }
    fs::write(root.join("artifacts/job-1/big.bin"), noise(40 << 20, 7)).unwrap();
    let tool = root.join("artifacts/job-1/tool.sh");
    fs::write(&tool, "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("job-1/tool.sh", root.join("artifacts/latest-tool")).unwrap();
}

/// Every entry under `root`: kind, permission bits and content (or link target).
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            let what = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {mode:o}")
            } else {
                let mut hash = DefaultHasher::new();
                fs::read(&path).unwrap().hash(&mut hash);
                format!("file {mode:o} {:x}", hash.finish())
            };
            out.insert(name, what);
        }
    }
    out
}

fn step(run: &Value) -> &Value {
    &run["steps"][0]
}

#[test]
fn an_s3_repository_backs_up_incrementally_verifies_and_restores_byte_identical() {
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='backups')");
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    // One pack writer, so the 40 MiB file lands in one pack above a 16 MiB multipart threshold
    // whatever the machine's core count; with several, each pack may stay under it.
    let plan = plan_with(
        &sandbox,
        &source,
        "s3://backups/services/artifacts",
        "workers = 1\nmultipart_threshold = 16777216\n",
    );

    let first = sandbox.run_on(&aws, &["--json", "run", &plan]);
    let first = first.expect_code(0).json();
    assert_eq!(step(&first)["status"], "Succeeded", "{first:#}");

    // Change one file, add one, delete one.
    fs::write(source.join("artifacts/job-1/log-3.txt"), "rewritten\n").unwrap();
    fs::write(source.join("artifacts/job-1/new.txt"), "new\n").unwrap();
    fs::remove_file(source.join("artifacts/job-1/log-4.txt")).unwrap();
    let second = sandbox.run_on(&aws, &["--json", "run", &plan]);
    let second = second.expect_code(0).json();
    let record = &step(&second)["record"];
    assert_eq!(record["repository"], "s3://backups/services/artifacts");
    let summary = step(&second)["summary"].as_str().unwrap();
    assert!(
        summary.contains("2 read"),
        "only the changed and the new file are read: {summary}"
    );

    // A run that changes nothing copies the second's manifest inside the bucket.
    let third = sandbox.run_on(&aws, &["--json", "run", &plan]);
    let summary = step(&third.expect_code(0).json())["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(summary.contains(", 0 read ("), "{summary}");
    let manifests = aws.script(
        "for o in s3.list_objects_v2(Bucket='backups', Prefix='services/artifacts/manifests/')['Contents']:\n\
         \x20   print(s3.get_object(Bucket='backups', Key=o['Key'])['Body'].read().hex())",
    );
    let mut manifests: Vec<&str> = manifests.lines().collect();
    manifests.sort();
    manifests.dedup();
    assert_eq!(manifests.len(), 2, "three manifests, two of them alike");

    // The objects sit under the prefix with the layout of FORMAT.md.
    let keys =
        aws.script("for o in s3.list_objects_v2(Bucket='backups')['Contents']: print(o['Key'])");
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.contains(&"services/artifacts/config.json"), "{keys:?}");
    let count = |prefix: &str| keys.iter().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(count("services/artifacts/snapshots/"), 3, "{keys:?}");
    assert_eq!(count("services/artifacts/manifests/"), 3, "{keys:?}");
    assert!(count("services/artifacts/data/") >= 2, "{keys:?}");
    assert_eq!(
        keys.len(),
        keys.iter()
            .filter(|k| k.starts_with("services/artifacts/"))
            .count()
    );
    // The packs above the threshold went up as multipart uploads (their ETag ends in -<parts>).
    let multipart = aws.script(
        "print(sum('-' in o['ETag'] for o in s3.list_objects_v2(Bucket='backups')['Contents']))",
    );
    assert!(multipart.trim().parse::<u32>().unwrap() >= 1, "{multipart}");

    let verified = sandbox.run_on(&aws, &["--json", "verify", &plan]);
    verified.expect_code(0);

    let target = sandbox.path().join("drill");
    let option = format!("target={}", target.display());
    let restored = sandbox.run_on(
        &aws,
        &["--json", "restore", &plan, "--run", "latest", "-o", &option],
    );
    restored.expect_code(0);
    assert_eq!(describe(&target), describe(&source));
}

/// A pack of the default size goes up in one PutObject (a multipart upload costs the server a
/// second pass over the pack; BENCH.md): nothing in the bucket has a multipart ETag.
#[test]
fn a_pack_under_the_default_multipart_threshold_goes_up_in_one_put_object() {
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='backups')");
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let plan = plan_with(&sandbox, &source, "s3://backups/repo", "workers = 1\n");
    sandbox
        .run_on(&aws, &["--json", "run", &plan])
        .expect_code(0);
    let objects = aws.script(
        "for o in s3.list_objects_v2(Bucket='backups')['Contents']: print(o['Size'], o['ETag'])",
    );
    let largest = objects
        .lines()
        .map(|line| line.split_once(' ').unwrap().0.parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(
        largest > 32 << 20,
        "the 40 MiB file is in one pack: {objects}"
    );
    assert!(!objects.contains('-'), "no multipart ETag: {objects}");
}

#[test]
fn a_missing_bucket_is_a_configuration_error_naming_it() {
    let aws = LocalAws::start(&[]);
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let plan = plan(&sandbox, &source, "s3://no-such-bucket/x");
    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    out.expect_code(CONFIG_ERROR);
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        text.contains("bucket `no-such-bucket` does not exist"),
        "{text}"
    );
}

/// `count` files of `size` random bytes under `dir`.
fn random_files(dir: &Path, count: usize, size: u64) {
    use std::io::Read;
    fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        let mut data = Vec::new();
        fs::File::open("/dev/urandom")
            .unwrap()
            .take(size)
            .read_to_end(&mut data)
            .unwrap();
        fs::write(dir.join(format!("blob-{i}.bin")), data).unwrap();
    }
}

/// Objects of a local repository under `folder` (e.g. `snapshots`).
fn objects(repository: &Path, folder: &str) -> usize {
    fn walk(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |entries| {
            entries
                .map(|e| e.unwrap().path())
                .map(|p| if p.is_dir() { walk(&p) } else { 1 })
                .sum()
        })
    }
    walk(&repository.join(folder))
}

/// When to SIGKILL a backup.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// This long after it started (while it walks and reads).
    After(std::time::Duration),
    /// As soon as this many new packs are published (before the manifest and snapshot).
    Packs(usize),
}

#[test]
fn a_backup_killed_at_several_points_leaves_earlier_snapshots_verifiable() {
    use std::time::{Duration, Instant};
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    let repository = sandbox.path().join("repo");
    random_files(&source.join("first"), 12, 4 << 20);
    let plan = plan(&sandbox, &source, repository.to_str().unwrap());
    let first = sandbox.run(["--json", "run", &plan]);
    let first_run = first.expect_code(0).json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Each attempt backs up new data (data from an earlier killed attempt would be found in its
    // orphaned packs and reused, and the attempt would finish too fast to be killed).
    let points = [
        KillPoint::After(Duration::from_millis(50)),
        KillPoint::After(Duration::from_millis(300)),
        KillPoint::Packs(1),
        KillPoint::Packs(2),
        KillPoint::Packs(3),
    ];
    let mut snapshots = 1;
    let mut kills_after_packs = 0;
    for (attempt, point) in points.into_iter().enumerate() {
        random_files(&source.join(format!("more-{attempt}")), 12, 4 << 20);
        let packs_before = objects(&repository, "data");
        let mut child = sandbox
            .cmd(["--json", "run", &plan])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let finished = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            let due = match point {
                KillPoint::After(delay) => started.elapsed() >= delay,
                KillPoint::Packs(n) => objects(&repository, "data") >= packs_before + n,
            };
            if due {
                break false;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{point:?}");
            std::thread::sleep(Duration::from_millis(1));
        };
        if finished {
            snapshots += 1; // Done before the kill point: a complete snapshot.
        } else {
            // SIGKILL: no destructor, no cleanup, like a power cut for the process.
            child.kill().unwrap();
            child.wait().unwrap();
            if objects(&repository, "data") > packs_before {
                kills_after_packs += 1;
            }
            // Killed after it published its snapshot header but before it exited: that
            // snapshot is whole (the header is published last) and counts as made.
            if objects(&repository, "snapshots") == snapshots + 1 {
                snapshots += 1;
            }
        }
        assert_eq!(
            objects(&repository, "snapshots"),
            snapshots,
            "killed at {point:?}"
        );
        let verified = sandbox.run(["--json", "verify", &plan, "--run", &first_run]);
        verified.expect_code(0);
    }
    assert!(
        snapshots <= 3 && kills_after_packs >= 1,
        "{} of {} attempts killed, {kills_after_packs} after packs were written",
        points.len() + 1 - snapshots,
        points.len()
    );

    let last = sandbox.run(["--json", "run", &plan]);
    last.expect_code(0);
    assert_eq!(objects(&repository, "snapshots"), snapshots + 1);
    sandbox.run(["--json", "verify", &plan]).expect_code(0);
    let target = sandbox.path().join("drill");
    let option = format!("target={}", target.display());
    sandbox
        .run(["--json", "restore", &plan, "--run", "latest", "-o", &option])
        .expect_code(0);
    assert_eq!(describe(&target), describe(&source));
}

#[test]
fn an_s3_prefix_holding_something_else_is_never_written_into() {
    let aws = LocalAws::start(&[]);
    aws.script(
        "s3.create_bucket(Bucket='shared')\n\
         s3.put_object(Bucket='shared', Key='team/notes.txt', Body=b'not a repository')",
    );
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let plan = plan(&sandbox, &source, "s3://shared/team");
    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    out.expect_code(CONFIG_ERROR);
    let text = format!("{}{}", out.stdout(), out.stderr());
    assert!(text.contains("neither a repository nor empty"), "{text}");
    let keys =
        aws.script("print([o['Key'] for o in s3.list_objects_v2(Bucket='shared')['Contents']])");
    assert_eq!(keys.trim(), "['team/notes.txt']");
}

// ---------------------------------------------------------------------------------------------
// A damaged repository, leftovers and refused plans (local repositories)

/// Every file under `folder` of a local repository.
fn files_under(repository: &Path, folder: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in fs::read_dir(dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&repository.join(folder), &mut out);
    out.sort();
    out
}

/// The object name (`data/ab/ab….pack`) of a file of a local repository.
fn object_name(repository: &Path, file: &Path) -> String {
    file.strip_prefix(repository).unwrap().display().to_string()
}

/// Sets a file's modification time `age` into the past.
fn age(file: &Path, age: std::time::Duration) {
    fs::File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

/// The error message and detail of the only step of a failed run.
fn failure_text(run: &Value) -> String {
    let error = &step(run)["error"];
    format!("{} {}", error["message"], error["detail"])
}

/// Restores the latest backup into a drill folder and compares it with `source`.
fn assert_latest_restores(sandbox: &Sandbox, plan: &str, source: &Path) {
    let target = sandbox.path().join("drill");
    let option = format!("target={}", target.display());
    sandbox
        .run(["--json", "restore", plan, "--run", "latest", "-o", &option])
        .expect_code(0);
    assert_eq!(describe(&target), describe(source));
    fs::remove_dir_all(&target).unwrap();
}

#[test]
fn a_backup_after_a_pack_was_deleted_stores_its_content_again_and_verify_reports_the_pack() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    let repository = sandbox.path().join("repo");
    random_files(&source.join("blobs"), 4, 1 << 20);
    fs::write(source.join("notes.txt"), "small\n".repeat(100)).unwrap();
    let plan = plan(&sandbox, &source, repository.to_str().unwrap());
    let first = sandbox.run(["--json", "run", &plan]);
    let first_run = first.expect_code(0).json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pack = files_under(&repository, "data").remove(0);
    let lost = object_name(&repository, &pack);
    fs::remove_file(&pack).unwrap();
    // New files with the content of old ones: the index offers it, the pack may be gone.
    for i in 0..4 {
        fs::copy(
            source.join(format!("blobs/blob-{i}.bin")),
            source.join(format!("copy-{i}.bin")),
        )
        .unwrap();
    }

    let second = sandbox.run(["--json", "run", &plan]);
    let second = second.expect_code(0).json();
    let warnings = step(&second)["warnings"].to_string();
    assert!(
        warnings.contains(&lost) && warnings.contains("stored again"),
        "{warnings}"
    );
    // The new snapshot restores whole: it references nothing of the deleted pack.
    assert_latest_restores(&sandbox, &plan, &source);

    let latest = sandbox.run(["--json", "verify", &plan]);
    assert_ne!(latest.code(), 0);
    let text = failure_text(&latest.json());
    assert!(text.contains("0 damaged file(s)"), "{text}");
    assert!(
        text.contains(&format!("{lost}, which is missing")),
        "{text}"
    );
    let old = sandbox.run(["--json", "verify", &plan, "--run", &first_run]);
    let text = failure_text(&old.json());
    assert!(text.contains(&format!("pack {lost} is missing")), "{text}");
}

#[test]
fn a_backup_after_an_index_offset_was_corrupted_does_not_copy_it_and_verify_reports_it() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    let repository = sandbox.path().join("repo");
    random_files(&source, 2, 1 << 20);
    // One worker: both files in one pack, so the changed range stays inside it.
    let plan = plan_with(
        &sandbox,
        &source,
        repository.to_str().unwrap(),
        "workers = 1\n",
    );
    sandbox.run(["--json", "run", &plan]).expect_code(0);
    let index_file = files_under(&repository, "index").remove(0);
    // Index objects are compressed JSON; an edited one written back as plain JSON (what earlier
    // versions wrote) is read the same way.
    let stored = zstd::decode_all(&fs::read(&index_file).unwrap()[..]).unwrap();
    let mut index: Value = serde_json::from_slice(&stored).unwrap();
    let first = index
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["offset"] == 0)
        .unwrap();
    first["offset"] = 1.into();
    fs::write(&index_file, serde_json::to_vec(&index).unwrap()).unwrap();
    let index_name = object_name(&repository, &index_file);
    for i in 0..2 {
        fs::copy(
            source.join(format!("blob-{i}.bin")),
            source.join(format!("copy-{i}.bin")),
        )
        .unwrap();
    }

    let second = sandbox.run(["--json", "run", &plan]);
    let warnings = step(&second.expect_code(0).json())["warnings"].to_string();
    assert!(warnings.contains(&index_name), "{warnings}");
    assert_latest_restores(&sandbox, &plan, &source);
    let verified = sandbox.run(["--json", "verify", &plan]);
    let text = failure_text(&verified.json());
    assert!(
        text.contains("0 damaged file(s)") && text.contains(&index_name),
        "{text}"
    );
}

#[test]
fn verify_reports_the_pack_whose_index_was_deleted() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    let repository = sandbox.path().join("repo");
    random_files(&source, 3, 1 << 20);
    let plan = plan(&sandbox, &source, repository.to_str().unwrap());
    sandbox.run(["--json", "run", &plan]).expect_code(0);
    sandbox.run(["--json", "verify", &plan]).expect_code(0);
    let index_file = files_under(&repository, "index").remove(0);
    fs::remove_file(&index_file).unwrap();
    // Within the first hour a pack without an index may be a running backup's.
    sandbox.run(["--json", "verify", &plan]).expect_code(0);
    let pack_name = object_name(&repository, &index_file)
        .replace("index/", "")
        .replace(".json", "");
    let pack = repository.join(format!("data/{}/{pack_name}.pack", &pack_name[..2]));
    age(&pack, std::time::Duration::from_secs(2 * 3600));
    let verified = sandbox.run(["--json", "verify", &plan]);
    assert_ne!(verified.code(), 0);
    let text = failure_text(&verified.json());
    assert!(
        text.contains(&format!("{pack_name}.pack: has no index")),
        "{text}"
    );
}

/// Starts a backup of `plan` and SIGKILLs it once it has staged something in `tmp/`; `false`
/// if it finished first.
fn kill_while_staging(sandbox: &Sandbox, plan: &str, repository: &Path) -> bool {
    stop_while_staging(sandbox, plan, repository, None).is_some()
}

/// Starts a backup and, once it has staged data, SIGKILLs it (`signal` None) or sends `signal`;
/// its exit code (-1 when killed), or None if it finished first.
fn stop_while_staging(
    sandbox: &Sandbox,
    plan: &str,
    repository: &Path,
    signal: Option<i32>,
) -> Option<i32> {
    use std::time::{Duration, Instant};
    let mut child = sandbox
        .cmd(["--json", "run", plan])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        if files_under(repository, "tmp")
            .iter()
            .any(|f| fs::metadata(f).is_ok_and(|m| m.len() > 0))
        {
            match signal {
                // SAFETY: sending a signal to our own child process.
                Some(number) => unsafe {
                    libc_kill(child.id() as i32, number);
                },
                None => child.kill().unwrap(),
            }
            return Some(child.wait().unwrap().code().unwrap_or(-1));
        }
        assert!(started.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(1));
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

#[test]
fn sigterm_during_a_backup_exits_143_frees_the_lock_and_the_next_run_leaves_tmp_empty() {
    // SIGTERM (what systemd sends) used to leave the record "Running", the lock held and the
    // staged files behind.
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    let repository = sandbox.path().join("repo");
    let plan = plan(&sandbox, &source, repository.to_str().unwrap());
    random_files(&source.join("first"), 1, 1 << 10);
    sandbox.run(["--json", "run", &plan]).expect_code(0);
    let code = (0..5)
        .find_map(|attempt| {
            random_files(&source.join(format!("more-{attempt}")), 12, 4 << 20);
            stop_while_staging(&sandbox, &plan, &repository, Some(15))
        })
        .expect("every backup finished before it could be stopped");
    assert_eq!(code, 143);
    let records = sandbox.records("artifacts");
    let stopped = records.last().unwrap();
    assert_eq!(stopped["status"], "Cancelled", "{stopped}");
    assert!(
        !sandbox.state_dir().join("catalog/artifacts/lock").exists(),
        "the lock is held"
    );
    sandbox.run(["--json", "run", &plan]).expect_code(0);
    assert!(
        files_under(&repository, "tmp").is_empty(),
        "staged files are left"
    );
    sandbox.run(["verify", &plan]).expect_code(0);
}

#[test]
fn leftovers_of_killed_backups_are_removed_by_the_next_run_and_reported_by_prune() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    let repository = sandbox.path().join("repo");
    let plan = plan(&sandbox, &source, repository.to_str().unwrap());
    random_files(&source.join("first"), 1, 1 << 10);
    sandbox.run(["--json", "run", &plan]).expect_code(0);
    let kill = |round: usize| {
        for attempt in 0..5 {
            random_files(
                &source.join(format!("round-{round}-{attempt}")),
                12,
                4 << 20,
            );
            if kill_while_staging(&sandbox, &plan, &repository) {
                return;
            }
        }
        panic!("every backup finished before it could be killed");
    };

    kill(0);
    let left = files_under(&repository, "tmp");
    assert!(!left.is_empty());
    let bytes: u64 = left.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    let pruned = sandbox.run(["--json", "prune", &plan]);
    let record = step(&pruned.expect_code(0).json())["record"].clone();
    assert_eq!(record["leftovers"]["files"], left.len(), "{record}");
    assert_eq!(record["leftovers"]["bytes"], bytes, "{record}");
    assert!(files_under(&repository, "tmp").is_empty());

    kill(1);
    assert!(!files_under(&repository, "tmp").is_empty());
    let run = sandbox.run(["--json", "run", &plan]);
    let summary = step(&run.expect_code(0).json())["summary"].to_string();
    assert!(summary.contains("left by killed runs"), "{summary}");
    assert!(files_under(&repository, "tmp").is_empty());
}

#[test]
fn absurd_numbers_and_empty_values_are_plan_errors_at_their_line() {
    let cases = [
        ("workers = 9223372036854775807", ":10:11:", "workers"),
        ("verify_fraction = 1.5", ":10:19:", "verify_fraction"),
        ("verify_fraction = 0.0", ":10:19:", "verify_fraction"),
        ("compression_level = 1000", ":10:21:", "compression_level"),
        ("region = \"\"", ":10:10:", "region"),
        ("multipart_threshold = 0", ":10:23:", "multipart_threshold"),
        (
            "multipart_threshold = 6000000000",
            ":10:23:",
            "multipart_threshold",
        ),
    ];
    for (line, at, key) in cases {
        let sandbox = Sandbox::new();
        let source = sandbox.path().join("data");
        fs::create_dir(&source).unwrap();
        let repository = sandbox.path().join("repo");
        let plan = plan_with(
            &sandbox,
            &source,
            repository.to_str().unwrap(),
            &format!("{line}\n"),
        );
        let out = sandbox.run(["plan", "check", &plan]);
        out.expect_code(CONFIG_ERROR);
        let stderr = out.stderr();
        assert!(
            stderr.contains(&format!("plan.toml{at}")) && stderr.contains(key),
            "{line}: {stderr}"
        );
        assert!(!repository.exists(), "{line}");
    }

    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    fs::create_dir(&source).unwrap();
    let empty = plan(&sandbox, &source, "");
    let out = sandbox.run(["plan", "check", &empty]);
    out.expect_code(CONFIG_ERROR);
    assert!(out.stderr().contains("plan.toml:9:14:"), "{}", out.stderr());
    let out = sandbox.run(["run", &empty]);
    out.expect_code(CONFIG_ERROR);
    for name in ["tmp", "config.json"] {
        assert!(
            !sandbox.path().join(name).exists(),
            "{name} written into the current folder"
        );
    }
}

#[test]
fn a_repository_inside_the_source_is_a_check_error_and_nothing_is_written() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    fs::create_dir(&source).unwrap();
    fs::write(source.join("a.txt"), "a").unwrap();
    let inside = source.join("backups/repo");
    for (repository, expected) in [
        (inside.to_str().unwrap(), "is inside source"),
        (sandbox.path().to_str().unwrap(), "is inside repository"),
        ("repo", "must be an absolute path"),
    ] {
        let plan = plan(&sandbox, &source, repository);
        for command in ["plan check", "run"] {
            let args: Vec<&str> = command.split(' ').chain([plan.as_str()]).collect();
            let out = sandbox.run(&args);
            out.expect_code(CONFIG_ERROR);
            let text = format!("{}{}", out.stdout(), out.stderr());
            assert!(text.contains(expected), "{repository}: {text}");
        }
        assert!(!source.join("backups").exists());
        assert!(!sandbox.path().join("repo").exists());
    }
}

#[test]
fn a_killed_s3_backups_staging_folder_is_removed_and_reported_by_prune() {
    use std::time::{Duration, Instant};
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='backups')");
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    random_files(&source.join("first"), 1, 1 << 10);
    let plan = plan(&sandbox, &source, "s3://backups/artifacts");
    let temp = sandbox.path().join("temp");
    fs::create_dir(&temp).unwrap();
    let binary = |args: &[&str]| {
        let mut cmd = sandbox.cmd(args);
        aws.apply(&mut cmd).env("TMPDIR", &temp);
        cmd
    };
    let staged = || -> usize {
        fs::read_dir(&temp)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .map(|dir| fs::read_dir(dir).unwrap().count())
            .sum()
    };
    let first = binary(&["--json", "run", &plan]).output().unwrap();
    assert!(first.status.success(), "{first:?}");

    let mut killed = false;
    for attempt in 0..5 {
        random_files(&source.join(format!("more-{attempt}")), 12, 4 << 20);
        let mut child = binary(&["--json", "run", &plan])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() && staged() == 0 {
            assert!(started.elapsed() < Duration::from_secs(120));
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            child.wait().unwrap();
            killed = true;
            break;
        }
    }
    assert!(killed, "every backup finished before it could be killed");
    let left = staged();
    assert!(left > 0);
    let pruned = binary(&["--json", "prune", &plan]).output().unwrap();
    assert!(pruned.status.success(), "{pruned:?}");
    let pruned: Value = serde_json::from_slice(&pruned.stdout).unwrap();
    assert_eq!(
        step(&pruned)["record"]["leftovers"]["files"],
        left,
        "{pruned:#}"
    );
    assert_eq!(
        fs::read_dir(&temp).unwrap().count(),
        0,
        "the folder is gone"
    );
}

#[test]
fn a_lost_catalog_is_rebuilt_from_the_snapshot_headers_and_each_run_restores_its_own_files() {
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='backups')");
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    fs::create_dir_all(source.join("job")).unwrap();
    fs::write(source.join("job/out.log"), "first build\n").unwrap();
    let plan = plan(&sandbox, &source, "s3://backups/artifacts");
    let first = sandbox.run_on(&aws, &["--json", "run", &plan]);
    let first = first.expect_code(0).json();
    fs::write(source.join("job/out.log"), "second build\n").unwrap();
    let second = sandbox.run_on(&aws, &["--json", "run", &plan]);
    let second = second.expect_code(0).json();

    fs::remove_dir_all(sandbox.state_dir().join("catalog")).unwrap();
    // A header damaged in the bucket hides none of the others, and is named.
    aws.script(
        "s3.put_object(Bucket='backups', Key='artifacts/snapshots/20250101T000000Z-deadbeef.json', Body=b'{')",
    );
    let dry = sandbox.run_on(&aws, &["catalog", "rebuild", &plan, "--dry-run"]);
    assert!(
        dry.expect_code(0)
            .stdout()
            .contains("would add 2 run records")
    );
    assert!(
        sandbox.records("artifacts").is_empty(),
        "a dry run wrote records"
    );
    let rebuilt = sandbox.run_on(&aws, &["catalog", "rebuild", &plan]);
    let text = rebuilt.expect_code(0).stdout();
    assert!(text.contains("2 backups found"), "{text}");
    assert!(
        rebuilt
            .stderr()
            .contains("20250101T000000Z-deadbeef.json is corrupt"),
        "{}",
        rebuilt.stderr()
    );
    let records = sandbox.records("artifacts");
    assert_eq!(records.len(), 2);
    for (record, made) in records.iter().zip([&first, &second]) {
        assert_eq!(record["run_id"], made["run_id"]);
        assert_eq!(step(record)["record"], step(made)["record"]);
        assert_eq!(step(record)["outputs"], step(made)["outputs"]);
        assert!(record["rebuilt"].is_string(), "{record:#}");
    }

    let target = sandbox.path().join("drill");
    let option = format!("target={}", target.display());
    let first_run = first["run_id"].as_str().unwrap();
    let restored = sandbox.run_on(&aws, &["restore", &plan, "--run", first_run, "-o", &option]);
    restored.expect_code(0);
    assert_eq!(
        fs::read_to_string(target.join("job/out.log")).unwrap(),
        "first build\n"
    );
}

#[test]
fn an_s3_repository_restores_byte_identical_with_each_direct_io_setting() {
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='backups')");
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    for setting in ["auto", "on", "off"] {
        let plan = plan_with(
            &sandbox,
            &source,
            &format!("s3://backups/{setting}"),
            &format!("direct_io = \"{setting}\"\n"),
        );
        sandbox.run_on(&aws, &["run", &plan]).expect_code(0);
        let target = sandbox.path().join(format!("restored-{setting}"));
        let option = format!("target={}", target.display());
        sandbox
            .run_on(&aws, &["restore", &plan, "--run", "latest", "-o", &option])
            .expect_code(0);
        assert_eq!(
            describe(&target),
            describe(&source),
            "direct_io = {setting}"
        );
    }
    let plan = plan_with(
        &sandbox,
        &source,
        "s3://backups/typo",
        "direct_io = \"sometimes\"\n",
    );
    let refused = sandbox.run_on(&aws, &["plan", "check", &plan]);
    assert!(refused.expect_code(78).stderr().contains("direct_io"));
}
