#!/usr/bin/env bash
# LaFAM-LRP's cost relative to LaFAM (issue 6: "LRP at most 3x LaFAM on every backend"),
# measured the way docs/perf.md reports it: PAIRS runs of `lafam-gpu bench` for LaFAM and
# then LRP back to back (random ResNet-50, layer4, epsilon-plus-flat), each the median of
# ITERS batches; prints every pair and the median of the per-pair ratios (on a shared machine
# absolute times drift, pairs taken close together keep the ratio honest).
#   benches/ratio.sh [BACKEND=gpu] [SIZE=224] [BATCH=1] [PAIRS=5] [ITERS=3]
# BIN overrides the binary (default target/release/lafam-gpu).
set -euo pipefail
BACKEND=${1:-gpu}; SIZE=${2:-224}; BATCH=${3:-1}; PAIRS=${4:-5}; ITERS=${5:-3}
BIN=${BIN:-target/release/lafam-gpu}
median_ms() {
  "$BIN" bench --arch resnet50 --backend "$BACKEND" --method "$1" --size "$SIZE" \
    --batch "$BATCH" --iters "$ITERS" --no-peak 2>/dev/null |
    grep -o 'median [0-9.]* ms' | awk '{print $2}'
}
ratios=()
for p in $(seq "$PAIRS"); do
  a=$(median_ms lafam); b=$(median_ms lrp)
  r=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b / a}')
  echo "pair $p: LaFAM $a ms, LRP $b ms, ratio $r"
  ratios+=("$r")
done
printf '%s\n' "${ratios[@]}" | sort -n |
  awk -v b="$BACKEND" -v s="$SIZE" -v n="$BATCH" '{v[NR] = $1}
    END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2;
         printf "LRP/LaFAM on %s, %dx%d, batch %d: median %.3f of %d pairs (%.3f-%.3f)\n",
                b, s, s, n, m, NR, v[1], v[NR]}'
