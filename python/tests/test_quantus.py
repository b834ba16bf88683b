"""The Quantus explain function: the shape contract (always), and Quantus 0.6.0's
localisation metrics end to end where quantus is installed (CI installs it; set
LAFAM_GPU_REQUIRE_QUANTUS=1 to fail instead of skipping without it)."""

import os

import numpy as np
import pytest

import lafam_gpu
from conftest import ASSETS, R18

MEAN = np.array(lafam_gpu.IMAGENET_MEAN).reshape(1, 3, 1, 1)
STD = np.array(lafam_gpu.IMAGENET_STD).reshape(1, 3, 1, 1)


def normalised_batch(n=3, size=64):
    """uint8 crops of the sample images, and them ImageNet-normalised N x 3 x H x W."""
    imgs = np.stack([lafam_gpu.load_image(p)[:size, :size] for p in ASSETS[:n]])
    x = ((imgs.transpose(0, 3, 1, 2) / 255.0) - MEAN) / STD
    return imgs, x.astype(np.float32)


@pytest.fixture(scope="module")
def ex():
    return lafam_gpu.Explainer(R18, backend="cpu", size=64, masks=20)


def test_denormalisation_is_exact_for_uint8_sources():
    imgs, x = normalised_batch()
    assert np.array_equal(lafam_gpu.to_uint8_rgb(x), imgs)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        lafam_gpu.to_uint8_rgb(x.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="dtype"):
        lafam_gpu.to_uint8_rgb(imgs.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("method", ["lafam", "lrp", "relax-uncertainty"])
def test_shape_contract(ex, method):
    imgs, x = normalised_batch()
    f = lafam_gpu.quantus_explain_func(method=method, explainer=ex)
    a = f(model=None, inputs=x, targets=np.zeros(3, int), device="cpu", method="ignored")
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (3, 64, 64)
    # The maps of the de-normalised images, exactly.
    want = ex.explain(imgs, methods=(method.replace("-uncertainty", ""),))[method]
    assert np.array_equal(a, want)


def test_model_is_the_explainer(ex):
    _, x = normalised_batch(2)
    f = lafam_gpu.quantus_explain_func(method="eigencam", weights=R18, backend="cpu", size=64)
    assert np.array_equal(f(ex, x, None), f(None, x, None))


def test_bad_arguments():
    with pytest.raises(ValueError, match="weights"):
        lafam_gpu.quantus_explain_func(method="lafam")
    with pytest.raises(ValueError, match="unknown method"):
        lafam_gpu.quantus_explain_func(method="saliency", weights=R18)


def test_quantus_localisation_metrics_end_to_end(ex):
    if os.environ.get("LAFAM_GPU_REQUIRE_QUANTUS") == "1":
        import quantus
    else:
        quantus = pytest.importorskip("quantus")
    os.environ.setdefault("PYTEST", "1")  # Quantus: no progress bars
    _, x = normalised_batch(3)
    y = np.zeros(3, dtype=int)
    s = np.zeros((3, 1, 64, 64), dtype=np.float32)
    s[:, :, 16:48, 16:48] = 1.0  # a centred box as the "object"
    metrics = {
        "PointingGame": quantus.PointingGame(disable_warnings=True),
        "RelevanceMassAccuracy": quantus.RelevanceMassAccuracy(disable_warnings=True),
        "RelevanceRankAccuracy": quantus.RelevanceRankAccuracy(disable_warnings=True),
        "TopKIntersection": quantus.TopKIntersection(k=256, disable_warnings=True),
    }
    xai = {
        "LaFAM": lafam_gpu.quantus_explain_func("lafam", explainer=ex),
        "LaFAM-LRP": lafam_gpu.quantus_explain_func("lrp", explainer=ex),
    }
    results = quantus.evaluate(
        metrics=metrics, xai_methods=xai, model=None, x_batch=x, y_batch=y, s_batch=s,
        explain_func_kwargs={}, agg_func=np.mean,
    )
    for method in xai:
        for metric in metrics:
            score = results[method][metric]
            assert np.isfinite(score) and 0.0 <= score <= 1.0, (method, metric, score)
    # One metric called directly, Quantus computing the maps through the function.
    scores = quantus.PointingGame(disable_warnings=True)(
        model=None, x_batch=x, y_batch=y, a_batch=None, s_batch=s, explain_func=xai["LaFAM"],
    )
    assert len(scores) == 3 and all(v in (True, False, 0, 1) for v in scores)
