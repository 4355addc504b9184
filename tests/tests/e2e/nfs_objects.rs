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
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"artifacts\"\n\n[[steps]]\nid = \"artifacts\"\n\
             plugin = \"nfs-objects\"\n[steps.config]\nsource = \"{}\"\nrepository = \"{repository}\"\n",
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
/// data (so at least one pack is large enough for a multipart upload).
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
    let plan = plan(&sandbox, &source, "s3://backups/services/artifacts");
    // One pack writer, so the 40 MiB file fills a 32 MiB pack (a multipart upload) whatever
    // the machine's core count; with several, each pack may stay under the multipart size.
    let mut text = fs::read_to_string(&plan).unwrap();
    text.push_str("workers = 1\n");
    fs::write(&plan, text).unwrap();

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

    // The objects sit under the prefix with the layout of FORMAT.md.
    let keys =
        aws.script("for o in s3.list_objects_v2(Bucket='backups')['Contents']: print(o['Key'])");
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.contains(&"services/artifacts/config.json"), "{keys:?}");
    let count = |prefix: &str| keys.iter().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(count("services/artifacts/snapshots/"), 2, "{keys:?}");
    assert_eq!(count("services/artifacts/manifests/"), 2, "{keys:?}");
    assert!(count("services/artifacts/data/") >= 2, "{keys:?}");
    assert_eq!(
        keys.len(),
        keys.iter()
            .filter(|k| k.starts_with("services/artifacts/"))
            .count()
    );
    // The 32 MiB packs went up as multipart uploads (their ETag ends in -<parts>).
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
