//! `lafam-gpu eval --faithfulness` end to end through the binary on the CPU backend with the
//! ResNet-18 fixture (no classifier): per-image values and curves in JSON and CSV, an image
//! without a mask scored for faithfulness only, a broken image skipped with exit 1,
//! `--shard` + `--merge` equal to one run, and the usage errors.

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

fn mask(w: u32, h: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let inside = x >= w / 4 && x < w * 3 / 4 && y >= h / 4 && y < h * 3 / 4;
        image::Luma([inside as u8])
    })
}

/// img0, img1 with masks, nomask without, broken (not an image).
fn dataset(root: &Path) {
    fs::create_dir_all(root.join("images")).unwrap();
    fs::create_dir_all(root.join("masks")).unwrap();
    for (i, (w, h)) in [(40u32, 32u32), (32, 32)].into_iter().enumerate() {
        picture(w, h, i as u32)
            .save(root.join(format!("images/img{i}.png")))
            .unwrap();
        mask(w, h)
            .save(root.join(format!("masks/img{i}.png")))
            .unwrap();
    }
    picture(32, 40, 7)
        .save(root.join("images/nomask.png"))
        .unwrap();
    fs::write(root.join("images/broken.png"), b"not a png").unwrap();
}

const FAST: [&str; 12] = [
    "--faithfulness",
    "pixel-flipping,region-perturbation,faithfulness-correlation,road",
    "--pf-step",
    "96",
    "--rp-regions",
    "5",
    "--fc-runs",
    "6",
    "--fc-subset",
    "50",
    "--perturb-batch",
    "7",
];

fn eval(root: &Path, extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let w = weights();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"eval",
        &"--weights",
        &w,
        &"--dataset",
        &"folder",
        &"--root",
        &root,
        &"--backend",
        &"cpu",
        &"--size",
        &"32",
        &"--layer",
        &"layer3",
        &"--method",
        &"lafam,eigencam",
    ];
    for a in &FAST {
        args.push(a);
    }
    args.extend_from_slice(extra);
    lafam_gpu(&args)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn faithfulness_json_csv_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    dataset(&root);
    let (j, c) = (dir.path().join("out.json"), dir.path().join("out.csv"));
    let plots = dir.path().join("plots");
    let o = eval(&root, &[&"--json", &j, &"--csv", &c, &"--plot", &plots]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the broken image: exit 1\n{}",
        text(&o)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("broken.png"), "{}", text(&o));
    assert!(err.contains("perturbed forward passes"), "{}", text(&o));
    let v = json(&j);
    let reports = v["reports"].as_array().expect("two methods");
    assert_eq!(reports.len(), 2);
    for r in reports {
        let images = r["images"].as_array().unwrap();
        let stems: Vec<&str> = images.iter().map(|i| i["stem"].as_str().unwrap()).collect();
        assert_eq!(stems, ["img0", "img1", "nomask"], "{r}");
        let skipped: Vec<&str> = r["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["stem"].as_str().unwrap())
            .collect();
        assert_eq!(skipped, ["broken"]);
        for i in images {
            let f = &i["faithfulness"];
            for k in [
                "pixel_flipping_auc",
                "region_perturbation_aopc",
                "road_morf",
                "road_lerf",
            ] {
                assert!(f[k].as_f64().unwrap().is_finite(), "{k} in {i}");
            }
            let r = f["faithfulness_correlation"].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&r));
            let curves = &i["curves"];
            let h = 32usize;
            let w = if i["stem"] == "img0" { 40 } else { 32 };
            let (h, w) = if i["stem"] == "nomask" {
                (40, 32)
            } else {
                (h, w)
            };
            assert_eq!(
                curves["pixel_flipping"].as_array().unwrap().len(),
                (3 * h * w).div_ceil(96)
            );
            assert_eq!(curves["region_perturbation"].as_array().unwrap().len(), 5);
            assert_eq!(curves["road_morf"].as_array().unwrap().len(), 50);
            assert_eq!(curves["road_lerf"].as_array().unwrap().len(), 50);
            // Embedding similarity of an image with itself is 1; perturbed ones are <= 1.
            for p in curves["road_morf"].as_array().unwrap() {
                assert!(p.as_f64().unwrap() <= 1.0 + 1e-6);
            }
            // Localisation where there is a mask, none without.
            let has_mask = i["stem"] != "nomask";
            assert_eq!(i["pointing_game"].is_null(), !has_mask, "{i}");
        }
        assert_eq!(r["faithfulness"]["n"]["road_morf"], 3);
        assert_eq!(
            r["faithfulness"]["mean_curves"]["region_perturbation"]
                .as_array()
                .unwrap()
                .len(),
            5
        );
        assert_eq!(r["settings"]["faithfulness"]["score"], "embedding");
    }
    let csv = fs::read_to_string(&c).unwrap();
    let head = csv.lines().next().unwrap();
    assert!(
        head.ends_with(
            "sparseness,faithfulness_correlation,pixel_flipping_auc,region_perturbation_aopc,\
             road_lerf,road_morf,skipped"
        ),
        "{head}"
    );
    assert_eq!(csv.lines().count(), 1 + 2 * 4);
    // One plot per curve kind, with lines in more than two colours (methods) besides text.
    for name in ["pixel_flipping", "region_perturbation", "road"] {
        let img = image::open(plots.join(format!("{name}.png")))
            .unwrap_or_else(|e| panic!("{name}.png: {e}"))
            .to_rgb8();
        assert_eq!(img.dimensions(), (800, 520));
        let coloured = img
            .pixels()
            .filter(|p| {
                let (mx, mn) = (p.0.iter().max().unwrap(), p.0.iter().min().unwrap());
                mx - mn > 100
            })
            .count();
        assert!(coloured > 500, "{name}.png has {coloured} coloured pixels");
    }
}

#[test]
fn faithfulness_shards_merge_to_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    dataset(&root);
    fs::remove_file(root.join("images/broken.png")).unwrap();
    let one = dir.path().join("one.json");
    let o = eval(&root, &[&"--no-localisation", &"--json", &one]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let mut parts = Vec::new();
    for i in 0..2 {
        let p = dir.path().join(format!("p{i}.json"));
        let shard = format!("{i}/2");
        let o = eval(
            &root,
            &[&"--no-localisation", &"--shard", &shard, &"--json", &p],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        parts.push(p);
    }
    let merged = dir.path().join("merged.json");
    let o = lafam_gpu(&[
        &"eval", &"--merge", &parts[0], &parts[1], &"--json", &merged,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let (a, b) = (json(&one), json(&merged));
    let by_method = |v: &Value| {
        let mut r = v["reports"].as_array().unwrap().clone();
        r.sort_by_key(|r| r["method"].as_str().unwrap().to_string());
        r
    };
    let (a, b) = (by_method(&a), by_method(&b));
    assert_eq!(a.len(), 2);
    for (ra, rb) in a.iter().zip(&b) {
        assert_eq!(ra["method"], rb["method"]);
        assert!(
            ra["images"] == rb["images"],
            "{} images differ",
            ra["method"]
        );
        assert!(
            ra["faithfulness"] == rb["faithfulness"],
            "{} summaries differ",
            ra["method"]
        );
        // No localisation at all: no masks were read.
        assert!(ra["images"][0]["pointing_game"].is_null());
    }
}

#[test]
fn faithfulness_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    dataset(&root);
    let o = eval(&root, &[&"--score", &"logit"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--score logit needs a classifier"),
        "{}",
        text(&o)
    );
    let o = eval(&root, &[&"--road-noise", &"nan"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--road-noise must be"),
        "{}",
        text(&o)
    );
    let o = lafam_gpu(&[
        &"eval",
        &"--maps",
        &root,
        &"--masks",
        &root,
        &"--faithfulness",
        &"road",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--faithfulness needs --weights"),
        "{}",
        text(&o)
    );
}

/// MPRT: one curve point per conv from layer3 down to the stem (ResNet-18: 6 blocks x 2
/// convs + 2 downsamples + stem = 15), values in [-1, 1], reproducible whatever the batching,
/// and the network restored after each chunk (the other metrics of later chunks unchanged).
#[test]
fn mprt_cascade_is_reproducible_and_restores_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    dataset(&root);
    fs::remove_file(root.join("images/broken.png")).unwrap();
    let run = |metrics: &str, batch: &str, out: &Path| {
        let w = weights();
        let o = lafam_gpu(&[
            &"eval",
            &"--weights",
            &w,
            &"--dataset",
            &"folder",
            &"--root",
            &root,
            &"--backend",
            &"cpu",
            &"--size",
            &"32",
            &"--layer",
            &"layer3",
            &"--method",
            &"lafam,lrp",
            &"--no-localisation",
            &"--batch",
            &batch,
            &"--faithfulness",
            &metrics,
            &"--rp-regions",
            &"4",
            &"--json",
            &out,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let mut r = json(out)["reports"].as_array().unwrap().clone();
        r.sort_by_key(|r| r["method"].as_str().unwrap().to_string());
        r
    };
    let both = run(
        "region-perturbation,mprt",
        "1",
        &dir.path().join("both.json"),
    );
    let rp = run("region-perturbation", "16", &dir.path().join("rp.json"));
    let mprt = run("mprt", "16", &dir.path().join("mprt.json"));
    for ((b, r), m) in both.iter().zip(&rp).zip(&mprt) {
        for (i, img) in b["images"].as_array().unwrap().iter().enumerate() {
            let f = &img["faithfulness"];
            assert_eq!(
                f["region_perturbation_aopc"],
                r["images"][i]["faithfulness"]["region_perturbation_aopc"],
                "{}: the network was not restored",
                b["method"]
            );
            for k in ["mprt_spearman", "mprt_ssim"] {
                let c = img["curves"][k].as_array().unwrap();
                assert_eq!(c.len(), 15, "{k}");
                assert!(c
                    .iter()
                    .all(|v| (-1.0..=1.0 + 1e-9).contains(&v.as_f64().unwrap())));
                assert_eq!(
                    img["curves"][k], m["images"][i]["curves"][k],
                    "{k} reproducible"
                );
            }
            assert_eq!(
                f["mprt_spearman_last"], img["curves"]["mprt_spearman"][14],
                "last = fully randomised"
            );
        }
    }
}

/// Random Logit: a value for Grad-CAM only (the class-dependent map), in [-1, 1],
/// reproducible, and the target class restored for the next images' maps.
#[test]
fn random_logit_for_gradcam() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ds");
    dataset(&root);
    fs::remove_file(root.join("images/broken.png")).unwrap();
    let tv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/r50_tv.safetensors");
    let run = |metrics: &str, out: &Path| {
        let o = lafam_gpu(&[
            &"eval",
            &"--weights",
            &tv,
            &"--dataset",
            &"folder",
            &"--root",
            &root,
            &"--backend",
            &"cpu",
            &"--size",
            &"32",
            &"--method",
            &"lafam,gradcam",
            &"--no-localisation",
            &"--batch",
            &"1",
            &"--faithfulness",
            &metrics,
            &"--rp-regions",
            &"3",
            &"--json",
            &out,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let mut r = json(out)["reports"].as_array().unwrap().clone();
        r.sort_by_key(|r| r["method"].as_str().unwrap().to_string());
        r
    };
    let a = run(
        "random-logit,region-perturbation",
        &dir.path().join("a.json"),
    );
    let b = run(
        "random-logit,region-perturbation",
        &dir.path().join("b.json"),
    );
    let rp = run("region-perturbation", &dir.path().join("rp.json"));
    assert_eq!(a, b, "reproducible");
    let (eigen_or_grad, lafam) = (&a[0], &a[1]);
    assert_eq!(eigen_or_grad["method"], "gradcam");
    let mut defined = 0;
    for (i, img) in eigen_or_grad["images"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        // Undefined (left out) where both maps are constant: a random network's Grad-CAM
        // can be all zero.
        if let Some(v) = img["faithfulness"]["random_logit_ssim"].as_f64() {
            assert!((-1.0..=1.0).contains(&v), "{v}");
            defined += 1;
        }
        assert_eq!(
            img["faithfulness"]["region_perturbation_aopc"],
            rp[0]["images"][i]["faithfulness"]["region_perturbation_aopc"],
            "Grad-CAM's class was not restored"
        );
    }
    assert!(defined > 0, "no Random Logit value at all");
    for img in lafam["images"].as_array().unwrap() {
        assert!(img["faithfulness"]["random_logit_ssim"].is_null());
    }
}
