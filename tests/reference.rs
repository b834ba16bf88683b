//! End-to-end reference tests against PyTorch: stage activations and LaFAM maps of narrow
//! ResNet-18/50 checkpoints (SwAV, torchvision and MoCo key layouts; F32/F16/BF16) computed by
//! torchvision in float64 (tests/fixtures/gen_reference.py). Both backends must match.

mod common;

use common::{fixtures, manifest, read_npy, read_rgb};
use lafam_gpu::explain::{ImageBatch, Method};
use lafam_gpu::model::{load_weights, Stage};
use lafam_gpu::tensor::max_rel_err;
use lafam_gpu::backend::CamBackend;
use lafam_gpu::Upsample;

/// Relative error bound for f32 kernels against the float64 reference.
const TOL: f64 = 1e-4;

fn check_all_cases<B: CamBackend>(mut make: impl FnMut() -> B) {
    let m = manifest();
    let mut checked = 0;
    let mut worst = 0f64;
    let mut worst_max = 0f64;
    let lafam_max = lafam_max_manifest();
    let lafam_max = lafam_max["cases"].as_array().unwrap();
    for (model_name, model) in m["models"].as_object().unwrap() {
        let weights = load_weights(&fixtures().join(model["file"].as_str().unwrap())).unwrap();
        let mut ex = lafam_gpu::explain::Engine::new(make(), &weights.net).unwrap();
        for (image_name, image) in m["images"].as_object().unwrap() {
            let cases: Vec<_> = m["cases"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["model"] == model_name.as_str() && c["image"] == image_name.as_str())
                .collect();
            if cases.is_empty() {
                continue;
            }
            let (rgb, h, w) = read_rgb(image["file"].as_str().unwrap());
            let batch = ImageBatch::new(&rgb, 1, h, w).unwrap();
            let acts = ex.stage_activations(batch, Stage::Layer4).unwrap();
            for case in cases {
                let stage: Stage = case["layer"].as_str().unwrap().parse().unwrap();
                let label = format!("{model_name}/{image_name}/{stage}");
                let (shape, want) = read_npy(case["activation"].as_str().unwrap());
                let got = &acts[stage.index()];
                assert_eq!(
                    [got.shape.n, got.shape.h, got.shape.w, got.shape.c].to_vec(),
                    shape,
                    "{label}"
                );
                let err = max_rel_err(&got.data, &want);
                assert!(err <= TOL, "{label}: activation rel err {err:e}");
                worst = worst.max(err);
                // Min-max normalisation amplifies the activations' error by
                // max|L| / (max L - min L) of the channel mean L: the maps' bound is scaled by it.
                let c = shape[3];
                let mean: Vec<f64> = want
                    .chunks(c)
                    .map(|px| px.iter().map(|&v| v as f64).sum::<f64>() / c as f64)
                    .collect();
                let (lo, hi) = mean
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let map_tol = TOL * (hi.abs().max(lo.abs()) / (hi - lo)).max(1.0);
                for (mode, key) in [
                    (Upsample::Nearest, "lafam_nearest"),
                    (Upsample::Bilinear, "lafam_bilinear"),
                ] {
                    let (_, want) = read_npy(case[key].as_str().unwrap());
                    let map = ex
                        .explain_method(batch, Method::Lafam, stage, mode, &[(h, w)])
                        .unwrap()
                        .remove(0);
                    assert_eq!(
                        (map.shape.h, map.shape.w, map.shape.c),
                        (h, w, 1),
                        "{label} {key}"
                    );
                    let err = max_rel_err(&map.data, &want);
                    assert!(
                        err <= map_tol,
                        "{label} {key}: rel err {err:e} (bound {map_tol:e})"
                    );
                    worst = worst.max(err);
                }
                // LaFAM-max (tests/fixtures/gen_lafam_max.py): the same bound, scaled by the
                // channel max's range instead of the mean's.
                let mx = lafam_max
                    .iter()
                    .find(|c| c["model"] == case["model"] && c["image"] == case["image"] && c["layer"] == case["layer"])
                    .unwrap_or_else(|| panic!("{label}: no lafam-max case"));
                let max_tol = TOL
                    * (mx["max_abs"].as_f64().unwrap() / mx["range"].as_f64().unwrap()).max(1.0);
                for (mode, key) in [
                    (Upsample::Nearest, "lafam_max_nearest"),
                    (Upsample::Bilinear, "lafam_max_bilinear"),
                ] {
                    let want = read_lafam_max(mx[key].as_str().unwrap());
                    let map = ex
                        .explain_method(batch, Method::LafamMax, stage, mode, &[(h, w)])
                        .unwrap()
                        .remove(0);
                    assert_eq!((map.shape.h, map.shape.w), (h, w), "{label} {key}");
                    let err = max_rel_err(&map.data, &want);
                    assert!(
                        err <= max_tol,
                        "{label} {key}: rel err {err:e} (bound {max_tol:e})"
                    );
                    worst_max = worst_max.max(err);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        m["cases"].as_array().unwrap().len(),
        "every fixture case checked"
    );
    eprintln!(
        "{checked} reference cases, worst rel err {worst:e}; lafam-max worst rel err {worst_max:e}"
    );
}

fn lafam_max_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lafam_max")
}

fn lafam_max_manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(lafam_max_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read_lafam_max(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(lafam_max_dir().join(name)).unwrap();
    npyz::NpyFile::new(&bytes[..]).unwrap().into_vec::<f32>().unwrap()
}

fn check_batch_case<B: CamBackend>(backend: B) {
    let m = manifest();
    let case = &m["batch_cases"][0];
    let model = &m["models"][case["model"].as_str().unwrap()];
    let weights = load_weights(&fixtures().join(model["file"].as_str().unwrap())).unwrap();
    let mut ex = lafam_gpu::explain::Engine::new(backend, &weights.net).unwrap();
    let mut rgb = Vec::new();
    let (mut h, mut w) = (0, 0);
    for name in case["images"].as_array().unwrap() {
        let (bytes, ih, iw) = read_rgb(
            m["images"][name.as_str().unwrap()]["file"]
                .as_str()
                .unwrap(),
        );
        rgb.extend(bytes);
        (h, w) = (ih, iw);
    }
    let stage: Stage = case["layer"].as_str().unwrap().parse().unwrap();
    let acts = ex
        .stage_activations(ImageBatch::new(&rgb, 2, h, w).unwrap(), stage)
        .unwrap();
    let (shape, want) = read_npy(case["activation"].as_str().unwrap());
    let got = &acts[stage.index()];
    assert_eq!(
        vec![got.shape.n, got.shape.h, got.shape.w, got.shape.c],
        shape
    );
    let err = max_rel_err(&got.data, &want);
    assert!(err <= TOL, "batch of 2: rel err {err:e}");
}

#[test]
fn cpu_matches_pytorch() {
    check_all_cases(lafam_gpu::cpu::Cpu::new);
}

#[test]
fn cpu_batch_matches_pytorch() {
    check_batch_case(lafam_gpu::cpu::Cpu::new());
}

#[test]
fn gpu_matches_pytorch() {
    check_all_cases(common::gpu);
}

#[test]
fn gpu_batch_matches_pytorch() {
    check_batch_case(common::gpu());
}
