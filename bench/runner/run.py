#!/usr/bin/env python3
"""Runner overhead and dynamic plugin load time (a benchmark, not a test).

Measures, with the release binary:
  * a 100-step no-op plan (exec steps in --dry-run, so no process is spawned: what is left is
    plan parsing, schema checks, the check phase, the graph, and 100+ atomic record writes),
    as a chain and as a fan-out, against a 1-step plan: overhead per step = (t100 - t1) / 99;
  * a 10,000-step chain: `plan check` and the dry run, which must stay linear in the plan's size
    (validation stores no ancestor sets; the record is written at most every half second);
  * loading a third-party plugin: `plugins list` with and without a plan naming the example
    plugin (examples/hello-plugin), i.e. open + checks + dlopen + describe + schema compile.
Prints medians of N runs (wall seconds), CPU seconds and peak RSS.

    python3 bench/runner/run.py [--runs 15]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(*args, **kw):
    subprocess.run(args, check=True, cwd=ROOT, **kw)


def build():
    sh("cargo", "build", "--release", "-q", "-p", "backplan-cli")
    sh("cargo", "build", "--release", "-q", "--manifest-path", "examples/hello-plugin/Cargo.toml")
    lib_dir = os.path.join(ROOT, "examples/hello-plugin/target/release")
    libs = [f for f in os.listdir(lib_dir) if f.endswith(".so")]
    if not libs:
        sys.exit("the example plugin did not build a .so")
    return os.path.join(ROOT, "target/release/backplan"), os.path.join(lib_dir, libs[0])


def plan(path, steps, chain, concurrency=8):
    with open(path, "w") as f:
        f.write(f'[plan]\nname = "bench"\nconcurrency = {concurrency}\n')
        for i in range(steps):
            f.write(f'\n[[steps]]\nid = "s{i}"\nplugin = "exec"\n')
            if chain and i > 0:
                f.write(f'after = ["s{i - 1}"]\n')
            f.write('[steps.config]\ncommand = ["true"]\n')


def measure(cmd, env, runs):
    """Median wall and CPU seconds, and the peak RSS, of `cmd` alone (wait4 gives each
    process's own usage, not that of every child this script ever had, such as the build)."""
    walls, cpus, rss = [], [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} exited with {proc.returncode}")
        cpus.append(usage.ru_utime + usage.ru_stime)
        rss = max(rss, usage.ru_maxrss)
    return statistics.median(walls), statistics.median(cpus), rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    binary, plugin = build()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BACKPLAN_STATE_DIR=os.path.join(tmp, "state"), RUST_LOG="warn")
        rows = []
        for name, steps, chain in [("1 step", 1, False), ("100 steps, chain", 100, True),
                                   ("100 steps, fan-out", 100, False)]:
            path = os.path.join(tmp, f"{steps}-{chain}.toml")
            plan(path, steps, chain)
            rows.append((name, *measure([binary, "--no-progress", "run", "--dry-run", path], env, args.runs)))
        big = os.path.join(tmp, "10000-chain.toml")
        plan(big, 10_000, True)
        big_runs = max(1, args.runs // 5)
        rows.append(("10,000 steps: check", *measure([binary, "--no-progress", "plan", "check", big], env, big_runs)))
        rows.append(("10,000 steps: run", *measure([binary, "--no-progress", "-q", "run", "--dry-run", big], env, big_runs)))
        hello = os.path.join(tmp, "hello.toml")
        with open(hello, "w") as f:
            f.write(f'[plan]\nname = "load"\n[[plugins]]\npath = "{plugin}"\n'
                    '[[steps]]\nid = "a"\nplugin = "exec"\n')
        without = measure([binary, "plugins", "list"], env, args.runs)
        with_plugin = measure([binary, "plugins", "list", "--plan", hello], env, args.runs)

    print(f"{'case':<22} {'wall s':>8} {'cpu s':>8} {'peak RSS MiB':>13}")
    for name, wall, cpu, rss in rows:
        print(f"{name:<22} {wall:8.4f} {cpu:8.4f} {rss / 1024:13.1f}")
    base = rows[0][1]
    for name, wall, *_ in rows[1:3]:
        print(f"overhead per step ({name}): {(wall - base) / 99 * 1000:.2f} ms")
    print(f"plugins list: {without[0]:.4f} s; with the example plugin loaded: {with_plugin[0]:.4f} s; "
          f"load time ≈ {(with_plugin[0] - without[0]) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
