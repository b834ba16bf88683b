#!/usr/bin/env bash
# The Python package's tests (python/tests, pytest), after `cargo test --release`: builds the
# package with pip into a virtual environment (python/target/venv), with maturin, pytest,
# numpy and quantus from PyPI, and runs pytest on the CPU backend and on the default GPU
# adapter (lavapipe where there is no GPU). The parity tests compare with the CLI built by
# `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
export NODEVICE_SELECT=1
cargo build --release --quiet
VENV=${LAFAM_GPU_VENV:-python/target/venv}
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# quantus 0.6.0 has no heavy extras (no torch, no tensorflow): its localisation metrics run
# end to end in the tests.
"$VENV/bin/python" -m pip install --quiet maturin pytest numpy tqdm "quantus==0.6.0"
# The main build's target directory: the library's dependencies are already compiled there.
CARGO_TARGET_DIR="$PWD/target" "$VENV/bin/python" -m pip install --quiet ./python
LAFAM_GPU_REQUIRE_QUANTUS=1 "$VENV/bin/python" -m pytest -q python/tests "$@"
