//! RELAX (Wickstrøm et al., "RELAX: Representation Learning Explainability", IJCV 2023):
//! occlusion-based, label-free. For `N` random masks `m_n` (values in [0, 1], one per pixel)
//! the masked image `x ⊙ m_n` (on the normalised input) is embedded, `f` = globally averaged
//! final-stage (layer4) features, and compared with the unmasked embedding:
//! `s_n = cos(f(x), f(x ⊙ m_n))`. Per pixel:
//!
//! - importance `R = Σ_n s_n m_n / Σ_n m_n` (the paper's `R̄`, a mask-weighted mean of
//!   the similarities);
//! - uncertainty `U = Σ_n m_n (s_n - R)²`, exactly what the authors' code returns
//!   (`RELAX.uncertainty` in github.com/Wickstrom/RELAX, `relax_xai/relax.py`): its Welford
//!   update `U += (s - R_new)(s - R_old) m` sums `Σ m (s - R)²` and is never divided (a
//!   weighted variance would divide by about `Σ m`, i.e. N/2 for N masks). It therefore grows
//!   with the number of masks; its per-pixel ranking, which the uncertainty-filtered map
//!   `R · [U <= median U]` uses, does not depend on that scale.
//!
//! The sums are accumulated on the device in f32 with the similarities shifted by the mean
//! similarity of the first mask batch (a constant: it changes neither quantity but keeps the
//! variance free of cancellation); `R` and `U` are finished in f64 on the host.
//!
//! ## Masks
//! As the authors' `MaskGenerator`: a 7x7 grid of Bernoulli(0.5) cells, bilinearly upsampled
//! to the image (torch `interpolate`, `align_corners=False`), reflect-padded by 3 pixels and
//! cropped back at a random shift of 0..=6 pixels per axis (one shift per mask). The random
//! numbers come from a counter-based generator, so mask `i` of seed `S` is the same on every
//! backend, in any batch split, and is generated on the device:
//! `pcg(v)` is the PCG-RXS-M-XS 32-bit hash (Jarzynski & Olano 2020),
//! `key = pcg(seed_lo ^ pcg(seed_hi))`, `k_i = pcg(key ^ pcg(i))`,
//! `r_i(j) = pcg(k_i ^ pcg(j ^ 0x9E3779B9))`; cell `j = 7 gy + gx` is 1 when the top bit of
//! `r_i(j)` is set; the shifts are `r_i(49) mod 7` (rows) and `r_i(50) mod 7` (columns).
//! `tests/fixtures/gen_baselines.py` reimplements this generator in numpy.

use super::engine::{finite_images, finite_probe, max_batch, Engine};
use super::method::{Display, MethodInfo, Needs, Pass, Produced, Resample};
use super::tape::{forward, TapeSpec};
use crate::backend::CamBackend;
use crate::model::{ConvLayer, ResNet, Stage};
use crate::tensor::{HostTensor, Shape};
use anyhow::{ensure, Result};
pub use crate::ops::relax_mask::{
    host_masks, mask_value, mask_word, pcg, seed_key, MaskStream, CELLS, PAD,
};

pub const INFO: MethodInfo = MethodInfo {
    name: "relax",
    about: "RELAX: occlusion with random masks (--masks, --seed), cosine similarity of pooled \
            layer4 embeddings; also writes <stem>.relax-uncertainty.*",
    needs: Needs::OwnPasses,
    outputs: &["", "-uncertainty"],
    resample: Resample::Bilinear,
    display: Display::Scaled,
    needs_classifier: false,
};

/// Importance and uncertainty of every image of the pass, at the network's resolution
/// (`[n, h, w, 1]` each). Images are explained one at a time: each needs `masks` forward
/// passes.
pub fn run<B: CamBackend>(pass: &mut Pass<'_, B>) -> Result<Produced<B::Tensor>> {
    let images = pass.images;
    let (mut imp, mut unc) = (Vec::with_capacity(images.n), Vec::with_capacity(images.n));
    let mut non_finite = Vec::with_capacity(images.n);
    for i in 0..images.n {
        let one = images.slice(i, 1);
        let x = pass.b.preprocess(one.rgb, 1, one.h, one.w)?;
        let r = relax_one(pass.b, pass.net, pass.spec, &x, &pass.request.relax)?;
        imp.push(r.importance);
        unc.push(r.uncertainty);
        non_finite.push(!r.finite);
    }
    let maps = [imp, unc]
        .iter()
        .map(|m| pass.b.upload(&HostTensor::stack(m)))
        .collect::<Result<_>>()?;
    Ok(Produced {
        non_finite,
        ..Produced::many(maps)
    })
}

/// RELAX settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelaxConfig {
    /// Number of masks `N`.
    pub masks: usize,
    /// Masks per forward pass (further limited by the device's buffer limits).
    pub batch: usize,
    pub seed: u64,
}

impl Default for RelaxConfig {
    fn default() -> Self {
        RelaxConfig {
            masks: 3000,
            batch: 100,
            seed: 0,
        }
    }
}

/// RELAX maps of one image at the network's input resolution, `[1, h, w, 1]` each.
#[derive(Clone, Debug)]
pub struct RelaxMaps {
    pub importance: HostTensor,
    pub uncertainty: HostTensor,
    /// Whether the unmasked image's activations were finite at every stage (else the maps
    /// are meaningless: a ReLU can turn an overflow into zeros).
    pub finite: bool,
}

/// The globally pooled final-stage embedding of a preprocessed batch: `[n, 1, 1, C]`.
pub fn embed<B: CamBackend>(b: &mut B, net: &ResNet<B::Conv>, x: &B::Tensor) -> Result<B::Tensor> {
    let tape = forward(b, net, x.clone(), TapeSpec::plain(Stage::Layer4), None)?;
    b.spatial_mean(tape.activations())
}

/// RELAX for one preprocessed image `x` (`[1, h, w, 3]`), at its resolution.
pub fn relax_one<B: CamBackend>(
    b: &mut B,
    net: &ResNet<B::Conv>,
    spec: &ResNet<ConvLayer>,
    x: &B::Tensor,
    cfg: &RelaxConfig,
) -> Result<RelaxMaps> {
    ensure!(cfg.masks > 0, "RELAX needs at least one mask");
    ensure!(cfg.batch > 0, "RELAX mask batch must be at least 1");
    ensure!(
        cfg.masks as u64 <= u32::MAX as u64,
        "RELAX: at most 2^32 - 1 masks"
    );
    let s = b.shape(x);
    ensure!(
        s.n == 1 && s.c == 3,
        "relax_one takes one RGB image, got {s}"
    );
    let (h, w) = (s.h, s.w);
    let per_pass = cfg
        .batch
        .min(max_batch(b, spec, h, w, Stage::Layer4))
        .max(1);
    let tape = forward(b, net, x.clone(), TapeSpec::plain(Stage::Layer4), None)?;
    let probe = finite_probe(b, &tape.outputs)?;
    let reference = b.spatial_mean(tape.activations())?;
    drop(tape);
    let mut acc: Option<B::Tensor> = None;
    let mut shift = 0f32;
    let mut start = 0usize;
    while start < cfg.masks {
        let count = per_pass.min(cfg.masks - start);
        let masks = b.relax_masks(cfg.seed, start as u32, count, h, w)?;
        let xm = b.mask_images(x, &masks)?;
        let emb = embed(b, net, &xm)?;
        let sims = b.cosine_similarity(&emb, &reference)?;
        if start == 0 {
            let first = b.download(&sims)?;
            shift = (first.data.iter().map(|&v| v as f64).sum::<f64>() / count as f64) as f32;
        }
        acc = Some(b.relax_accumulate(acc.as_ref(), &masks, &sims, shift)?);
        start += count;
    }
    let sums = b.download(acc.as_ref().expect("at least one batch"))?;
    let (importance, uncertainty) = finish(&sums, shift);
    let finite = finite_images(b, &probe)?.iter().all(|&ok| ok);
    Ok(RelaxMaps {
        importance,
        uncertainty,
        finite,
    })
}

impl<B: CamBackend, L> Engine<B, L> {
    /// RELAX for one preprocessed image `x` (`[1, h, w, 3]`), at its resolution.
    pub fn relax_one(&mut self, x: &B::Tensor, cfg: &RelaxConfig) -> Result<RelaxMaps> {
        relax_one(&mut self.backend, &self.net, &self.spec, x, cfg)
    }
}

/// `R` and `U` from the running sums `(Σ m, Σ m t, Σ m t²)`, `t = s - shift`.
fn finish(sums: &HostTensor, shift: f32) -> (HostTensor, HostTensor) {
    let s = sums.shape;
    let shape = Shape::new(1, s.h, s.w, 1);
    let mut r = Vec::with_capacity(s.h * s.w);
    let mut u = Vec::with_capacity(s.h * s.w);
    for px in sums.data.chunks(3) {
        let (w, s1, s2) = (px[0] as f64, px[1] as f64, px[2] as f64);
        if w <= 0.0 {
            r.push(0.0);
            u.push(0.0);
            continue;
        }
        let mean = s1 / w;
        r.push((shift as f64 + mean) as f32);
        // Σ m t² - (Σ m t)² / Σ m = Σ m (t - mean)² = Σ m (s - R)².
        u.push((s2 - s1 * mean).max(0.0) as f32);
    }
    (HostTensor::new(shape, r), HostTensor::new(shape, u))
}
