"""Python's overhead against the CLI: the median time of one batch of 16 images through
`Explainer.explain` (numpy in, numpy out) against `lafam-gpu bench`'s median ms/batch for the
same network, method, size and batch on the same backend (the engine without Python).

    python python/bench_overhead.py [--backend cpu] [--method lafam] [--iters 5] [--rounds 3]
                                    [--weights FILE] [--bin target/release/lafam-gpu]

Without --weights, a ResNet-50 with random weights (torchvision layout, kaiming-normal convs,
identity BatchNorm) is written once to python/target/bench_resnet50.safetensors: full size,
so the per-batch time is a real one. Prints both sides' median and minimum ms/batch, the
overhead in percent of the CLI's per-batch time, and the share of each Python call spent
outside the engine (`Explainer.last_timings`: conversions, checks; immune to a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import struct
import subprocess
import time

import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# The installed package, not the source folder next to this script (it lacks the extension).
sys.path = [p for p in sys.path if pathlib.Path(p or ".").resolve() != REPO / "python"]
import lafam_gpu  # noqa: E402


def write_random_resnet50(path: pathlib.Path, seed: int = 0) -> None:
    """torchvision's ResNet-50 keys and shapes, random weights, as safetensors."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}

    def conv(name, cout, cin, k):
        std = np.sqrt(2.0 / (cout * k * k))  # kaiming normal, fan_out (torchvision)
        tensors[f"{name}.weight"] = (rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)

    def bn(name, c):
        tensors[f"{name}.weight"] = np.ones(c, np.float32)
        tensors[f"{name}.bias"] = np.zeros(c, np.float32)
        tensors[f"{name}.running_mean"] = np.zeros(c, np.float32)
        tensors[f"{name}.running_var"] = np.ones(c, np.float32)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            conv(f"{p}.conv1", width, cin, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", width * 4, width, 1)
            bn(f"{p}.bn3", width * 4)
            if b == 0:
                conv(f"{p}.downsample.0", width * 4, cin, 1)
                bn(f"{p}.downsample.1", width * 4)
            cin = width * 4
    tensors["fc.weight"] = (rng.standard_normal((1000, 2048)) * 0.01).astype(np.float32)
    tensors["fc.bias"] = np.zeros(1000, np.float32)
    header, offset = {}, 0
    for k, v in tensors.items():
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + v.nbytes]}
        offset += v.nbytes
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for v in tensors.values():
            f.write(v.tobytes())
    tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--method", default="lafam")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=5, help="batches per round and side")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of CLI and Python")
    ap.add_argument("--weights", type=pathlib.Path)
    ap.add_argument("--bin", type=pathlib.Path, default=REPO / "target" / "release" / "lafam-gpu")
    args = ap.parse_args()
    os.environ.setdefault("NODEVICE_SELECT", "1")

    weights = args.weights
    if weights is None:
        weights = REPO / "python" / "target" / "bench_resnet50.safetensors"
        if not weights.is_file():
            write_random_resnet50(weights)

    # The CLI: the engine on random images of the same size, no Python.
    cmd = [str(args.bin), "bench", "--weights", str(weights), "--backend", args.backend,
           "--method", args.method, "--size", str(args.size), "--batch", str(args.batch),
           "--iters", str(args.iters), "--warmup", "1", "--json", "--no-peak"]
    # Python: 16 uint8 images in, a dict of 16 x H x W float32 maps out.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
    ex = lafam_gpu.Explainer(weights, backend=args.backend, size=args.size, batch=args.batch)
    ex.explain(images, methods=args.method, progress=False)  # warm-up

    # Rounds alternate between the two, so that a busy machine slows both alike; the minimum
    # is the least disturbed run of each.
    cli_med, cli_min, py_times, split = [], [], [], []
    for _ in range(args.rounds):
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        cli = json.loads(r.stdout.strip().splitlines()[-1])
        cli_med.append(cli["median_ms"])
        cli_min.append(cli["min_ms"])
        for _ in range(args.iters):
            t = time.perf_counter()
            maps = ex.explain(images, methods=args.method, progress=False)
            py_times.append((time.perf_counter() - t) * 1e3)
            lt = ex.last_timings
            split.append((lt["total_s"] - lt["engine_s"]) / lt["total_s"] * 100.0)
    assert next(iter(maps.values())).shape == (args.batch, args.size, args.size)
    c_med, c_min = statistics.median(cli_med), min(cli_min)
    p_med, p_min = statistics.median(py_times), min(py_times)
    print(
        f"{cli['arch']} {args.method} on {ex.info()['backend']}, batch {args.batch} at {args.size}, "
        f"{args.rounds} x {args.iters} batches each:\n"
        f"  CLI bench      median {c_med:.1f} ms/batch, min {c_min:.1f}\n"
        f"  Python explain median {p_med:.1f} ms/batch, min {p_min:.1f}\n"
        f"  overhead: {(p_min - c_min) / c_min * 100:+.1f}% (min against min), "
        f"{(p_med - c_med) / c_med * 100:+.1f}% (median against median); "
        f"outside the engine within each Python call: median {statistics.median(split):.2f}%, "
        f"max {max(split):.2f}% of the call"
    )


if __name__ == "__main__":
    main()
