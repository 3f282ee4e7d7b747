#!/usr/bin/env python3
"""Compressed inputs: the same case plain, gzip and zstd, side by side.

    python3 bench/compressed.py [--sizes M] [--reps 3] [--workers 2]

Compresses bench/cases/SIZE's MIXTAPE and CHANGES once (gzip -6 with the gzip
program, zstd -3 with the zstd program; kept beside them), then runs the harness
on each encoding in turn, repetition after repetition, and prints the median
time of every stage, the decompression rate (decompressed bytes per second of
the decompress stage, both inputs together) and the end-to-end ratio to the
plain run. Every run's output and rejects report are checked against the plain
run's, byte for byte.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BIN, build, case_dir, same  # noqa: E402

STAGES = ["decompress", "import", "plan", "apply", "merge", "export"]


def compressed(path, encoding):
    """`path` compressed with `encoding`, made once."""
    if encoding == "plain":
        return path
    target = path + {"gzip": ".gz", "zstd": ".zst"}[encoding]
    if not os.path.exists(target):
        tool = {"gzip": ["gzip", "-6", "-c"], "zstd": ["zstd", "-3", "-q", "-c"]}[encoding]
        if shutil.which(tool[0]) is None:
            sys.exit(f"the {tool[0]} program is needed to make the compressed cases")
        with open(target + ".tmp", "wb") as out:
            subprocess.run(tool + [path], stdout=out, check=True)
        os.rename(target + ".tmp", target)
    return target


def run(d, encoding, workers, out):
    mixtape = compressed(os.path.join(d, "mixtape.json"), encoding)
    changes = compressed(os.path.join(d, "changes.jsonl"), encoding)
    env = dict(os.environ, MIXTAPE_BENCH="1")
    start = time.monotonic()
    p = subprocess.run(
        [os.path.join(BIN, "harness"), "--fresh", "--progress", "never", "-w", str(workers),
         mixtape, changes, out], env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"harness failed on {encoding} ({p.returncode}): {p.stderr}")
    line = next(l for l in p.stderr.splitlines() if l.startswith("bench:"))
    result = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    result["wall"] = wall
    result["input_bytes"] = os.path.getsize(mixtape) + os.path.getsize(changes)
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="M")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    build()
    encodings = ["plain", "gzip", "zstd"]
    print(f"| case | input | bytes in | {' | '.join(STAGES)} | total | decompress rate | vs plain |")
    print("|---|---|---|" + "---|" * len(STAGES) + "---|---|---|")
    for size in args.sizes.split(","):
        d = case_dir(size)
        text = os.path.getsize(os.path.join(d, "mixtape.json")) + os.path.getsize(
            os.path.join(d, "changes.jsonl"))
        results = {e: [] for e in encodings}
        for _ in range(args.reps):
            for e in encodings:
                out = os.path.join(d, "out", f"compressed-{e}.json")
                os.makedirs(os.path.dirname(out), exist_ok=True)
                results[e].append(run(d, e, args.workers, out))
                if e != "plain" and not same(os.path.join(d, "out", "compressed-plain.json"), out):
                    sys.exit(f"{size} {e}: output differs from the plain run's")
        med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in results.items()}
        for e in encodings:
            m = med[e]
            rate = f"{text / m['decompress'] / 1e6:.0f} MB/s" if m["decompress"] > 0 else "n/a"
            stages = " | ".join(f"{m[s]:.2f}" for s in STAGES)
            print(f"| {size} | {e} | {m['input_bytes'] / 1e6:.0f} MB | {stages} | {m['total']:.2f} s "
                  f"| {rate} | {m['total'] / med['plain']['total']:.2f}x |")


if __name__ == "__main__":
    main()
