#!/usr/bin/env python3
"""The bucket benchmark: a case with its inputs and output in a bucket of a
local S3 server (examples/s3_server.rs, the tests' server: s3s-fs with
ETags), beside the same run on local files, taking turns; prints the
medians, their ratio, and one worker's range-read throughput.

    python3 bench/s3.py [--size L] [--reps 3] [--workers 2]

The server runs on this machine and shares its CPUs with the run: its time
is in the S3 figures. The inputs are hard links into the server's
directory, so no copy is timed.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import filecmp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402


def timed(cmd, env, cwd):
    start = time.monotonic()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}): {p.stderr}")
    line = next((l for l in p.stderr.splitlines() if l.startswith("bench:")), "")
    stages = dict(kv.split("=") for kv in line.split()[1:])
    return wall, stages


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="L")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    bench.build()
    case = bench.case_dir(args.size)
    changes = bench.changes_of(case)
    work = tempfile.mkdtemp(prefix="mixtape-s3-bench-", dir=os.path.join(bench.ROOT, "bench", "cases"))
    try:
        root = os.path.join(work, "root")
        os.makedirs(os.path.join(root, "bench", "in"))
        os.makedirs(os.path.join(root, "bench", "out"))
        names = {"mixtape": "mixtape.json", "changes": os.path.basename(changes)}
        os.link(os.path.join(case, "mixtape.json"), os.path.join(root, "bench", "in", names["mixtape"]))
        os.link(changes, os.path.join(root, "bench", "in", names["changes"]))
        server = subprocess.Popen([os.path.join(bench.BIN, "examples", "s3_server"), root],
                                  stdout=subprocess.PIPE, text=True)
        endpoint = server.stdout.readline().strip()
        keys = dict(server.stdout.readline().strip().split("=", 1) for _ in range(2))
        env = dict(os.environ, MIXTAPE_BENCH="1", AWS_ENDPOINT_URL=endpoint, AWS_ALLOW_HTTP="true",
                   AWS_REGION="us-east-1", **keys)
        local_dir = os.path.join(work, "local")
        s3_dir = os.path.join(work, "s3")
        os.makedirs(local_dir)
        os.makedirs(s3_dir)
        harness = os.path.join(bench.BIN, "harness")
        common = [harness, "--fresh", "--progress", "never", "--workers", str(args.workers)]
        runs = {
            "local files": (common + [os.path.join(case, "mixtape.json"), changes,
                                      os.path.join(local_dir, "out.json")], local_dir),
            "bucket": (common + [f"s3://bench/in/{names['mixtape']}", f"s3://bench/in/{names['changes']}",
                                 "s3://bench/out/out.json"], s3_dir),
        }
        walls = {name: [] for name in runs}
        stages = {name: [] for name in runs}
        for _ in range(args.reps):
            for name, (cmd, cwd) in runs.items():
                wall, st = timed(cmd, env, cwd)
                walls[name].append(wall)
                stages[name].append(st)
        if not filecmp.cmp(os.path.join(local_dir, "out.json"),
                           os.path.join(root, "bench", "out", "out.json"), shallow=False):
            sys.exit("the bucket's OUTPUT differs from the local one")
        size = os.path.getsize(changes)
        read_cmd = [os.path.join(bench.BIN, "examples", "s3_read"), f"s3://bench/in/{names['changes']}"]
        reads = []
        for _ in range(args.reps):
            p = subprocess.run(read_cmd, env=env, capture_output=True, text=True, check=True)
            reads.append(float(p.stdout.split(":")[-1].split()[0]))
        server.kill()
        server.wait()
        print(f"case {args.size}, -w {args.workers}, medians of {args.reps}, taking turns")
        print()
        print("| inputs and output | wall | " + " | ".join(bench.STAGES) + " | peak RSS harness, worker |")
        print("|---|---|" + "---|" * len(bench.STAGES) + "---|")
        for name in runs:
            med = statistics.median(walls[name])
            def median_of(key):
                return statistics.median(float(s.get(key, 0)) for s in stages[name])
            cells = [f"{median_of(k):.2f}" for k in bench.STAGES]
            rss = f"{median_of('harness_rss_kb') / 1024:.0f}, {median_of('worker_rss_kb') / 1024:.0f} MB"
            print(f"| {name} | {med:.2f} s | " + " | ".join(cells) + f" | {rss} |")
        ratio = statistics.median(walls["bucket"]) / statistics.median(walls["local files"])
        print()
        print(f"bucket / local files: {ratio:.2f}")
        print(f"one reader, CHANGES ({size / 1e6:.0f} MB) by range: {statistics.median(reads):.0f} MB/s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
