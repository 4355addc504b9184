#!/usr/bin/env python3
"""s3-verify benchmark: backplan's full listing + posture checks against `aws s3api
list-objects-v2` on the same bucket of a local S3 endpoint, at two bucket sizes.

Usage (from anywhere; paths are relative to the workspace):
  bench/s3-verify/run.py [--sizes 50000,200000] [--reps 3] [--threads 8] [--s3 ministack|moto]
                         [--no-build] [--binary PATH]

What it does, in one run:
  1. `cargo build --release -p backplan-cli` (unless --no-build);
  2. a virtualenv with PyPI `awscli` in bench/s3-verify/.venv (created once);
  3. a private local endpoint (scripts/local-aws/start), stopped at the end;
  4. one bucket filled with empty objects over many prefixes
     (job-NNNN/step-N/file-NNNNNN, 200 objects per job) by a thread pool of unsigned HTTP PUTs,
     timed; it is grown from one size to the next;
  5. at each size, alternating, --reps times each: `backplan run` on a plan with one s3-verify
     step (sample of 20 reads) and `aws s3api list-objects-v2 --bucket B` (output discarded);
     wall time, CPU time and peak RSS of each process (os.wait4);
  6. medians, the ratio, and backplan's peak RSS per size (flat RSS = constant memory).

Numbers from a local Python S3 stand-in measure the client side only as far as the server
keeps up; both tools talk to the same server in the same run, so the ratio is fair.
"""
import argparse
import concurrent.futures as cf
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.join(ROOT, "bench", "s3-verify")
VENV = os.path.join(HERE, ".venv")
BUCKET = "bench-artifacts"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def start_endpoint(s3):
    out = subprocess.run([os.path.join(ROOT, "scripts/local-aws/start"), "--s3", s3],
                         check=True, capture_output=True, text=True).stdout
    env = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            env[key] = shlex.split(value)[0] if value else ""
    return env


def awscli():
    aws = os.path.join(VENV, "bin", "aws")
    if not os.path.exists(aws):
        log("creating %s with awscli from PyPI" % VENV)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", "awscli"], check=True)
    version = subprocess.run([aws, "--version"], capture_output=True, text=True)
    return aws, (version.stdout or version.stderr).strip()


def boto_python():
    venv = os.environ.get("BACKPLAN_LOCAL_AWS_VENV", os.path.join(ROOT, "scripts/local-aws/.venv"))
    return os.path.join(venv, "bin", "python")


# The bucket is filled with plain unsigned HTTP PUTs on keep-alive connections (the local
# servers do not check signatures): boto3's per-request CPU cost made filling 200,000 objects take
# over 20 minutes on a 2-core machine; this is about twice as fast, and only the server is left.
FILL = r'''
import concurrent.futures as cf, http.client, os, sys, threading, time, urllib.parse
import boto3
from botocore.config import Config
bucket, start, stop, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if start == 0:
    boto3.client("s3", config=Config(s3={"addressing_style": "path"})).create_bucket(Bucket=bucket)
endpoint = urllib.parse.urlparse(os.environ["AWS_ENDPOINT_URL_S3"])
headers = {"Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, "
                            "SignedHeaders=host, Signature=00",
           "x-amz-date": "20260101T000000Z", "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
local = threading.local()
def put(lo, hi):
    if not hasattr(local, "c"):
        local.c = http.client.HTTPConnection(endpoint.hostname, endpoint.port)
    for i in range(lo, hi):
        local.c.request("PUT", "/%s/job-%04d/step-%d/file-%06d" % (bucket, i // 200, i % 3, i),
                        body=b"", headers=headers)
        response = local.c.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit("PUT answered %d" % response.status)
t = time.time()
with cf.ThreadPoolExecutor(threads) as pool:
    list(pool.map(lambda lo: put(lo, min(lo + 500, stop)), range(start, stop, 500)))
print("%.1f" % (time.time() - t))
'''


def fill(env, start, stop, threads):
    out = subprocess.run([boto_python(), "-c", FILL, BUCKET, str(start), str(stop), str(threads)],
                         env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def measure(cmd, env):
    """Runs cmd; returns (wall s, cpu s, peak RSS KiB, exit code)."""
    t = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()))
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        log("%s exited %d:\n%s" % (cmd[0], proc.returncode, stderr[0].decode(errors="replace")[-2000:]))
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, proc.returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="50000,200000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--s3", default="ministack")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--binary", help="backplan binary to measure (default: target/release/backplan)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    if not args.no_build and not args.binary:
        subprocess.run(["cargo", "build", "--release", "-p", "backplan-cli"], cwd=ROOT, check=True)
    backplan = args.binary or os.path.join(ROOT, "target", "release", "backplan")
    aws, aws_version = awscli()

    endpoint = start_endpoint(args.s3)
    env = dict(os.environ)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_SESSION_TOKEN"):
        env.pop(key, None)
    env.update(endpoint)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["AWS_PAGER"] = ""
    work = tempfile.mkdtemp(prefix="s3-verify-bench.")
    env["BACKPLAN_STATE_DIR"] = os.path.join(work, "state")
    plan = os.path.join(work, "plan.toml")
    with open(plan, "w") as f:
        f.write('[plan]\nname = "bench"\n\n[[steps]]\nid = "bucket"\nplugin = "s3-verify"\n'
                '[steps.config]\nbucket = "%s"\nsample = { count = 20 }\nmax_drop_percent = 100\n'
                'severity = { versioning = "warn", replication = "warn" }\n' % BUCKET)
    results = []
    try:
        have = 0
        for size in sizes:
            secs = fill(env, have, size, args.threads)
            log("created objects %d..%d in %.1f s (%.0f/s)" % (have, size, secs, (size - have) / secs))
            have = size
            bp, cli = [], []
            for rep in range(args.reps):
                # Alternate which tool goes first.
                order = [("backplan", bp), ("aws", cli)] if rep % 2 == 0 else [("aws", cli), ("backplan", bp)]
                for name, into in order:
                    if name == "backplan":
                        cmd = [backplan, "--no-progress", "run", plan]
                    else:
                        cmd = [aws, "s3api", "list-objects-v2", "--bucket", BUCKET, "--output", "json"]
                    into.append(measure(cmd, env))
                    log("  %d objects, %s: %.2f s wall, %.2f s cpu, %d MiB peak RSS, exit %d"
                        % (size, name, into[-1][0], into[-1][1], into[-1][2] // 1024, into[-1][3]))
            med = lambda rows, i: statistics.median(r[i] for r in rows)
            results.append({
                "objects": size,
                "backplan_s": med(bp, 0), "backplan_cpu_s": med(bp, 1),
                "backplan_peak_rss_mib": max(r[2] for r in bp) / 1024,
                "aws_cli_s": med(cli, 0), "aws_cli_cpu_s": med(cli, 1),
                "aws_cli_peak_rss_mib": max(r[2] for r in cli) / 1024,
                "ratio": med(cli, 0) / med(bp, 0),
                "exit_codes": sorted({r[3] for r in bp + cli}),
            })
    finally:
        subprocess.run([os.path.join(ROOT, "scripts/local-aws/stop"), endpoint["BACKPLAN_LOCAL_AWS_STATE"]],
                       capture_output=True)

    print("s3-verify benchmark (%s S3, %d reps, medians; %s)" % (args.s3, args.reps, aws_version))
    print("%9s  %12s  %12s  %7s  %16s  %14s" % ("objects", "backplan s", "aws cli s", "ratio",
                                                "backplan RSS MiB", "aws RSS MiB"))
    for r in results:
        print("%9d  %12.2f  %12.2f  %6.2fx  %16.1f  %14.1f" % (
            r["objects"], r["backplan_s"], r["aws_cli_s"], r["ratio"],
            r["backplan_peak_rss_mib"], r["aws_cli_peak_rss_mib"]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
