//! End-to-end reference tests against PyTorch: stage activations and LaFAM maps of narrow
//! ResNet-18/50 checkpoints (SwAV, torchvision and MoCo key layouts; F32/F16/BF16) computed by
//! torchvision in float64 (tests/fixtures/gen_reference.py). Both backends must match.

mod common;

use common::{fixtures, manifest, read_npy, read_rgb};
use lafam_gpu::explain::lafam::ImageBatch;
use lafam_gpu::model::{load_weights, Stage};
use lafam_gpu::tensor::max_rel_err;
use lafam_gpu::{Backend, Upsample};

/// Relative error bound for f32 kernels against the float64 reference.
const TOL: f64 = 1e-4;

fn check_all_cases<B: Backend>(mut make: impl FnMut() -> B) {
    let m = manifest();
    let mut checked = 0;
    let mut worst = 0f64;
    for (model_name, model) in m["models"].as_object().unwrap() {
        let weights = load_weights(&fixtures().join(model["file"].as_str().unwrap())).unwrap();
        let mut ex = lafam_gpu::explain::Explainer::new(make(), &weights.net).unwrap();
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
                    let map = ex.lafam(batch, stage, mode, &[(h, w)]).unwrap().remove(0);
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
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        m["cases"].as_array().unwrap().len(),
        "every fixture case checked"
    );
    eprintln!("{checked} reference cases, worst rel err {worst:e}");
}

fn check_batch_case<B: Backend>(backend: B) {
    let m = manifest();
    let case = &m["batch_cases"][0];
    let model = &m["models"][case["model"].as_str().unwrap()];
    let weights = load_weights(&fixtures().join(model["file"].as_str().unwrap())).unwrap();
    let mut ex = lafam_gpu::explain::Explainer::new(backend, &weights.net).unwrap();
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
