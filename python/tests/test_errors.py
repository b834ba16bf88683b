"""Bad inputs raise a clear Python exception with the CLI's message; none crashes the
interpreter."""

import numpy as np
import pytest

import lafam_gpu
from conftest import ASSETS, R18, R50, REPO, run_cli


@pytest.fixture(scope="module")
def ex():
    return lafam_gpu.Explainer(R18, backend="cpu", size=64)


def cli_error(*args):
    r = run_cli(*args)
    assert r.returncode != 0
    line = [l for l in r.stderr.splitlines() if l.startswith("error: ")][-1]
    return line[len("error: "):]


def test_missing_weights_file_like_the_cli(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        lafam_gpu.Explainer(missing, backend="cpu")
    assert str(e.value) == cli_error("info", "--weights", str(missing))


def test_unknown_model_name_like_the_cli():
    with pytest.raises(FileNotFoundError) as e:
        lafam_gpu.Explainer("no-such-model", backend="cpu")
    msg = str(e.value)
    assert "not a known model name" in msg and "swav" in msg
    assert msg == cli_error("info", "--weights", "no-such-model")


def test_not_weights(tmp_path):
    with pytest.raises(ValueError) as e:
        lafam_gpu.Explainer(ASSETS[0], backend="cpu")
    assert str(e.value) == cli_error("info", "--weights", str(ASSETS[0]))


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(backend="tpu"), "tpu"),
        (dict(layer="layer9"), "layer9"),
        (dict(rule="zplus"), "unknown LRP rule 'zplus'"),
        (dict(upsample="cubic"), "unknown upsample 'cubic'"),
        (dict(size=-1), "size=-1 is out of range"),
        (dict(batch=0), "batch=0 is out of range"),
        (dict(masks=0), "masks=0 is out of range"),
        (dict(class_=5000), "class_=5000 is out of range"),
    ],
)
def test_bad_options(kw, needle):
    with pytest.raises(ValueError) as e:
        lafam_gpu.Explainer(R50, **{"backend": "cpu", **kw})
    assert needle in str(e.value)


def test_gradcam_without_classifier_like_the_cli(ex, tmp_path):
    with pytest.raises(ValueError) as e:
        ex.explain(lafam_gpu.load_image(ASSETS[0]), methods="gradcam")
    want = cli_error("run", "--weights", str(R18), "--backend", "cpu", "--method", "gradcam",
                     "--out", str(tmp_path), str(ASSETS[0]))
    assert str(e.value) == want


def test_unknown_method(ex):
    with pytest.raises(ValueError, match="nope"):
        ex.explain(np.zeros((32, 32, 3), np.uint8), methods=("lafam", "nope"))


def test_concepts_is_cli_only_for_now(ex):
    with pytest.raises(ValueError, match="lafam-gpu run --method concepts"):
        ex.explain(np.zeros((32, 32, 3), np.uint8), methods="concepts")


@pytest.mark.parametrize(
    "images, exc, needle",
    [
        (np.zeros((32, 32, 3), np.float32), ValueError, "dtype float32"),
        (np.zeros((32, 32, 3), np.int64), ValueError, "dtype int64"),
        (np.zeros((32, 32), np.uint8), ValueError, "got shape (32, 32)"),
        (np.zeros((32, 32, 4), np.uint8), ValueError, "got shape (32, 32, 4)"),
        (np.zeros((3, 32, 32), np.uint8), ValueError, "got shape (3, 32, 32)"),
        (np.zeros((0, 32, 32, 3), np.uint8), ValueError, "empty"),
        (np.zeros((1, 2, 32, 32, 3), np.uint8), ValueError, "got shape"),
        ([], ValueError, "no images"),
        ([np.zeros((4, 32, 32, 3), np.uint8)], ValueError, "images[0]"),
        ([np.zeros((32, 32, 3), np.uint8), 7], TypeError, "images[1]"),
        (42, TypeError, "got int"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_bad_images(ex, images, exc, needle):
    with pytest.raises(exc) as e:
        ex.explain(images)
    assert needle in str(e.value)


def test_missing_and_non_image_paths_like_the_cli(ex, tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError) as e:
        ex.explain([ASSETS[0], missing])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ValueError) as e2:
        ex.explain(str(text))
    for err, path in [(e, missing), (e2, text)]:
        r = run_cli("run", "--weights", str(R18), "--backend", "cpu", "--out", str(tmp_path / "o"), str(path))
        assert r.returncode == 1
        assert f"error: {err.value}" in r.stderr.splitlines()
    with pytest.raises(ValueError):
        lafam_gpu.load_image(text)


def test_network_input_over_the_limit():
    """A 4 x 64 image at size 1024 would be 1024 x 16384 px: refused before any work, with
    the size that fits."""
    big = lafam_gpu.Explainer(R18, backend="cpu", size=1024)
    with pytest.raises(ValueError) as e:
        big.explain([np.zeros((32, 32, 3), np.uint8), np.zeros((4, 64, 3), np.uint8)])
    assert str(e.value).startswith("image 1: network input") and "use size=512 or smaller" in str(e.value)


def test_overlay_bad_inputs():
    img = np.zeros((16, 16, 3), np.uint8)
    m = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match="does not match"):
        lafam_gpu.overlay(img, np.zeros((8, 16), np.float32))
    with pytest.raises(ValueError, match="unknown colormap"):
        lafam_gpu.overlay(img, m, colormap="jet")
    with pytest.raises(ValueError, match="alpha does not apply"):
        lafam_gpu.overlay(img, m, colormap="lrp", alpha=0.3)
    with pytest.raises(ValueError, match="dtype float32"):
        lafam_gpu.overlay(img.astype(np.float32), m)
    # A float64 map is taken (as float32); alpha 0 shows the image.
    assert np.array_equal(lafam_gpu.overlay(img + 7, m.astype(np.float64), alpha=0.0), img + 7)
