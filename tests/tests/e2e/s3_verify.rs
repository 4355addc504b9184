//! The s3-verify plugin through the real binary against a local S3 endpoint.
//!
//! Fixtures are made with boto3 through the wire protocol (ministack answers S3 by default).
//! Two things the local servers cannot do are worked around, and said so where it happens:
//! ministack refuses a wrong checksum on upload, so the corrupted object is written to moto
//! (`--s3 moto`), which stores whatever `x-amz-checksum-crc32` it is sent; and neither server
//! enforces bucket policies, so "access denied" is exercised as a bucket that does not exist (both
//! go through the same error path: a config error naming the bucket and the call).

use backplan_e2e::{LocalAws, Sandbox};
use serde_json::Value;

const CONFIG_ERROR: i32 = 78;
const FAILED: i32 = 1;

/// A plan with one s3-verify step whose config table is `config`.
fn plan(sandbox: &Sandbox, config: &str) -> String {
    let path = sandbox.write(
        "plan.toml",
        &format!(
            "[plan]\nname = \"s3\"\n\n[[steps]]\nid = \"bucket\"\nplugin = \"s3-verify\"\n\
             [steps.config]\n{config}"
        ),
    );
    path.to_str().unwrap().to_owned()
}

fn only_step(run: &Value) -> &Value {
    let steps = run["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{run:#}");
    &steps[0]
}

/// `(check, status)` of every finding in a step record.
fn findings(record: &Value) -> Vec<(String, String)> {
    record["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_owned(),
                f["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A bucket with every protection: versioning, replication to another region, public access
/// blocked, default encryption (ministack's own), a lifecycle rule longer than the retention,
/// and 62 objects: 60 over three prefixes, half with a stored CRC32 checksum (boto3's default),
/// half with only their MD5 ETag, and two multipart uploads (composite CRC32; ETag only).
const WELL_CONFIGURED: &str = r#"
s3.create_bucket(Bucket='replica', CreateBucketConfiguration={'LocationConstraint': 'eu-west-1'})
s3.put_bucket_versioning(Bucket='replica', VersioningConfiguration={'Status': 'Enabled'})
s3.create_bucket(Bucket='artifacts')
s3.put_bucket_versioning(Bucket='artifacts', VersioningConfiguration={'Status': 'Enabled'})
s3.put_bucket_replication(Bucket='artifacts', ReplicationConfiguration={
    'Role': 'arn:aws:iam::123456789012:role/replication',
    'Rules': [{'ID': 'all', 'Status': 'Enabled', 'Priority': 1, 'Filter': {'Prefix': ''},
               'DeleteMarkerReplication': {'Status': 'Disabled'},
               'Destination': {'Bucket': 'arn:aws:s3:::replica'}}]})
s3.put_public_access_block(Bucket='artifacts', PublicAccessBlockConfiguration={
    'BlockPublicAcls': True, 'IgnorePublicAcls': True,
    'BlockPublicPolicy': True, 'RestrictPublicBuckets': True})
s3.put_bucket_lifecycle_configuration(Bucket='artifacts', LifecycleConfiguration={'Rules': [
    {'ID': 'old-versions', 'Status': 'Enabled', 'Filter': {'Prefix': ''},
     'NoncurrentVersionExpiration': {'NoncurrentDays': 90}}]})
for i in range(60):
    body = ('artifact %d ' % i).encode() * (i + 1)
    client = s3 if i % 2 else raw
    client.put_object(Bucket='artifacts', Key='job-%d/step-%d/out.bin' % (i % 3, i), Body=body)
# Two multipart uploads (5 MiB + 10 bytes): one with a composite CRC32, one with only its ETag.
for client, key, extra in [(s3, 'bundles/with-crc.bin', {'ChecksumAlgorithm': 'CRC32'}),
                           (raw, 'bundles/etag-only.bin', {})]:
    up = client.create_multipart_upload(Bucket='artifacts', Key=key, **extra)
    parts = []
    for n, data in [(1, b'a' * (5 << 20)), (2, b'b' * 10)]:
        part = client.upload_part(Bucket='artifacts', Key=key, UploadId=up['UploadId'],
                                  PartNumber=n, Body=data, **extra)
        parts.append({'PartNumber': n, 'ETag': part['ETag'],
                      **({'ChecksumCRC32': part['ChecksumCRC32']} if extra else {})})
    client.complete_multipart_upload(Bucket='artifacts', Key=key, UploadId=up['UploadId'],
                                     MultipartUpload={'Parts': parts})
"#;

#[test]
fn a_well_configured_bucket_passes_and_a_drop_since_the_last_run_fails() {
    let aws = LocalAws::start(&[]);
    aws.script(WELL_CONFIGURED);
    let sandbox = Sandbox::new();
    let manifest = sandbox.write("expected.txt", "# must exist\njob-0/step-0/out.bin\n");
    let plan = plan(
        &sandbox,
        &format!(
            "bucket = \"artifacts\"\nexpected_region = \"us-east-1\"\n\
             expected_keys = [\"job-1/step-1/out.bin\"]\nexpected_manifest = {:?}\n\
             sample = {{ fraction = 1.0 }}\n",
            manifest.to_str().unwrap()
        ),
    );

    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    out.expect_code(0);
    let first = out.json();
    let step = only_step(&first);
    assert_eq!(step["status"], "Succeeded", "{first:#}");
    let record = &step["record"];
    let all = findings(record);
    assert!(
        all.iter().all(|(_, status)| status == "pass"),
        "every check passes: {all:?}"
    );
    for check in [
        "versioning",
        "replication",
        "lifecycle",
        "encryption",
        "public_access",
        "region",
        "low_redundancy",
        "replication_status",
        "checksum",
        "expected",
    ] {
        assert!(
            all.iter().any(|(c, _)| c == check),
            "{check} missing: {all:?}"
        );
    }
    assert_eq!(record["objects"]["count"], 62);
    assert_eq!(record["sample"]["read"], 62);
    assert_eq!(record["sample"]["verified"], 62, "{record:#}");
    let algorithms = &record["sample"]["algorithms"];
    assert_eq!(algorithms["crc32"], 30);
    assert_eq!(algorithms["etag-md5"], 30);
    assert_eq!(algorithms["crc32-composite"], 1, "{algorithms}");
    assert_eq!(algorithms["etag-md5-multipart"], 1, "{algorithms}");
    assert_eq!(record["expected"]["checked"], 2);
    assert!(
        step["summary"].as_str().unwrap().contains("62 objects"),
        "{step:#}"
    );
    assert!(step["warnings"].as_array().is_none_or(Vec::is_empty));

    // verify re-runs the checks, compared with the backup's record.
    let out = sandbox.run_on(&aws, &["--json", "verify", &plan]);
    out.expect_code(0);

    // Half of the objects disappear: the next run compares with the last one and fails.
    aws.script("for i in range(2, 60, 2):\n    s3.delete_object(Bucket='artifacts', Key='job-%d/step-%d/out.bin' % (i % 3, i))\n",
    );
    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    out.expect_code(FAILED);
    let failed = out.json();
    let error = &only_step(&failed)["error"];
    assert_eq!(error["kind"], "permanent", "{failed:#}");
    assert!(
        error["message"].as_str().unwrap().contains("count_drop"),
        "{error:#}"
    );
    let detail = error["detail"].as_str().unwrap();
    assert!(detail.contains("objects fell by 46.8%"), "{detail}");
}

#[test]
fn each_missing_protection_is_its_own_finding_and_low_redundancy_objects_are_counted() {
    let aws = LocalAws::start(&[]);
    aws.script(r#"
s3.create_bucket(Bucket='bare')
s3.put_bucket_lifecycle_configuration(Bucket='bare', LifecycleConfiguration={'Rules': [
    {'ID': 'short', 'Status': 'Enabled', 'Filter': {'Prefix': 'logs/'}, 'Expiration': {'Days': 7}}]})
s3.put_object(Bucket='bare', Key='logs/a', Body=b'a', StorageClass='ONEZONE_IA')
s3.put_object(Bucket='bare', Key='logs/b', Body=b'b', StorageClass='ONEZONE_IA')
s3.put_object(Bucket='bare', Key='logs/c', Body=b'c', StorageClass='REDUCED_REDUNDANCY')
s3.put_object(Bucket='bare', Key='logs/d', Body=b'd')
"#,
    );
    let sandbox = Sandbox::new();

    // Defaults: what loses data fails the step, and the error lists every problem with its fix.
    let strict = plan(
        &sandbox,
        "bucket = \"bare\"\nrequire_object_lock = true\nexpected_region = \"eu-west-1\"\n",
    );
    let out = sandbox.run_on(&aws, &["--json", "run", &strict]);
    out.expect_code(FAILED);
    let failed = out.json();
    let error = &only_step(&failed)["error"];
    let message = error["message"].as_str().unwrap();
    for check in [
        "versioning",
        "replication",
        "object_lock",
        "lifecycle",
        "region",
    ] {
        assert!(message.contains(check), "{check} not in {message}");
    }
    let detail = error["detail"].as_str().unwrap();
    for line in [
        "fail: versioning: versioning is not enabled",
        "fix: aws s3api put-bucket-versioning --bucket bare",
        "fail: replication: no replication is configured",
        "fail: object_lock: object lock is not enabled",
        "fail: lifecycle: lifecycle rule `short` expires current versions of keys under `logs/` after 7 days (< 30)",
        "fail: region: the bucket is in us-east-1, not eu-west-1",
        "warn: public_access: no public-access block is configured",
        "warn: low_redundancy: 2 objects (2 bytes) are in ONEZONE_IA",
        "warn: low_redundancy: 1 objects (1 bytes) are in REDUCED_REDUNDANCY",
    ] {
        assert!(detail.contains(line), "{line:?} not in\n{detail}");
    }

    // The same problems downgraded by the plan: the step succeeds, with warnings, and the
    // record counts the objects per storage class.
    let lenient = plan(
        &sandbox,
        "bucket = \"bare\"\nseverity = { versioning = \"warn\", replication = \"warn\", lifecycle = \"ignore\" }\n",
    );
    let out = sandbox.run_on(&aws, &["--json", "run", &lenient]);
    out.expect_code(0);
    let passed = out.json();
    let step = only_step(&passed);
    let record = &step["record"];
    assert_eq!(record["objects"]["count"], 4);
    assert_eq!(record["objects"]["classes"]["ONEZONE_IA"]["count"], 2);
    assert_eq!(
        record["objects"]["classes"]["REDUCED_REDUNDANCY"]["count"],
        1
    );
    assert_eq!(record["low_redundancy"]["count"], 3);
    let all = findings(record);
    assert!(
        all.contains(&("lifecycle".into(), "ignored".into())),
        "{all:?}"
    );
    assert!(
        all.contains(&("versioning".into(), "warn".into())),
        "{all:?}"
    );
    let warnings: Vec<&str> = step["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("versioning: versioning is not enabled")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("are in ONEZONE_IA")),
        "{warnings:?}"
    );
}

#[test]
fn a_sampled_object_with_a_wrong_checksum_fails_the_step() {
    // ministack refuses a mismatching x-amz-checksum-crc32 (BadDigest); moto stores it as sent,
    // which is what silent corruption at rest looks like to a reader.
    let aws = LocalAws::start(&["--s3", "moto"]);
    aws.script(r#"
s3.create_bucket(Bucket='artifacts')
for i in range(5):
    s3.put_object(Bucket='artifacts', Key='ok/%d' % i, Body=b'fine %d' % i, ChecksumAlgorithm='SHA256')
body = b'the bytes that are stored'
wrong = base64.b64encode((zlib.crc32(body) ^ 0xFF).to_bytes(4, 'big')).decode()
raw.put_object(Bucket='artifacts', Key='bad/object', Body=body, ChecksumAlgorithm='CRC32', ChecksumCRC32=wrong)
"#,
    );
    let sandbox = Sandbox::new();
    // moto reports no encryption or public-access block and replicates nothing: those checks
    // are not what this test is about.
    let plan = plan(
        &sandbox,
        "bucket = \"artifacts\"\nsample = { count = 100 }\n\
         severity = { versioning = \"ignore\", replication = \"ignore\", encryption = \"ignore\", public_access = \"ignore\" }\n",
    );
    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    out.expect_code(FAILED);
    let failed = out.json();
    let error = &only_step(&failed)["error"];
    assert_eq!(
        error["message"], "s3://artifacts: 1 check(s) failed: checksum",
        "{failed:#}"
    );
    let detail = error["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "fail: checksum: 1 sampled objects do not match their stored checksum: bad/object"
        ),
        "{detail}"
    );
    assert!(detail.contains("6 sampled reads"), "{detail}");
    assert!(detail.contains("5 of 6 sampled reads verified"), "{detail}");
}

#[test]
fn a_missing_expected_key_fails_the_step() {
    let aws = LocalAws::start(&[]);
    aws.script("s3.create_bucket(Bucket='artifacts')\ns3.put_object(Bucket='artifacts', Key='a/present', Body=b'x')\n",
    );
    let sandbox = Sandbox::new();
    let plan = plan(
        &sandbox,
        "bucket = \"artifacts\"\nprefixes = [\"a/\"]\n\
         expected_keys = [\"a/present\", \"a/missing\", \"outside/also-missing\"]\n\
         severity = { versioning = \"ignore\", replication = \"ignore\" }\n",
    );
    let out = sandbox.run_on(&aws, &["--json", "run", &plan]);
    out.expect_code(FAILED);
    let failed = out.json();
    let error = &only_step(&failed)["error"];
    assert_eq!(
        error["message"], "s3://artifacts: 1 check(s) failed: expected",
        "{failed:#}"
    );
    let detail = error["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "fail: expected: 2 of 3 expected keys are missing: a/missing, outside/also-missing"
        ),
        "{detail}"
    );
}

#[test]
fn a_bucket_that_cannot_be_reached_is_a_config_error_naming_it() {
    // Neither local server enforces bucket policies, so a denied HeadBucket cannot be staged;
    // a missing bucket takes the same path (a config error naming the bucket and the call).
    let aws = LocalAws::start(&[]);
    let sandbox = Sandbox::new();
    let plan = plan(&sandbox, "bucket = \"no-such-bucket\"\n");
    let out = sandbox.run_on(&aws, &["run", &plan]);
    out.expect_code(CONFIG_ERROR);
    let stderr = format!("{}{}", out.stdout(), out.stderr());
    assert!(
        stderr.contains("bucket `no-such-bucket` does not exist (HeadBucket"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
