//! LaFAM-LRP against zennit (tests/fixtures/gen_lrp.py): input relevance summed over RGB for
//! the four composites seeded at layer2, layer3 and layer4, on both backends. Also the
//! conservation of relevance, which holds exactly for the Flat/Epsilon rules without biases.

mod common;

use common::read_rgb;
use lafam_gpu::backend::CamBackend;
use lafam_gpu::explain::ImageBatch;
use lafam_gpu::explain::lrp::RelevanceTrace;
use lafam_gpu::explain::{Composite, Engine, Method};
use lafam_gpu::model::{load_weights, ConvLayer, ResNet, Stage};
use lafam_gpu::tensor::rel_l2_err;
use lafam_gpu::{Backend, Upsample};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The bound is 1e-3 relative L2; f32 against float64 zennit does far better.
const TOL: f64 = 1e-4;

fn lrp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lrp")
}

fn lrp_manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(lrp_dir().join("manifest.json")).unwrap())
        .unwrap()
}

fn read_map(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(lrp_dir().join(name)).unwrap();
    npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<f32>()
        .unwrap()
}

fn load(model: &str, zero_bias: bool) -> ResNet<ConvLayer> {
    let m = common::manifest();
    let file = common::fixtures().join(m["models"][model]["file"].as_str().unwrap());
    let mut net = load_weights(&file).unwrap().net;
    if zero_bias {
        net = net
            .try_map(|c| {
                let mut c = c.clone();
                c.bias.fill(0.0);
                Ok::<_, ()>(c)
            })
            .unwrap();
    }
    net
}

fn check_zennit<B: CamBackend>(mut make: impl FnMut() -> B) {
    let m = lrp_manifest();
    let images = common::manifest()["images"].clone();
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    let mut count = 0;
    // Group cases by (model, nobias, composite) so each rule set is prepared once.
    let mut groups: BTreeMap<(String, bool, String), Vec<&serde_json::Value>> = BTreeMap::new();
    for case in m["cases"].as_array().unwrap() {
        let key = (
            case["model"].as_str().unwrap().to_string(),
            case["nobias"].as_bool().unwrap(),
            case["composite"].as_str().unwrap().to_string(),
        );
        groups.entry(key).or_default().push(case);
    }
    for ((model, nobias, composite), cases) in groups {
        let composite: Composite = composite.parse().unwrap();
        let mut ex = Engine::new(make(), &load(&model, nobias))
            .unwrap()
            .with_lrp(composite)
            .unwrap();
        for case in cases {
            let image = case["image"].as_str().unwrap();
            let (rgb, h, w) = read_rgb(images[image]["file"].as_str().unwrap());
            let stage: Stage = case["layer"].as_str().unwrap().parse().unwrap();
            let batch = ImageBatch::new(&rgb, 1, h, w).unwrap();
            let map = ex
                .explain_method(batch, Method::Lrp, stage, Upsample::Bilinear, &[(h, w)])
                .unwrap()
                .remove(0);
            let want = read_map(case["map"].as_str().unwrap());
            let err = rel_l2_err(&map.data, &want);
            let label = format!(
                "{model}/{image}/{stage}/{composite}{}",
                if nobias { " (no bias)" } else { "" }
            );
            assert!(err <= TOL, "{label}: relative L2 error {err:e}");
            let e = worst.entry(composite.to_string()).or_default();
            *e = e.max(err);
            count += 1;
        }
    }
    assert_eq!(count, m["cases"].as_array().unwrap().len());
    eprintln!("{count} zennit cases; worst relative L2 error per composite: {worst:?}");
}

#[test]
fn cpu_lrp_matches_zennit() {
    check_zennit(lafam_gpu::cpu::Cpu::new);
}

#[test]
fn gpu_lrp_matches_zennit() {
    check_zennit(common::gpu);
}

/// Per-stage relevance sums must match zennit's (intermediate_sums in the manifest).
#[test]
fn cpu_per_stage_sums_match_zennit() {
    let m = lrp_manifest();
    let images = common::manifest()["images"].clone();
    let case = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["intermediate_sums"].is_object())
        .unwrap();
    let mut ex = Engine::new(
        lafam_gpu::cpu::Cpu::new(),
        &load(case["model"].as_str().unwrap(), false),
    )
    .unwrap()
    .with_lrp(case["composite"].as_str().unwrap().parse().unwrap())
    .unwrap();
    let (rgb, h, w) = read_rgb(
        images[case["image"].as_str().unwrap()]["file"]
            .as_str()
            .unwrap(),
    );
    let x = ex.backend.preprocess(&rgb, 1, h, w).unwrap();
    let mut trace = RelevanceTrace::default();
    ex.lrp_input_relevance(
        x,
        case["layer"].as_str().unwrap().parse().unwrap(),
        Some(&mut trace),
    )
    .unwrap();
    let sums: BTreeMap<_, _> = trace.sums.iter().cloned().collect();
    let want = &case["intermediate_sums"];
    for (ours, theirs) in [
        ("stem output", "stem_out"),
        ("layer1.0 input", "layer1_in"),
        ("layer2.0 input", "layer2_in"),
        ("layer3.0 input", "layer3_in"),
    ] {
        let (a, b) = (sums[ours], want[theirs].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4 * b.abs(), "{ours}: {a} vs zennit {b}");
    }
}

/// With every bias zero, Flat on the first conv and Epsilon elsewhere conserve relevance:
/// each layer's input relevance sums to its output's.
#[test]
fn flat_epsilon_conserve_relevance_without_bias() {
    for model in ["r18_swav", "r50_tv"] {
        let mut ex = Engine::new(lafam_gpu::cpu::Cpu::new(), &load(model, true))
            .unwrap()
            .with_lrp_rules(
                lafam_gpu::explain::rules::Rule::flat(),
                lafam_gpu::explain::rules::Rule::epsilon(),
            )
            .unwrap();
        let (rgb, h, w) = read_rgb("img_48x80.png");
        for stage in [Stage::Layer2, Stage::Layer4] {
            let x = ex.backend.preprocess(&rgb, 1, h, w).unwrap();
            let mut trace = RelevanceTrace::default();
            ex.lrp_input_relevance(x, stage, Some(&mut trace)).unwrap();
            let seed = trace.sums[0].1;
            for (name, sum) in &trace.sums {
                assert!(
                    (sum - seed).abs() <= 1e-4 * seed.abs(),
                    "{model} {stage}: {name} sums to {sum}, seed {seed}"
                );
            }
        }
    }
}

/// The CLI end to end: `run --method lafam,lrp --size 0` writes the zennit map as `.lrp.npy`.
#[test]
fn cli_writes_zennit_lrp_map() {
    let m = lrp_manifest();
    let case = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["model"] == "r50_tv"
                && c["image"] == "img_48x80"
                && c["layer"] == "layer3"
                && c["composite"] == "epsilon-gamma-box"
        })
        .expect("fixture case");
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_lafam-gpu"))
        .args([
            "run",
            "--backend",
            "cpu",
            "--method",
            "lafam,lrp",
            "--rule",
            "epsilon-gamma-box",
            "--layer",
            "layer3",
            "--size",
            "0",
            "--weights",
        ])
        .arg(common::fixtures().join("r50_tv.safetensors"))
        .arg("--out")
        .arg(out.path())
        .arg(common::fixtures().join("img_48x80.png"))
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(out.path().join("img_48x80.lrp.npy")).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[48, 80]);
    let got = npy.into_vec::<f32>().unwrap();
    let err = rel_l2_err(&got, &read_map(case["map"].as_str().unwrap()));
    assert!(err <= TOL, "CLI LRP map: relative L2 error {err:e}");
    assert!(out.path().join("img_48x80.lafam.npy").exists());
    assert!(out.path().join("img_48x80.lrp.overlay.png").exists());
}
