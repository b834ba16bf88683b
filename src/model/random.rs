//! Random ResNet weights with the real key layouts and realistic BatchNorm statistics, for
//! tests and `bench --arch`.
//!
//! Conv weights are kaiming-normal (fan_out, ReLU), as torchvision initialises them;
//! `γ ~ U(0.5, 1.5)`, `β ~ N(0, 0.1)`. The running statistics are measured, as BatchNorm's
//! running averages would record them, on a small calibration batch (4 smooth 80x80 images:
//! upsampled colour noise plus a bright blob, ImageNet-normalised) pushed through the network
//! as it is generated, layer by layer. So every folded conv outputs about `γ·N(0,1) + β` per
//! channel on natural-looking input and activations stay O(1) through any depth, as in a
//! trained network (an analytic choice of the statistics was tried first: its per-layer
//! errors compound over the residual stream to activations of ~40 by ResNet-50's layer4).
//! The calibration forward uses im2col + `gemm`; it costs a fraction of a second for
//! ResNet-50.
//!
//! [`random_resnet`] goes through [`to_safetensors_bytes`] and the real loader, so tests and
//! benchmarks exercise the same path as a checkpoint on disk.

use super::load::{load_weights_from_bytes, LoadedWeights};
use super::{BlockKind, ConvLayer, ResNet};
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use std::collections::HashMap;
use std::path::Path;

/// What random network to make. Stage planes are `width·{1,2,4,8}` (x4 out of a Bottleneck),
/// the stem has `width` channels: width 64 is torchvision's, 128/256/320 are SwAV's
/// RN50-w2/w4/w5.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RandomSpec {
    pub blocks: [usize; 4],
    pub kind: BlockKind,
    pub width: usize,
    /// Number of classes of a linear `fc` head; None = no fc (self-supervised backbone).
    pub classes: Option<usize>,
    pub seed: u64,
}

impl RandomSpec {
    /// torchvision ResNet-18/34/50/101/152 with stem width `width` and no fc head.
    pub fn resnet(depth: usize, width: usize, seed: u64) -> Result<Self> {
        let (blocks, kind) = match depth {
            18 => ([2, 2, 2, 2], BlockKind::Basic),
            34 => ([3, 4, 6, 3], BlockKind::Basic),
            50 => ([3, 4, 6, 3], BlockKind::Bottleneck),
            101 => ([3, 4, 23, 3], BlockKind::Bottleneck),
            152 => ([3, 8, 36, 3], BlockKind::Bottleneck),
            _ => bail!("unknown ResNet depth {depth}: expected 18, 34, 50, 101 or 152"),
        };
        if width == 0 {
            bail!("ResNet width must be positive");
        }
        Ok(RandomSpec {
            blocks,
            kind,
            width,
            classes: None,
            seed,
        })
    }

    /// The same network with a linear `fc` head of `classes` outputs.
    pub fn with_classes(mut self, classes: usize) -> Self {
        self.classes = Some(classes);
        self
    }

    pub fn expansion(&self) -> usize {
        match self.kind {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }

    /// Output channels of each stage.
    pub fn stage_channels(&self) -> [usize; 4] {
        [1, 2, 4, 8].map(|m| m * self.width * self.expansion())
    }
}

/// Storage dtype of a written safetensors file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
}

/// A named tensor of a state dict: (key, PyTorch shape, values row-major).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// A batch of NHWC activations used to calibrate the BatchNorm statistics.
#[derive(Clone)]
struct Act {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    d: Vec<f32>,
}

/// Calibration images: `CALIB_N` smooth `CALIB_HW`² images (bilinearly upsampled 8x8 colour
/// noise plus a bright blob, as the reference fixtures use), ImageNet-normalised.
const CALIB_N: usize = 4;
const CALIB_HW: usize = 80;

fn calibration_images(seed: u64) -> Act {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_ca1b_0000_0001);
    let (n, hw) = (CALIB_N, CALIB_HW);
    let mean = [0.485f32, 0.456, 0.406];
    let std = [0.229f32, 0.224, 0.225];
    let mut d = vec![0f32; n * hw * hw * 3];
    for img in 0..n {
        let noise: Vec<f32> = (0..3 * 64).map(|_| rng.random::<f32>()).collect();
        let cy = rng.random_range(0.25..0.75) * hw as f32;
        let cx = rng.random_range(0.25..0.75) * hw as f32;
        let r = rng.random_range(0.08..0.2) * hw as f32;
        let tint: Vec<f32> = (0..3).map(|_| rng.random_range(0.7..1.0)).collect();
        // Bilinear, align_corners=False, from 8x8.
        let src = |o: usize| -> (usize, usize, f32) {
            let s = ((o as f32 + 0.5) * 8.0 / hw as f32 - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(7);
            (i0, (i0 + 1).min(7), s - i0 as f32)
        };
        for y in 0..hw {
            let (y0, y1, fy) = src(y);
            for x in 0..hw {
                let (x0, x1, fx) = src(x);
                let dy = y as f32 - cy;
                let dx = x as f32 - cx;
                let blob = (-(dy * dy + dx * dx) / (2.0 * r * r)).exp();
                for c in 0..3 {
                    let g = |yy: usize, xx: usize| noise[c * 64 + yy * 8 + xx];
                    let v = (1.0 - fy) * ((1.0 - fx) * g(y0, x0) + fx * g(y0, x1))
                        + fy * ((1.0 - fx) * g(y1, x0) + fx * g(y1, x1));
                    let px = (30.0 + 160.0 * v + 220.0 * blob * tint[c])
                        .clamp(0.0, 255.0)
                        .round();
                    d[((img * hw + y) * hw + x) * 3 + c] = (px / 255.0 - mean[c]) / std[c];
                }
            }
        }
    }
    Act {
        n,
        h: hw,
        w: hw,
        c: 3,
        d,
    }
}

/// `x` convolved with an OIHW weight (no bias), zero padding, via im2col + GEMM.
fn conv_raw(x: &Act, w: &[f32], cout: usize, k: usize, stride: usize, pad: usize) -> Act {
    use rayon::prelude::*;
    let cin = x.c;
    let oh = (x.h + 2 * pad - k) / stride + 1;
    let ow = (x.w + 2 * pad - k) / stride + 1;
    let rows = x.n * oh * ow;
    let kk = k * k * cin;
    // OIHW -> [kh*kw*cin, cout]
    let mut rhs = vec![0f32; kk * cout];
    for o in 0..cout {
        for i in 0..cin {
            for ky in 0..k {
                for kx in 0..k {
                    rhs[((ky * k + kx) * cin + i) * cout + o] =
                        w[((o * cin + i) * k + ky) * k + kx];
                }
            }
        }
    }
    let direct = k == 1 && stride == 1 && pad == 0;
    let cols: Vec<f32> = if direct {
        Vec::new()
    } else {
        let mut cols = vec![0f32; rows * kk];
        cols.par_chunks_mut(kk).enumerate().for_each(|(r, row)| {
            let (img, p) = (r / (oh * ow), r % (oh * ow));
            let (oy, ox) = (p / ow, p % ow);
            for ky in 0..k {
                let iy = (oy * stride + ky) as isize - pad as isize;
                for kx in 0..k {
                    let ix = (ox * stride + kx) as isize - pad as isize;
                    let dst = &mut row[(ky * k + kx) * cin..][..cin];
                    if iy >= 0 && ix >= 0 && (iy as usize) < x.h && (ix as usize) < x.w {
                        let src = ((img * x.h + iy as usize) * x.w + ix as usize) * cin;
                        dst.copy_from_slice(&x.d[src..src + cin]);
                    }
                }
            }
        });
        cols
    };
    let lhs = if direct { &x.d } else { &cols };
    assert_eq!(lhs.len(), rows * kk);
    let mut out = vec![0f32; rows * cout];
    // SAFETY: dst is rows x cout, lhs rows x kk, rhs kk x cout, all row-major and of exactly
    // these lengths (checked above / by construction).
    unsafe {
        gemm::gemm(
            rows,
            cout,
            kk,
            out.as_mut_ptr(),
            1,
            cout as isize,
            false,
            lhs.as_ptr(),
            1,
            kk as isize,
            rhs.as_ptr(),
            1,
            cout as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    Act {
        n: x.n,
        h: oh,
        w: ow,
        c: cout,
        d: out,
    }
}

struct Gen {
    rng: StdRng,
    out: Vec<NamedTensor>,
}

impl Gen {
    fn normal(&mut self) -> f32 {
        StandardNormal.sample(&mut self.rng)
    }

    /// A kaiming-normal conv and its BatchNorm, the statistics measured on `x` (the
    /// calibration batch at this layer's input). Returns the BN output (before any ReLU).
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        x: &Act,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Act {
        let cin = x.c;
        let std = (2.0 / (cout * k * k) as f64).sqrt() as f32;
        let w: Vec<f32> = (0..cout * cin * k * k)
            .map(|_| self.normal() * std)
            .collect();
        let mut z = conv_raw(x, &w, cout, k, stride, pad);
        self.out
            .push((format!("{conv}.weight"), vec![cout, cin, k, k], w));
        let gamma: Vec<f32> = (0..cout)
            .map(|_| self.rng.random_range(0.5f32..1.5))
            .collect();
        let beta: Vec<f32> = (0..cout).map(|_| 0.1 * self.normal()).collect();
        // Batch statistics, as BatchNorm's running averages would record them (unbiased var).
        let rows = z.d.len() / cout;
        let (mut sum, mut sq) = (vec![0f64; cout], vec![0f64; cout]);
        for row in z.d.chunks_exact(cout) {
            for o in 0..cout {
                let v = row[o] as f64;
                sum[o] += v;
                sq[o] += v * v;
            }
        }
        let rn = rows as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / rn) as f32).collect();
        let var: Vec<f32> = (0..cout)
            .map(|o| {
                let m = sum[o] / rn;
                let pop = (sq[o] / rn - m * m).max(0.0);
                (pop * rn / (rn - 1.0).max(1.0)).max(1e-6) as f32
            })
            .collect();
        let scale: Vec<f32> = (0..cout)
            .map(|o| gamma[o] / (var[o] as f64 + 1e-5).sqrt() as f32)
            .collect();
        for row in z.d.chunks_exact_mut(cout) {
            for o in 0..cout {
                row[o] = (row[o] - mean[o]) * scale[o] + beta[o];
            }
        }
        self.out.push((format!("{bn}.weight"), vec![cout], gamma));
        self.out.push((format!("{bn}.bias"), vec![cout], beta));
        self.out
            .push((format!("{bn}.running_mean"), vec![cout], mean));
        self.out
            .push((format!("{bn}.running_var"), vec![cout], var));
        z
    }
}

fn relu(mut a: Act) -> Act {
    for v in &mut a.d {
        *v = v.max(0.0);
    }
    a
}

fn max_pool_3x3s2(x: &Act) -> Act {
    let (oh, ow) = ((x.h - 1) / 2 + 1, (x.w - 1) / 2 + 1);
    let mut d = vec![f32::NEG_INFINITY; x.n * oh * ow * x.c];
    for img in 0..x.n {
        for oy in 0..oh {
            for ox in 0..ow {
                let o = ((img * oh + oy) * ow + ox) * x.c;
                for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(x.h) {
                    for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(x.w) {
                        let i = ((img * x.h + iy) * x.w + ix) * x.c;
                        for c in 0..x.c {
                            d[o + c] = d[o + c].max(x.d[i + c]);
                        }
                    }
                }
            }
        }
    }
    Act {
        n: x.n,
        h: oh,
        w: ow,
        c: x.c,
        d,
    }
}

/// A random state dict in torchvision's key layout and PyTorch shapes (OIHW convs,
/// `[classes, features]` fc). `num_batches_tracked` is omitted (the loader ignores it).
pub fn random_state_dict(spec: &RandomSpec) -> Vec<NamedTensor> {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(spec.seed),
        out: Vec::new(),
    };
    let w = spec.width;
    let exp = spec.expansion();
    let x = calibration_images(spec.seed);
    let mut x = max_pool_3x3s2(&relu(g.conv_bn("conv1", "bn1", &x, w, 7, 2, 3)));
    for (s, &n) in spec.blocks.iter().enumerate() {
        let planes = w << s;
        let out = planes * exp;
        for j in 0..n {
            let p = format!("layer{}.{j}", s + 1);
            let stride = if s > 0 && j == 0 { 2 } else { 1 };
            let name = |i: usize| (format!("{p}.conv{i}"), format!("{p}.bn{i}"));
            let res = match spec.kind {
                BlockKind::Bottleneck => {
                    let (c, b) = name(1);
                    let y = relu(g.conv_bn(&c, &b, &x, planes, 1, 1, 0));
                    let (c, b) = name(2);
                    let y = relu(g.conv_bn(&c, &b, &y, planes, 3, stride, 1));
                    let (c, b) = name(3);
                    g.conv_bn(&c, &b, &y, out, 1, 1, 0)
                }
                BlockKind::Basic => {
                    let (c, b) = name(1);
                    let y = relu(g.conv_bn(&c, &b, &x, planes, 3, stride, 1));
                    let (c, b) = name(2);
                    g.conv_bn(&c, &b, &y, out, 3, 1, 1)
                }
            };
            let skip = if j == 0 && (stride != 1 || x.c != out) {
                let (c, b) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                g.conv_bn(&c, &b, &x, out, 1, stride, 0)
            } else {
                x
            };
            let mut sum = res;
            for (a, b) in sum.d.iter_mut().zip(&skip.d) {
                *a += b;
            }
            x = relu(sum);
        }
    }
    let cin = x.c;
    if let Some(classes) = spec.classes {
        // nn.Linear's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let bound = 1.0 / (cin as f32).sqrt();
        let mut u =
            |n: usize| -> Vec<f32> { (0..n).map(|_| g.rng.random_range(-bound..bound)).collect() };
        let weight = u(classes * cin);
        let bias = u(classes);
        g.out
            .push(("fc.weight".to_string(), vec![classes, cin], weight));
        g.out.push(("fc.bias".to_string(), vec![classes], bias));
    }
    g.out
}

/// Serialises tensors to safetensors bytes with `prefix` before every key, rounding to
/// `dtype` (round-to-nearest-even), with `metadata` as the header's `__metadata__`.
///
/// Panics if a tensor's data length does not match its shape.
pub fn to_safetensors_bytes(
    tensors: &[NamedTensor],
    dtype: Dtype,
    prefix: &str,
    metadata: &[(&str, &str)],
) -> Vec<u8> {
    let (st_dtype, bytes): (safetensors::Dtype, Vec<Vec<u8>>) = match dtype {
        Dtype::F32 => (
            safetensors::Dtype::F32,
            tensors
                .iter()
                .map(|t| t.2.iter().flat_map(|v| v.to_le_bytes()).collect())
                .collect(),
        ),
        Dtype::F16 => (
            safetensors::Dtype::F16,
            tensors
                .iter()
                .map(|t| {
                    t.2.iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect()
                })
                .collect(),
        ),
        Dtype::BF16 => (
            safetensors::Dtype::BF16,
            tensors
                .iter()
                .map(|t| {
                    t.2.iter()
                        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                        .collect()
                })
                .collect(),
        ),
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, data), b)| {
            assert_eq!(
                shape.iter().product::<usize>(),
                data.len(),
                "tensor {name}: data does not match shape {shape:?}"
            );
            let view = safetensors::tensor::TensorView::new(st_dtype, shape.clone(), b)
                .expect("tensor bytes match its shape");
            (format!("{prefix}{name}"), view)
        })
        .collect();
    let meta: Option<HashMap<String, String>> = if metadata.is_empty() {
        None
    } else {
        Some(
            metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    safetensors::serialize(views, meta).expect("safetensors serialisation")
}

/// A random backbone loaded through the real loader (F32, no prefix).
pub fn random_weights(spec: &RandomSpec) -> LoadedWeights {
    let bytes = to_safetensors_bytes(&random_state_dict(spec), Dtype::F32, "", &[]);
    let source = format!("random {spec:?}");
    load_weights_from_bytes(&bytes, Path::new(&source)).expect("random weights load")
}

/// A random backbone (see [`random_weights`]).
pub fn random_resnet(spec: &RandomSpec) -> ResNet<ConvLayer> {
    random_weights(spec).net
}
