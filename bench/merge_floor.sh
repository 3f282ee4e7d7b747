#!/bin/bash
# D's merge with no changes at all beside D's merge with its 1M changes, at
# -w 1, each stage run alone from a work database kept after the apply, taking
# turns, 5 runs each (BENCHMARKS.md, "D's merge: its floor").
# Run from the repository root after `python3 bench/run.py --sizes D` (which
# builds the release binaries and generates bench/cases/D).
set -euo pipefail
harness=target/release/harness
case_dir=bench/cases/D
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/no-changes.jsonl"
changes_of=("$work/no-changes.jsonl" "$case_dir/changes.jsonl")
for k in 0 1; do
    mkdir "$work/kept$k"
    "$harness" --progress never -w 1 --stop-after apply "$case_dir/mixtape.json" \
        "${changes_of[$k]}" "$work/kept$k/out.json" 2>/dev/null
done
for _ in 1 2 3 4 5; do
    for k in 0 1; do
        rm -rf "$work/run" && cp -r "$work/kept$k" "$work/run"
        seconds=$(MIXTAPE_BENCH=1 "$harness" --progress never -w 1 --stop-after merge \
            "$case_dir/mixtape.json" "${changes_of[$k]}" "$work/run/out.json" 2>&1 |
            grep -o 'merge=[0-9.]*')
        echo "$([ $k = 0 ] && echo 'no changes' || echo "D's changes") $seconds"
    done
done | sort
