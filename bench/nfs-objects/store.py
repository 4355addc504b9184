#!/usr/bin/env python3
"""S3 helpers for run.sh, on the local S3 server it starts (boto3 from scripts/local-aws/.venv).

  store.py mkbucket NAME...        create buckets (ignores those that exist)
  store.py usage BUCKET [PREFIX]   print "<objects>\t<bytes>" stored under the prefix
  store.py rawspeed BUCKET DIR     PUT every file of DIR then GET it back, 16 at a time, and
                                   print the MB/s of each: the server's own limit, measured
                                   without any backup tool in the way

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY).
"""
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        config=Config(max_pool_connections=32, s3={"addressing_style": "path"}),
    )


def mkbucket(names):
    s3 = client()
    have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for name in names:
        if name not in have:
            s3.create_bucket(Bucket=name)


def usage(bucket, prefix=""):
    s3 = client()
    objects = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            objects += 1
            size += item["Size"]
    print(f"{objects}\t{size}")


def rawspeed(bucket, folder):
    s3 = client()
    files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
    total = sum(os.path.getsize(f) for f in files)
    key = lambda path: os.path.relpath(path, folder)

    def put(path):
        with open(path, "rb") as f:
            s3.put_object(Bucket=bucket, Key=key(path), Body=f.read())

    def get(path):
        s3.get_object(Bucket=bucket, Key=key(path))["Body"].read()

    for name, work in (("put", put), ("get", get)):
        start = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(work, files))
        took = time.monotonic() - start
        print(f"raw {name}: {len(files)} objects, {total / 2**20:.0f} MiB in {took:.2f} s "
              f"= {total / 2**20 / took:.0f} MiB/s")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"mkbucket": lambda: mkbucket(args), "usage": lambda: usage(*args),
     "rawspeed": lambda: rawspeed(*args)}[command]()
