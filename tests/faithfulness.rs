//! Faithfulness metrics against Quantus 0.6.0 (tests/fixtures/gen_faithfulness.py): every
//! curve point and value within 1e-4 relative, with lafam-gpu's score on the CPU backend and
//! on the GPU (lavapipe in CI), replaying the random draws Quantus made.

mod common;

use common::gpu;
use lafam_gpu::backend::CamBackend;
use lafam_gpu::cpu::Cpu;
use lafam_gpu::eval::faithfulness::{
    faithfulness_correlation, noisy_linear_imputation, pixel_flipping, region_perturbation, road,
    Baseline, Draws, FaithfulnessCorrelation, Order, PixelFlipping, RegionPerturbation, Road,
    Scorer,
};
use lafam_gpu::explain::score::ScoreKind;
use lafam_gpu::explain::Engine;
use lafam_gpu::model::{load_weights, Stage};
use serde_json::Value;
use std::collections::VecDeque;
use std::path::PathBuf;

const TOL: f64 = 1e-4;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/faithfulness")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

fn npy64(name: &str) -> Vec<f64> {
    let bytes = std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<f64>()
        .unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Quantus' recorded draws, replayed; every one must be used.
struct Replay {
    uniform: VecDeque<f64>,
    choice: VecDeque<Vec<usize>>,
    normal: VecDeque<f64>,
}

impl Replay {
    fn of(case: &Value) -> Self {
        let d = &case["draws"];
        Replay {
            uniform: floats(&d["uniform"]).into(),
            choice: d["choice"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    c.as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_u64().unwrap() as usize)
                        .collect()
                })
                .collect(),
            normal: match d.get("normal").and_then(Value::as_str) {
                Some(f) => npy64(f).into(),
                None => VecDeque::new(),
            },
        }
    }
    fn assert_used(&self, name: &str) {
        assert!(
            self.uniform.is_empty() && self.choice.is_empty() && self.normal.is_empty(),
            "{name}: unused draws (uniform {}, choice {}, normal {})",
            self.uniform.len(),
            self.choice.len(),
            self.normal.len()
        );
    }
}

impl Draws for Replay {
    fn uniform(&mut self) -> f64 {
        self.uniform.pop_front().expect("a recorded uniform draw")
    }
    fn choice(&mut self, _n: usize, k: usize) -> Vec<usize> {
        let c = self.choice.pop_front().expect("a recorded subset");
        assert_eq!(c.len(), k);
        c
    }
    fn normal(&mut self, k: usize) -> Vec<f64> {
        assert!(self.normal.len() >= k, "too few recorded normal draws");
        self.normal.drain(..k).collect()
    }
}

/// max|a - b| / max|b|.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    assert!(num.is_finite());
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

fn baseline(p: &Value) -> Baseline {
    match p["baseline"].as_str().unwrap() {
        "black" => Baseline::Black,
        "mean" => Baseline::Mean,
        "uniform" => Baseline::Uniform,
        b => panic!("baseline {b}"),
    }
}

fn check<B: CamBackend>(b: B, label: &str) {
    let m = manifest();
    let w = load_weights(&common::fixtures().join("r50_tv.safetensors")).unwrap();
    let mut engine = Engine::new(b, &w.net).unwrap();
    let x = npy64("x.npy");
    let map = npy64("map.npy");
    let s = m["size"].as_u64().unwrap() as usize;
    let hw = (s, s);
    let stage: Stage = m["stage"].as_str().unwrap().parse().unwrap();
    let mut checked = 0;
    for case in m["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let kind = match case["score"].as_str().unwrap() {
            "embedding" => ScoreKind::Embedding,
            "stage" => ScoreKind::Stage,
            "logit" => ScoreKind::Logit,
            k => panic!("score {k}"),
        };
        let score = engine.score_for(kind, &x, hw, stage, None).unwrap();
        if kind == ScoreKind::Logit {
            let want = m["classes"]["logit"].as_u64().unwrap() as usize;
            assert_eq!(
                score,
                lafam_gpu::explain::score::Score::Logit { class: want },
                "{label} {name}: target class"
            );
        }
        let mut scorer = Scorer::new(16, |imgs: &[Vec<f64>]| {
            engine.score_images(imgs, hw, &score)
        });
        let mut draws = Replay::of(case);
        let p = &case["params"];
        let err = match case["metric"].as_str().unwrap() {
            "pixel-flipping" => {
                let opts = PixelFlipping {
                    features_in_step: p["features_in_step"].as_u64().unwrap() as usize,
                    baseline: baseline(p),
                };
                let c = pixel_flipping(&x, &map, hw, &opts, &mut draws, &mut scorer).unwrap();
                let want = floats(&case["curve"]);
                assert_eq!(scorer.passes, want.len());
                rel(&c.points, &want).max(rel(&[c.auc], &[case["auc"].as_f64().unwrap()]))
            }
            "region-perturbation" => {
                let opts = RegionPerturbation {
                    patch_size: p["patch_size"].as_u64().unwrap() as usize,
                    regions: p["regions"].as_u64().unwrap() as usize,
                    order: match p["order"].as_str().unwrap() {
                        "morf" => Order::Morf,
                        _ => Order::Lerf,
                    },
                    baseline: baseline(p),
                };
                let c = region_perturbation(&x, &map, hw, &opts, &mut draws, &mut scorer).unwrap();
                rel(&c.points, &floats(&case["curve"]))
                    .max(rel(&[c.aopc], &[case["aopc"].as_f64().unwrap()]))
            }
            "faithfulness-correlation" => {
                let opts = FaithfulnessCorrelation {
                    runs: p["runs"].as_u64().unwrap() as usize,
                    subset_size: p["subset_size"].as_u64().unwrap() as usize,
                    baseline: baseline(p),
                };
                let c =
                    faithfulness_correlation(&x, &map, hw, &opts, &mut draws, &mut scorer).unwrap();
                rel(&[c.r.unwrap()], &[case["value"].as_f64().unwrap()])
            }
            "road" => {
                let opts = Road {
                    percentages: floats(&p["percentages"]),
                    noise: p["noise"].as_f64().unwrap(),
                };
                let c = road(&x, &map, hw, &opts, &mut draws, &mut scorer).unwrap();
                rel(&c.morf, &floats(&case["morf"])).max(rel(&c.lerf, &floats(&case["lerf"])))
            }
            other => panic!("metric {other}"),
        };
        drop(scorer);
        draws.assert_used(name);
        eprintln!("{label} {name}: rel err {err:.2e}");
        assert!(err <= TOL, "{label} {name}: rel err {err:e} > {TOL}");
        checked += 1;
    }
    assert_eq!(checked, 8, "every case checked");
}

#[test]
fn faithfulness_matches_quantus_cpu() {
    check(Cpu::new(), "cpu");
}

#[test]
fn faithfulness_matches_quantus_gpu() {
    check(gpu(), "gpu");
}

/// Quantus' noisy linear imputation itself (no network): the ROAD MoRF 30% image.
#[test]
fn imputation_matches_quantus() {
    let m = manifest();
    let case = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "road")
        .unwrap();
    let x = npy64("x.npy");
    let map = npy64("map.npy");
    let s = m["size"].as_u64().unwrap() as usize;
    let mut order: Vec<usize> = (0..s * s).collect();
    order.sort_by(|&i, &j| map[j].partial_cmp(&map[i]).unwrap());
    let k = |p: usize| s * s * p / 100;
    let mut draws = Replay::of(case);
    // Skip the draws of 10% (MoRF, LeRF).
    draws.normal.drain(..6 * k(10));
    let got = noisy_linear_imputation(&x, (s, s), &order[..k(30)], 0.01, &mut draws).unwrap();
    let want = npy64("road_imputed.npy");
    let err = rel(&got, &want);
    eprintln!("imputation rel err {err:.2e}");
    assert!(err <= 1e-9, "imputation rel err {err:e}");
    // Only the imputed pixels changed.
    let changed = (0..x.len()).filter(|&i| got[i] != x[i]).count();
    assert_eq!(changed, 3 * k(30));
}

/// MPRT's similarity functions against Quantus' `correlation_spearman` and `ssim` (scipy,
/// skimage) on flattened maps, with ties and without.
#[test]
fn similarity_functions_match_quantus() {
    use lafam_gpu::eval::faithfulness::{spearman, ssim};
    let m = manifest();
    let (a, b) = (npy64("similarity_a.npy"), npy64("similarity_b.npy"));
    let cases = m["similarity"].as_array().unwrap();
    assert_eq!(cases.len(), 2);
    let n = a.len() / cases.len();
    for (i, c) in cases.iter().enumerate() {
        let (x, y) = (&a[i * n..(i + 1) * n], &b[i * n..(i + 1) * n]);
        let (rs, ss) = (spearman(x, y).unwrap(), ssim(x, y).unwrap());
        let (ws, wss) = (c["spearman"].as_f64().unwrap(), c["ssim"].as_f64().unwrap());
        eprintln!("case {i}: spearman {rs} vs {ws}, ssim {ss} vs {wss}");
        assert!(rel(&[rs], &[ws]) <= 1e-10, "spearman {rs} vs {ws}");
        assert!(rel(&[ss], &[wss]) <= 1e-10, "ssim {ss} vs {wss}");
    }
}

/// MPRT's network swap on each backend: an engine whose network was swapped for a
/// randomised one (`set_network`) gives exactly the maps of an engine built on that network,
/// LaFAM and LaFAM-LRP (whose rule-modified weights must follow), and swapping back restores
/// the original maps.
fn check_set_network<B: CamBackend>(make: impl Fn() -> B, label: &str) {
    use lafam_gpu::backend::Upsample;
    use lafam_gpu::explain::randomise::{cascade, conv_mut, randomise_conv, SetNetwork};
    use lafam_gpu::explain::{Composite, ImageBatch, Method};
    let w = load_weights(&common::fixtures().join("r50_tv.safetensors")).unwrap();
    let spec0 = w.net.clone();
    let mut spec = spec0.clone();
    for p in cascade(&spec0, Stage::Layer3).into_iter().take(5) {
        randomise_conv(conv_mut(&mut spec, p), 11);
    }
    let (rgb, h, wd) = common::read_rgb("img_48x80.png");
    let images = ImageBatch::new(&rgb, 1, h, wd).unwrap();
    let maps = |e: &mut Engine<B, lafam_gpu::explain::LrpWeights<B::Conv>>| {
        [Method::Lafam, Method::Lrp].map(|m| {
            e.explain_method(images, m, Stage::Layer3, Upsample::Bilinear, &[(h, wd)])
                .unwrap()
                .remove(0)
                .data
        })
    };
    let lrp = |s: &lafam_gpu::model::ResNet<lafam_gpu::model::ConvLayer>| {
        Engine::new(make(), s)
            .unwrap()
            .with_lrp(Composite::EpsilonPlusFlat)
            .unwrap()
    };
    let mut swapped = lrp(&spec0);
    let before = maps(&mut swapped);
    swapped.set_network(&spec).unwrap();
    let after = maps(&mut swapped);
    let fresh = maps(&mut lrp(&spec));
    for (k, name) in ["lafam", "lrp"].iter().enumerate() {
        assert_eq!(after[k], fresh[k], "{label} {name}: swapped != fresh");
        assert_ne!(
            after[k], before[k],
            "{label} {name}: randomisation changed nothing"
        );
    }
    swapped.set_network(&spec0).unwrap();
    let back = maps(&mut swapped);
    assert_eq!(
        back, before,
        "{label}: swapping back did not restore the maps"
    );
}

#[test]
fn set_network_swaps_every_weight_cpu() {
    check_set_network(Cpu::new, "cpu");
}

#[test]
fn set_network_swaps_every_weight_gpu() {
    check_set_network(gpu, "gpu");
}
