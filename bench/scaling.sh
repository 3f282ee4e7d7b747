#!/usr/bin/env bash
# The many-core scaling curve (BENCHMARKS.md "Scaling"): L and XL at 1, 2, 4, 8
# and 16 workers, one run each, every output compared with the 1-worker one, and
# the rival on L. Runs where only release binaries are: build them first
# (cargo build --release --bins --examples) and pass their directory.
#
#   [SIZES="L XL"] bench/scaling.sh [BIN_DIR] [RESULTS_FILE]
set -euo pipefail
BIN=${1:-target/release}
RESULTS=${2:-/dev/stdout}
[ -x "$BIN/gen" ] || BIN_GEN="$BIN/examples"
GEN=${BIN_GEN:-$BIN}/gen
RIVAL=${BIN_GEN:-$BIN}/rival
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say() { echo "$@" | tee -a "$RESULTS"; }
say "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for size in ${SIZES:-L XL}; do
  "$GEN" "$size" "$WORK/$size" >/dev/null 2>&1
  workers="1 2 4 8 16"
  [ "$size" = XL ] && workers="16 8 4 2 1"
  for w in $workers; do
    out="$WORK/out-$size-$w.json"
    line=$(MIXTAPE_BENCH=1 "$BIN/harness" --fresh --progress never -w "$w" \
      "$WORK/$size/mixtape.json" "$WORK/$size/changes.jsonl" "$out" 2>&1 | grep '^bench:')
    say "$size -w $w $line"
    first="$WORK/out-$size-$(echo $workers | cut -d' ' -f1).json"
    cmp "$first" "$out" && cmp "$first.rejects.jsonl" "$out.rejects.jsonl" || say "$size -w $w: OUTPUT DIFFERS"
    [ "$w" != "$(echo $workers | cut -d' ' -f1)" ] && rm -f "$out" "$out.rejects.jsonl"
  done
  if [ "$size" != XL ]; then
    say "$size rival $("$RIVAL" "$WORK/$size/mixtape.json" "$WORK/$size/changes.jsonl" "$WORK/rival.json" 2>&1 | tail -1)"
    cmp "$WORK/rival.json" "$WORK/out-$size-1.json" || say "$size rival: OUTPUT DIFFERS"
  fi
  rm -rf "$WORK/$size" "$WORK"/out-*
done
