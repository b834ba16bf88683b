#!/usr/bin/env bash
# Minimises each target's corpus before committing: libFuzzer's merge keeps the smallest set of
# inputs with the same coverage, from the inputs of at most MAXLEN bytes (default 8192: the
# committed corpus stays small; the big seeds are written again by make_repros.py), then the
# named seeds (make_repros.py) and every crash-* regression input are put back.
#   fuzz/cmin.sh [TARGET...]     (from the repository root, after fuzz/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
maxlen=${MAXLEN:-8192}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(checkpoint safetensors image npy_map mask eval_merge)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$tmp/$t/small" "$tmp/$t/merged" "$tmp/$t/crash"
  find "fuzz/corpus/$t" -maxdepth 1 -type f -name 'crash-*' -exec cp {} "$tmp/$t/crash/" \;
  find "fuzz/corpus/$t" -maxdepth 1 -type f ! -name 'crash-*' -size -$((maxlen + 1))c \
    -exec cp {} "$tmp/$t/small/" \;
  (
    ulimit -v 4194304
    "fuzz/target/x86_64-unknown-linux-gnu/release/$t" -merge=1 -rss_limit_mb=4096 -timeout=10 \
      "$tmp/$t/merged" "$tmp/$t/small"
  ) >"$tmp/$t.log" 2>&1 || { tail -5 "$tmp/$t.log"; exit 1; }
  rm -rf "fuzz/corpus/$t"
  mkdir -p "fuzz/corpus/$t"
  cp "$tmp/$t/merged/"* "$tmp/$t/crash/"* "fuzz/corpus/$t/" 2>/dev/null || true
done
python3 fuzz/make_repros.py
for t in "${targets[@]}"; do
  echo "$t: $(ls "fuzz/corpus/$t" | wc -l) files, $(du -sh --apparent-size "fuzz/corpus/$t" | cut -f1)"
done
