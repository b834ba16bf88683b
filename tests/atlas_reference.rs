//! `lafam-gpu atlas` against zennit-crp's FeatureVisualization (tests/fixtures/gen_atlas.py):
//! the ActMax and RelMax rankings of every channel over a ten-image dataset, their values,
//! receptive-field neurons and crops, and the receptive-field maps, on both backends; the
//! running top-N never holds more than N samples per channel; `--shard` + `--merge` gives the
//! atlas of one run.

mod common;

use lafam_gpu::atlas::{Sample, TopN};
use lafam_gpu::backend::CamBackend;
use lafam_gpu::explain::{Composite, Engine, ImageBatch};
use lafam_gpu::model::{load_weights, Stage};
use lafam_gpu::tensor::{rel_l2_err, HostTensor, Shape};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lafam-gpu");
/// float32 against float64 zennit-crp.
const TOL: f64 = 1e-4;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/atlas")
}

fn weights() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/r50_tv.safetensors")
}

fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

/// A 2-D .npy (rows, cols) as f64.
fn npy(name: &str) -> (Vec<u64>, Vec<f64>) {
    let bytes = std::fs::read(dir().join(name)).unwrap();
    let f = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = f.shape().to_vec();
    let data: Vec<f64> = match f.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Int => f
            .into_vec::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        npyz::DType::Plain(t) if t.size_field() == 4 => f
            .into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        _ => f.into_vec::<f64>().unwrap(),
    };
    (shape, data)
}

fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .env("NODEVICE_SELECT", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lafam-gpu {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn atlas_run(backend: &str, concept: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let top = manifest()["top"].as_u64().unwrap().to_string();
    let (w, root) = (weights(), dir());
    let mut args = vec![
        "atlas",
        "--weights",
        w.to_str().unwrap(),
        "--backend",
        backend,
        "--dataset",
        "folder",
        "--root",
        root.to_str().unwrap(),
        "--size",
        "0",
        "--batch",
        "4",
        "--layer",
        "layer4",
        "--concept-layer",
        concept,
        "--per-concept",
        &top,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args);
    serde_json::from_str(&std::fs::read_to_string(out.join("atlas.json")).unwrap()).unwrap()
}

/// The concept layer's grid width at the fixtures' 64 px.
fn grid(concept: Stage) -> usize {
    match concept {
        Stage::Layer4 => 2,
        Stage::Layer3 => 4,
        _ => unreachable!(),
    }
}

fn check_cli(backend: &str) {
    let m = manifest();
    let top = m["top"].as_u64().unwrap() as usize;
    let tmp = tempfile::tempdir().unwrap();
    let mut worst = 0.0f64;
    let (mut checked, mut tied, mut near_threshold) = (0, 0, 0);
    for case in m["cases"].as_array().unwrap() {
        let concept_name = case["concept_layer"].as_str().unwrap();
        let concept: Stage = concept_name.parse().unwrap();
        let out = tmp.path().join(concept_name);
        let doc = atlas_run(backend, concept_name, &out, &[]);
        let channels = doc["atlas"]["channels"].as_array().unwrap();
        assert_eq!(channels.len(), case["channels"].as_u64().unwrap() as usize);
        assert_eq!(doc["atlas"]["images"], 10);
        for (mode, names) in case["modes"].as_object().unwrap() {
            let (shape, d) = npy(names["d"].as_str().unwrap());
            let (_, val) = npy(names["rel"].as_str().unwrap());
            let (_, rf) = npy(names["rf"].as_str().unwrap());
            let (_, boxes) = npy(names["box"].as_str().unwrap());
            let (_, margin) = npy(names["margin"].as_str().unwrap());
            let (rows, cols) = (shape[0] as usize, shape[1] as usize);
            for (c, ch) in channels.iter().enumerate() {
                let got: Vec<Sample> =
                    serde_json::from_value(ch[mode.as_str()]["samples"].clone()).unwrap();
                assert_eq!(got.len(), top, "{mode} channel {c}: {} samples", got.len());
                let col: Vec<f64> = (0..rows).map(|r| val[r * cols + c]).collect();
                let scale = col.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-30);
                for (j, s) in got.iter().enumerate() {
                    let (want_i, want_v) = (d[j * cols + c] as usize, col[j]);
                    let err = (s.value - want_v).abs() / scale;
                    worst = worst.max(err);
                    assert!(
                        err <= TOL,
                        "{concept_name} {mode} channel {c} rank {j}: value {} vs {want_v} ({err:.2e})",
                        s.value
                    );
                    // zennit-crp's order among values closer than the tolerance is not ours
                    // to reproduce (torch.argsort is unstable; float32 vs float64): there the
                    // sample must be one of the near-equal ones.
                    let near: Vec<usize> = (0..rows)
                        .filter(|&r| (col[r] - want_v).abs() <= TOL * scale)
                        .map(|r| d[r * cols + c] as usize)
                        .collect();
                    if near.len() > 1 {
                        tied += 1;
                        assert!(
                            near.contains(&s.index),
                            "{mode} c{c} rank {j}: {} not in {near:?}",
                            s.index
                        );
                        continue;
                    }
                    assert_eq!(
                        s.index, want_i,
                        "{concept_name} {mode} channel {c} rank {j}: sample"
                    );
                    let flat = s.neuron[0] * grid(concept) + s.neuron[1];
                    assert_eq!(
                        flat as f64,
                        rf[j * cols + c],
                        "{concept_name} {mode} channel {c} rank {j}: neuron"
                    );
                    let want_box: Vec<usize> = (0..4)
                        .map(|k| boxes[(j * cols + c) * 4 + k] as usize)
                        .collect();
                    let got_box = s.crop_box.unwrap().to_vec();
                    if margin[j * cols + c] < TOL * 0.1 {
                        // The blurred map comes within float32's error of zennit-crp's 0.1
                        // threshold: an edge may move by one pixel, no more.
                        near_threshold += 1;
                        assert!(
                            got_box.iter().zip(&want_box).all(|(a, b)| a.abs_diff(*b) <= 1),
                            "{concept_name} {mode} channel {c} rank {j}: crop {got_box:?} vs {want_box:?}"
                        );
                    } else {
                        assert_eq!(
                            got_box, want_box,
                            "{concept_name} {mode} channel {c} rank {j}: crop"
                        );
                    }
                    let crop = image::open(out.join(s.crop.as_ref().unwrap())).unwrap();
                    assert_eq!(
                        (crop.height() as usize, crop.width() as usize),
                        (got_box[1] - got_box[0], got_box[3] - got_box[2])
                    );
                    assert!(out.join(s.heatmap.as_ref().unwrap()).is_file());
                    checked += 1;
                }
            }
        }
        let html = std::fs::read_to_string(out.join("index.html")).unwrap();
        assert!(
            html.contains("atlas-data") && !html.contains("http"),
            "index.html"
        );
    }
    eprintln!(
        "{backend}: {checked} samples identical to zennit-crp ({tied} near-ties in value, \
         {near_threshold} crops within 1e-5 of the threshold), worst value error {worst:.2e}"
    );
    // The exceptions stay exceptions.
    assert!(
        tied + near_threshold < checked / 50,
        "{tied} ties, {near_threshold} near the threshold"
    );
    assert!(checked > 1000, "too few samples compared: {checked}");
}

#[test]
fn cpu_atlas_matches_zennit_crp() {
    check_cli("cpu");
}

#[test]
fn gpu_atlas_matches_zennit_crp() {
    check_cli("gpu");
}

/// The receptive-field maps (conditional heatmaps of single neurons) of the first channels.
fn check_maps<B: CamBackend>(b: B) {
    let m = manifest();
    let net = load_weights(&weights()).unwrap().net;
    let mut engine = Engine::new(b, &net)
        .unwrap()
        .with_lrp(Composite::EpsilonPlusFlat)
        .unwrap();
    let top = m["top"].as_u64().unwrap() as usize;
    let mut worst = 0.0f64;
    let mut n = 0;
    for case in m["cases"].as_array().unwrap() {
        let concept: Stage = case["concept_layer"].as_str().unwrap().parse().unwrap();
        for (mode, names) in case["modes"].as_object().unwrap() {
            let (shape, d) = npy(names["d"].as_str().unwrap());
            let (_, rf) = npy(names["rf"].as_str().unwrap());
            let cols = shape[1] as usize;
            for c in 0..2 {
                let (_, heat) = npy(names[format!("heat_c{c}").as_str()].as_str().unwrap());
                for j in 0..top {
                    let img = format!("images/img{:02}.png", d[j * cols + c] as usize);
                    let rgb = image::open(dir().join(img)).unwrap().to_rgb8();
                    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
                    let p = rf[j * cols + c] as usize;
                    let g = grid(concept);
                    let got = engine
                        .neuron_maps(
                            ImageBatch::new(rgb.as_raw(), 1, h, w).unwrap(),
                            concept,
                            &[(c, [p / g, p % g])],
                        )
                        .unwrap();
                    let want = HostTensor::new(
                        Shape::new(1, h, w, 1),
                        heat[j * h * w..(j + 1) * h * w]
                            .iter()
                            .map(|&v| v as f32)
                            .collect(),
                    );
                    let err = rel_l2_err(&got.data, &want.data);
                    worst = worst.max(err);
                    assert!(
                        err <= TOL,
                        "{concept} {mode} c{c} rank {j}: map error {err:.2e}"
                    );
                    n += 1;
                }
            }
        }
    }
    eprintln!("{n} receptive-field maps, worst relative L2 error {worst:.2e}");
}

#[test]
fn cpu_receptive_field_maps_match_zennit_crp() {
    check_maps(lafam_gpu::cpu::Cpu::new());
}

#[test]
fn gpu_receptive_field_maps_match_zennit_crp() {
    check_maps(common::gpu());
}

/// The running top-N holds at most N samples at every step and ends with exactly the N best
/// of a full sort (higher value first, lower index first among equal values).
#[test]
fn top_n_stays_bounded_and_exact() {
    let n = 5;
    let mut t = TopN::new(n);
    let mut all = Vec::new();
    let mut x = 12345u64;
    for i in 0..2000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Few distinct values: many ties.
        let v = ((x >> 33) % 50) as f64;
        let s = Sample {
            index: i,
            stem: format!("s{i}"),
            value: v,
            sum: v,
            neuron: [0, 0],
            crop: None,
            heatmap: None,
            crop_box: None,
        };
        all.push((v, i));
        t.offer(s);
        assert!(t.len() <= n, "{} samples after {i} offers", t.len());
        assert!(
            t.samples.capacity() <= n + 1,
            "capacity {}",
            t.samples.capacity()
        );
    }
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let want: Vec<usize> = all[..n].iter().map(|p| p.1).collect();
    let got: Vec<usize> = t.samples.iter().map(|s| s.index).collect();
    assert_eq!(got, want);
}

/// Three shards merged give the single run's atlas: the same samples, values, neurons, crops
/// (byte for byte) and dataset means.
#[test]
fn shards_merge_to_the_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let single = atlas_run("cpu", "layer3", &tmp.path().join("single"), &[]);
    let mut parts = Vec::new();
    for i in 0..3 {
        let p = tmp.path().join(format!("part{i}"));
        atlas_run("cpu", "layer3", &p, &["--shard", &format!("{i}/3")]);
        parts.push(p);
    }
    let merged_dir = tmp.path().join("merged");
    let mut args = vec!["atlas", "--merge"];
    args.extend(parts.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--out", merged_dir.to_str().unwrap()]);
    run(&args);
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged_dir.join("atlas.json")).unwrap())
            .unwrap();
    assert_eq!(merged["settings"], single["settings"]);
    let (a, b) = (&single["atlas"], &merged["atlas"]);
    assert_eq!(a["images"], b["images"]);
    let (ca, cb) = (
        a["channels"].as_array().unwrap(),
        b["channels"].as_array().unwrap(),
    );
    assert_eq!(ca.len(), cb.len());
    let mut files = 0;
    for (x, y) in ca.iter().zip(cb) {
        for mode in ["actmax", "relmax"] {
            assert_eq!(x[mode], y[mode], "channel {}: {mode}", x["channel"]);
            let samples: Vec<Sample> = serde_json::from_value(x[mode]["samples"].clone()).unwrap();
            for s in samples {
                for f in [s.crop.unwrap(), s.heatmap.unwrap()] {
                    let (p, q) = (tmp.path().join("single").join(&f), merged_dir.join(&f));
                    assert_eq!(
                        std::fs::read(&p).unwrap(),
                        std::fs::read(&q).unwrap(),
                        "{f}"
                    );
                    files += 1;
                }
            }
        }
        for key in ["mean_relevance", "mean_activation"] {
            let (u, v) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (u - v).abs() <= 1e-12 * u.abs().max(1e-30),
                "{key}: {u} vs {v}"
            );
        }
    }
    assert!(files > 0);
    // A missing shard is refused, naming it.
    let out = Command::new(BIN)
        .args([
            "atlas",
            "--merge",
            parts[0].to_str().unwrap(),
            parts[2].to_str().unwrap(),
        ])
        .args(["--out", tmp.path().join("bad").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing shards: 1/3"));
}

/// A file that is not an image gets one error line naming it; the others still make the
/// atlas; the exit code is 1. An unknown shard part is refused.
#[test]
fn bad_image_is_reported_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("images")).unwrap();
    for i in 0..3 {
        let name = format!("img{i:02}.png");
        std::fs::copy(
            dir().join("images").join(&name),
            root.join("images").join(&name),
        )
        .unwrap();
    }
    std::fs::write(
        root.join("images/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let w = weights();
    let out = Command::new(BIN)
        .args([
            "atlas",
            "--weights",
            w.to_str().unwrap(),
            "--backend",
            "cpu",
        ])
        .args([
            "--dataset",
            "folder",
            "--root",
            root.to_str().unwrap(),
            "--size",
            "0",
        ])
        .args([
            "--per-concept",
            "2",
            "--no-crops",
            "--out",
            out_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("broken.png"), "{stderr}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("atlas.json")).unwrap())
            .unwrap();
    assert_eq!(doc["atlas"]["images"], 3);
    assert!(out_dir.join("index.html").is_file());
}

/// A part whose crop path leaves crops/ is refused by --merge, naming the file.
#[test]
fn merge_refuses_crop_paths_outside_crops() {
    let tmp = tempfile::tempdir().unwrap();
    let part = tmp.path().join("part0");
    atlas_run("cpu", "layer4", &part, &["--shard", "0/1", "--no-crops"]);
    let file = part.join("atlas.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    doc["atlas"]["channels"][0]["actmax"]["samples"][0]["crop"] = "../../evil.png".into();
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["atlas", "--merge", part.to_str().unwrap()])
        .args(["--out", tmp.path().join("merged").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not crops/<file>") && stderr.contains("atlas.json"),
        "{stderr}"
    );
}
