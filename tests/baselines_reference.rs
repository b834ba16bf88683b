//! The baseline methods against their Python references (tests/fixtures/gen_baselines.py):
//! Grad-CAM and EigenCAM against pytorch-grad-cam 1.5.x on r50_tv (float64, stored F16
//! weights) at layer3 and layer4; RELAX against a float64 torch implementation, with the same
//! masks (lafam-gpu's generator reimplemented in Python) and with torch's own RNG. Both
//! backends; the GPU tests FAIL when there is no adapter.

mod common;

use common::{gpu, read_rgb};
use lafam_gpu::backend::CamBackend;
use lafam_gpu::cpu::Cpu;
use lafam_gpu::explain::relax::{host_masks, RelaxConfig};
use lafam_gpu::explain::{Engine, ImageBatch, Method, Request};
use lafam_gpu::model::{load_weights, Stage};
use lafam_gpu::tensor::max_rel_err;
use lafam_gpu::Backend;
use std::path::PathBuf;

/// Max abs error on the normalised CAMs (the bound).
const CAM_TOL: f64 = 1e-3;
/// RELAX with identical masks.
const RELAX_TOL: f64 = 1e-4;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/baselines")
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

fn npy(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().iter().map(|&d| d as usize).collect();
    (shape, f.into_vec::<f32>().unwrap())
}

fn explainer<B: CamBackend>(b: B, model: &str) -> Engine<B> {
    let w = load_weights(&common::fixtures().join(format!("{model}.safetensors"))).unwrap();
    Engine::new(b, &w.net).unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}

fn check_cams<B: CamBackend>(b: B, label: &str) {
    let m = manifest();
    let mut ex = explainer(b, "r50_tv");
    let mut worst = (0f64, 0f64);
    for (kind, cases) in [("gradcam", &m["gradcam"]), ("eigencam", &m["eigencam"])] {
        for case in cases.as_array().unwrap() {
            let image = case["image"].as_str().unwrap();
            let stage: Stage = case["layer"].as_str().unwrap().parse().unwrap();
            let (rgb, h, w) = read_rgb(&format!("{image}.png"));
            let batch = ImageBatch::new(&rgb, 1, h, w).unwrap();
            let req = Request {
                methods: vec![kind.parse().unwrap()],
                stage,
                class: case["class"].as_u64().map(|c| c as usize),
                ..Request::default()
            };
            let mut maps = ex.explain(batch, &req, &[(h, w)]).unwrap().remove(0);
            if kind == "gradcam" {
                assert_eq!(
                    maps.targets,
                    vec![case["target"].as_u64().unwrap() as usize],
                    "{label} {image} {stage}: target class"
                );
            }
            let got = &maps.maps.remove(0);
            let (shape, want) = npy(case["map"].as_str().unwrap());
            assert_eq!(shape, vec![h, w]);
            let err = max_abs(&got.data, &want);
            eprintln!(
                "{label} {kind} {image} {stage} class {:?}: max abs err {err:.2e}",
                req.class
            );
            assert!(
                err <= CAM_TOL,
                "{label} {kind} {image} {stage}: max abs err {err:e}"
            );
            if kind == "gradcam" {
                worst.0 = worst.0.max(err);
            } else {
                worst.1 = worst.1.max(err);
                if case["pytorch_grad_cam_sign_agrees"].as_bool().unwrap() {
                    let (_, pgc) = npy(case["pytorch_grad_cam_map"].as_str().unwrap());
                    assert!(
                        max_abs(&got.data, &pgc) <= CAM_TOL,
                        "{label} {image} {stage}"
                    );
                }
            }
        }
    }
    eprintln!(
        "{label}: worst max abs err gradcam {:.2e}, eigencam {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn cams_match_pytorch_grad_cam_cpu() {
    check_cams(Cpu::new(), "cpu");
}

#[test]
fn cams_match_pytorch_grad_cam_gpu() {
    check_cams(gpu(), "gpu");
}

fn check_relax_same_masks<B: CamBackend>(b: B, label: &str) {
    let m = manifest();
    let case = &m["relax"]["same_masks"];
    let mut ex = explainer(b, case["model"].as_str().unwrap());
    let (rgb, h, w) = read_rgb(&format!("{}.png", case["image"].as_str().unwrap()));
    let seed = case["seed"].as_u64().unwrap();
    // The masks themselves: host generator, backend kernel and Python agree.
    let (shape, want) = npy(case["exported_masks"].as_str().unwrap());
    let count = shape[0];
    let dev = ex.backend.relax_masks(seed, 0, count, h, w).unwrap();
    let dev = ex.backend.download(&dev).unwrap();
    let host = host_masks(seed, 0, count, h, w);
    let e_dev = max_abs(&dev.data, &want);
    let e_host = max_abs(&host.data, &want);
    assert!(
        e_dev <= 1e-5 && e_host <= 1e-5,
        "{label}: masks {e_dev:e} {e_host:e}"
    );
    let (_, imp) = npy(case["importance"].as_str().unwrap());
    let (_, unc) = npy(case["uncertainty"].as_str().unwrap());
    let x = ex.backend.preprocess(&rgb, 1, h, w).unwrap();
    // Batches that divide the count and one that does not: same result.
    for batch in [16, 10] {
        let cfg = RelaxConfig {
            masks: case["masks"].as_u64().unwrap() as usize,
            batch,
            seed,
        };
        let r = ex.relax_one(&x, &cfg).unwrap();
        let ei = max_rel_err(&r.importance.data, &imp);
        let eu = max_rel_err(&r.uncertainty.data, &unc);
        eprintln!("{label} RELAX same masks, batch {batch}: importance rel err {ei:.2e}, uncertainty rel err {eu:.2e} (masks {e_dev:.1e})");
        assert!(ei <= RELAX_TOL, "{label}: importance rel err {ei:e}");
        assert!(eu <= RELAX_TOL, "{label}: uncertainty rel err {eu:e}");
    }
}

#[test]
fn relax_matches_reference_with_same_masks_cpu() {
    check_relax_same_masks(Cpu::new(), "cpu");
}

#[test]
fn relax_matches_reference_with_same_masks_gpu() {
    check_relax_same_masks(gpu(), "gpu");
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}

/// lafam-gpu's own mask generator against torch's RNG, 3000 masks each: the importance maps
/// are two Monte Carlo estimates of the same quantity. On the CPU backend (3000 forward passes
/// are slow on lavapipe); the GPU computes the same masks and sums (tests above).
#[test]
fn relax_own_rng_correlates_with_reference_rng_cpu() {
    let m = manifest();
    let case = &m["relax"]["torch_rng"];
    let mut ex = explainer(Cpu::new(), case["model"].as_str().unwrap());
    let (rgb, h, w) = read_rgb(&format!("{}.png", case["image"].as_str().unwrap()));
    let cfg = RelaxConfig {
        masks: case["masks"].as_u64().unwrap() as usize,
        batch: 100,
        seed: 0,
    };
    let batch = ImageBatch::new(&rgb, 1, h, w).unwrap();
    let req = Request {
        methods: vec![Method::Relax],
        relax: cfg,
        ..Request::default()
    };
    let out = ex.explain(batch, &req, &[(h, w)]).unwrap();
    let (imp, unc) = (&out[0].maps[0], &out[1].maps[0]);
    let (_, want_imp) = npy(case["importance"].as_str().unwrap());
    let (_, want_unc) = npy(case["uncertainty"].as_str().unwrap());
    let ci = pearson(&imp.data, &want_imp);
    let cu = pearson(&unc.data, &want_unc);
    eprintln!(
        "RELAX own RNG vs torch RNG, {} masks: importance corr {ci:.4}, uncertainty corr {cu:.4}",
        cfg.masks
    );
    assert!(ci > 0.95, "importance correlation {ci}");
}

#[test]
fn relax_is_deterministic_per_seed_gpu() {
    let mut ex = explainer(gpu(), "r18_swav");
    let (rgb, h, w) = read_rgb("img_48x80.png");
    let x = ex.backend.preprocess(&rgb, 1, h, w).unwrap();
    let cfg = RelaxConfig {
        masks: 24,
        batch: 8,
        seed: 11,
    };
    let a = ex.relax_one(&x, &cfg).unwrap();
    let b = ex.relax_one(&x, &cfg).unwrap();
    assert_eq!(a.importance.data, b.importance.data);
    assert_eq!(a.uncertainty.data, b.uncertainty.data);
    let c = ex.relax_one(&x, &RelaxConfig { seed: 12, ..cfg }).unwrap();
    assert_ne!(a.importance.data, c.importance.data);
}

#[test]
fn gradcam_without_classifier_is_one_clear_error() {
    let mut ex = explainer(Cpu::new(), "r18_swav");
    let (rgb, h, w) = read_rgb("img_64x64.png");
    let batch = ImageBatch::new(&rgb, 1, h, w).unwrap();
    let err = ex
        .explain(batch, &Request::new(&[Method::Gradcam]), &[(h, w)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Grad-CAM needs a classifier"), "{err}");
    for m in ["lafam", "lrp", "eigencam", "relax"] {
        assert!(err.contains(m), "{err}");
    }
}

#[test]
fn gradcam_class_out_of_range_is_an_error() {
    let mut ex = explainer(Cpu::new(), "r50_tv");
    let (rgb, h, w) = read_rgb("img_64x64.png");
    let batch = ImageBatch::new(&rgb, 1, h, w).unwrap();
    let req = Request {
        class: Some(10),
        ..Request::new(&[Method::Gradcam])
    };
    let err = ex.explain(batch, &req, &[(h, w)]).unwrap_err().to_string();
    assert!(err.contains("--class 10 is out of range"), "{err}");
}
