#!/usr/bin/env python3
"""What a user would run instead of lafam-gpu: the same methods in PyTorch, timed the same way.

For each method and batch size this prints one JSON line with the median wall time per batch
(img/s, ms/img), next to which `lafam-gpu bench --json` can be put line by line:

    python3 benches/torch_baseline.py --device cuda --size 224 --batch 1,64 --methods lafam,lrp
    lafam-gpu bench --arch resnet50 --method lafam --size 224 --batch 1,64 --json
    lafam-gpu bench --arch resnet50 --method lrp   --size 224 --batch 1,64 --json

Methods (`--methods`, comma-separated):
  forward   the torchvision ResNet's whole forward pass (logits), for reference;
  lafam     LaFAM: the `--layer` stage's channel mean, per-image min-max normalisation
            (x - min) / (max - min + 1e-6), upsampled to the image (`--upsample`, nearest by
            default as in lafam-gpu);
  lafam-max the same with the channel max instead of the mean;
  lrp       LaFAM-LRP with zennit: the network truncated after `--layer`, canonised with
            ResNetCanonizer (BatchNorm merged into the convs, residual adds as Norm), the
            `--rule` composite (default epsilon-plus-flat, lafam-gpu's default: ZPlus on every
            conv, Flat on the first), seeded with the stage's own activations (R = A), input
            relevance summed over RGB;
  gradcam   Grad-CAM with pytorch-grad-cam (`pip install grad-cam`): argmax class, `--layer`;
  eigencam  EigenCAM with pytorch-grad-cam.
Methods whose package is missing are skipped with a note on stderr.

Timing is end to end, as `lafam-gpu bench` does it: the input batch starts on the host as
uint8 RGB (N, H, W, 3); every timed run uploads it, scales and normalises it with ImageNet's
mean and std, runs the method and brings the maps back to the host at image size. `--warmup`
untimed runs, then `--iters` timed ones; median and min of the wall times. On CUDA and MPS
the device is synchronised before each clock read. The model is a torchvision ResNet in
eval mode, random weights unless `--weights` is given (no download ever: timings do not
depend on the weight values). Grad-CAM needs the classifier; random weights have one.

Needs torch and torchvision; zennit for lrp; grad-cam for gradcam/eigencam; safetensors for
.safetensors weights. Tested on the CPU with torch 2.15, torchvision 0.29, zennit 0.5.1 and
grad-cam 1.5.7 (PyPI).
"""
import argparse
import importlib.metadata
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Wrapper prefixes stripped from checkpoint keys (as lafam-gpu does), and nested dicts followed.
PREFIXES = ("module.", "backbone.", "encoder.", "encoder_q.", "base_encoder.", "model.")
NESTING = ("state_dict", "model", "teacher", "student")
ARCHS = {
    (2, 2, 2, 2, False): "resnet18",
    (3, 4, 6, 3, False): "resnet34",
    (3, 4, 6, 3, True): "resnet50",
    (3, 4, 23, 3, True): "resnet101",
    (3, 8, 36, 3, True): "resnet152",
}
METHODS = ("forward", "lafam", "lafam-max", "lrp", "gradcam", "eigencam")
RULES = ("epsilon-plus-flat", "epsilon-gamma-box", "epsilon-plus", "epsilon-alpha2-beta1-flat")


def version(pkg):
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def note(msg):
    print(f"torch_baseline: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Model


def read_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        while isinstance(sd, dict) and not any(torch.is_tensor(v) for v in sd.values()):
            key = next((k for k in NESTING if k in sd), None)
            if key is None:
                raise SystemExit(f"{path}: no tensors and none of {NESTING} to follow")
            sd = sd[key]
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            continue
        stripped = True
        while stripped:
            stripped = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, stripped = k[len(p):], True
        out[k] = v.float()
    return out


def build_model(args):
    if args.weights is None:
        torch.manual_seed(0)
        return getattr(torchvision.models, args.arch)(weights=None), args.arch
    sd = read_state_dict(args.weights)
    blocks = tuple(
        len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5)
    )
    bottleneck = any(k.endswith("conv3.weight") for k in sd)
    arch = ARCHS.get(blocks + (bottleneck,))
    if arch is None:
        raise SystemExit(f"{args.weights}: blocks per stage {blocks} (bottleneck: {bottleneck}) "
                         "are not a torchvision ResNet-18/34/50/101/152")
    if sd["conv1.weight"].shape[0] != 64:
        raise SystemExit(f"{args.weights}: stem width {sd['conv1.weight'].shape[0]}; torchvision's "
                         "ResNets have 64 (wide SwAV variants are not covered here)")
    num_classes = sd["fc.weight"].shape[0] if "fc.weight" in sd else 1000
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    own = model.state_dict()
    backbone = {k: v for k, v in sd.items() if k in own and not k.startswith("fc.")}
    missing = [k for k in own if not k.startswith("fc.") and k not in backbone
               and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit(f"{args.weights}: {len(missing)} backbone tensors missing, e.g. {missing[:3]}")
    if "fc.weight" in sd and "fc.bias" in sd:
        backbone.update({"fc.weight": sd["fc.weight"], "fc.bias": sd["fc.bias"]})
    else:
        model.fc = torch.nn.Identity()  # no classifier: Grad-CAM is skipped, as lafam-gpu refuses it
        model.has_classifier = False
    model.load_state_dict(backbone, strict=False)
    return model, arch


def truncated(model, layer):
    """conv1, bn1, relu, maxpool, layer1..layerK as a named Sequential: leaf order equals
    forward order, which zennit's SequentialMergeBatchNorm relies on."""
    from collections import OrderedDict

    k = int(layer[-1])
    names = ["conv1", "bn1", "relu", "maxpool"] + [f"layer{i}" for i in range(1, k + 1)]
    return torch.nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names)).eval()


# ---------------------------------------------------------------------------------------------
# Methods: each returns a function of the uint8 host batch that returns the maps on the host.


def preprocess(rgb, dev):
    x = rgb.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)
    return (x - mean) / std


def minmax(a):
    lo = a.amin((2, 3), keepdim=True)
    hi = a.amax((2, 3), keepdim=True)
    return (a - lo) / (hi - lo + 1e-6)


def upsample(a, size, mode):
    if mode == "nearest":
        return F.interpolate(a, size=size, mode="nearest")
    return F.interpolate(a, size=size, mode="bilinear", align_corners=False)


def method_forward(model, features, args, dev):
    def run(rgb):
        with torch.inference_mode():
            return model(preprocess(rgb, dev)).cpu()
    return run


def method_lafam(reduce):
    def make(model, features, args, dev):
        def run(rgb):
            with torch.inference_mode():
                x = preprocess(rgb, dev)
                a = features(x)
                a = a.mean(1, keepdim=True) if reduce == "mean" else a.amax(1, keepdim=True)
                return upsample(minmax(a), x.shape[-2:], args.upsample)[:, 0].cpu()
        return run
    return make


def composite(rule, dev):
    from zennit import composites as zc
    from zennit.torchvision import ResNetCanonizer

    canon = [ResNetCanonizer()]
    if rule == "epsilon-plus-flat":
        return zc.EpsilonPlusFlat(canonizers=canon)
    if rule == "epsilon-plus":
        return zc.EpsilonPlus(canonizers=canon)
    if rule == "epsilon-alpha2-beta1-flat":
        return zc.EpsilonAlpha2Beta1Flat(canonizers=canon)
    # ZBox bounds: the normalised images of pixel values 0 and 1, per channel.
    low = torch.tensor([(0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=dev)
    high = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], device=dev)
    low, high = low.view(1, 3, 1, 1), high.view(1, 3, 1, 1)
    return zc.EpsilonGammaBox(low=low, high=high, gamma=0.25, canonizers=canon)


class ZennitLrp:
    """zennit's composite registered once (outside the timed runs, as a user would keep it)."""

    def __init__(self, features, args, dev):
        import copy

        self.dev = dev
        self.features = copy.deepcopy(features)
        comp = composite(args.rule, dev)
        self.ctx = comp.context(self.features)
        self.model = self.ctx.__enter__()
        for m in self.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                # Some zennit versions leave eps = 0 in the merged (identity) BatchNorm, which
                # recent torch refuses; 1e-30 added to a variance of 1 is the same number.
                m.register_forward_pre_hook(lambda mod, _: setattr(mod, "eps", max(mod.eps, 1e-30)))

    def __call__(self, rgb):
        x = preprocess(rgb, self.dev).requires_grad_(True)
        out = self.model(x)
        (r,) = torch.autograd.grad(out, x, grad_outputs=out.detach())
        return r.sum(1).cpu()

    def close(self):
        self.ctx.__exit__(None, None, None)


def method_lrp(model, features, args, dev):
    return ZennitLrp(features, args, dev)


def method_cam(kind):
    def make(model, features, args, dev):
        import pytorch_grad_cam as pgc

        if kind == "gradcam" and not getattr(model, "has_classifier", True):
            raise LookupError("these weights have no classifier (fc); Grad-CAM needs one")
        cls = pgc.GradCAM if kind == "gradcam" else pgc.EigenCAM
        cam = cls(model=model, target_layers=[getattr(model, args.layer)[-1]])

        def run(rgb):
            return cam(input_tensor=preprocess(rgb, dev), targets=None)  # numpy, image size
        return run
    return make


FACTORIES = {
    "forward": (method_forward, None),
    "lafam": (method_lafam("mean"), None),
    "lafam-max": (method_lafam("max"), None),
    "lrp": (method_lrp, "zennit"),
    "gradcam": (method_cam("gradcam"), "grad-cam"),
    "eigencam": (method_cam("eigencam"), "grad-cam"),
}


# ---------------------------------------------------------------------------------------------
# Timing


def synchronize(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def timed(fn, rgb, dev, warmup, iters):
    for _ in range(warmup):
        fn(rgb)
    times = []
    for _ in range(iters):
        synchronize(dev)
        t = time.perf_counter()
        fn(rgb)
        synchronize(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def device_name(dev):
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    default_dev = ("cuda" if torch.cuda.is_available()
                   else "mps" if torch.backends.mps.is_available() else "cpu")
    ap.add_argument("--device", default=default_dev, help=f"cpu, cuda[:N] or mps (default {default_dev})")
    ap.add_argument("--weights", help=".pth/.pth.tar/.safetensors in torchvision's key layout "
                    "(default: random weights)")
    ap.add_argument("--arch", default="resnet50", choices=sorted(set(ARCHS.values())),
                    help="architecture of the random network (default resnet50)")
    ap.add_argument("--methods", default="lafam,lrp", help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--layer", default="layer4", choices=["layer1", "layer2", "layer3", "layer4"])
    ap.add_argument("--rule", default="epsilon-plus-flat", choices=RULES, help="LRP composite")
    ap.add_argument("--upsample", default="nearest", choices=["nearest", "bilinear"],
                    help="LaFAM's upsampling (default nearest, as lafam-gpu)")
    ap.add_argument("--size", type=int, default=224, help="square image side (default 224)")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    ap.add_argument("--iters", type=int, default=10, help="timed runs per batch size (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--tf32", choices=["default", "off", "on"], default="off",
                    help="CUDA TF32 for convs and matmuls; off (default) is strict f32 like "
                    "lafam-gpu's kernels, default keeps torch's own setting")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()

    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; expected {', '.join(METHODS)}")
    batches = [int(b) for b in args.batch.split(",") if b]
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if dev.type == "cuda" and args.tf32 != "default":
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"

    model, arch = build_model(args)
    model = model.to(dev).eval()
    features = truncated(model, args.layer)
    common = {
        "arch": arch,
        "weights": args.weights or "random",
        "layer": args.layer,
        "size": args.size,
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "zennit": version("zennit"),
        "grad_cam": version("grad-cam"),
        "python": platform.python_version(),
        "tf32": (torch.backends.cudnn.allow_tf32 if dev.type == "cuda" else None),
        "timing": "end to end: uint8 RGB host->device, normalise, method, maps at image size "
                  "device->host; median of iters",
    }
    gen = torch.Generator().manual_seed(1)
    status = 0
    for method in methods:
        factory, package = FACTORIES[method]
        if package is not None and version(package) is None:
            note(f"{method}: skipped, `pip install {package}` to run it")
            continue
        try:
            fn = factory(model, features, args, dev)
        except LookupError as e:
            note(f"{method}: skipped, {e}")
            continue
        for b in batches:
            rgb = torch.randint(0, 256, (b, args.size, args.size, 3), dtype=torch.uint8, generator=gen)
            if dev.type == "cuda":
                rgb = rgb.pin_memory()
                torch.cuda.reset_peak_memory_stats(dev)
            row = dict(common, method=method, batch=b, iters=args.iters)
            if method == "lrp":
                row["rule"] = args.rule
            if method.startswith("lafam"):
                row["upsample"] = args.upsample
            try:
                med, best = timed(fn, rgb, dev, args.warmup, args.iters)
            except RuntimeError as e:  # e.g. out of memory at a large batch
                note(f"{method} batch {b}: {str(e).splitlines()[0]}")
                status = 1
                continue
            row.update(median_ms=med * 1e3, min_ms=best * 1e3, img_per_s=b / med,
                       ms_per_img=med * 1e3 / b)
            if dev.type == "cuda":
                row["peak_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
            print(json.dumps(row), flush=True)
        if hasattr(fn, "close"):
            fn.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
