#!/usr/bin/env python3
"""The benchmark: builds in release mode, generates the cases, runs the harness
with 1, 2 and all CPUs' workers, the two rivals (examples/rival.rs: a fast,
full-spec, in-memory, one-thread applier; examples/minimal.rs: the least an
in-memory applier does, whose output is not compared) and the floor
(`minimal --floor`: both inputs read and parsed by serde_json on two threads,
and as many bytes written as the output and rejects report hold; nothing
applied) on each case, side by side (the
configurations take turns, repetition after repetition, so that the machine's
noise hits them alike), and prints a Markdown table of medians and the ratios
the targets are about.

    python3 bench/run.py [--sizes M,L] [--reps 3] [--workers 1,2,4]
                         [--reference] [--baseline DIR] [--no-rival]

--reference also runs the tests' simple reference (slow); --baseline DIR also
runs the harness found in DIR (an older build, for before/after figures).

Sizes: M, L, XL, D (JSON Lines) and MU, U, LU (the uniform shape, object form);
see examples/gen.rs. Cases go to bench/cases/SIZE (generated once, kept).
Every run's output and rejects report (but the minimal rival's) are checked
against the first configuration's, byte for byte: a
benchmark of a wrong answer is worthless. XL (50M changes) is not run by
default: it takes minutes, and an in-memory program would need tens of GB.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import filecmp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
STAGES = ["import", "plan", "apply", "merge", "export"]
RIVALS = ("rival", "minimal")
UNCHECKED = ("minimal", "floor")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def build():
    sh(["cargo", "build", "--release", "--bins", "--examples", "-q"], cwd=ROOT)


def case_dir(size):
    d = os.path.join(ROOT, "bench", "cases", size)
    if changes_of(d) is None:
        sh([os.path.join(BIN, "examples", "gen"), size, d])
    return d


def changes_of(d):
    """The case's CHANGES: JSON Lines (M, L, XL, D) or the object form (MU, LU)."""
    for name in ("changes.jsonl", "changes.json"):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def run_harness(d, workers, out, bin_dir=BIN):
    for suffix in ["", ".rejects.jsonl"]:
        if os.path.exists(out + suffix):
            os.remove(out + suffix)
    env = dict(os.environ, MIXTAPE_BENCH="1")
    start = time.monotonic()
    p = subprocess.run(
        [os.path.join(bin_dir, "harness"), "--fresh", "--progress", "never", "--workers", str(workers),
         os.path.join(d, "mixtape.json"), changes_of(d), out],
        env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"harness failed ({p.returncode}): {p.stderr}")
    line = next(l for l in p.stderr.splitlines() if l.startswith("bench:"))
    figures = dict(kv.split("=") for kv in line.split()[1:])
    result = {k: float(v) for k, v in figures.items()}
    # The total is the wall time of the whole process, as for the rivals: the
    # harness's own clock (its `total=`) stops before it removes the work
    # database, which on XL takes 0.4 s more.
    result["total"] = wall
    result["wall"] = wall
    summary = next(l for l in p.stderr.splitlines() if "changes read" in l)
    result["changes"] = int(re.search(r"(\d+) changes read", summary).group(1))
    return result


def run_in_memory(program, d, out, sizes_of=None):
    """A rival, the floor or the reference: one process, its own wall time
    and peak RSS. The floor writes as many bytes as the output `sizes_of`
    and its rejects report hold."""
    command = [os.path.join(BIN, "examples", program)]
    if program == "floor":
        command = [os.path.join(BIN, "examples", "minimal"), "--floor"]
    command += [os.path.join(d, "mixtape.json"), changes_of(d), out]
    if program == "floor":
        command.append(",".join(str(os.path.getsize(p))
                                for p in (sizes_of, sizes_of + ".rejects.jsonl")))
    start = time.monotonic()
    p = subprocess.run(command, capture_output=True, text=True)
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"{program} failed: {p.stderr}")
    rss = int(re.search(r"rss_kb=(\d+)", p.stderr).group(1))
    changes = int(re.search(program + r": (\d+) changes", p.stderr).group(1))
    return {"wall": wall, "total": wall, "harness_rss_kb": rss, "worker_rss_kb": 0, "changes": changes}


def same(a, b):
    return filecmp.cmp(a, b, shallow=False) and filecmp.cmp(
        a + ".rejects.jsonl", b + ".rejects.jsonl", shallow=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="M,L")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", default=f"1,2,{os.cpu_count()}")
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--no-rival", action="store_true")
    ap.add_argument("--baseline", help="a directory with an older harness and worker")
    args = ap.parse_args()
    build()
    worker_counts = sorted({int(w) for w in args.workers.split(",")})
    out_dir = os.path.join(ROOT, "bench", "cases", "out")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for size in args.sizes.split(","):
        d = case_dir(size)
        # The floor comes after the rival, whose output says how many bytes
        # to write.
        configs = [] if args.no_rival else [
            ("rival", "rival"), ("minimal", "minimal"), ("floor", "floor")]
        configs += [("reference", "reference")] if args.reference else []
        if args.baseline:
            configs += [(f"baseline -w {w}", ("baseline", w)) for w in worker_counts]
        configs += [(f"harness -w {w}", w) for w in worker_counts]
        runs = {name: [] for name, _ in configs}
        for rep in range(args.reps):
            for name, w in configs:
                out = os.path.join(out_dir, f"{size}-{name.replace(' ', '')}.json")
                if isinstance(w, str):
                    rival_out = os.path.join(out_dir, f"{size}-rival.json")
                    r = run_in_memory(w, d, out, rival_out)
                elif isinstance(w, tuple):
                    r = run_harness(d, w[1], out, args.baseline)
                else:
                    r = run_harness(d, w, out)
                runs[name].append(r)
                print(f"{size} rep {rep + 1} {name}: {r['total']:.2f}s", file=sys.stderr)
            # The minimal rival does less than the spec (no rejects report, a
            # playlist's other members dropped): its time counts, its bytes do not.
            outs = [os.path.join(out_dir, f"{size}-{name.replace(' ', '')}.json")
                    for name, _ in configs if name not in UNCHECKED]
            for o in outs[1:]:
                if not same(outs[0], o):
                    sys.exit(f"{size}: {o} differs from {outs[0]}")
        for name, _ in configs:
            med = lambda k: statistics.median(r.get(k, 0.0) for r in runs[name])
            rows.append((size, name, {k: med(k) for k in
                         STAGES + ["total", "harness_rss_kb", "worker_rss_kb", "changes",
                                   "apply_lock_held", "apply_lock_wait"]}))
    print()
    print("| case | run | import | plan | apply | merge | export | total (median) | changes/s | peak RSS harness | peak RSS largest worker | write lock held / waited (apply, all workers) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size, name, m in rows:
        one = name in RIVALS + ("reference", "floor")
        stage = lambda k: "" if one else f"{m[k]:.2f}"
        print(f"| {size} | {name} | " + " | ".join(stage(k) for k in STAGES)
              + f" | **{m['total']:.2f} s** | {m['changes'] / m['total'] / 1e6:.2f} M"
              + f" | {m['harness_rss_kb'] / 1024:.0f} MB | "
              + ("" if one else f"{m['worker_rss_kb'] / 1024:.0f} MB") + " | "
              + ("" if one else f"{m['apply_lock_held']:.2f} s / {m['apply_lock_wait']:.2f} s") + " |")
    print()
    for size in args.sizes.split(","):
        by = {name: m for s, name, m in rows if s == size}
        if "harness -w 1" in by and "harness -w 2" in by:
            w1, w2 = by["harness -w 1"], by["harness -w 2"]
            stages = ", ".join(f"{k} {w2[k] / w1[k]:.2f}" if w1[k] > 0 else f"{k} -"
                               for k in STAGES)
            print(f"- {size}: -w 2 / -w 1 per stage: {stages}; "
                  f"end to end {w2['total'] / w1['total']:.2f}"
                  + "".join(f"; -w 2 / {other} = {w2['total'] / by[other]['total']:.2f}"
                            for other in ("reference", "baseline -w 2") if other in by))
            rivals = [r for r in RIVALS if r in by]
            if rivals:
                fastest = min(rivals, key=lambda r: by[r]["total"])
                print(f"- {size}: the faster rival is {fastest}; "
                      f"-w 1 / {fastest} = {w1['total'] / by[fastest]['total']:.2f} (target 0.65), "
                      f"-w 2 / {fastest} = {w2['total'] / by[fastest]['total']:.2f} (target 0.4)")
            if "floor" in by:
                print(f"- {size}: -w 2 / floor = {w2['total'] / by['floor']['total']:.2f} (target 3)")
        print_throughput(size, by.get("harness -w 1"), case_dir(size))


def print_throughput(size, w1, d):
    """The per-stage rates of the one-worker run, against their targets."""
    if w1 is None:
        return
    mb = lambda path: os.path.getsize(path) / 1e6
    out = os.path.join(ROOT, "bench", "cases", "out", f"{size}-harness-w1.json")
    rate = lambda amount, k: amount / w1[k] if w1[k] > 0 else float("inf")
    print(f"- {size} -w 1 rates: import {rate(mb(os.path.join(d, 'mixtape.json')), 'import'):.0f} MB/s"
          f" (target 250), plan {rate(mb(changes_of(d)), 'plan'):.0f} MB/s (400),"
          f" apply {rate(w1['changes'] / 1e6, 'apply'):.2f} M changes/s (2.5),"
          f" merge {rate(w1['changes'] / 1e6, 'merge'):.2f} M/s (2.5),"
          f" export {rate(mb(out), 'export'):.0f} MB/s of OUTPUT (350)")


if __name__ == "__main__":
    main()
