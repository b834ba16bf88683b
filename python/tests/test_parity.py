"""The Python API gives the CLI's .npy maps bit for bit, for every method, on the fixture
weights and the sample images, on the CPU backend and on the GPU backend (lavapipe in CI);
and overlay() gives the CLI's overlay PNGs."""

import numpy as np
import pytest

import lafam_gpu
from conftest import ASSETS, R18, R50, run_cli

# Small and quick: size 64, RELAX with few masks.
OPTS = dict(size=64, masks=40, mask_batch=16, seed=3)
CLI_OPTS = ["--size", "64", "--masks", "40", "--mask-batch", "16", "--seed", "3"]


def methods_for(weights):
    # concepts is CLI-only for now (test_errors.py checks its error).
    names = [m for m in lafam_gpu.methods() if m != "concepts"]
    return names if weights == R50 else [m for m in names if m != "gradcam"]


def outputs_for(methods):
    return [m for m in methods] + (["relax-uncertainty"] if "relax" in methods else [])


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.fixture(scope="module", params=["cpu", "gpu"])
def backend(request):
    return request.param


@pytest.mark.parametrize("weights", [R18, R50], ids=["r18_swav", "r50_tv"])
def test_maps_match_cli(tmp_path, backend, weights):
    methods = methods_for(weights)
    out = tmp_path / "cli"
    r = run_cli("run", "--weights", str(weights), "--backend", backend, "--method", ",".join(methods),
                *CLI_OPTS, "--out", str(out), *map(str, ASSETS))
    assert r.returncode == 0, r.stderr
    ex = lafam_gpu.Explainer(weights, backend=backend, **OPTS)
    assert ex.info()["backend_kind"] == backend
    # Paths (decoded by the library's loader) and arrays give the same maps.
    by_path = ex.explain([str(p) for p in ASSETS], methods=methods)
    by_array = ex.explain([lafam_gpu.load_image(p) for p in ASSETS], methods=methods)
    assert sorted(by_path) == sorted(outputs_for(methods))
    for name in outputs_for(methods):
        maps = by_path[name]
        # The assets have two sizes: a list, one H x W map per image.
        assert isinstance(maps, list) and len(maps) == len(ASSETS)
        for img, m, a in zip(ASSETS, maps, by_array[name]):
            want = np.load(out / f"{img.stem}.{name}.npy")
            assert m.dtype == np.float32 and m.shape == want.shape
            assert np.array_equal(bits(m), bits(want)), f"{name} on {img.name} differs from the CLI"
            assert np.array_equal(bits(a), bits(want))


def test_overlay_matches_cli(tmp_path):
    """overlay() and heatmap() draw exactly the CLI's PNGs, for each colormap family."""
    methods = ["lafam", "lrp", "relax"]
    out = tmp_path / "cli"
    img = ASSETS[0]
    r = run_cli("run", "--weights", str(R18), "--backend", "cpu", "--method", ",".join(methods),
                *CLI_OPTS, "--out", str(out), str(img))
    assert r.returncode == 0, r.stderr
    image = lafam_gpu.load_image(img)
    for name in outputs_for(methods):
        m = np.load(out / f"{img.stem}.{name}.npy")
        want_overlay = lafam_gpu.load_image(out / f"{img.stem}.{name}.overlay.png")
        want_heat = lafam_gpu.load_image(out / f"{img.stem}.{name}.png")
        got = lafam_gpu.overlay(image, m, colormap=name)
        assert got.dtype == np.uint8 and got.shape == image.shape
        assert np.array_equal(got, want_overlay), name
        assert np.array_equal(lafam_gpu.heatmap(m, colormap=name), want_heat), name


def test_same_size_images_give_an_array():
    ex = lafam_gpu.Explainer(R18, backend="cpu", size=64)
    img = lafam_gpu.load_image(ASSETS[1])[:200, :300]
    stack = np.stack([img, img[::-1].copy(), img[:, ::-1]])  # the last one not contiguous
    maps = ex.explain(stack, methods=("lafam", "lrp"))
    assert set(maps) == {"lafam", "lrp"}
    for m in maps.values():
        assert isinstance(m, np.ndarray) and m.shape == (3, 200, 300) and m.dtype == np.float32
    # One image, one H x W x 3 array: a 1 x H x W result; the same as in the batch.
    one = ex.explain(stack[2], methods="lafam")["lafam"]
    assert one.shape == (1, 200, 300)
    assert np.array_equal(bits(one[0]), bits(maps["lafam"][2]))


def test_views_are_read_in_logical_order():
    """A non-contiguous view (a mirror, a channel-last transpose) gives the maps of its copy."""
    ex = lafam_gpu.Explainer(R18, backend="cpu", size=64)
    img = lafam_gpu.load_image(ASSETS[0])
    for view in (img[:, ::-1], img[::2, ::2], np.asfortranarray(img)):
        assert not view.flags["C_CONTIGUOUS"]
        got = ex.explain(view, methods="lafam")["lafam"]
        want = ex.explain(np.ascontiguousarray(view), methods="lafam")["lafam"]
        assert np.array_equal(bits(got), bits(want))
    stack = np.stack([img, img])[:, :, ::-1]
    assert np.array_equal(bits(ex.explain(stack)["lafam"]), bits(ex.explain(np.ascontiguousarray(stack))["lafam"]))


def test_progress_callback_and_reuse():
    ex = lafam_gpu.Explainer(R18, backend="cpu", size=64, batch=2)
    img = lafam_gpu.load_image(ASSETS[0])
    seen = []
    a = ex.explain([img] * 5, methods="eigencam", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    b = ex.explain(img, methods="eigencam", progress=False)
    assert np.array_equal(bits(a["eigencam"][4]), bits(b["eigencam"][0]))


def test_threads_share_one_explainer():
    """Calls from several threads on one Explainer wait for each other with the GIL released:
    no deadlock, the same maps, and Python keeps running meanwhile."""
    import threading

    ex = lafam_gpu.Explainer(R18, backend="cpu", size=64, batch=1)
    img = lafam_gpu.load_image(ASSETS[0])
    want = ex.explain([img] * 3, methods="lrp", progress=lambda d, t: None)["lrp"]
    got = [None] * 4

    def work(k):
        got[k] = ex.explain([img] * 3, methods="lrp", progress=lambda d, t: None)["lrp"]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "deadlock"
    for g in got:
        assert np.array_equal(bits(g), bits(want))


def test_the_gil_is_released_while_the_engine_works():
    """Python code keeps running in the main thread while another thread explains."""
    import threading
    import time

    ex = lafam_gpu.Explainer(R18, backend="cpu", size=64, masks=400, mask_batch=50)
    img = lafam_gpu.load_image(ASSETS[0])
    done = threading.Event()
    t = threading.Thread(target=lambda: (ex.explain(img, methods="relax", progress=False), done.set()))
    start = time.perf_counter()
    t.start()
    ticks = 0
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    elapsed = time.perf_counter() - start
    # With the GIL held for the whole call the loop would run about once.
    assert elapsed > 0.05 and ticks >= 10, (elapsed, ticks)


def test_info():
    ex = lafam_gpu.Explainer(R50, backend="cpu")
    info = ex.info()
    assert info["arch"].startswith("ResNet-50")
    assert info["block"] == "bottleneck"
    assert info["classes"] and info["heads"][0].startswith("fc (")
    assert len(info["stage_channels"]) == 4 and info["parameters"] > 0
    assert info["backend_kind"] == "cpu" and info["backend"].startswith("cpu")
    assert info["options"]["layer"] == "layer4" and info["options"]["size"] == 224
    assert "Explainer(" in repr(ex)
