#!/usr/bin/env bash
# The viewer (`lafam-gpu serve`) in a real browser: Debian's headless Chromium and
# chromedriver (installed here with apt-get when missing), driven through the W3C WebDriver
# HTTP API by tests/browser.py (Python's standard library only). Starts the server on the CPU
# backend with the width-8 ResNet-50 fixture on a free port, uploads a fixture image, waits
# for the maps, moves the opacity slider, changes the layer, clicks a point, checks the
# channel and concept panel, and saves a screenshot in target/browser-test/. Fails (never
# skips) when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export NODEVICE_SELECT=1
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
for tool in chromium chromedriver python3; do
    command -v "$tool" >/dev/null || { echo "browser test: $tool is missing" >&2; exit 1; }
done
cargo build --release --quiet
OUT=target/browser-test
rm -rf "$OUT" && mkdir -p "$OUT"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

./target/release/lafam-gpu serve --weights tests/fixtures/reference/r50_tv.safetensors \
    --backend cpu --port 0 --method lafam,lrp --size 128 --upsample bilinear \
    --folder assets >"$OUT/serve.out" 2>"$OUT/serve.err" &
pids+=($!)
VIEWER=""
for _ in $(seq 1 600); do
    VIEWER=$(grep -o 'http://127.0.0.1:[0-9]*/' "$OUT/serve.out" || true)
    [ -n "$VIEWER" ] && break
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        cat "$OUT/serve.err" >&2
        echo "browser test: the server exited" >&2
        exit 1
    fi
    sleep 0.1
done
[ -n "$VIEWER" ] || { echo "browser test: the server did not start" >&2; exit 1; }

DPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
chromedriver --port="$DPORT" >"$OUT/chromedriver.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$DPORT/status', timeout=1)" 2>/dev/null && break
    sleep 0.1
done
python3 tests/browser.py "http://127.0.0.1:$DPORT" "$VIEWER" assets/chelsea.jpg "$OUT"
