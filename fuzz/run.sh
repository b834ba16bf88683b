#!/usr/bin/env bash
# Runs fuzz targets one after the other, each for SECONDS (default 600) or 1e6 executions,
# whichever comes first, under 4 GB of address space (the issue's bound: an allocation out of
# proportion to the input aborts and counts as a crash). Logs go to fuzz/logs/<target>.log.
#   fuzz/run.sh [SECONDS] [TARGET...]        (from the repository root; builds first)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(checkpoint safetensors image npy_map mask eval_merge)
cargo +nightly fuzz build -s none --release
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/artifacts/$t"
  (
    ulimit -v 4194304
    "fuzz/target/x86_64-unknown-linux-gnu/release/$t" "fuzz/corpus/$t" \
      -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$secs" -runs=1000000 \
      -rss_limit_mb=4096 -malloc_limit_mb=4096 -timeout=10 -print_final_stats=1
  ) >"fuzz/logs/$t.log" 2>&1 || echo "$t: exit $? (see fuzz/logs/$t.log)"
  grep -E "^(stat::|Done|==|SUMMARY)" "fuzz/logs/$t.log" | sed "s/^/$t: /" || true
done
