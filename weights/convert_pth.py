#!/usr/bin/env python3
"""Convert a PyTorch ResNet checkpoint (.pth / .pth.tar) to safetensors for lafam-gpu.

    pip install torch safetensors
    python3 weights/convert_pth.py swav_800ep_pretrain.pth.tar swav.safetensors

Unwraps the usual nesting ("state_dict", "model", "teacher", "student") and keeps every tensor
with its key as is: lafam-gpu itself strips the prefixes (module., encoder_q., backbone., ...)
and ignores heads. Non-tensor entries (epoch, optimizer, args) are dropped.
"""
import sys

import torch
from safetensors.torch import save_file


def main(src, dst):
    # weights_only=True: a checkpoint must not be able to run code.
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher", "student"):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            ckpt = ckpt[key]
            break
    tensors = {k: v.contiguous() for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    dropped = sorted(k for k, v in ckpt.items() if not isinstance(v, torch.Tensor))
    if dropped:
        print(f"dropped non-tensor entries: {', '.join(dropped)}", file=sys.stderr)
    save_file(tensors, dst, metadata={"format": "pt", "source": src})
    print(f"wrote {len(tensors)} tensors to {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
