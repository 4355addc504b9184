//! Encrypted nfs-objects repositories (format version 2) through the real binary: nothing of
//! the source readable in any object, wrong keys refused before anything is written, damage
//! named by verify, KMS-wrapped keys added and removed with `backplan keys`, and FORMAT.md's
//! recipe to decrypt by hand followed in Python.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use backplan_e2e::{LocalAws, Outcome, Sandbox};
use serde_json::Value;

const CONFIG_ERROR: i32 = 78;
/// Written in a source file's content and name: it must appear in no object.
const MARKER: &str = "MARKER-7f3a9c-TOP-SECRET-ARTIFACT";
const PASSPHRASE: &str = "correct horse battery staple";

/// A plan with one nfs-objects step; `encryption` is the body of its `encryption` table.
fn plan(sandbox: &Sandbox, source: &Path, repository: &str, encryption: &str) -> String {
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"artifacts\"\n\n[[steps]]\nid = \"artifacts\"\n\
             plugin = \"nfs-objects\"\n[steps.config]\nsource = \"{}\"\nrepository = \
             \"{repository}\"\n[steps.config.encryption]\n{encryption}\n",
            source.display()
        ),
    );
    path.to_str().unwrap().to_owned()
}

/// A tree with the marker in a log (many times, compressible), in a file name, and an
/// incompressible file, small enough to be one blob stored raw.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("job-1")).unwrap();
    fs::write(
        root.join("job-1/build.log"),
        format!("step 3: token {MARKER}\n").repeat(500),
    )
    .unwrap();
    fs::write(root.join(format!("job-1/{MARKER}.txt")), "named\n").unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(root.join("job-1/noise.bin"), noise).unwrap();
}

/// Every file's content under `root`, by relative path.
fn contents(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(name, fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// `backplan ARGS` with cheap argon2 (the hidden test knob) and `env` set.
fn run(sandbox: &Sandbox, aws: Option<&LocalAws>, env: &[(&str, &str)], args: &[&str]) -> Outcome {
    let mut cmd: Command = sandbox.cmd(args);
    if let Some(aws) = aws {
        aws.apply(&mut cmd);
    }
    cmd.env("BACKPLAN_NFS_OBJECTS_INSECURE_TEST_KDF", "1")
        .env_remove("BACKPLAN_TEST_PASSPHRASE");
    cmd.envs(env.iter().copied());
    Outcome(cmd.output().expect("run backplan"))
}

fn with_passphrase() -> [(&'static str, &'static str); 1] {
    [("BACKPLAN_TEST_PASSPHRASE", PASSPHRASE)]
}

fn step(run: &Value) -> &Value {
    &run["steps"][0]
}

/// Where `needle` occurs among the files of `repository`.
fn files_holding(repository: &Path, needle: &[u8]) -> Vec<String> {
    contents(repository)
        .into_iter()
        .filter(|(name, bytes)| {
            name.contains(std::str::from_utf8(needle).unwrap())
                || bytes.windows(needle.len()).any(|w| w == needle)
        })
        .map(|(name, _)| name)
        .collect()
}

fn restore_into(
    sandbox: &Sandbox,
    aws: Option<&LocalAws>,
    env: &[(&str, &str)],
    plan: &str,
) -> PathBuf {
    let target = sandbox.path().join(format!("drill-{}", fastrand_suffix()));
    let option = format!("target={}", target.display());
    run(
        sandbox,
        aws,
        env,
        &["--json", "restore", plan, "--run", "latest", "-o", &option],
    )
    .expect_code(0);
    target
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn an_encrypted_repository_holds_no_byte_of_a_marker_and_restores_byte_identical() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let repository = sandbox.path().join("repo");
    let pass_file = sandbox.write("secrets/passphrase", &format!("{PASSPHRASE}\n"));
    let plan = plan(
        &sandbox,
        &source,
        repository.to_str().unwrap(),
        &format!("passphrase_file = \"{}\"", pass_file.display()),
    );
    let first = run(&sandbox, None, &[], &["--json", "run", &plan]);
    assert_eq!(step(&first.expect_code(0).json())["status"], "Succeeded");

    let config: Value =
        serde_json::from_slice(&fs::read(repository.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["version"], 2, "{config}");
    assert_eq!(config["encryption"], "aes-256-gcm", "{config}");
    let objects = contents(&repository);
    assert!(
        objects.keys().any(|n| n.starts_with("data/")),
        "{objects:?}"
    );
    assert!(
        objects.keys().any(|n| n.starts_with("keys/")),
        "{objects:?}"
    );
    assert_eq!(
        files_holding(&repository, MARKER.as_bytes()),
        Vec::<String>::new()
    );
    assert_eq!(
        files_holding(&repository, b"step 3: token"),
        Vec::<String>::new()
    );
    assert_eq!(
        files_holding(&repository, PASSPHRASE.as_bytes()),
        Vec::<String>::new()
    );

    run(&sandbox, None, &[], &["--json", "verify", &plan]).expect_code(0);
    let target = restore_into(&sandbox, None, &[], &plan);
    assert_eq!(contents(&target), contents(&source));
}

#[test]
fn a_wrong_or_missing_passphrase_is_a_configuration_error_naming_it_and_writes_nothing() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let repository = sandbox.path().join("repo");
    let repo = repository.to_str().unwrap();
    let by_env = "passphrase_env = \"BACKPLAN_TEST_PASSPHRASE\"";
    let made = plan(&sandbox, &source, repo, by_env);
    run(&sandbox, None, &with_passphrase(), &["run", &made]).expect_code(0);
    fs::write(source.join("job-1/new.txt"), "changed\n").unwrap();
    let before = contents(&repository);

    let missing_file = sandbox.path().join("no-such-passphrase");
    let wrong_file = sandbox.write("wrong-passphrase", "not it\n");
    let cases = [
        (
            format!("passphrase_file = \"{}\"", missing_file.display()),
            vec![],
            format!("passphrase file {}", missing_file.display()),
        ),
        (
            by_env.to_owned(),
            vec![],
            "$BACKPLAN_TEST_PASSPHRASE".to_owned(),
        ),
        (
            by_env.to_owned(),
            vec![("BACKPLAN_TEST_PASSPHRASE", "wrong value")],
            "passphrase in $BACKPLAN_TEST_PASSPHRASE".to_owned(),
        ),
        (
            format!("passphrase_file = \"{}\"", wrong_file.display()),
            vec![],
            format!("passphrase file {}", wrong_file.display()),
        ),
    ];
    for (encryption, env, named) in cases {
        let plan = plan(&sandbox, &source, repo, &encryption);
        let outcome = run(&sandbox, None, &env, &["--json", "run", &plan]);
        let text = format!("{}{}", outcome.stdout(), outcome.stderr());
        assert_eq!(outcome.code(), CONFIG_ERROR, "{encryption}: {text}");
        assert!(text.contains(&named), "{encryption}: names {named}: {text}");
        let after = contents(&repository);
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "{encryption}: no object added or removed, no staged leftover"
        );
        assert!(after == before, "{encryption}: no object changed");
    }
}

#[test]
fn a_plaintext_repository_refuses_a_key_and_an_encrypted_one_refuses_none() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let plain_repo = sandbox.path().join("plain");
    let plain = sandbox.write(
        "plain.toml",
        &format!(
            "[plan]\nname = \"artifacts\"\n\n[[steps]]\nid = \"artifacts\"\n\
             plugin = \"nfs-objects\"\n[steps.config]\nsource = \"{}\"\nrepository = \"{}\"\n",
            source.display(),
            plain_repo.display()
        ),
    );
    let plain = plain.to_str().unwrap();
    run(&sandbox, None, &[], &["run", plain]).expect_code(0);
    let before = contents(&plain_repo);
    let keyed = plan(
        &sandbox,
        &source,
        plain_repo.to_str().unwrap(),
        "passphrase_env = \"BACKPLAN_TEST_PASSPHRASE\"",
    );
    let outcome = run(&sandbox, None, &with_passphrase(), &["run", &keyed]);
    let text = format!("{}{}", outcome.stdout(), outcome.stderr());
    assert_eq!(outcome.code(), CONFIG_ERROR, "{text}");
    assert!(text.contains("not encrypted"), "{text}");
    assert!(contents(&plain_repo) == before, "nothing written");

    // The other way: an encrypted repository, a step without `encryption`.
    let secret_repo = sandbox.path().join("secret");
    let keyed = plan(
        &sandbox,
        &source,
        secret_repo.to_str().unwrap(),
        "passphrase_env = \"BACKPLAN_TEST_PASSPHRASE\"",
    );
    run(&sandbox, None, &with_passphrase(), &["run", &keyed]).expect_code(0);
    let before = contents(&secret_repo);
    let text = fs::read_to_string(plain)
        .unwrap()
        .replace(plain_repo.to_str().unwrap(), secret_repo.to_str().unwrap());
    fs::write(plain, text).unwrap();
    let outcome = run(&sandbox, None, &[], &["run", plain]);
    let text = format!("{}{}", outcome.stdout(), outcome.stderr());
    assert_eq!(outcome.code(), CONFIG_ERROR, "{text}");
    assert!(text.contains("is encrypted"), "{text}");
    assert!(
        contents(&secret_repo) == before,
        "never plaintext into an encrypted repository"
    );
}

#[test]
fn a_passphrase_in_the_plan_is_refused_saying_to_use_a_file_or_a_variable_and_nothing_is_created() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let repository = sandbox.path().join("repo");
    let inline = plan(
        &sandbox,
        &source,
        repository.to_str().unwrap(),
        "passphrase = \"hunter2\"",
    );
    let outcome = run(&sandbox, None, &[], &["run", &inline]);
    let text = format!("{}{}", outcome.stdout(), outcome.stderr());
    assert_eq!(outcome.code(), CONFIG_ERROR, "{text}");
    assert!(
        text.contains("passphrase_file") && text.contains("passphrase_env"),
        "{text}"
    );
    assert!(!repository.join("config.json").exists());

    // A new repository whose passphrase file is missing is not created at all.
    let missing = sandbox.path().join("missing-passphrase");
    let missing_file = plan(
        &sandbox,
        &source,
        repository.to_str().unwrap(),
        &format!("passphrase_file = \"{}\"", missing.display()),
    );
    let outcome = run(&sandbox, None, &[], &["run", &missing_file]);
    let text = format!("{}{}", outcome.stdout(), outcome.stderr());
    assert_eq!(outcome.code(), CONFIG_ERROR, "{text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert_eq!(contents(&repository), BTreeMap::new(), "nothing written");
}

/// Flips one byte in the middle of `file`.
fn flip(file: &Path) -> Vec<u8> {
    let original = fs::read(file).unwrap();
    let mut bytes = original.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(file, bytes).unwrap();
    original
}

#[test]
fn a_flipped_byte_in_an_encrypted_pack_index_or_manifest_is_named_by_verify() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let repository = sandbox.path().join("repo");
    let plan = plan(
        &sandbox,
        &source,
        repository.to_str().unwrap(),
        "passphrase_env = \"BACKPLAN_TEST_PASSPHRASE\"",
    );
    let env = with_passphrase();
    run(&sandbox, None, &env, &["run", &plan]).expect_code(0);
    run(&sandbox, None, &env, &["verify", &plan]).expect_code(0);
    for folder in ["data", "index", "manifests"] {
        let objects: Vec<String> = contents(&repository)
            .into_keys()
            .filter(|name| name.starts_with(&format!("{folder}/")))
            .collect();
        let object = objects
            .first()
            .unwrap_or_else(|| panic!("no object in {folder}/"));
        let file = repository.join(object);
        let original = flip(&file);
        let outcome = run(&sandbox, None, &env, &["--json", "verify", &plan]);
        let text = format!("{}{}", outcome.stdout(), outcome.stderr());
        assert_ne!(outcome.code(), 0, "{object}: {text}");
        assert!(
            text.contains(object.as_str()),
            "verify names {object}: {text}"
        );
        fs::write(&file, original).unwrap();
    }
    run(&sandbox, None, &env, &["verify", &plan]).expect_code(0);
}

/// Every object's bytes under `prefix` of bucket `backups`, by key.
fn bucket_objects(aws: &LocalAws, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let listing = aws.boto(&format!(
        "out({{o['Key']: base64.b64encode(s3.get_object(Bucket='backups', Key=o['Key'])['Body'].read()).decode() \
         for o in s3.list_objects_v2(Bucket='backups', Prefix='{prefix}').get('Contents', [])}})"
    ));
    listing
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, body)| {
            let bytes = base64_decode(body.as_str().unwrap());
            (key.clone(), bytes)
        })
        .collect()
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | (u32::from(d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

fn kms_key(aws: &LocalAws) -> String {
    aws.script("print(boto3.client('kms').create_key()['KeyMetadata']['KeyId'])")
        .trim()
        .to_owned()
}

#[test]
fn a_kms_wrapped_s3_repository_holds_no_marker_and_its_keys_are_added_and_removed() {
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='backups')");
    let (first_key, second_key) = (kms_key(&aws), kms_key(&aws));
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let repository = "s3://backups/services/artifacts";
    let by_kms = |key: &str| {
        plan(
            &sandbox,
            &source,
            repository,
            &format!("kms_key_id = \"{key}\""),
        )
    };
    let plan_path = by_kms(&first_key);
    let backed = run(&sandbox, Some(&aws), &[], &["--json", "run", &plan_path]);
    assert_eq!(step(&backed.expect_code(0).json())["status"], "Succeeded");

    let objects = bucket_objects(&aws, "services/artifacts/");
    assert!(
        objects.keys().any(|k| k.contains("/data/")),
        "{:?}",
        objects.keys()
    );
    for (key, bytes) in &objects {
        assert!(!key.contains(MARKER), "{key}");
        assert!(
            !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "the marker is readable in {key}"
        );
    }
    let target = restore_into(&sandbox, Some(&aws), &[], &plan_path);
    assert_eq!(contents(&target), contents(&source));

    // Add the second KMS key and a passphrase; list them.
    let keys = |operation: &str, plan: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--json", "keys", operation, plan, "--step", "artifacts"];
        args.extend_from_slice(extra);
        run(&sandbox, Some(&aws), env, &args)
    };
    keys("add", &plan_path, &["--kms-key-id", &second_key], &[]).expect_code(0);
    let env = with_passphrase();
    keys(
        "add",
        &plan_path,
        &["--passphrase-env", "BACKPLAN_TEST_PASSPHRASE"],
        &env,
    )
    .expect_code(0);
    let listed = keys("list", &plan_path, &[], &[]);
    let listed = listed.expect_code(0).json();
    let all = listed["keys"].as_array().unwrap().clone();
    assert_eq!(all.len(), 3, "{listed:#}");
    let in_use: Vec<&Value> = all.iter().filter(|k| k["in_use"] == true).collect();
    assert_eq!(in_use.len(), 1, "{listed:#}");
    assert!(
        in_use[0]["source"].as_str().unwrap().contains(&first_key),
        "{listed:#}"
    );
    let first_id = in_use[0]["id"].as_str().unwrap().to_owned();
    // No data was touched by adding keys.
    let after = bucket_objects(&aws, "services/artifacts/");
    let data = |objects: &BTreeMap<String, Vec<u8>>| {
        objects
            .iter()
            .filter(|(k, _)| !k.contains("/keys/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert!(
        data(&after) == data(&objects),
        "adding keys rewrites no data"
    );

    // The key in use cannot be removed; through the second KMS key, the first can.
    let refused = keys("remove", &plan_path, &[&first_id], &[]);
    assert_eq!(refused.code(), CONFIG_ERROR, "{}", refused.stderr());
    let plan_path = by_kms(&second_key);
    keys("remove", &plan_path, &[&first_id], &[]).expect_code(0);
    let target = restore_into(&sandbox, Some(&aws), &[], &plan_path);
    assert_eq!(contents(&target), contents(&source));

    // The removed key opens nothing any more.
    let plan_path = by_kms(&first_key);
    let outcome = run(&sandbox, Some(&aws), &[], &["--json", "run", &plan_path]);
    let text = format!("{}{}", outcome.stdout(), outcome.stderr());
    assert_eq!(outcome.code(), CONFIG_ERROR, "{text}");
    assert!(text.contains(&first_key), "{text}");
}

#[test]
fn format_md_recipe_decrypts_a_snapshot_header_and_a_blob_with_python() {
    let sandbox = Sandbox::new();
    let source = sandbox.path().join("data");
    build_tree(&source);
    let repository = sandbox.path().join("repo");
    let plan = plan(
        &sandbox,
        &source,
        repository.to_str().unwrap(),
        "passphrase_env = \"BACKPLAN_TEST_PASSPHRASE\"",
    );
    let backed = run(
        &sandbox,
        None,
        &with_passphrase(),
        &["--json", "run", &plan],
    );
    let backed = backed.expect_code(0).json();
    let snapshot = step(&backed)["record"]["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();

    // The recipe of FORMAT.md ("Decrypting by hand"), with nothing but Python's standard
    // library, `cryptography` and `zstandard`.
    let script = r#"
import glob, hashlib, hmac, json, os, struct, sys
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

repo, snapshot, passphrase, wanted = sys.argv[1:5]
key_path = glob.glob(os.path.join(repo, "keys", "*.json"))[0]
key_id = os.path.basename(key_path)[:-len(".json")]
key = json.load(open(key_path))
a = key["argon2id"]
kek = Argon2id(salt=bytes.fromhex(a["salt"]), length=32, iterations=a["iterations"],
               lanes=a["parallelism"], memory_cost=a["memory_kib"]).derive(passphrase.encode())
master = AESGCM(kek).decrypt(bytes.fromhex(key["nonce"]), bytes.fromhex(key["wrapped"]),
                             b"backplan-nfs-objects/2 key " + key_id.encode())
sub = lambda k, m: hmac.new(k, m, hashlib.sha256).digest()
object_key = sub(master, b"backplan-nfs-objects/2 object")
blob_key = sub(master, b"backplan-nfs-objects/2 blob")

def open_object(name):
    data = open(os.path.join(repo, name), "rb").read()
    key = AESGCM(sub(object_key, name.encode()))
    size = (1 << 20) + 28
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return b"".join(key.decrypt(p[:12], p[12:], struct.pack(">QB", i, i == len(pieces) - 1))
                    for i, p in enumerate(pieces))

header = json.loads(open_object("snapshots/%s.json" % snapshot))
print("snapshot", header["id"])
for index in glob.glob(os.path.join(repo, "index", "*.json")):
    stored = open_object("index/" + os.path.basename(index))
    listing = zstandard.ZstdDecompressor().stream_reader(stored).read()
    for blob in json.loads(listing):
        if blob.get("zstd") or blob["raw_length"] != int(wanted):
            continue
        pack = os.path.join(repo, "data", blob["pack"][:2], blob["pack"] + ".pack")
        with open(pack, "rb") as f:
            f.seek(blob["offset"])
            sealed = f.read(blob["length"])
        plain = AESGCM(sub(blob_key, blob["pack"].encode())).decrypt(
            sealed[:12], sealed[12:], bytes.fromhex(blob["id"]))
        sys.stdout.write("blob " + plain.hex() + "\n")
"#;
    let python = std::env::var_os("BACKPLAN_LOCAL_AWS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| backplan_e2e::workspace_root().join("scripts/local-aws/.venv"))
        .join("bin/python");
    let noise = fs::read(source.join("job-1/noise.bin")).unwrap();
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&repository)
        .arg(&snapshot)
        .arg(PASSPHRASE)
        .arg(noise.len().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("snapshot {snapshot}")), "{stdout}");
    let hex: String = noise.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        stdout.contains(&format!("blob {hex}")),
        "the blob of noise.bin decrypts to it"
    );
}
