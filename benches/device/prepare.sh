#!/usr/bin/env bash
# Prepares a run on a GPU machine that has an NVIDIA driver, PyTorch and torchvision but no
# Vulkan loader library, no Rust toolchain and no network (how this project's lent H200 is set
# up): run HERE, in the project root, then copy the working tree with .gl and .dev to that
# machine and run there
#   bash benches/device/check.sh
# .gl holds the Vulkan loader's .deb (unpacked there), .dev the release binary and zennit's
# wheel; the PyTorch/zennit baseline is benches/torch_baseline.py. Nothing is built there.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
mkdir -p .gl .dev /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
ls .gl/libvulkan1_*.deb >/dev/null 2>&1 || { apt-get $o update -qq; (cd .gl && apt-get $o download libvulkan1); }
cargo build --release
cp target/release/lafam-gpu .dev/
# zennit 1.0.0 is not on PyPI; 0.5.1 is the newest published release.
ls .dev/zennit-*.whl >/dev/null 2>&1 || pip download -q --no-deps -d .dev zennit==0.5.1
du -sh .gl .dev
