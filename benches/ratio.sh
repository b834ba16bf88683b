#!/usr/bin/env bash
# LaFAM-LRP's cost relative to LaFAM ("LRP at most 3x LaFAM on every backend"), measured the
# way docs/perf.md reports it: PAIRS runs of `lafam-gpu bench --json` for LaFAM and then LRP
# back to back (random ResNet-50, layer4, epsilon-plus-flat), each the median of ITERS
# batches; prints every pair and the median of the per-pair ratios (on a shared machine
# absolute times drift, pairs taken close together keep the ratio honest). Where the adapter
# has timestamp queries, the ratio of the device times (`device_ms`) is printed too.
#   benches/ratio.sh [BACKEND=gpu] [SIZE=224] [BATCH=1] [PAIRS=5] [ITERS=3]
# BIN overrides the binary (default target/release/lafam-gpu); A and B the two methods
# (default lafam and lrp: `A=lrp B=concepts` gives the cost of K = 8 conditional maps).
# Needs python3 (no jq).
set -euo pipefail
BACKEND=${1:-gpu}; SIZE=${2:-224}; BATCH=${3:-1}; PAIRS=${4:-5}; ITERS=${5:-3}
BIN=${BIN:-target/release/lafam-gpu}
A=${A:-lafam}; B=${B:-lrp}

# One bench: prints "median_ms device_ms" (device_ms "-" when not measured).
bench_ms() {
  "$BIN" bench --arch resnet50 --backend "$BACKEND" --method "$1" --size "$SIZE" \
    --batch "$BATCH" --iters "$ITERS" --no-peak --json 2>/dev/null |
    python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.lstrip().startswith("{")]
if not rows:
    sys.exit("lafam-gpu bench --json printed no result")
r = rows[-1]
d = r.get("device_ms")
print("%.2f" % r["median_ms"], "-" if d is None else "%.2f" % d)'
}

pairs=()
for p in $(seq "$PAIRS"); do
  la=$(bench_ms "$A"); lr=$(bench_ms "$B")
  read -r a ad <<<"$la"; read -r b bd <<<"$lr"
  pairs+=("$a $ad $b $bd")
  echo "pair $p: $A $a ms (device $ad), $B $b ms (device $bd)"
done
printf '%s\n' "${pairs[@]}" | python3 -c '
import statistics, sys
backend, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ma, mb = sys.argv[4], sys.argv[5]
wall, dev = [], []
for line in sys.stdin:
    a, ad, b, bd = line.split()
    wall.append(float(b) / float(a))
    if ad != "-" and bd != "-":
        dev.append(float(bd) / float(ad))
def show(what, r):
    print(f"{mb}/{ma} {what} on {backend}, {size}x{size}, batch {batch}: median "
          f"{statistics.median(r):.3f} of {len(r)} pairs ({min(r):.3f}-{max(r):.3f})")
show("wall time", wall)
if dev:
    show("device time", dev)' "$BACKEND" "$SIZE" "$BATCH" "$A" "$B"
