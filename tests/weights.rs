//! Weight loading: the three reference checkpoints, key prefixes, dtype conversions,
//! BatchNorm folding, error messages, and random weights round-tripping through the loader.

use lafam_gpu::model::load::{load_weights_from_bytes, LoadedWeights};
use lafam_gpu::model::random::{
    random_resnet, random_state_dict, to_safetensors_bytes, Dtype, NamedTensor, RandomSpec,
};
use lafam_gpu::model::{load_weights, BlockKind, ConvLayer, ResNet};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn from_bytes(bytes: &[u8]) -> anyhow::Result<LoadedWeights> {
    load_weights_from_bytes(bytes, Path::new("test.safetensors"))
}

fn err_of(bytes: &[u8]) -> String {
    let e = from_bytes(bytes).expect_err("load should fail");
    let msg = format!("{e:#}");
    assert!(!msg.contains('\n'), "error should be one line: {msg}");
    assert!(
        msg.contains("test.safetensors"),
        "error should name the file: {msg}"
    );
    msg
}

fn small_spec(depth: usize) -> RandomSpec {
    RandomSpec::resnet(depth, 8, 7).unwrap()
}

fn sd_bytes(sd: &[NamedTensor], prefix: &str) -> Vec<u8> {
    to_safetensors_bytes(sd, Dtype::F32, prefix, &[])
}

fn find<'a>(sd: &'a [NamedTensor], key: &str) -> &'a NamedTensor {
    sd.iter()
        .find(|t| t.0 == key)
        .unwrap_or_else(|| panic!("no {key}"))
}

fn find_mut<'a>(sd: &'a mut [NamedTensor], key: &str) -> &'a mut NamedTensor {
    sd.iter_mut()
        .find(|t| t.0 == key)
        .unwrap_or_else(|| panic!("no {key}"))
}

fn all_convs(net: &ResNet<ConvLayer>) -> Vec<&ConvLayer> {
    let mut v = vec![&net.stem];
    for stage in &net.stages {
        for b in stage {
            v.extend(b.convs.iter());
            v.extend(b.downsample.iter());
        }
    }
    v
}

fn assert_same_net(a: &ResNet<ConvLayer>, b: &ResNet<ConvLayer>) {
    assert_eq!(a.kind, b.kind);
    assert_eq!(a.blocks_per_stage(), b.blocks_per_stage());
    let (ca, cb) = (all_convs(a), all_convs(b));
    assert_eq!(ca.len(), cb.len());
    for (x, y) in ca.iter().zip(&cb) {
        assert_eq!(x, y, "conv {} differs", x.name);
    }
    assert_eq!(a.heads.fc, b.heads.fc);
}

// ---------------------------------------------------------------------------------------
// A naive reference forward (f64 accumulation) over the loaded, folded weights.
// ---------------------------------------------------------------------------------------

/// NHWC single image.
#[derive(Clone)]
struct Img {
    h: usize,
    w: usize,
    c: usize,
    d: Vec<f32>,
}

fn conv(x: &Img, l: &ConvLayer, residual: Option<&Img>, relu: bool) -> Img {
    assert_eq!(x.c, l.cin, "{}", l.name);
    let (oh, ow) = l.out_size(x.h, x.w);
    let mut out = vec![0f32; oh * ow * l.cout];
    let mut acc = vec![0f64; l.cout];
    for oy in 0..oh {
        for ox in 0..ow {
            for (a, b) in acc.iter_mut().zip(&l.bias) {
                *a = *b as f64;
            }
            for ky in 0..l.kh {
                let iy = (oy * l.stride + ky) as isize - l.pad as isize;
                if iy < 0 || iy >= x.h as isize {
                    continue;
                }
                for kx in 0..l.kw {
                    let ix = (ox * l.stride + kx) as isize - l.pad as isize;
                    if ix < 0 || ix >= x.w as isize {
                        continue;
                    }
                    let xin = &x.d[(iy as usize * x.w + ix as usize) * x.c..][..x.c];
                    for (ci, &xv) in xin.iter().enumerate() {
                        let wrow = &l.weight[((ky * l.kw + kx) * l.cin + ci) * l.cout..][..l.cout];
                        let xv = xv as f64;
                        for (a, &wv) in acc.iter_mut().zip(wrow) {
                            *a += xv * wv as f64;
                        }
                    }
                }
            }
            let o = &mut out[(oy * ow + ox) * l.cout..][..l.cout];
            for (k, v) in o.iter_mut().enumerate() {
                let mut s = acc[k];
                if let Some(r) = residual {
                    s += r.d[(oy * ow + ox) * l.cout + k] as f64;
                }
                *v = if relu { s.max(0.0) as f32 } else { s as f32 };
            }
        }
    }
    Img {
        h: oh,
        w: ow,
        c: l.cout,
        d: out,
    }
}

fn max_pool(x: &Img) -> Img {
    let (oh, ow) = ((x.h + 2 - 3) / 2 + 1, (x.w + 2 - 3) / 2 + 1);
    let mut d = vec![f32::NEG_INFINITY; oh * ow * x.c];
    for oy in 0..oh {
        for ox in 0..ow {
            for ky in 0..3 {
                for kx in 0..3 {
                    let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                    if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                        continue;
                    }
                    for c in 0..x.c {
                        let v = x.d[(iy as usize * x.w + ix as usize) * x.c + c];
                        let o = &mut d[(oy * ow + ox) * x.c + c];
                        *o = o.max(v);
                    }
                }
            }
        }
    }
    Img {
        h: oh,
        w: ow,
        c: x.c,
        d,
    }
}

/// Stage outputs layer1..layer4.
fn forward(net: &ResNet<ConvLayer>, x: &Img) -> Vec<Img> {
    let mut h = max_pool(&conv(x, &net.stem, None, true));
    let mut outs = Vec::new();
    for stage in &net.stages {
        for b in stage {
            let skip = match &b.downsample {
                Some(ds) => conv(&h, ds, None, false),
                None => h.clone(),
            };
            let (last, inner) = b.convs.split_last().unwrap();
            let mut y = h;
            for c in inner {
                y = conv(&y, c, None, true);
            }
            h = conv(&y, last, Some(&skip), true);
        }
        outs.push(h.clone());
    }
    outs
}

fn load_png(name: &str) -> Img {
    let img = image::open(fixtures().join(name)).unwrap().to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mean = [0.485f32, 0.456, 0.406];
    let std = [0.229f32, 0.224, 0.225];
    let d = img
        .as_raw()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v as f32 / 255.0 - mean[i % 3]) / std[i % 3])
        .collect();
    Img { h, w, c: 3, d }
}

fn load_npy(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join(name)).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&s| s as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want
        .iter()
        .fold(0f64, |m, &v| m.max(v.abs() as f64))
        .max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()))
        / scale
}

// ---------------------------------------------------------------------------------------
// The reference checkpoints
// ---------------------------------------------------------------------------------------

#[test]
fn fixture_checkpoints_match_manifest() {
    let man = manifest();
    for (name, m) in man["models"].as_object().unwrap() {
        let path = fixtures().join(m["file"].as_str().unwrap());
        let lw = load_weights(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let net = &lw.net;
        let want_kind = match m["block"].as_str().unwrap() {
            "basic" => BlockKind::Basic,
            "bottleneck" => BlockKind::Bottleneck,
            k => panic!("{k}"),
        };
        assert_eq!(net.kind, want_kind, "{name}");
        let blocks: Vec<usize> = m["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(net.blocks_per_stage().to_vec(), blocks, "{name}");
        let chans: Vec<usize> = m["stage_channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(net.stage_channels().to_vec(), chans, "{name}");
        assert_eq!(net.stem.cout as u64, m["width"].as_u64().unwrap(), "{name}");
        assert_eq!((net.stem.kh, net.stem.stride, net.stem.pad), (7, 2, 3));
        let depth = m["depth"].as_u64().unwrap();
        let arch = net.arch_name();
        assert!(
            arch.starts_with(&format!("ResNet-{depth}")),
            "{name}: {arch}"
        );
        assert_eq!(
            lw.prefixes.concat(),
            m["prefix"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            lw.dtypes,
            vec![m["dtype"].as_str().unwrap().to_string()],
            "{name}"
        );
        assert_eq!(
            lw.bn_eps as f64,
            m["bn_eps"].as_f64().unwrap() as f32 as f64,
            "{name}"
        );
        assert!(lw.unknown.is_empty(), "{name}: {:?}", lw.unknown);
        // Heads: the manifest lists groups; an MLP fc shows up as "fc (mlp)".
        let mut heads: Vec<String> = m["heads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| match h.as_str().unwrap() {
                "fc" => "fc (mlp)".to_string(),
                h => h.to_string(),
            })
            .collect();
        heads.sort();
        assert_eq!(net.heads.ignored, heads, "{name}");
        match m["num_classes"].as_u64() {
            Some(c) => {
                let (w, b, classes) = net.heads.fc.as_ref().expect("fc");
                assert_eq!(*classes as u64, c);
                assert_eq!(w.len(), c as usize * chans[3]);
                assert_eq!(b.len(), c as usize);
            }
            None => assert!(net.heads.fc.is_none(), "{name}"),
        }
        // Strides: 2 in the first block of layer2..4 (on the 3x3 conv), 1 elsewhere.
        for (s, stage) in net.stages.iter().enumerate() {
            for (j, b) in stage.iter().enumerate() {
                let want = if s > 0 && j == 0 { 2 } else { 1 };
                let strided: Vec<usize> = b.convs.iter().map(|c| c.stride).collect();
                let exp: Vec<usize> = match net.kind {
                    BlockKind::Bottleneck => vec![1, want, 1],
                    BlockKind::Basic => vec![want, 1],
                };
                assert_eq!(strided, exp, "{name} layer{}.{j}", s + 1);
                if let Some(ds) = &b.downsample {
                    assert_eq!((ds.kh, ds.stride, ds.pad), (1, want, 0));
                }
            }
        }
    }
}

/// End to end: the loaded, folded, transposed weights reproduce PyTorch's stage outputs.
#[test]
fn fixture_checkpoints_reproduce_reference_activations() {
    let man = manifest();
    let img = load_png("img_48x80.png");
    for name in ["r18_swav", "r50_tv", "r50_moco"] {
        let file = man["models"][name]["file"].as_str().unwrap();
        let net = load_weights(&fixtures().join(file)).unwrap().net;
        let outs = forward(&net, &img);
        for (i, out) in outs.iter().enumerate() {
            let (shape, want) = load_npy(&format!("{name}__img_48x80__layer{}.npy", i + 1));
            assert_eq!(shape, vec![1, out.h, out.w, out.c], "{name} layer{}", i + 1);
            let err = max_rel_err(&out.d, &want);
            assert!(err < 1e-4, "{name} layer{}: max rel err {err}", i + 1);
        }
        if name == "r50_tv" {
            // fc on the pooled layer4 output: checks fc layout [classes, features].
            let l4 = &outs[3];
            let n = (l4.h * l4.w) as f64;
            let pooled: Vec<f64> = (0..l4.c)
                .map(|c| {
                    (0..l4.h * l4.w)
                        .map(|p| l4.d[p * l4.c + c] as f64)
                        .sum::<f64>()
                        / n
                })
                .collect();
            let (w, b, classes) = net.heads.fc.as_ref().unwrap();
            let logits: Vec<f32> = (0..*classes)
                .map(|k| {
                    let row = &w[k * l4.c..][..l4.c];
                    (row.iter()
                        .zip(&pooled)
                        .map(|(&a, &p)| a as f64 * p)
                        .sum::<f64>()
                        + b[k] as f64) as f32
                })
                .collect();
            let (shape, want) = load_npy("r50_tv__img_48x80__logits.npy");
            assert_eq!(shape, vec![1, *classes]);
            let err = max_rel_err(&logits, &want);
            assert!(err < 1e-4, "logits: max rel err {err}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Prefixes and dtypes
// ---------------------------------------------------------------------------------------

#[test]
fn key_prefix_combinations_are_stripped() {
    let sd = random_state_dict(&small_spec(18).with_classes(5));
    let plain = from_bytes(&sd_bytes(&sd, "")).unwrap();
    assert!(plain.prefixes.is_empty());
    for (prefix, want) in [
        ("module.", vec!["module."]),
        ("backbone.", vec!["backbone."]),
        ("encoder.", vec!["encoder."]),
        ("encoder_q.", vec!["encoder_q."]),
        ("model.", vec!["model."]),
        ("module.encoder_q.", vec!["module.", "encoder_q."]),
        ("model.backbone.", vec!["model.", "backbone."]),
        ("module.module.encoder.", vec!["module.", "encoder."]),
    ] {
        let lw = from_bytes(&sd_bytes(&sd, prefix)).unwrap_or_else(|e| panic!("{prefix}: {e:#}"));
        assert_eq!(lw.prefixes, want, "{prefix}");
        assert_same_net(&lw.net, &plain.net);
    }
    // Heads and unknown groups under a prefix: listed, not loaded.
    let mut with_heads = sd.clone();
    with_heads.push((
        "projection_head.0.weight".into(),
        vec![4, 64],
        vec![0.1; 256],
    ));
    with_heads.push(("prototypes.weight".into(), vec![3, 4], vec![0.1; 12]));
    with_heads.push(("queue".into(), vec![2, 2], vec![0.0; 4]));
    let lw = from_bytes(&sd_bytes(&with_heads, "module.")).unwrap();
    assert_eq!(lw.net.heads.ignored, vec!["projection_head", "prototypes"]);
    assert_eq!(lw.unknown, vec!["module.queue"]);
    assert_same_net(&lw.net, &plain.net);
}

#[test]
fn f16_and_bf16_convert_exactly() {
    let sd = random_state_dict(&small_spec(18).with_classes(3));
    let round = |f: fn(f32) -> f32| -> Vec<NamedTensor> {
        sd.iter()
            .map(|(k, s, v)| (k.clone(), s.clone(), v.iter().map(|&x| f(x)).collect()))
            .collect()
    };
    let sd16 = round(|x| half::f16::from_f32(x).to_f32());
    let sdb16 = round(|x| half::bf16::from_f32(x).to_f32());
    let a = from_bytes(&to_safetensors_bytes(&sd, Dtype::F16, "", &[])).unwrap();
    let b = from_bytes(&to_safetensors_bytes(&sd16, Dtype::F32, "", &[])).unwrap();
    assert_eq!(a.dtypes, vec!["F16"]);
    assert_same_net(&a.net, &b.net);
    let a = from_bytes(&to_safetensors_bytes(&sd, Dtype::BF16, "", &[])).unwrap();
    let b = from_bytes(&to_safetensors_bytes(&sdb16, Dtype::F32, "", &[])).unwrap();
    assert_eq!(a.dtypes, vec!["BF16"]);
    assert_same_net(&a.net, &b.net);

    // Special values: subnormals, extremes, negative zero go through exactly (as fc weights,
    // which are not folded).
    let special16 = [6.0e-8f32, -6.1e-5, 65504.0, -0.0, 1.0 / 3.0, 2.5e-6];
    let specialb = [1.0e-38f32, -3.0e38, 9.2e-41, 1.0 / 3.0, -0.0, 7.0];
    for (dt, vals) in [(Dtype::F16, special16), (Dtype::BF16, specialb)] {
        let mut t = sd.clone();
        let fcw = find_mut(&mut t, "fc.weight");
        fcw.2[..6].copy_from_slice(&vals);
        let lw = from_bytes(&to_safetensors_bytes(&t, dt, "", &[])).unwrap();
        let got = &lw.net.heads.fc.as_ref().unwrap().0[..6];
        for (g, v) in got.iter().zip(vals) {
            let want = match dt {
                Dtype::F16 => half::f16::from_f32(v).to_f32(),
                _ => half::bf16::from_f32(v).to_f32(),
            };
            assert_eq!(g.to_bits(), want.to_bits(), "{dt:?} {v}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// BatchNorm folding
// ---------------------------------------------------------------------------------------

/// Folded conv vs conv -> BN computed directly in f64 from the PyTorch tensors.
#[test]
fn batchnorm_folding_matches_direct_computation() {
    for (eps_meta, eps) in [
        (None, 1e-5f64),
        (Some(("bn_eps", "0.001")), 1e-3),
        (Some(("eps", "2e-4")), 2e-4),
        (Some(("bn_eps", "junk")), 1e-5),
    ] {
        let mut sd = random_state_dict(&small_spec(18));
        // A conv with its own bias too: b' = (b - mean) s + beta.
        let cout = find(&sd, "layer2.0.conv1.weight").1[0];
        let cb: Vec<f32> = (0..cout).map(|i| 0.05 * i as f32 - 0.2).collect();
        sd.push(("layer2.0.conv1.bias".into(), vec![cout], cb.clone()));
        // Small variances make folding error visible.
        find_mut(&mut sd, "layer2.0.bn1.running_var").2[0] = 1e-3;
        let meta: Vec<(&str, &str)> = eps_meta.into_iter().collect();
        let lw = from_bytes(&to_safetensors_bytes(&sd, Dtype::F32, "", &meta)).unwrap();
        assert_eq!(lw.bn_eps, eps as f32);
        let layer = &lw.net.stages[1][0].convs[0];
        assert_eq!(layer.name, "layer2.0.conv1");
        let (cin, k, s, p) = (layer.cin, layer.kh, layer.stride, layer.pad);
        assert_eq!((k, s, p), (3, 2, 1));
        let w = &find(&sd, "layer2.0.conv1.weight").2;
        let g = &find(&sd, "layer2.0.bn1.weight").2;
        let be = &find(&sd, "layer2.0.bn1.bias").2;
        let mu = &find(&sd, "layer2.0.bn1.running_mean").2;
        let var = &find(&sd, "layer2.0.bn1.running_var").2;
        // A tiny input, 5x6, NHWC.
        let (h, wd) = (5usize, 6usize);
        let x = Img {
            h,
            w: wd,
            c: cin,
            d: (0..h * wd * cin)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect(),
        };
        let got = conv(&x, layer, None, false);
        // Direct: OIHW conv in f64, + conv bias, then BN.
        let mut maxerr = 0f64;
        for oy in 0..got.h {
            for ox in 0..got.w {
                for o in 0..cout {
                    let mut z = cb[o] as f64;
                    for i in 0..cin {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - p as isize;
                                let ix = (ox * s + kx) as isize - p as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x.d[(iy as usize * wd + ix as usize) * cin + i] as f64;
                                z += xv * w[((o * cin + i) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                    let y = (z - mu[o] as f64) / (var[o] as f64 + eps).sqrt() * g[o] as f64
                        + be[o] as f64;
                    let e =
                        (got.d[(oy * got.w + ox) * cout + o] as f64 - y).abs() / (1.0 + y.abs());
                    maxerr = maxerr.max(e);
                }
            }
        }
        assert!(
            maxerr < 2e-6,
            "eps {eps}: folded conv differs from conv->bn by {maxerr}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn missing_tensor_is_named() {
    let sd: Vec<NamedTensor> = random_state_dict(&small_spec(50))
        .into_iter()
        .filter(|t| t.0 != "layer2.1.bn2.running_var")
        .collect();
    let msg = err_of(&sd_bytes(&sd, "module."));
    assert!(
        msg.contains("missing tensor 'module.layer2.1.bn2.running_var'"),
        "{msg}"
    );
    assert!(msg.contains("[16]"), "expected shape: {msg}");

    // A missing projection where channels change.
    let sd: Vec<NamedTensor> = random_state_dict(&small_spec(18))
        .into_iter()
        .filter(|t| !t.0.starts_with("layer3.0.downsample.0"))
        .collect();
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(
        msg.contains("missing tensor 'layer3.0.downsample.0.weight'"),
        "{msg}"
    );
    assert!(msg.contains("[32, 16, 1, 1]"), "{msg}");

    // A missing conv3 in one bottleneck block.
    let sd: Vec<NamedTensor> = random_state_dict(&small_spec(50))
        .into_iter()
        .filter(|t| t.0 != "layer3.4.conv3.weight")
        .collect();
    let msg = err_of(&sd_bytes(&sd, "model."));
    assert!(
        msg.contains("missing tensor 'model.layer3.4.conv3.weight'"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_names_tensor_expected_and_found() {
    // conv2 whose input channels disagree with conv1's output.
    let mut sd = random_state_dict(&small_spec(50));
    let t = find_mut(&mut sd, "layer1.0.conv2.weight");
    assert_eq!(t.1, vec![8, 8, 3, 3]);
    t.1 = vec![8, 4, 3, 3];
    t.2.truncate(8 * 4 * 9);
    let msg = err_of(&sd_bytes(&sd, "module.encoder_q."));
    assert!(
        msg.contains("'module.encoder_q.layer1.0.conv2.weight'"),
        "{msg}"
    );
    assert!(
        msg.contains("[8, 4, 3, 3]") && msg.contains("expected [8, 8, 3, 3]"),
        "{msg}"
    );

    // A BN vector of the wrong length.
    let mut sd = random_state_dict(&small_spec(18));
    let t = find_mut(&mut sd, "layer4.1.bn1.bias");
    t.1 = vec![63];
    t.2.truncate(63);
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(
        msg.contains("'layer4.1.bn1.bias'") && msg.contains("[63]"),
        "{msg}"
    );
    assert!(msg.contains("expected [64]"), "{msg}");

    // A residual whose channels do not match: the second block's conv3 narrower.
    let mut sd = random_state_dict(&small_spec(50));
    for (key, shape) in [
        ("layer2.1.conv3.weight", vec![32, 16, 1, 1]),
        ("layer2.1.bn3.weight", vec![32]),
        ("layer2.1.bn3.bias", vec![32]),
        ("layer2.1.bn3.running_mean", vec![32]),
        ("layer2.1.bn3.running_var", vec![32]),
    ] {
        let t = find_mut(&mut sd, key);
        let n: usize = shape.iter().product();
        t.1 = shape;
        t.2.truncate(n);
    }
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(msg.contains("'layer2.1.downsample.0.weight'"), "{msg}");
    assert!(msg.contains("64 to 32 channels"), "{msg}");

    // Stem that is not 7x7 RGB.
    let mut sd = random_state_dict(&small_spec(18));
    let t = find_mut(&mut sd, "conv1.weight");
    t.1 = vec![8, 1, 7, 21];
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(
        msg.contains("'conv1.weight' has shape [8, 1, 7, 21], expected [*, 3, 7, 7]"),
        "{msg}"
    );

    // fc over the wrong number of features.
    let mut sd = random_state_dict(&small_spec(18).with_classes(4));
    let t = find_mut(&mut sd, "fc.weight");
    t.1 = vec![8, 32];
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(
        msg.contains("'fc.weight' has shape [8, 32], expected [*, 64]"),
        "{msg}"
    );
}

#[test]
fn structural_errors_are_clear() {
    // No stages at all / one stage missing.
    let sd: Vec<NamedTensor> = random_state_dict(&small_spec(18))
        .into_iter()
        .filter(|t| !t.0.starts_with("layer4."))
        .collect();
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(msg.contains("no blocks found for stage layer4"), "{msg}");
    let sd: Vec<NamedTensor> = random_state_dict(&small_spec(18))
        .into_iter()
        .filter(|t| !t.0.starts_with("layer"))
        .collect();
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(msg.contains("no blocks found for stage layer1"), "{msg}");

    // A gap in the block indices.
    let sd: Vec<NamedTensor> = random_state_dict(&small_spec(34))
        .into_iter()
        .filter(|t| !t.0.starts_with("layer3.2."))
        .collect();
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(msg.contains("block 2 is missing"), "{msg}");

    // Only heads, no backbone.
    let sd: Vec<NamedTensor> = vec![
        ("prototypes.weight".into(), vec![3, 4], vec![0.5; 12]),
        ("fc.weight".into(), vec![2, 2], vec![0.0; 4]),
    ];
    let msg = err_of(&sd_bytes(&sd, "module."));
    assert!(msg.contains("no ResNet backbone found"), "{msg}");

    // A backbone tensor a torchvision ResNet does not have.
    let mut sd = random_state_dict(&small_spec(18));
    sd.push(("layer1.0.se.fc1.weight".into(), vec![2, 8], vec![0.0; 16]));
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(
        msg.contains("unexpected tensor 'layer1.0.se.fc1.weight'"),
        "{msg}"
    );

    // NaN / inf in weights.
    let mut sd = random_state_dict(&small_spec(18));
    find_mut(&mut sd, "layer3.1.conv2.weight").2[17] = f32::NAN;
    let msg = err_of(&sd_bytes(&sd, "backbone."));
    assert!(
        msg.contains("'backbone.layer3.1.conv2.weight' contains NaN"),
        "{msg}"
    );
    let mut sd = random_state_dict(&small_spec(18));
    find_mut(&mut sd, "bn1.running_mean").2[0] = f32::INFINITY;
    let msg = err_of(&to_safetensors_bytes(&sd, Dtype::F16, "", &[]));
    assert!(
        msg.contains("'bn1.running_mean' contains an infinite value"),
        "{msg}"
    );
    // Negative variance.
    let mut sd = random_state_dict(&small_spec(18));
    find_mut(&mut sd, "layer1.1.bn2.running_var").2[3] = -1.0;
    let msg = err_of(&sd_bytes(&sd, ""));
    assert!(
        msg.contains("'layer1.1.bn2.running_var'") && msg.contains("channel 3"),
        "{msg}"
    );
}

#[test]
fn bad_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = sd_bytes(&random_state_dict(&small_spec(18)), "module.");

    let missing = dir.path().join("nope.safetensors");
    let e = format!("{:#}", load_weights(&missing).unwrap_err());
    assert!(
        e.contains("nope.safetensors") && e.contains("no such file"),
        "{e}"
    );

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let e = format!("{:#}", load_weights(&empty).unwrap_err());
    assert!(
        e.contains("empty.safetensors") && e.contains("empty"),
        "{e}"
    );

    let trunc = dir.path().join("trunc.safetensors");
    std::fs::write(&trunc, &good[..good.len() * 2 / 3]).unwrap();
    let e = format!("{:#}", load_weights(&trunc).unwrap_err());
    assert!(
        e.contains("trunc.safetensors") && e.contains("truncated"),
        "{e}"
    );
    assert!(!e.contains('\n'));

    let garbage = dir.path().join("garbage.bin");
    std::fs::write(
        &garbage,
        b"PK\x03\x04 this is a zip file, or maybe a pickle",
    )
    .unwrap();
    let e = format!("{:#}", load_weights(&garbage).unwrap_err());
    assert!(
        e.contains("garbage.bin") && e.contains("not a safetensors file"),
        "{e}"
    );

    let e = format!("{:#}", load_weights(dir.path()).unwrap_err());
    assert!(e.contains("directory"), "{e}");

    // Header cut short: announced header longer than the file.
    let msg = err_of(&good[..100]);
    assert!(msg.contains("truncated"), "{msg}");
    // Valid header, no tensors.
    let msg = err_of(&to_safetensors_bytes(&[], Dtype::F32, "", &[]));
    assert!(msg.contains("no tensors"), "{msg}");
}

/// No byte input panics: every truncation point of the header, a spread of points in the
/// data, and pseudo-random garbage (also with a plausible length field).
#[test]
fn truncated_and_garbage_bytes_never_panic() {
    let good = sd_bytes(
        &random_state_dict(&RandomSpec::resnet(18, 4, 3).unwrap()),
        "module.",
    );
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut cuts: Vec<usize> = (0..header + 64).collect();
    cuts.extend((header..good.len()).step_by(997));
    for cut in cuts {
        let r = std::panic::catch_unwind(|| from_bytes(&good[..cut]).map(|_| ()));
        let r = r.unwrap_or_else(|_| panic!("panic on truncation at {cut}"));
        assert!(r.is_err(), "truncation at {cut} loaded");
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..500 {
        let len = (next() % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && len >= 9 {
            let n = (next() % (len as u64 - 8)) + 1;
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            bytes[8] = b'{';
        }
        let r = std::panic::catch_unwind(|| from_bytes(&bytes).map(|_| ()));
        assert!(r.is_ok(), "panic on garbage #{i}");
        assert!(r.unwrap().is_err());
    }
    // Corrupted bytes inside a valid file's header.
    for pos in (8..header).step_by(7) {
        let mut bytes = good.clone();
        bytes[pos] ^= 0x5a;
        let r = std::panic::catch_unwind(|| from_bytes(&bytes).map(|_| ()));
        assert!(r.is_ok(), "panic on corrupted header byte {pos}");
    }
}

// ---------------------------------------------------------------------------------------
// Random weights
// ---------------------------------------------------------------------------------------

#[test]
fn random_state_dicts_round_trip() {
    for (depth, width, blocks, kind, name) in [
        (
            18,
            8,
            [2, 2, 2, 2],
            BlockKind::Basic,
            "ResNet-18 (stem width 8)",
        ),
        (
            34,
            8,
            [3, 4, 6, 3],
            BlockKind::Basic,
            "ResNet-34 (stem width 8)",
        ),
        (
            50,
            16,
            [3, 4, 6, 3],
            BlockKind::Bottleneck,
            "ResNet-50 (stem width 16)",
        ),
        (
            101,
            8,
            [3, 4, 23, 3],
            BlockKind::Bottleneck,
            "ResNet-101 (stem width 8)",
        ),
        (
            152,
            4,
            [3, 8, 36, 3],
            BlockKind::Bottleneck,
            "ResNet-152 (stem width 4)",
        ),
    ] {
        let spec = RandomSpec::resnet(depth, width, 11)
            .unwrap()
            .with_classes(7);
        let sd = random_state_dict(&spec);
        let params: usize = sd.iter().map(|t| t.2.len()).sum();
        let lw = from_bytes(&sd_bytes(&sd, "module.")).unwrap();
        let net = &lw.net;
        assert_eq!(net.kind, kind);
        assert_eq!(net.blocks_per_stage(), blocks);
        assert_eq!(net.stage_channels(), spec.stage_channels());
        assert_eq!(net.arch_name(), name);
        assert_eq!(net.heads.fc.as_ref().unwrap().2, 7);
        // BN vectors fold into biases: 4 per out channel become 1.
        let bn: usize = sd
            .iter()
            .filter(|t| t.0.contains("bn") || t.0.contains("downsample.1"))
            .map(|t| t.2.len())
            .sum();
        assert_eq!(net.parameter_count(), params - bn * 3 / 4, "depth {depth}");
        // Deterministic per seed.
        assert_eq!(random_state_dict(&spec)[5], sd[5]);
        // And random_resnet is the same network.
        assert_same_net(&random_resnet(&spec), net);
    }
    assert!(RandomSpec::resnet(42, 64, 0).is_err());
}

#[test]
fn swav_wide_variant_is_detected() {
    let t = Instant::now();
    let spec = RandomSpec::resnet(50, 128, 1).unwrap();
    let net = random_resnet(&spec);
    eprintln!("random ResNet-50-w2: {:.2?}", t.elapsed());
    assert_eq!(net.arch_name(), "ResNet-50-w2");
    assert_eq!(net.stem.cout, 128);
    assert_eq!(net.stage_channels(), [512, 1024, 2048, 4096]);
    assert_eq!(net.stages[3][0].convs[0].cout, 1024);
    assert!(net.heads.fc.is_none());
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64).sqrt()
}

/// Realistic BN statistics keep activations O(1) through the depth.
#[test]
fn random_resnet50_activations_stay_order_one() {
    let t = Instant::now();
    let net = random_resnet(&RandomSpec::resnet(50, 64, 5).unwrap());
    let took = t.elapsed();
    eprintln!("random ResNet-50 (width 64): {took:.2?}");
    assert!(
        took.as_secs_f64() < 15.0,
        "random ResNet-50 took {took:.2?}"
    );
    assert_eq!(net.arch_name(), "ResNet-50");
    for img in ["img_64x64.png", "img_96x72.png"] {
        let outs = forward(&net, &load_png(img));
        for (i, o) in outs.iter().enumerate() {
            let r = rms(&o.d);
            let frac_pos = o.d.iter().filter(|&&v| v > 0.0).count() as f64 / o.d.len() as f64;
            eprintln!(
                "{img} layer{}: rms {r:.3}, {:.0}% positive",
                i + 1,
                frac_pos * 100.0
            );
            assert!((1e-2..1e2).contains(&r), "{img} layer{}: rms {r}", i + 1);
            assert!(frac_pos > 0.05, "{img} layer{}: mostly dead", i + 1);
        }
    }
    // A deep narrow one: the residual stream grows with depth, but stays within range.
    let net = random_resnet(&RandomSpec::resnet(152, 8, 5).unwrap());
    let outs = forward(&net, &load_png("img_64x64.png"));
    for (i, o) in outs.iter().enumerate() {
        let r = rms(&o.d);
        eprintln!("ResNet-152 w8 layer{}: rms {r:.3}", i + 1);
        assert!(
            (1e-2..1e2).contains(&r),
            "ResNet-152 layer{}: rms {r}",
            i + 1
        );
    }
}

/// MoCo v3 keeps the backbone under `module.base_encoder.` next to a `module.momentum_encoder.`
/// copy and a predictor: the base encoder is loaded, the rest ignored and listed.
#[test]
fn moco_v3_base_encoder_is_loaded_momentum_encoder_ignored() {
    let sd = random_state_dict(&small_spec(18));
    let other = random_state_dict(&RandomSpec::resnet(18, 8, 99).unwrap());
    let mut both: Vec<NamedTensor> = sd
        .iter()
        .map(|(k, s, d)| (format!("module.base_encoder.{k}"), s.clone(), d.clone()))
        .collect();
    both.extend(
        other
            .iter()
            .map(|(k, s, d)| (format!("module.momentum_encoder.{k}"), s.clone(), d.clone())),
    );
    both.push((
        "module.predictor.0.weight".into(),
        vec![4, 8],
        vec![0.5; 32],
    ));
    let lw = from_bytes(&to_safetensors_bytes(&both, Dtype::F32, "", &[])).unwrap();
    let plain = from_bytes(&sd_bytes(&sd, "")).unwrap();
    assert_eq!(lw.net.arch_name(), plain.net.arch_name());
    assert!(
        lw.prefixes.iter().any(|p| p == "base_encoder."),
        "{:?}",
        lw.prefixes
    );
    for (a, b) in all_convs(&lw.net).into_iter().zip(all_convs(&plain.net)) {
        assert_eq!(a, b, "{} differs from the base encoder's", a.name);
    }
}
