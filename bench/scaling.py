#!/usr/bin/env python3
"""The many-core curve (BENCHMARKS.md "Many cores"): the harness on L and XL at
1, 2, 4, 8 and 16 workers, the worker counts taking turns repetition after
repetition, every output and rejects report compared byte for byte with the
first run's. Made for a machine lent for minutes: it needs only release
binaries (harness, worker and the generator), writes each run's figures to
RESULTS as it goes, stops starting runs once --deadline seconds have passed,
and ends with a Markdown table of medians and the scaling ratios (-w 16 over
-w 1 end to end, import and export; the workers' summed wait for the write
lock over the apply stage).

    python3 bench/scaling.py [--bin DIR] [--sizes L:3,XL:1] [--workers 1,2,4,8,16]
                             [--baseline DIR --baseline-workers 8,16]
                             [--work DIR] [--results FILE] [--deadline SECONDS]

DIR holds harness, worker and gen (default: target/release, gen from
target/release/examples). SIZE:REPS gives each case its repetitions.
--baseline runs an older build's harness and worker too, at the worker counts
of --baseline-workers, taking turns with the others (for before and after).
"""

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import ROOT, STAGES, run_harness  # noqa: E402


def find(bin_dir, name):
    for candidate in (os.path.join(bin_dir, name), os.path.join(bin_dir, "examples", name)):
        if os.access(candidate, os.X_OK):
            return candidate
    sys.exit(f"no {name} in {bin_dir}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--sizes", default="L:3,XL:1")
    ap.add_argument("--workers", default="1,2,4,8,16")
    ap.add_argument("--work", help="where cases and outputs go (default: a temporary directory)")
    ap.add_argument("--results", help="a file each run's figures are appended to, as JSON lines")
    ap.add_argument("--baseline", help="a directory with an older harness and worker")
    ap.add_argument("--baseline-workers", default="8,16")
    ap.add_argument("--deadline", type=float, default=float("inf"),
                    help="start no run after this many seconds")
    args = ap.parse_args()
    started = time.monotonic()
    harness, gen = find(args.bin, "harness"), find(args.bin, "gen")
    find(args.bin, "worker")
    work = args.work or tempfile.mkdtemp(prefix="mixtape-scaling-")
    os.makedirs(work, exist_ok=True)
    results = open(args.results, "a") if args.results else None

    def say(text):
        print(text, flush=True)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    say(f"machine: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu}; work in {work}")
    say(f"disk: {shutil.disk_usage(work).free / 1e9:.0f} GB free")
    configs = [("", harness, int(w)) for w in args.workers.split(",")]
    if args.baseline:
        old = find(args.baseline, "harness")
        configs += [("baseline ", old, int(w)) for w in args.baseline_workers.split(",")]
    medians = {}
    for spec in args.sizes.split(","):
        size, _, reps = spec.partition(":")
        reps = int(reps or 1)
        case = os.path.join(work, size)
        t = time.monotonic()
        subprocess.run([gen, size, case], check=True, capture_output=True)
        say(f"{size}: generated in {time.monotonic() - t:.1f} s")
        runs = {(name, w): [] for name, _, w in configs}
        first = None
        for rep in range(reps):
            for name, program, w in configs:
                if time.monotonic() - started > args.deadline:
                    say(f"{size} {name}-w {w} rep {rep + 1}: skipped (deadline)")
                    continue
                out = os.path.join(work, f"out-{size}-{name.strip()}{w}.json")
                r = run_harness(case, w, out, os.path.dirname(program))
                if first is None:
                    first = out
                elif not (filecmp.cmp(first, out, shallow=False)
                          and filecmp.cmp(first + ".rejects.jsonl", out + ".rejects.jsonl", shallow=False)):
                    sys.exit(f"{size} {name}-w {w}: OUTPUT DIFFERS from {first}")
                runs[(name, w)].append(r)
                say(f"{size} {name}-w {w} rep {rep + 1}: " + " ".join(f"{k}={v:.2f}" for k, v in r.items()))
                if results:
                    results.write(json.dumps({"size": size, "run": name + "harness", "workers": w,
                                              "rep": rep + 1, **r}) + "\n")
                    results.flush()
                if out != first:
                    os.remove(out)
                    os.remove(out + ".rejects.jsonl")
        for (name, w), done in runs.items():
            if done:
                keys = done[0].keys()
                medians[(size, name, w)] = {k: statistics.median(r[k] for r in done) for k in keys}
                medians[(size, name, w)]["n"] = len(done)
        shutil.rmtree(case)
        for f in os.listdir(work):
            if f.startswith(f"out-{size}-"):
                os.remove(os.path.join(work, f))

    say("")
    say("| case | run | workers | runs | import | plan | apply | merge | export | total (median) | speedup vs -w 1 | peak RSS harness | largest worker | write lock held / waited (apply, all workers) | wait / apply |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (size, name, w), m in medians.items():
        one = medians.get((size, "", 1))
        speedup = f"{one['total'] / m['total']:.1f} ×" if one else ""
        say(f"| {size} | {name}harness | {w} | {m['n']} | " + " | ".join(f"{m[k]:.2f}" for k in STAGES)
            + f" | **{m['total']:.2f} s** | {speedup} | {m['harness_rss_kb'] / 1024:.0f} MB"
            + f" | {m['worker_rss_kb'] / 1024:.0f} MB"
            + f" | {m['apply_lock_held']:.2f} s / {m['apply_lock_wait']:.2f} s"
            + f" | {m['apply_lock_wait'] / m['apply'] * 100 if m['apply'] else 0:.1f} % |")
    say("")
    for size in dict.fromkeys(s for s, _, _ in medians):
        top = max(w for s, name, w in medians if s == size and not name)
        one, many = medians.get((size, "", 1)), medians[(size, "", top)]
        if one and top > 1:
            ratio = lambda k: one[k] / many[k] if many[k] else float("inf")
            say(f"- {size}: -w {top} against -w 1: end to end {ratio('total'):.1f} × (target 8), "
                f"import {ratio('import'):.1f} × (4), export {ratio('export'):.1f} × (4); "
                f"lock wait {many['apply_lock_wait'] / many['apply'] * 100:.1f} % of apply (5 %)")


if __name__ == "__main__":
    main()
