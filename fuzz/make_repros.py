#!/usr/bin/env python3
"""Writes the fuzz seed corpus: every repro of issue 13 that is an input file, hand-written
hostile and edge-case inputs for each target, and copies of small test fixtures.

    python3 fuzz/make_repros.py            # the committed seeds (small versions)
    python3 fuzz/make_repros.py --full     # also the full-size repros (MBs, not committed)

Run from the repository root; files go to fuzz/corpus/<target>/ (full-size ones to
fuzz/repros-full/<target>/, which git ignores). Only the standard library and numpy are used;
nothing here needs torch or PIL. The output is deterministic.
"""

import io
import json
import os
import struct
import sys
import zipfile
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
FULL = os.path.join(ROOT, "fuzz", "repros-full")
FIX = os.path.join(ROOT, "tests", "fixtures")


def put(target, name, data, base=CORPUS):
    d = os.path.join(base, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy(target, src, name=None):
    put(target, name or os.path.basename(src), open(src, "rb").read())


# ---------------------------------------------------------------- checkpoints (pickle / zip)


def torch_zip(pkl, storages=(), prefix="archive"):
    """A torch.save-like zip (stored, not deflated: torch writes stored records)."""
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:

        def put_record(name, data):
            # A fixed date: the same bytes on every run.
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)

        put_record(f"{prefix}/data.pkl", pkl)
        put_record(f"{prefix}/byteorder", b"little")
        for key, data in storages:
            put_record(f"{prefix}/data/{key}", data)
        put_record(f"{prefix}/version", b"3\n")
    return b.getvalue()


def legacy(payload, keys=b"\x80\x02]."):
    """A legacy checkpoint: magic number, protocol version, sys info, payload, storage keys."""
    v = bytes([0x80, 2, 0x8A, 10, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19])
    v += b"." + bytes([0x80, 2, ord("M"), 0xE9, 0x03]) + b"." + b"\x80\x02}."
    return v + payload + keys


def nested_lists(depth):
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def nested_tuples(depth):
    return b"\x80\x02)" + b"\x85" * depth + b"."


def nested_dicts(depth):
    return b"\x80\x02}" + b"q\x000}X\x00\x00\x00\x00h\x00s" * depth + b"."


def memo_dag(depth):
    """x = (x, x) `depth` times through memo slot 0: 2^depth paths, `depth` tuples."""
    return b"\x80\x02N" + b"q\x00h\x00\x86" * depth + b"."


def dup_bytes(size, dups):
    """BINBYTES8 of `size` bytes, then DUP `dups` times (a copy per DUP asked for 20 GB)."""
    return b"\x80\x04\x8e" + struct.pack("<Q", size) + b"\x07" * size + b"2" * dups + b"."


def memoize(n):
    return b"\x80\x04N" + b"\x94" * n + b"."


def view_pickle(size, stride, legacy_pid):
    """{'weight': a float32 tensor on a 1-element storage viewed with size/stride}."""
    o = b"\x80\x02}X\x06\x00\x00\x00weightctorch._utils\n_rebuild_tensor_v2\n("
    o += b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
    o += b"X\x03\x00\x00\x00cpuK\x01" + (b"N" if legacy_pid else b"") + b"tQK\x00(\x8a\x08"
    o += struct.pack("<Q", size) + b"t(K" + bytes([stride])
    o += b"t\x89ccollections\nOrderedDict\n)RtRs."
    return o


def view_zip(size, stride):
    return torch_zip(view_pickle(size, stride, False), [("0", struct.pack("<f", 1.5))])


def view_legacy(size, stride):
    keys = b"\x80\x02]X\x01\x00\x00\x000a." + struct.pack("<Q", 1) + struct.pack("<f", 1.5)
    return legacy(view_pickle(size, stride, True), keys)


def checkpoints(full):
    t = "checkpoint"
    # Issue 13 item 1: a 400 KB zip whose data.pkl nests lists 200,000 deep (stack overflow);
    # tuples and dicts the same (legacy format: smaller files, same unpickler).
    put(t, "i13-1-nested-lists-200k.pth", torch_zip(nested_lists(200_000)))
    put(t, "i13-1-nested-tuples-200k.pth", legacy(nested_tuples(200_000)))
    put(t, "i13-1-nested-dicts-20k.pth", legacy(nested_dicts(20_000)))
    # Item 2: the 1.4 KB memo DAG, (x, x) nested 60 deep (exponential walk).
    put(t, "i13-2-memo-dag-60.pth", torch_zip(memo_dag(60)))
    put(t, "i13-2-memo-dag-60-legacy.pth", legacy(memo_dag(60)))
    # Item 3: DUP of bytes (full: 1 MiB x 20,000 = 20 GB if copied), MEMOIZE flood (full: 16M
    # ops), stride-0 views (603-byte file -> 1 GiB; size 2^40 with stride 0 -> abort).
    put(t, "i13-3-dup-bytes-64k-x20000.pth", legacy(dup_bytes(1 << 16, 20_000)))
    put(t, "i13-3-memoize-100k.pth", legacy(memoize(100_000)))
    put(t, "i13-3-stride0-1gib.pth", view_zip(1 << 28, 0))
    put(t, "i13-3-stride0-2pow40.pth", view_zip(1 << 40, 0))
    put(t, "i13-3-stride0-2pow40-legacy.pth", view_legacy(1 << 40, 0))
    put(t, "view-ok.pth", view_zip(1, 1))
    put(t, "view-ok-legacy.pth", view_legacy(1, 1))
    if full:
        put(t, "i13-3-dup-bytes-1mib-x20000.pth", legacy(dup_bytes(1 << 20, 20_000)), FULL)
        put(t, "i13-3-memoize-16m.pth", legacy(memoize(16 << 20)), FULL)
        put(t, "i13-1-nested-dicts-200k.pth", legacy(nested_dicts(200_000)), FULL)
    # Hand-written hostile pickles (tests/checkpoints.rs), as legacy checkpoints.
    for i, p in enumerate(
        [
            b"\x80\x02cbuiltins\nexec\nq\x00.",
            b"\x80\x02c__builtin__\neval\n.",
            b"\x80\x02ctorch\nload\n.",
            b"\x80\x02(X\x02\x00\x00\x00lsios\nsystem\n.",
            b"\x80\x02N)R.",
            b"\x80\x02\x82\x01.",
        ]
    ):
        put(t, f"hostile-{i}.pth", legacy(p))
    put(t, "tar-header.pth", b"\0" * 257 + b"ustar" + b"\0" * 250)
    put(t, "empty-zip.pth", torch_zip(b"\x80\x02}q\x00."))
    # Fixtures: small real checkpoints and the malicious ones.
    ck = os.path.join(FIX, "checkpoints")
    for name in sorted(os.listdir(ck)):
        if os.path.getsize(os.path.join(ck, name)) <= 320_000:
            copy(t, os.path.join(ck, name))


# ---------------------------------------------------------------- safetensors


def safetensors_bytes(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8 : 8 + n]), b[8 + n :]


def tiny_resnet18():
    """The smallest ResNet-18-shaped state dict: widths 1,1,1,1 would not be ResNet-like, so
    widths 2/2/2/2 (stem 2): all keys present, tiny tensors."""
    import numpy as np

    rng = np.random.default_rng(0)
    t = {}

    def conv(name, cout, cin, k):
        t[name + ".weight"] = ("F32", [cout, cin, k, k], rng.standard_normal((cout, cin, k, k)).astype("<f4").tobytes())

    def bn(name, c):
        for p, v in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)]:
            t[f"{name}.{p}"] = ("F32", [c], np.full(c, v, "<f4").tobytes())

    conv("conv1", 2, 3, 7)
    bn("bn1", 2)
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            conv(p + ".conv1", 2, 2, 3)
            bn(p + ".bn1", 2)
            conv(p + ".conv2", 2, 2, 3)
            bn(p + ".bn2", 2)
            if block == 0 and layer > 1:
                conv(p + ".downsample.0", 2, 2, 1)
                bn(p + ".downsample.1", 2)
    return t


def weights(full):
    t = "safetensors"
    ref = os.path.join(FIX, "reference", "r50_moco.safetensors")
    copy(t, ref)
    # Issue 13 item 8: finite weights whose BatchNorm running_var is 1e-12 (NaN maps): the
    # loader accepts them; the per-image check is downstream.
    import numpy as np

    header, data = read_safetensors(ref)
    data = bytearray(data)
    for k, v in header.items():
        if k.endswith("running_var"):
            a, b = v["data_offsets"]
            data[a:b] = np.full((b - a) // 4, 1e-12, "<f4").tobytes()
    meta = header.pop("__metadata__", None)
    tensors = {k: (v["dtype"], v["shape"], bytes(data[v["data_offsets"][0] : v["data_offsets"][1]])) for k, v in header.items()}
    put(t, "i13-8-bn-running-var-1e-12.safetensors", safetensors_bytes(tensors, meta))
    tiny = tiny_resnet18()
    put(t, "tiny-r18.safetensors", safetensors_bytes(tiny, {"bn_eps": "1e-5"}))
    f16 = {k: ("F16", s, np.frombuffer(r, "<f4").astype("<f2").tobytes()) for k, (_, s, r) in tiny.items()}
    put(t, "tiny-r18-f16.safetensors", safetensors_bytes(f16))
    bad = dict(tiny)
    bad["conv1.weight"] = ("F32", [2, 3, 7, 8], tiny["conv1.weight"][2])
    put(t, "tiny-r18-wrong-shape.safetensors", safetensors_bytes(bad))
    put(t, "header-length-huge.safetensors", struct.pack("<Q", 1 << 62) + b"{}")
    put(t, "offsets-out-of-range.safetensors", safetensors_bytes({"a": ("F32", [1 << 40], b"")}))
    put(t, "empty-header.safetensors", safetensors_bytes({}))


# ---------------------------------------------------------------- images and masks


def png(w, h, color_type, bit_depth, rows, palette=None, extra=b""):
    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    raw = b"".join(b"\0" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", palette)
    return out + extra + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def png_variants():
    """(name, bytes) for the PNG colour types and bit depths a label mask or image may use."""
    w, h = 8, 6
    out = []
    grey8 = [bytes((x * 32 + y) % 256 for x in range(w)) for y in range(h)]
    out.append(("grey8.png", png(w, h, 0, 8, grey8)))
    out.append(("grey16.png", png(w, h, 0, 16, [bytes(b for v in r for b in (v, 7)) for r in grey8])))
    for bits in (1, 2, 4):
        rows = [bytes(((x * 37 + y * 11) % 256) for x in range((w * bits + 7) // 8)) for y in range(h)]
        out.append((f"grey{bits}.png", png(w, h, 0, bits, rows)))
        out.append((f"palette{bits}.png", png(w, h, 3, bits, rows, bytes(range(3 * (1 << bits))))))
    voc = [bytes([0, 0, 15, 15, 255, 255, 1, 0]) for _ in range(h)]
    out.append(("palette8-voc-void255.png", png(w, h, 3, 8, voc, bytes(range(256)) * 3)))
    out.append(("rgb8-imagenet-s.png", png(w, h, 2, 8, [bytes(b for x in range(w) for b in (x * 30, y % 4, 0)) for y in range(h)])))
    out.append(("rgba8.png", png(w, h, 6, 8, [bytes([1, 2, 3, 255] * w) for _ in range(h)])))
    out.append(("grey-alpha8.png", png(w, h, 4, 8, [bytes([5, 255] * w) for _ in range(h)])))
    out.append(("rgb16.png", png(w, h, 2, 16, [bytes([1, 2] * 3 * w) for _ in range(h)])))
    # Headers claiming huge sizes (no pixel data to back them).
    out.append(("huge-header.png", png(1 << 30, 1 << 30, 0, 8, [b""])))
    out.append(("side-over-limit.png", png(16385, 1, 0, 8, [bytes(16385)])))
    out.append(("zero-width.png", png(0, 4, 0, 8, [b""] * 4)))
    return out


def bmp(w, h):
    row = bytes(3 * w) + bytes(-3 * w % 4)
    pix = row * h
    hdr = struct.pack("<2sIHHI", b"BM", 54 + len(pix), 0, 0, 54)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pix), 2835, 2835, 0, 0)
    return hdr + dib + pix


def images(full):
    t = "image"
    for name, data in png_variants():
        put(t, name, data)
    # Issue 13 item 4: a 1x4000 image (decodes; the network-size check is downstream).
    put(t, "i13-4-1x4000.png", png(1, 4000, 0, 8, [b"\x80"] * 4000))
    put(t, "i13-4-4000x1.png", png(4000, 1, 0, 8, [bytes(4000)]))
    put(t, "bmp-4x3.bmp", bmp(4, 3))
    put(t, "bmp-huge-header.bmp", bmp(4, 3)[:18] + struct.pack("<ii", 1 << 30, -(1 << 30)) + bmp(4, 3)[26:])
    d = "/root/.pyenv/versions/3.7.16/lib/python3.7/test/imghdrdata"
    if os.path.isdir(d):
        # CPython's imghdr test images (PSF licence): tiny JPEG, PNG, GIF, BMP, TIFF, WebP, PNM.
        for name in sorted(os.listdir(d)):
            if name.rsplit(".", 1)[-1] in ("jpg", "png", "gif", "bmp", "tiff", "webp", "ppm", "pgm", "pbm"):
                copy(t, os.path.join(d, name), "cpython-" + name)
    jpg = open(os.path.join(ROOT, "assets", "rocket.jpg"), "rb").read()
    put(t, "rocket.jpg", jpg)
    # Issue 13 item 6: JPEGs cut at 30%, 60% and 95% of their length (accepted as grey before).
    for pct in (30, 60, 95):
        put(t, f"i13-6-rocket-cut-{pct}.jpg", jpg[: len(jpg) * pct // 100])
    put(t, "empty", b"")
    put(t, "not-an-image.txt", b"hello, not an image\n")


def masks(full):
    t = "mask"
    for name, data in png_variants():
        put(t, name, data)


# ---------------------------------------------------------------- .npy maps


def npy(descr, shape, payload, fortran=False, version=1):
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (
        descr,
        "True" if fortran else "False",
        "(" + "".join(f"{s}, " for s in shape)[:-1] + ("," if len(shape) == 1 else "") + ")" if shape else "()",
    )
    pre = 10 if version == 1 else 12
    d += " " * (-(pre + len(d) + 1) % 64) + "\n"
    n = struct.pack("<H", len(d)) if version == 1 else struct.pack("<I", len(d))
    return b"\x93NUMPY" + bytes([version, 0]) + n + d.encode("latin1") + payload


def npys(full):
    import numpy as np

    t = "npy_map"
    a = np.arange(12, dtype="<f4").reshape(3, 4)
    put(t, "f4-3x4.npy", npy("<f4", (3, 4), a.tobytes()))
    put(t, "f8-3x4.npy", npy("<f8", (3, 4), a.astype("<f8").tobytes()))
    put(t, "f4-big-endian.npy", npy(">f4", (3, 4), a.astype(">f4").tobytes()))
    put(t, "f4-1x3x4x1.npy", npy("<f4", (1, 3, 4, 1), a.tobytes()))
    put(t, "f4-1x3x4.npy", npy("<f4", (1, 3, 4), a.tobytes()))
    put(t, "f4-12x1.npy", npy("<f4", (12, 1), a.tobytes()))
    put(t, "f4-1x1.npy", npy("<f4", (1, 1), a.tobytes()[:4]))
    put(t, "f4-3d.npy", npy("<f4", (2, 3, 2), a.tobytes()))
    put(t, "f4-fortran.npy", npy("<f4", (3, 4), a.T.tobytes(), fortran=True))
    put(t, "f4-v2-header.npy", npy("<f4", (3, 4), a.tobytes(), version=2))
    put(t, "f4-nan-inf.npy", npy("<f4", (1, 4), np.array([np.nan, np.inf, -np.inf, -0.0], "<f4").tobytes()))
    put(t, "i4.npy", npy("<i4", (3, 4), a.astype("<i4").tobytes()))
    put(t, "f2.npy", npy("<f2", (3, 4), a.astype("<f2").tobytes()))
    put(t, "object-pickle.npy", npy("|O", (1, 1), b"\x80\x02N."))
    put(t, "structured.npy", npy("[('a', '<f4'), ('b', '<f4')]", (2, 2), bytes(32)))
    put(t, "f4-truncated.npy", npy("<f4", (3, 4), a.tobytes()[:20]))
    put(t, "f4-huge-shape.npy", npy("<f4", (1 << 40, 1 << 40), b""))
    put(t, "f4-overflow-shape.npy", npy("<f4", (1 << 62, 1 << 62, 16), b""))
    put(t, "f4-zero-dim.npy", npy("<f4", (0, 4), b""))
    put(t, "f4-scalar.npy", npy("<f4", (), a.tobytes()[:4]))
    # A Quantus fixture map, cut to its first 4x4 rows' worth (the file is 1 MB).
    base = os.path.join(FIX, "baselines")
    for name in sorted(os.listdir(base)):
        if name.endswith(".npy") and os.path.getsize(os.path.join(base, name)) <= 16_000:
            copy(t, os.path.join(base, name))
            break


# ---------------------------------------------------------------- eval --merge parts

METRICS = ["pointing_game", "top_k_intersection", "relevance_mass_accuracy",
           "relevance_rank_accuracy", "auc", "sparseness"]


def report(method, stems, settings, shard=None, values=None, skipped=()):
    images = []
    for i, s in enumerate(stems):
        v = values[i] if values else [1.0, 0.5, 0.7, 0.4, 0.8, 0.3]
        images.append({"stem": s, **dict(zip(METRICS, v))})
    return {
        "method": method,
        "settings": settings,
        "provenance": {"weights": {"path": "w.safetensors", "size": 1, "sha256": "00"}},
        "shard": shard,
        "images": images,
        "mean": {m: 0.5 for m in METRICS},
        "skipped": [{"stem": s, "reason": "unreadable"} for s in skipped],
    }


def merges(full):
    t = "eval_merge"
    r50 = {"arch": "ResNet-50", "layer": "layer4", "size": 224, "top_k": 1000}
    r18 = {"arch": "ResNet-18", "layer": "layer2", "size": 224, "top_k": 1000}

    def parts(*ps):
        return b"\0".join(json.dumps(p, indent=1).encode() for p in ps)

    a = report("lafam", ["a", "b"], r50, "0/2")
    b = report("lafam", ["c"], r50, "1/2", skipped=["d"])
    put(t, "two-shards.json", parts(a, b))
    put(t, "one-part-many-methods.json", parts({"reports": [a, report("gradcam", ["a"], r50, "0/2")]}))
    # Issue 13: out-of-range values (pointing game -3, AUC 5), settings that differ (ResNet-50
    # layer4 with ResNet-18 layer2), a shard missing, a shard twice, a stem in two shards.
    bad = report("lafam", ["c"], r50, "1/2", values=[[-3.0, 0.5, 0.7, 0.4, 5.0, 0.3]])
    put(t, "i13-merge-out-of-range.json", parts(a, bad))
    put(t, "i13-merge-settings-differ.json", parts(a, report("lafam", ["c"], r18, "1/2")))
    put(t, "i13-merge-shard-missing.json", parts(report("lafam", ["a"], r50, "0/3"), report("lafam", ["b"], r50, "2/3")))
    put(t, "i13-merge-shard-twice.json", parts(a, report("lafam", ["c"], r50, "0/2")))
    put(t, "i13-merge-stem-overlap.json", parts(a, report("lafam", ["a"], r50, "1/2")))
    mean_bad = dict(a)
    mean_bad["mean"] = {"pointing_game": 7.0}
    put(t, "i13-merge-mean-out-of-range.json", parts(mean_bad))
    nulls = report(None, ["x\ny"], {}, None, values=[[None, None, float("nan"), None, None, None]])
    put(t, "nulls-and-nan.json", parts(nulls).replace(b"NaN", b"null"))
    put(t, "not-json.json", b"{\"images\": [")
    put(t, "shard-bad.json", parts(report("lafam", ["a"], r50, "5/2")))
    put(t, "shard-zero.json", parts(report("lafam", ["a"], r50, "0/0")))


def main():
    full = "--full" in sys.argv
    # Files are (over)written by name; what the fuzzer added to the corpus is kept.
    checkpoints(full)
    weights(full)
    images(full)
    masks(full)
    npys(full)
    merges(full)


if __name__ == "__main__":
    main()
