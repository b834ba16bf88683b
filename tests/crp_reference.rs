//! Concepts (CRP) against zennit-crp's CondAttribution (tests/fixtures/gen_crp.py): the
//! relevance per channel of the concept layer, the top-ranked channels and their conditional
//! maps, for every composite and concept layers layer2 to layer4, on both backends; and the
//! decomposition itself: the conditional maps of all channels sum to the LaFAM-LRP map.

mod common;

use common::read_rgb;
use lafam_gpu::backend::CamBackend;
use lafam_gpu::explain::{Composite, ConceptConfig, Engine, ImageBatch, Method, Request};
use lafam_gpu::model::{load_weights, ConvLayer, ResNet, Stage};
use lafam_gpu::tensor::rel_l2_err;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The bound: float32 against float64 zennit-crp.
const TOL: f64 = 1e-4;

fn crp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crp")
}

fn read_vec(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(crp_dir().join(name)).unwrap();
    npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<f32>()
        .unwrap()
}

fn load(model: &str) -> ResNet<ConvLayer> {
    let m = common::manifest();
    let file = common::fixtures().join(m["models"][model]["file"].as_str().unwrap());
    load_weights(&file).unwrap().net
}

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

fn check_crp<B: CamBackend>(mut make: impl FnMut() -> B) {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(crp_dir().join("manifest.json")).unwrap())
            .unwrap();
    let images = common::manifest()["images"].clone();
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    let mut groups: BTreeMap<(String, String), Vec<&serde_json::Value>> = BTreeMap::new();
    for case in m["cases"].as_array().unwrap() {
        let key = (
            case["model"].as_str().unwrap().to_string(),
            case["composite"].as_str().unwrap().to_string(),
        );
        groups.entry(key).or_default().push(case);
    }
    let mut count = 0;
    for ((model, composite), cases) in groups {
        let composite: Composite = composite.parse().unwrap();
        let mut ex = Engine::new(make(), &load(&model))
            .unwrap()
            .with_lrp(composite)
            .unwrap();
        for case in cases {
            let image = case["image"].as_str().unwrap();
            let (rgb, h, w) = read_rgb(images[image]["file"].as_str().unwrap());
            let stage: Stage = case["layer"].as_str().unwrap().parse().unwrap();
            let concept: Stage = case["concept_layer"].as_str().unwrap().parse().unwrap();
            let want_channels: Vec<u64> = case["channels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
                .collect();
            let req = Request {
                methods: vec![Method::Concepts],
                stage,
                concepts: ConceptConfig {
                    layer: Some(concept),
                    top: want_channels.len(),
                    channels: Vec::new(),
                },
                ..Request::default()
            };
            let batch = ImageBatch::new(&rgb, 1, h, w).unwrap();
            let out = ex.explain(batch, &req, &[(h, w)]).unwrap();
            let label = format!("{model}/{image}/{stage}/{concept}/{composite}");
            // The ranking and the relevances in the JSON side output.
            let json = &out[0].json[0];
            assert_eq!(json["concept_layer"], concept.to_string());
            let listed: Vec<u64> = json["concepts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["channel"].as_u64().unwrap())
                .collect();
            assert_eq!(listed, want_channels, "{label}: top channels");
            let rel = read_vec(case["relevance"].as_str().unwrap());
            let mut err = rel_err(
                json["total_relevance"].as_f64().unwrap(),
                case["total_relevance"].as_f64().unwrap(),
            );
            for c in json["concepts"].as_array().unwrap() {
                let ch = c["channel"].as_u64().unwrap() as usize;
                err = err.max(rel_err(c["relevance"].as_f64().unwrap(), rel[ch] as f64));
            }
            assert!(err <= TOL, "{label}: channel relevance error {err:e}");
            // The conditional maps, in ranking order, named after their channel.
            assert_eq!(out.len(), want_channels.len());
            for (maps, &c) in out.iter().zip(&want_channels) {
                assert_eq!(maps.names, vec![format!("concept-{c}")]);
                let want = read_vec(case["maps"][c.to_string()].as_str().unwrap());
                let e = rel_l2_err(&maps.maps[0].data, &want);
                assert!(e <= TOL, "{label}: channel {c} map relative L2 error {e:e}");
                err = err.max(e);
            }
            let e = worst
                .entry(label.split('/').skip(2).collect::<Vec<_>>().join("/"))
                .or_default();
            *e = e.max(err);
            count += 1;
        }
    }
    assert_eq!(count, m["cases"].as_array().unwrap().len());
    eprintln!("{count} zennit-crp cases; worst relative error per layer/concept layer/composite: {worst:#?}");
}

#[test]
fn cpu_concepts_match_zennit_crp() {
    check_crp(lafam_gpu::cpu::Cpu::new);
}

#[test]
fn gpu_concepts_match_zennit_crp() {
    check_crp(common::gpu);
}

/// The conditional maps of every channel of the concept layer sum to the LaFAM-LRP map (the
/// backward is linear in the relevance at the concept layer), for two images in one batch
/// (each image's conditions at its own place in the batched backward).
fn sum_over_channels_is_lrp<B: CamBackend>(b: B) {
    let images = common::manifest()["images"].clone();
    let mut rgb = Vec::new();
    let mut hw = (0, 0);
    for name in ["img_64x64", "img_64x64b"] {
        let (px, h, w) = read_rgb(images[name]["file"].as_str().unwrap());
        rgb.extend(px);
        hw = (h, w);
    }
    let (h, w) = hw;
    let spec = load("r18_swav");
    let mut ex = Engine::new(b, &spec)
        .unwrap()
        .with_lrp(Composite::EpsilonPlusFlat)
        .unwrap();
    for (stage, concept) in [
        (Stage::Layer4, Stage::Layer4),
        (Stage::Layer4, Stage::Layer2),
    ] {
        let c = spec.stage_channels()[concept.index()];
        let req = Request {
            methods: vec![Method::Lrp, Method::Concepts],
            stage,
            concepts: ConceptConfig {
                layer: Some(concept),
                top: c,
                channels: Vec::new(),
            },
            ..Request::default()
        };
        let batch = ImageBatch::new(&rgb, 2, h, w).unwrap();
        let out = ex.explain(batch, &req, &[(h, w), (h, w)]).unwrap();
        assert_eq!(out[0].method, Method::Lrp);
        assert_eq!(out.len(), 1 + c);
        for i in 0..2 {
            let mut sum = vec![0f64; h * w];
            for m in &out[1..] {
                for (s, v) in sum.iter_mut().zip(&m.maps[i].data) {
                    *s += *v as f64;
                }
            }
            let sum: Vec<f32> = sum.iter().map(|&v| v as f32).collect();
            let err = rel_l2_err(&sum, &out[0].maps[i].data);
            eprintln!(
                "{stage}/{concept} image {i}: {c} conditional maps vs LaFAM-LRP, rel L2 {err:e}"
            );
            assert!(
                err <= 1e-5,
                "{stage}/{concept} image {i}: relative L2 error {err:e}"
            );
        }
    }
}

#[test]
fn cpu_conditional_maps_sum_to_lrp() {
    sum_over_channels_is_lrp(lafam_gpu::cpu::Cpu::new());
}

#[test]
fn gpu_conditional_maps_sum_to_lrp() {
    sum_over_channels_is_lrp(common::gpu());
}
