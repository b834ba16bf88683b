"""lafam-gpu from Python: label-free attribution maps (LaFAM, LaFAM-max, LaFAM-LRP, Grad-CAM,
EigenCAM, RELAX) for ResNet backbones, computed by the lafam-gpu engine (wgpu on any GPU, or
the CPU), numpy in and out.

    import lafam_gpu
    ex = lafam_gpu.Explainer("swav", backend="auto", size=224)   # a path or a known model name
    maps = ex.explain(images, methods=("lafam", "lrp"))          # {"lafam": N x H x W float32, ...}
    rgb = lafam_gpu.overlay(images[0], maps["lafam"][0])

The maps are bit-identical to the CLI's ``.npy`` files for the same options; overlays are the
CLI's ``*.overlay.png``. Errors carry the CLI's messages (FileNotFoundError for missing files,
ValueError for bad inputs and options, RuntimeError for the backend).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ._native import Explainer, __version__, _render, known_models, load_image, methods

__all__ = [
    "Explainer",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "heatmap",
    "known_models",
    "load_image",
    "methods",
    "overlay",
    "quantus_explain_func",
    "to_uint8_rgb",
    "__version__",
]

#: The normalisation torchvision (and Quantus' examples) apply to ImageNet inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _map_f32(map: Any) -> np.ndarray:
    m = np.asarray(map)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    return np.ascontiguousarray(m, dtype=np.float32)


def overlay(
    image: np.ndarray,
    map: Any,
    colormap: str = "inferno",
    alpha: Optional[float] = None,
) -> np.ndarray:
    """The map blended over the image, exactly as the CLI's ``<stem>.<method>.overlay.png``:
    a uint8 H x W x 3 array.

    ``image``: uint8 H x W x 3; ``map``: H x W (or 1 x H x W), at the image's resolution.
    ``colormap``: ``"inferno"`` (values in [0, 1]: LaFAM, Grad-CAM, EigenCAM),
    ``"inferno-scaled"`` (min-max scaled first: RELAX), ``"rdbu"`` (signed relevance,
    centred on zero: LRP), or a method's output name (``"lrp"``, ``"relax-uncertainty"``...)
    for the colormap the CLI uses for it. ``alpha``: the heatmap's weight for the inferno
    colormaps (default 0.5, the CLI's); the signed colormap's opacity follows ``|relevance|``
    instead, and refuses ``alpha``.
    """
    return _render(image, _map_f32(map), colormap, alpha)[1]


def heatmap(map: Any, colormap: str = "inferno") -> np.ndarray:
    """The map painted as the CLI's ``<stem>.<method>.png``: a uint8 H x W x 3 array."""
    m = _map_f32(map)
    if m.ndim != 2:
        raise ValueError(f"map: expected an H x W array, got shape {m.shape}")
    blank = np.zeros((*m.shape, 3), dtype=np.uint8)
    return _render(blank, m, colormap, None)[0]


def to_uint8_rgb(
    inputs: Any,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """N x 3 x H x W normalised float images (numpy or torch) back to uint8 N x H x W x 3:
    ``round((x * std + mean) * 255)`` clamped to 0..255. This quantisation is the one lossy
    step between Quantus' inputs and the engine (at most half a grey level per channel)."""
    if hasattr(inputs, "detach"):  # a torch tensor
        inputs = inputs.detach().cpu().numpy()
    x = np.asarray(inputs)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"inputs: expected N x 3 x H x W normalised images (channels first), got shape {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"inputs: expected normalised float images, got dtype {x.dtype}")
    m = np.asarray(mean, dtype=np.float64).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(1, 3, 1, 1)
    rgb = np.rint((x.astype(np.float64) * s + m) * 255.0)
    rgb = np.clip(np.nan_to_num(rgb, nan=0.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))


def quantus_explain_func(
    method: str = "lafam",
    weights: Union[str, os.PathLike, None] = None,
    explainer: Optional[Explainer] = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **options: Any,
) -> Callable[..., np.ndarray]:
    """A function with Quantus' ``explain_func(model, inputs, targets, **kwargs)`` signature
    that returns ``method``'s maps as float32 N x H x W (Quantus adds the channel axis).

    ``inputs`` are N x 3 x H x W ImageNet-normalised floats, as Quantus passes them; they are
    turned back into uint8 RGB (:func:`to_uint8_rgb`, the one lossy step) and explained as the
    options say (``size=224``, the default, resizes the shorter side to 224 for the network;
    ``size=0`` keeps the inputs' size); the maps are at the inputs' resolution. The engine is ``model`` when Quantus passes
    an :class:`Explainer`, else ``explainer``, else one opened once from ``weights`` and
    ``options`` (the Explainer's keyword arguments). ``targets`` are ignored: the methods are
    label-free (Grad-CAM explains ``class_`` or each image's top class).
    """
    if method.endswith("-uncertainty"):
        key, method = method, method[: -len("-uncertainty")]
    else:
        key = method
    methods()  # the native module is loaded
    if method not in methods():
        raise ValueError(
            f"unknown method '{method}': expected one of {', '.join(methods())}"
        )
    if explainer is None and weights is None:
        raise ValueError("quantus_explain_func needs weights=... or explainer=...")
    cache: dict = {}

    def engine(model: Any) -> Explainer:
        if isinstance(model, Explainer):
            return model
        if explainer is not None:
            return explainer
        if "ex" not in cache:
            cache["ex"] = Explainer(weights, **options)
        return cache["ex"]

    def explain_func(model: Any = None, inputs: Any = None, targets: Any = None, **kwargs: Any) -> np.ndarray:
        if inputs is None:
            raise ValueError("explain_func: inputs (N x 3 x H x W) are required")
        rgb = to_uint8_rgb(inputs, mean, std)
        maps = engine(model).explain(rgb, methods=(method,), progress=False)
        return np.asarray(maps[key], dtype=np.float32)

    explain_func.__name__ = f"lafam_gpu_{key.replace('-', '_')}"
    return explain_func
