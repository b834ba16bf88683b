//! `lafam-gpu eval` end to end through the binary, on the CPU backend with the ResNet-18
//! fixture: synthetic datasets in the folder, VOC and ImageNet-S layouts (with a missing
//! mask, a size mismatch and an empty mask), `--maps` mode agreeing with the streaming mode,
//! `--shard` + `--merge` equal to one run, `run --shard`.

use image::{Rgb, RgbImage};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_lafam-gpu");

fn weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/r18_swav.safetensors")
}

fn lafam_gpu(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(BIN);
    for a in args {
        c.arg(a);
    }
    c.output().expect("run lafam-gpu")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A picture with a bright square (the "object") on a textured background.
fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let inside = x >= w / 4 && x < w * 3 / 4 && y >= h / 4 && y < h * 3 / 4;
        let t = ((x * 7 + y * 13 + seed * 31) % 50) as u8;
        if inside {
            Rgb([200 + t, 180, 40 + t])
        } else {
            Rgb([30 + t, 60, 90 + t])
        }
    })
}

/// Label ids: object square = `id`, a 1-pixel border of `void` around it, 0 elsewhere.
fn labels(w: u32, h: u32, id: u16, void: u16) -> Vec<u16> {
    let mut v = vec![0u16; (w * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let (x0, x1, y0, y1) = (w / 4, w * 3 / 4, h / 4, h * 3 / 4);
            let i = (y * w + x) as usize;
            if x >= x0 && x < x1 && y >= y0 && y < y1 {
                v[i] = id;
            } else if x + 1 >= x0 && x <= x1 && y + 1 >= y0 && y <= y1 {
                v[i] = void;
            }
        }
    }
    v
}

fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8], palette: bool) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(color);
    enc.set_depth(png::BitDepth::Eight);
    if palette {
        let mut pal = Vec::new();
        for i in 0..256u32 {
            pal.extend_from_slice(&[
                (i * 37 % 256) as u8,
                (i * 91 % 256) as u8,
                (i * 53 % 256) as u8,
            ]);
        }
        enc.set_palette(pal);
    }
    let mut w = enc.write_header().unwrap();
    w.write_image_data(data).unwrap();
}

fn grey_mask(path: &Path, w: u32, h: u32, ids: &[u16]) {
    let d: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
    write_png(path, w, h, png::ColorType::Grayscale, &d, false);
}

fn palette_mask(path: &Path, w: u32, h: u32, ids: &[u16]) {
    let d: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
    write_png(path, w, h, png::ColorType::Indexed, &d, true);
}

fn rgb_mask(path: &Path, w: u32, h: u32, ids: &[u16]) {
    let d: Vec<u8> = ids
        .iter()
        .flat_map(|&i| [(i % 256) as u8, (i / 256) as u8, 0])
        .collect();
    write_png(path, w, h, png::ColorType::Rgb, &d, false);
}

fn save(img: &RgbImage, path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// Sizes of the good images (w, h), several so that batching by size is exercised.
const SIZES: [(u32, u32); 5] = [(48, 40), (48, 40), (40, 56), (64, 48), (48, 40)];

/// folder layout: img0..img4 good, `nomask` (no mask), `badsize` (mask of another size),
/// `empty` (mask without object).
fn folder_dataset(root: &Path) {
    for (i, &(w, h)) in SIZES.iter().enumerate() {
        save(
            &picture(w, h, i as u32),
            &root.join(format!("images/img{i}.png")),
        );
        grey_mask(
            &root.join(format!("masks/img{i}.png")),
            w,
            h,
            &labels(w, h, 1, 255),
        );
    }
    save(&picture(48, 40, 9), &root.join("images/nomask.png"));
    save(&picture(48, 40, 10), &root.join("images/badsize.png"));
    grey_mask(
        &root.join("masks/badsize.png"),
        40,
        40,
        &labels(40, 40, 1, 255),
    );
    save(&picture(48, 40, 11), &root.join("images/empty.png"));
    grey_mask(&root.join("masks/empty.png"), 48, 40, &vec![0; 48 * 40]);
}

fn voc_dataset(root: &Path) {
    let voc = root.join("VOC2012");
    let mut ids = Vec::new();
    for (i, &(w, h)) in SIZES.iter().enumerate() {
        let id = format!("2007_{i:06}");
        save(
            &picture(w, h, i as u32),
            &voc.join(format!("JPEGImages/{id}.jpg")),
        );
        palette_mask(
            &voc.join(format!("SegmentationObject/{id}.png")),
            w,
            h,
            &labels(w, h, 1 + i as u16, 255),
        );
        ids.push(id);
    }
    // Missing mask, empty mask (void only).
    save(&picture(48, 40, 7), &voc.join("JPEGImages/2008_000001.jpg"));
    ids.push("2008_000001".into());
    save(&picture(48, 40, 8), &voc.join("JPEGImages/2008_000002.jpg"));
    palette_mask(
        &voc.join("SegmentationClass/2008_000002.png"),
        48,
        40,
        &labels(48, 40, 255, 255),
    );
    ids.push("2008_000002".into());
    fs::create_dir_all(voc.join("ImageSets/Segmentation")).unwrap();
    fs::write(
        voc.join("ImageSets/Segmentation/val.txt"),
        ids.join("\n") + "\n",
    )
    .unwrap();
}

fn imagenet_s_dataset(root: &Path) {
    for (i, &(w, h)) in SIZES.iter().enumerate() {
        let wnid = format!("n0{}", i % 2);
        let name = format!("ILSVRC2012_val_{i:08}");
        save(
            &picture(w, h, i as u32),
            &root.join(format!("validation/{wnid}/{name}.JPEG")),
        );
        // Class ids above 255 exercise R + 256·G; 1000 is void.
        rgb_mask(
            &root.join(format!("validation-segmentation/{wnid}/{name}.png")),
            w,
            h,
            &labels(w, h, 300 + i as u16, 1000),
        );
    }
    save(
        &picture(48, 40, 5),
        &root.join("validation/n01/ILSVRC2012_val_00000099.JPEG"),
    );
    rgb_mask(
        &root.join("validation-segmentation/n01/ILSVRC2012_val_00000099.png"),
        40,
        48,
        &labels(40, 48, 300, 1000),
    );
}

fn eval(root: &Path, dataset: &str, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> (Output, Value) {
    let json = root.join(format!("out-{}.json", extra.len()));
    let w = weights();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"eval",
        &"--weights",
        &w,
        &"--dataset",
        &dataset,
        &"--root",
        &root,
        &"--backend",
        &"cpu",
        &"--layer",
        &"layer3",
        &"--top-k",
        &"100",
        &"--json",
        &json,
    ];
    args.extend_from_slice(extra);
    let o = lafam_gpu(&args);
    let v: Value = serde_json::from_str(
        &fs::read_to_string(&json).unwrap_or_else(|e| panic!("{e}\n{}", text(&o))),
    )
    .unwrap();
    (o, v)
}

fn skipped(report: &Value) -> Vec<(String, String)> {
    report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stem"].as_str().unwrap().into(),
                s["reason"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn check_scores(report: &Value, n: usize) {
    assert_eq!(report["count"].as_u64().unwrap() as usize, n, "{report}");
    let images = report["images"].as_array().unwrap();
    assert_eq!(images.len(), n);
    for i in images {
        for m in lafam_gpu::eval::METRICS {
            let v = i[m]
                .as_f64()
                .unwrap_or_else(|| panic!("{m} missing in {i}"));
            assert!(v.is_finite());
            if m != "sparseness" {
                assert!((0.0..=1.0).contains(&v), "{m} = {v}");
            }
        }
    }
    for m in lafam_gpu::eval::METRICS {
        assert!(report["mean"][m].is_number() && report["std"][m].is_number());
    }
}

#[test]
fn folder_layout_both_methods_with_bad_entries_and_maps_mode() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    folder_dataset(&root);
    let saved = dir.path().join("maps");
    let csv = dir.path().join("out.csv");
    let (o, v) = eval(
        &root,
        "folder",
        &[
            &"--method",
            &"lafam,lrp",
            &"--save-maps",
            &saved,
            &"--csv",
            &csv,
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "skipped images give exit 1\n{}",
        text(&o)
    );
    let reports = v["reports"]
        .as_array()
        .expect("two methods: {\"reports\": [...]}");
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["method"], "lafam");
    assert_eq!(reports[1]["method"], "lrp");
    for r in reports {
        check_scores(r, 5);
        let s = skipped(r);
        let stems: Vec<&str> = s.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(stems, ["badsize", "empty", "nomask"], "{s:?}");
        assert!(s[0].1.contains("size mismatch"), "{}", s[0].1);
        assert!(s[1].1.contains("empty mask"), "{}", s[1].1);
        assert!(s[2].1.contains("missing mask"), "{}", s[2].1);
    }
    // The object square is bright: LaFAM should mostly find it.
    assert!(
        reports[0]["mean"]["auc"].as_f64().unwrap() > 0.5,
        "{}",
        reports[0]["mean"]
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("pointing_game") && out.contains(" ± "),
        "{out}"
    );
    let csv_text = fs::read_to_string(&csv).unwrap();
    assert_eq!(csv_text.lines().count(), 1 + 2 * 8, "{csv_text}");

    // Scoring the saved maps against the masks gives the same numbers.
    let json2 = dir.path().join("maps.json");
    let o2 = lafam_gpu(&[
        &"eval",
        &"--maps",
        &saved,
        &"--masks",
        &root.join("masks"),
        &"--top-k",
        &"100",
        &"--json",
        &json2,
    ]);
    let v2: Value = serde_json::from_str(
        &fs::read_to_string(&json2).unwrap_or_else(|e| panic!("{e}\n{}", text(&o2))),
    )
    .unwrap();
    let r2 = v2["reports"].as_array().unwrap();
    for (a, b) in reports.iter().zip(r2) {
        assert_eq!(a["method"], b["method"]);
        assert_eq!(a["images"], b["images"]);
        assert_eq!(a["mean"], b["mean"]);
    }
    // In --maps mode the mismatched and empty masks are skipped again (`nomask` has neither
    // map nor mask there); a mask without a map is reported too.
    let s2: Vec<String> = skipped(&r2[0]).into_iter().map(|(s, _)| s).collect();
    assert_eq!(s2, ["badsize", "empty"]);
    grey_mask(&root.join("masks/extra.png"), 8, 8, &[1; 64]);
    let o3 = lafam_gpu(&[
        &"eval",
        &"--maps",
        &saved,
        &"--masks",
        &root.join("masks"),
        &"--top-k",
        &"100",
    ]);
    assert_eq!(o3.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o3.stderr).contains("skipped: extra (lafam): missing map"),
        "{}",
        text(&o3)
    );
}

#[test]
fn voc_layout_palette_masks_and_void_modes() {
    let dir = tempfile::tempdir().unwrap();
    voc_dataset(dir.path());
    let (o, v) = eval(dir.path(), "voc", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    check_scores(&v, 5);
    assert_eq!(v["method"], "lafam");
    let s = skipped(&v);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0].0, "2008_000001");
    assert!(s[0].1.contains("missing mask"));
    assert_eq!(s[1].0, "2008_000002");
    assert!(
        s[1].1.contains("empty mask"),
        "void only is empty by default"
    );
    // void = object makes the void-only mask non-empty; ignore changes the pixel count.
    let (_, vo) = eval(dir.path(), "voc", &[&"--void", &"object"]);
    assert_eq!(vo["count"], 6);
    let (_, vi) = eval(
        dir.path(),
        "voc",
        &[&"--void", &"ignore", &"--ties", &"index"],
    );
    assert_eq!(vi["count"], 5);
    assert_ne!(vi["mean"]["auc"], v["mean"]["auc"]);
}

#[test]
fn imagenet_s_layout_rgb_ids_limit() {
    let dir = tempfile::tempdir().unwrap();
    imagenet_s_dataset(dir.path());
    let (o, v) = eval(dir.path(), "imagenet-s", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    check_scores(&v, 5);
    let s = skipped(&v);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, "ILSVRC2012_val_00000099");
    assert!(s[0].1.contains("size mismatch"), "{}", s[0].1);
    let (o, v) = eval(dir.path(), "imagenet-s", &[&"--limit", &"3"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    check_scores(&v, 3);
}

#[test]
fn shards_merge_to_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    folder_dataset(&root);
    let (_, all) = eval(&root, "folder", &[&"--method", &"lafam,lrp"]);
    let mut parts = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let (_, v) = eval(
            &root,
            "folder",
            &[&"--method", &"lafam,lrp", &"--shard", &shard],
        );
        let p = dir.path().join(format!("part{i}.json"));
        fs::write(&p, v.to_string()).unwrap();
        let n = v["reports"][0]["count"].as_u64().unwrap()
            + v["reports"][0]["skipped"].as_array().unwrap().len() as u64;
        assert!(n == 2 || n == 3, "8 images over 3 shards");
        parts.push(p);
    }
    let merged = dir.path().join("merged.json");
    let o = lafam_gpu(&[
        &"eval", &"--merge", &parts[0], &parts[1], &parts[2], &"--json", &merged,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let m: Value = serde_json::from_str(&fs::read_to_string(&merged).unwrap()).unwrap();
    assert_eq!(m, all, "merged shards == one run, bit for bit");
    // The same shard twice is refused.
    let o = lafam_gpu(&[
        &"eval", &"--merge", &parts[0], &parts[0], &"--json", &merged,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // Provenance: what the scores depend on, recorded in every report.
    let part0: Value = serde_json::from_str(&fs::read_to_string(&parts[0]).unwrap()).unwrap();
    let r0 = &part0["reports"][0];
    assert_eq!(r0["shard"], "0/3");
    let s = &r0["settings"];
    let bytes = fs::read(weights()).unwrap();
    assert_eq!(s["weights"]["size"], bytes.len() as u64);
    let sha = s["weights"]["sha256"].as_str().unwrap();
    assert!(
        sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "{sha}"
    );
    for (k, want) in [
        ("layer", "layer3"),
        ("upsample", "nearest"),
        ("backend", "cpu"),
        ("ties", "expected"),
        ("dataset", "folder"),
        ("version", env!("CARGO_PKG_VERSION")),
    ] {
        assert_eq!(s[k].as_str(), Some(want), "settings.{k}: {s}");
    }
    assert!(s["arch"].as_str().unwrap().starts_with("ResNet-18"), "{s}");
    assert_eq!(s["size"], 224);
    assert_eq!(s["top_k"], 100);
    assert!(s["rule"].is_string(), "{s}");
    assert!(r0["provenance"]["weights"]
        .as_str()
        .unwrap()
        .ends_with("r18_swav.safetensors"));
    assert!(r0["provenance"]["adapter"].is_string());
    assert_eq!(
        m["reports"][0]["shard"],
        Value::Null,
        "a merged report is whole"
    );

    // Refusals: one error line, exit 2, naming the file(s) and what is wrong.
    let refused = |files: &[&Path], words: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"eval", &"--merge"];
        for f in files {
            args.push(f);
        }
        let o = lafam_gpu(&args);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        for w in words {
            assert!(lines[0].contains(w), "'{w}' not in: {}", lines[0]);
        }
    };
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let (p0, p1, p2) = (parts[0].as_path(), parts[1].as_path(), parts[2].as_path());
    refused(&[p0, p2], &["1/3", "missing"]);
    refused(&[p0, p1, p2, p1], &[&name(p1), "both shard 1/3"]);
    // A part edited to another run's settings, and out-of-range values.
    let edited = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&fs::read_to_string(p1).unwrap()).unwrap();
        f(&mut v);
        let p = dir.path().join("edited.json");
        fs::write(&p, v.to_string()).unwrap();
        p
    };
    let e = edited(&|v| {
        for r in v["reports"].as_array_mut().unwrap() {
            r["settings"]["layer"] = "layer2".into();
            r["settings"]["arch"] = "resnet50".into();
        }
    });
    refused(
        &[p0, &e, p2],
        &["edited.json", &name(p0), "arch", "resnet50"],
    );
    let e = edited(&|v| v["reports"][1]["settings"]["weights"]["sha256"] = "00".into());
    refused(&[p0, &e, p2], &["edited.json", "weights.sha256"]);
    let e = edited(&|v| v["reports"][0]["shard"] = "1/4".into());
    refused(&[p0, &e, p2], &["edited.json", "1/4", "0/3"]);
    for (metric, bad) in [("pointing_game", -3.0), ("auc", 5.0), ("sparseness", 1.5)] {
        let e = edited(&|v| v["reports"][0]["images"][0][metric] = bad.into());
        refused(&[p0, &e, p2], &["edited.json", metric, &format!("{bad}")]);
    }
    let e = edited(&|v| v["reports"][1]["mean"]["pointing_game"] = (-3.0).into());
    refused(&[p0, &e, p2], &["edited.json", "mean pointing_game", "-3"]);
    // Untouched parts still merge.
    let o = lafam_gpu(&[&"eval", &"--merge", &p2, &p0, &p1, &"--json", &merged]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let again: Value = serde_json::from_str(&fs::read_to_string(&merged).unwrap()).unwrap();
    assert_eq!(again, all);
}

#[test]
fn run_shard_splits_sorted_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    folder_dataset(&root);
    let mut seen = Vec::new();
    for i in 0..2 {
        let out = dir.path().join(format!("out{i}"));
        let shard = format!("{i}/2");
        let o = lafam_gpu(&[
            &"run",
            &"--weights",
            &weights(),
            &"--backend",
            &"cpu",
            &"--layer",
            &"layer3",
            &"--shard",
            &shard,
            &"--out",
            &out,
            &root.join("images"),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let mut names: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".lafam.npy"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 4, "{names:?}");
        seen.extend(names);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 8);
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--shard",
        &"2/2",
        &root.join("images"),
    ]);
    assert_eq!(o.status.code(), Some(2), "bad shard is a usage error");
}

/// An image the network cannot take (1x4000: 224x896000 after `--size 224`) in a dataset is
/// one skipped entry naming the limit; the other images are still scored, on both backends.
#[test]
fn dataset_image_over_the_size_limit_is_skipped_and_the_rest_scored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    folder_dataset(&root);
    save(
        &RgbImage::from_fn(4000, 1, |x, _| image::Rgb([(x % 256) as u8, 7, 9])),
        &root.join("images/thin.png"),
    );
    grey_mask(&root.join("masks/thin.png"), 4000, 1, &labels(4000, 1, 1, 255));
    for backend in ["cpu", "gpu"] {
        let json = dir.path().join(format!("{backend}.json"));
        let o = lafam_gpu(&[
            &"eval",
            &"--weights",
            &weights(),
            &"--dataset",
            &"folder",
            &"--root",
            &root,
            &"--backend",
            &backend,
            &"--method",
            &"lafam-max",
            &"--top-k",
            &"100",
            &"--json",
            &json,
        ]);
        let v: Value = serde_json::from_str(
            &fs::read_to_string(&json).unwrap_or_else(|e| panic!("{e}\n{}", text(&o))),
        )
        .unwrap();
        assert_eq!(o.status.code(), Some(1), "{backend}: {}", text(&o));
        check_scores(&v, 5);
        assert_eq!(v["method"], "lafam-max", "{backend}");
        let s = skipped(&v);
        let thin = s.iter().find(|(stem, _)| stem == "thin").unwrap_or_else(|| panic!("{s:?}"));
        assert!(thin.1.contains("896000") && thin.1.contains("8192"), "{}", thin.1);
    }
}
