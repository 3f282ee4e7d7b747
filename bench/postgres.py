#!/usr/bin/env python3
"""The PostgreSQL work store beside the SQLite file, side by side.

    pg_virtualenv python3 bench/postgres.py [--sizes M,L] [--reps 3] [--workers 2]

Runs the harness on each case with the default SQLite work database and with
`--db postgresql://...` (the server that PGHOST, PGPORT, PGUSER and PGPASSWORD
point at, as pg_virtualenv sets them), taking turns, and prints the median
time of every stage and the ratio of the two end to end. Every output is
checked against the SQLite run's, byte for byte.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import BIN, build, case_dir, same  # noqa: E402

STAGES = ["import", "plan", "apply", "merge", "export"]


def run(d, store, workers, out):
    db = []
    if store == "postgres":
        env = os.environ
        db = ["--db", f"postgresql://{env['PGUSER']}@{env['PGHOST']}:{env.get('PGPORT', '5432')}/postgres"]
    start = time.monotonic()
    p = subprocess.run(
        [os.path.join(BIN, "harness"), "--fresh", "--progress", "never", "-w", str(workers), *db,
         os.path.join(d, "mixtape.json"), os.path.join(d, "changes.jsonl"), out],
        env=dict(os.environ, MIXTAPE_BENCH="1"), capture_output=True, text=True)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"harness failed on {store} ({p.returncode}): {p.stderr}")
    line = next(l for l in p.stderr.splitlines() if l.startswith("bench:"))
    result = {k: float(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    result["wall"] = wall
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="M,L")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if "PGHOST" not in os.environ:
        sys.exit("no PostgreSQL server: run under pg_virtualenv")
    build()
    stores = ["sqlite", "postgres"]
    print(f"| case | store | {' | '.join(STAGES)} | total | vs SQLite | peak RSS harness / worker |")
    print("|---|---|" + "---|" * len(STAGES) + "---|---|---|")
    for size in args.sizes.split(","):
        d = case_dir(size)
        results = {s: [] for s in stores}
        for _ in range(args.reps):
            for s in stores:
                out = os.path.join(d, "out", f"store-{s}.json")
                os.makedirs(os.path.dirname(out), exist_ok=True)
                results[s].append(run(d, s, args.workers, out))
                if s != "sqlite" and not same(os.path.join(d, "out", "store-sqlite.json"), out):
                    sys.exit(f"{size} {s}: output differs from the SQLite run's")
        med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in results.items()}
        for s in stores:
            m = med[s]
            stages = " | ".join(f"{m[x]:.2f}" for x in STAGES)
            print(f"| {size} | {s} | {stages} | {m['total']:.2f} s | {m['total'] / med['sqlite']['total']:.2f}x "
                  f"| {m['harness_rss_kb'] / 1024:.0f} MB / {m['worker_rss_kb'] / 1024:.0f} MB |")


if __name__ == "__main__":
    main()
