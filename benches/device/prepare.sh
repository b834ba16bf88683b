#!/usr/bin/env bash
# Prepares a run on a GPU machine that has an NVIDIA driver, PyTorch and torchvision but no
# Vulkan loader library, no Rust toolchain and no network (how this project's lent H200 is set
# up): run HERE, in the project root, then copy the working tree with .gl and .dev to that
# machine and run there
#   bash benches/device/check.sh
# .gl holds the Vulkan loader's .deb (unpacked there); .dev the release binary, the GPU test
# binaries and the conv-tile bench (stripped and xz-compressed: a copy may carry 64 MiB at
# most, one unstripped binary is ~100 MB) and zennit's wheel; the PyTorch/zennit baseline is
# benches/torch_baseline.py. Nothing is built there.
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx '/.gl/' "$exclude" 2>/dev/null || echo '/.gl/' >> "$exclude"
grep -qx '/.dev/' "$exclude" 2>/dev/null || echo '/.dev/' >> "$exclude"
mkdir -p .gl .dev/tests /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
ls .gl/libvulkan1_*.deb >/dev/null 2>&1 || { apt-get $o update -qq; (cd .gl && apt-get $o download libvulkan1); }

# Stripped, then xz: check.sh unpacks them.
pack() { strip -o "$2" "$1" && xz -f -T0 -6 "$2"; }
cargo build --release
pack target/release/lafam-gpu .dev/lafam-gpu
# The GPU parity suite: every test binary that runs kernels on the adapter and compares them
# with the CPU backend or a Python reference. They find their fixtures through the path they
# were built in (CARGO_MANIFEST_DIR), which check.sh links to the copy on the device.
GPU_TESTS="adapters backend_parity baselines_gpu_ops baselines_reference crp_reference gpu_limits gpu_lrp_ops gpu_ops lrp_reference reference"
args=(); for t in $GPU_TESTS; do args+=(--test "$t"); done
cargo test --release --no-run --message-format=json "${args[@]}" 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' |
  while read -r name exe; do pack "$exe" ".dev/tests/$name"; done
exe=$(cargo bench --no-run --bench conv_tiles --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["bench"]:
        print(m["executable"])')
pack "$exe" .dev/conv_tiles
pwd >.dev/manifest_dir
# zennit 1.0.0 is not on PyPI; 0.5.1 is the newest published release.
ls .dev/zennit-*.whl >/dev/null 2>&1 || pip download -q --no-deps -d .dev zennit==0.5.1
du -sh .gl .dev
