"""Compares the .npy maps of two `lafam-gpu run` output directories (e.g. CPU vs GPU):
per method the worst relative L2 error and the worst max-abs error over images."""
import sys
from pathlib import Path

import numpy as np

a, b = Path(sys.argv[1]), Path(sys.argv[2])
worst = {}
for fa in sorted(a.glob("*.npy")):
    fb = b / fa.name
    if not fb.exists():
        print(f"missing in {b}: {fa.name}")
        continue
    x, y = np.load(fa).astype(np.float64), np.load(fb).astype(np.float64)
    rel = np.linalg.norm(x - y) / max(np.linalg.norm(x), 1e-30)
    method = fa.name.split(".")[-2]
    w = worst.setdefault(method, [0.0, 0.0, 0])
    w[0], w[1], w[2] = max(w[0], rel), max(w[1], float(np.abs(x - y).max())), w[2] + 1
for m, (rel, mx, n) in worst.items():
    print(f"{m}: {n} maps, worst relative L2 {rel:.3e}, worst max abs {mx:.3e}")
