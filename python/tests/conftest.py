"""Shared fixtures: the repo's paths, the CLI binary, the fixture weights."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "reference"
ASSETS = sorted((REPO / "assets").glob("*.jpg"))
R18 = FIXTURES / "r18_swav.safetensors"  # no classifier: every method but gradcam
R50 = FIXTURES / "r50_tv.safetensors"  # with an fc: gradcam too

# The Vulkan device-select layer prints XDG_RUNTIME_DIR errors on headless machines.
os.environ.setdefault("NODEVICE_SELECT", "1")


def cli_binary() -> pathlib.Path:
    """The CLI built by `cargo build --release` (tests/python.sh builds it first)."""
    b = pathlib.Path(os.environ.get("LAFAM_GPU_BIN", REPO / "target" / "release" / "lafam-gpu"))
    if not b.is_file():
        pytest.fail(f"{b}: the CLI is not built (run `cargo build --release`, or set LAFAM_GPU_BIN)")
    return b


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(cli_binary()), *args], capture_output=True, text=True, env={**os.environ, "NODEVICE_SELECT": "1"}
    )
