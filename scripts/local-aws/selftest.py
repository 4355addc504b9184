#!/usr/bin/env python3
"""Smoke test of the local AWS endpoint: real HTTP through boto3, no `aws` CLI.

    scripts/local-aws/selftest.py            # starts its own endpoint (with-aws --proxy) and stops it
    python selftest.py                       # inside an environment from `start --proxy`: uses it

Checks: the standard AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 routing, VPC/subnet/instance,
CreateImage NoReboot with per-volume snapshots and tags, pending -> available with rising
snapshot Progress, snapshot `error` via the volume tag (and the AMI `failed`), CopyImage to
another region, DryRun, restore (RunInstances from the AMI), throttling and 5xx through the
fault proxy (with and without SDK retries), and S3 on ministack with path-style addressing.
It reconfigures the launcher at runtime (POST /__backplan/config) and resets moto first.
"""

import json
import os
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def _bootstrap():
    # Outside a started environment: re-run ourselves under with-aws (which installs and starts).
    if not os.environ.get("BACKPLAN_LOCAL_AWS_STATE"):
        os.execv(
            os.path.join(HERE, "with-aws"),
            [os.path.join(HERE, "with-aws"), "--proxy", "--", sys.executable, os.path.abspath(__file__)],
        )
    try:
        import boto3  # noqa: F401
    except ImportError:
        venv = os.environ.get("BACKPLAN_LOCAL_AWS_VENV", os.path.join(HERE, ".venv"))
        py = os.path.join(venv, "bin", "python")
        if os.path.realpath(sys.executable) == os.path.realpath(py):
            sys.exit("selftest: boto3 missing from the virtualenv")
        os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


_bootstrap()

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError  # noqa: E402

MOTO = os.environ["BACKPLAN_MOTO_URL"]
PROXY = os.environ.get("BACKPLAN_FAULT_PROXY_URL", "")
REGION = os.environ.get("AWS_REGION", "us-east-1")
N = 3
FAILURES = []


def http(method, url, body=None, ctype="application/json"):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read().decode()


def check(cond, what):
    print(("  ok   " if cond else "  FAIL ") + what, flush=True)
    if not cond:
        FAILURES.append(what)


def error_code(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except ClientError as exc:
        return exc.response["Error"]["Code"], exc.response["ResponseMetadata"].get("HTTPStatusCode")
    return None, None


def ec2_client(region=REGION, retries=None):
    cfg = Config(retries=retries or {"mode": "standard", "max_attempts": 3})
    return boto3.client("ec2", region_name=region, config=cfg)


def tags_of(obj):
    return {t["Key"]: t["Value"] for t in obj.get("Tags", [])}


def main():
    print(f"selftest: EC2 via {os.environ['AWS_ENDPOINT_URL']} (moto {MOTO}), S3 via {os.environ['AWS_ENDPOINT_URL_S3']}")
    http("POST", f"{MOTO}/moto-api/reset", "")
    cfg = json.loads(http("POST", f"{MOTO}/__backplan/config", json.dumps({"pending_describes": N})))
    check(cfg["pending_describes"] == N, f"launcher config pending_describes={N}")
    if PROXY:
        http("POST", f"{PROXY}/__faults", "", "text/plain")

    ec2 = ec2_client()
    check(ec2.meta.endpoint_url.rstrip("/") == os.environ["AWS_ENDPOINT_URL"].rstrip("/"),
          "boto3 picked up AWS_ENDPOINT_URL")

    print("[network + instance]")
    base = ec2.register_image(Name="backplan-selftest-base", RootDeviceName="/dev/sda1")["ImageId"]
    img = ec2.describe_images(ImageIds=[base])["Images"][0]
    check(img["State"] == "available", "RegisterImage fixture AMI is available at once")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="backplan-selftest", Description="t", VpcId=vpc)["GroupId"]
    run = ec2.run_instances(
        ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.small", SubnetId=subnet,
        SecurityGroupIds=[sg], KeyName="none",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "services"}]}],
    )
    inst = run["Instances"][0]
    iid = inst["InstanceId"]
    check(bool(inst.get("PrivateIpAddress")), f"RunInstances {iid} private IP {inst.get('PrivateIpAddress')}")
    az = inst["Placement"]["AvailabilityZone"]
    data_vol = ec2.create_volume(Size=20, AvailabilityZone=az, VolumeType="gp3")["VolumeId"]
    ec2.attach_volume(VolumeId=data_vol, InstanceId=iid, Device="/dev/sdf")
    vols = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [iid]}])["Volumes"]
    check(len(vols) == 2, "instance has root + data volume")

    print("[CreateImage NoReboot: pending -> available, one snapshot per volume]")
    dry = error_code(ec2.create_image, InstanceId=iid, Name="dry", NoReboot=True, DryRun=True)
    check(dry[0] == "DryRunOperation", f"DryRun CreateImage -> {dry[0]}")
    ami = ec2.create_image(
        InstanceId=iid, Name="backplan-selftest-1", NoReboot=True,
        TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": "backplan:plan", "Value": "selftest"}]},
            {"ResourceType": "snapshot", "Tags": [{"Key": "backplan:plan", "Value": "selftest"}]},
        ],
    )["ImageId"]
    img = ec2.describe_images(ImageIds=[ami])["Images"][0]  # image describe 1
    check(img["State"] == "pending", "AMI pending on describe 1")
    check(tags_of(img).get("backplan:plan") == "selftest", "AMI tagged from TagSpecifications")
    bdm = img["BlockDeviceMappings"]
    sizes = sorted(m["Ebs"]["VolumeSize"] for m in bdm)
    check(len(bdm) == 2 and sizes == [8, 20], f"AMI has one snapshot per volume: {[(m['DeviceName'], m['Ebs']['VolumeSize']) for m in bdm]}")
    snap_ids = [m["Ebs"]["SnapshotId"] for m in bdm]
    progress = []
    for i in range(N + 1):
        snaps = ec2.describe_snapshots(SnapshotIds=snap_ids)["Snapshots"]
        progress.append([(s["State"], s["Progress"]) for s in snaps][0])
    check([p[0] for p in progress] == ["pending"] * N + ["completed"], f"snapshot states {progress}")
    pcts = [int(p[1].rstrip("%")) for p in progress]
    check(pcts == sorted(pcts) and pcts[-1] == 100 and pcts[0] < 100, f"snapshot Progress rises {pcts}")
    check(all(tags_of(s).get("backplan:plan") == "selftest" for s in snaps), "AMI snapshots tagged (ResourceType snapshot)")
    states = [ec2.describe_images(ImageIds=[ami])["Images"][0]["State"] for _ in range(N)]
    check(states == ["pending"] * (N - 1) + ["available"], f"AMI states on describes 2..{N + 1}: {states}")
    code = error_code(ec2.delete_snapshot, SnapshotId=snap_ids[0])[0]
    check(code == "InvalidSnapshot.InUse", f"snapshot of a registered AMI cannot be deleted ({code})")

    print("[snapshot error via volume tag]")
    bad = ec2.run_instances(
        ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.micro", SubnetId=subnet,
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "backplan-test-fail", "Value": "snapshot"}]}],
    )["Instances"][0]["InstanceId"]
    bad_vol = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [bad]}])["Volumes"][0]["VolumeId"]
    sid = ec2.create_snapshot(VolumeId=bad_vol, Description="should fail")["SnapshotId"]
    seq = [ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0] for _ in range(N + 1)]
    check([s["State"] for s in seq] == ["pending"] * N + ["error"], f"tagged volume snapshot states {[s['State'] for s in seq]}")
    check("injected" in seq[-1].get("StateMessage", ""), f"StateMessage: {seq[-1].get('StateMessage')!r}")
    good = ec2.create_snapshot(VolumeId=data_vol)["SnapshotId"]
    last = [ec2.describe_snapshots(SnapshotIds=[good])["Snapshots"][0]["State"] for _ in range(N + 1)][-1]
    check(last == "completed", "untagged volume snapshot completes")
    bad_ami = ec2.create_image(InstanceId=bad, Name="backplan-selftest-bad", NoReboot=True)["ImageId"]
    img = [ec2.describe_images(ImageIds=[bad_ami])["Images"][0] for _ in range(N + 1)][-1]
    check(img["State"] == "failed" and "StateReason" in img, f"AMI with failing snapshot -> {img['State']} {img.get('StateReason')}")

    print("[CopyImage to another region]")
    west = ec2_client("us-west-2")
    copy = west.copy_image(
        SourceImageId=ami, SourceRegion=REGION, Name="backplan-selftest-1-copy", CopyImageTags=True,
        TagSpecifications=[{"ResourceType": "image", "Tags": [{"Key": "backplan:copy", "Value": "dr"}]}],
    )["ImageId"]
    imgs = [west.describe_images(ImageIds=[copy])["Images"][0] for _ in range(N + 1)]
    check([i["State"] for i in imgs] == ["pending"] * N + ["available"], "copied AMI pending then available")
    t = tags_of(imgs[-1])
    check(t.get("backplan:copy") == "dr" and t.get("backplan:plan") == "selftest", f"copy tags {t}")
    cbdm = imgs[-1]["BlockDeviceMappings"]
    check(sorted(m["Ebs"]["VolumeSize"] for m in cbdm) == [8, 20], "copy keeps one snapshot per volume")
    csnaps = west.describe_snapshots(SnapshotIds=[m["Ebs"]["SnapshotId"] for m in cbdm])["Snapshots"]
    check(all(s["State"] == "completed" for s in csnaps), "copy snapshots completed in us-west-2")

    print("[restore: launch from the AMI]")
    r = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.small",
                          SubnetId=subnet, SecurityGroupIds=[sg])["Instances"][0]
    ec2.get_waiter("instance_running").wait(InstanceIds=[r["InstanceId"]], WaiterConfig={"Delay": 1})
    d = ec2.describe_instances(InstanceIds=[r["InstanceId"]])["Reservations"][0]["Instances"][0]
    check(d["State"]["Name"] == "running" and d["ImageId"] == ami and d.get("PrivateIpAddress"),
          f"restored instance running from {ami} at {d.get('PrivateIpAddress')}")
    ec2.deregister_image(ImageId=ami)
    ec2.delete_snapshot(SnapshotId=snap_ids[0])
    check(True, "deregister then delete snapshot works")

    print("[termination frees the private IP and the Elastic IP]")
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=eip, InstanceId=r["InstanceId"])
    old_ip = d["PrivateIpAddress"]
    ec2.terminate_instances(InstanceIds=[r["InstanceId"]])
    held = ec2.describe_network_interfaces(Filters=[{"Name": "addresses.private-ip-address", "Values": [old_ip]}])
    check(held["NetworkInterfaces"] == [], f"no interface holds {old_ip} after termination")
    free = ec2.describe_addresses(AllocationIds=[eip])["Addresses"][0]
    check(not free.get("InstanceId") and not free.get("AssociationId"), f"Elastic IP disassociated: {free}")
    again = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, SubnetId=subnet, PrivateIpAddress=old_ip)
    check(again["Instances"][0]["PrivateIpAddress"] == old_ip, f"{old_ip} can be launched with again")

    if PROXY:
        print("[fault proxy: throttling and 5xx]")
        http("POST", f"{MOTO}/__backplan/config", json.dumps({"pending_describes": 0}))
        http("POST", f"{PROXY}/__faults", "CreateImage:throttle:2,DescribeImages:500:1", "text/plain")
        once = ec2_client(retries={"mode": "standard", "total_max_attempts": 1})
        codes = [error_code(once.create_image, InstanceId=iid, Name=f"thr-{i}", NoReboot=True) for i in range(2)]
        check(codes == [("RequestLimitExceeded", 503)] * 2, f"first 2 CreateImage throttled: {codes}")
        ok = once.create_image(InstanceId=iid, Name="thr-3", NoReboot=True)["ImageId"]
        check(ok.startswith("ami-"), "third CreateImage passes through")
        code = error_code(once.describe_images, ImageIds=[ok])
        check(code == ("InternalError", 500), f"first DescribeImages -> {code}")
        check(once.describe_images(ImageIds=[ok])["Images"][0]["State"] == "available", "second DescribeImages passes")
        http("POST", f"{PROXY}/__faults", "CreateImage:throttle:2", "text/plain")
        retried = ec2_client(retries={"mode": "standard", "total_max_attempts": 5})
        ok2 = retried.create_image(InstanceId=iid, Name="thr-retry", NoReboot=True)["ImageId"]
        st = json.loads(http("GET", f"{PROXY}/__faults"))
        check(ok2.startswith("ami-") and st["injected"].get("CreateImage") == 2 and st["seen"]["CreateImage"] == 3,
              f"SDK retries through 2 throttles: {st}")
        http("POST", f"{PROXY}/__faults", "DescribeRegions:pass:1,DescribeRegions:denied:1", "text/plain")
        once.describe_regions()
        code = error_code(once.describe_regions)
        check(code == ("UnauthorizedOperation", 403), f"pass lets the first through, denied answers 403: {code}")
        http("POST", f"{PROXY}/__faults", "DescribeRegions:reset:1", "text/plain")
        try:
            once.describe_regions()
            check(False, "reset fault closes the connection")
        except (ConnectionClosedError, EndpointConnectionError) as exc:
            check(True, f"reset fault closes the connection ({type(exc).__name__})")
        http("POST", f"{PROXY}/__faults", "", "text/plain")
    else:
        print("[fault proxy: skipped, not started (use start --proxy)]")

    print("[S3 on ministack, path-style]")
    s3_url = os.environ["AWS_ENDPOINT_URL_S3"]
    check(s3_url.rstrip("/") != MOTO.rstrip("/"), "S3 routed away from moto")
    s3 = boto3.client("s3", region_name=REGION, config=Config(s3={"addressing_style": "path"}))
    check(s3.meta.endpoint_url.rstrip("/") == s3_url.rstrip("/"), "boto3 picked up AWS_ENDPOINT_URL_S3")
    s3.create_bucket(Bucket="backplan-selftest")
    s3.put_object(Bucket="backplan-selftest", Key="dir/hello.txt", Body=b"hello backplan", ChecksumAlgorithm="SHA256")
    body = s3.get_object(Bucket="backplan-selftest", Key="dir/hello.txt")["Body"].read()
    check(body == b"hello backplan", "S3 put/get round trip")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="backplan-selftest").get("Contents", [])]
    check(keys == ["dir/hello.txt"], f"S3 list {keys}")
    try:
        enc = s3.get_bucket_encryption(Bucket="backplan-selftest")["ServerSideEncryptionConfiguration"]["Rules"][0]
        check(enc["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256", "new bucket reports default SSE-S3 (moto does not)")
    except ClientError as exc:
        check(False, f"GetBucketEncryption on ministack: {exc}")
    code = error_code(s3.put_object, Bucket="backplan-selftest", Key="bad", Body=b"abc",
                      ChecksumSHA256="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    check(code[0] in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidRequest"), f"wrong checksum rejected: {code}")
    ver = s3.get_bucket_versioning(Bucket="backplan-selftest")
    check(ver["ResponseMetadata"]["HTTPStatusCode"] == 200, "GetBucketVersioning answers")

    if FAILURES:
        print(f"selftest: {len(FAILURES)} FAILED:\n  " + "\n  ".join(FAILURES))
        return 1
    print("selftest: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
