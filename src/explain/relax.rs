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

use super::lafam::{Explainer, ImageBatch};
use crate::backend::{CamBackend, Upsample};
use crate::model::{forward, Stage};
pub use crate::ops::relax_mask::{
    host_masks, mask_value, mask_word, pcg, seed_key, MaskStream, CELLS, PAD,
};
use crate::tensor::{HostTensor, Shape};
use anyhow::{ensure, Result};

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
}

impl<B: CamBackend> Explainer<B> {
    /// The globally pooled final-stage embedding of a preprocessed batch: `[n, 1, 1, C]`.
    pub fn embed(&mut self, x: &B::Tensor) -> Result<B::Tensor> {
        let outs = forward(&mut self.backend, &self.net, x, Stage::Layer4)?;
        self.backend.spatial_mean(&outs[Stage::Layer4.index()])
    }

    /// RELAX for one preprocessed image `x` (`[1, h, w, 3]`), at its resolution.
    pub fn relax_one(&mut self, x: &B::Tensor, cfg: &RelaxConfig) -> Result<RelaxMaps> {
        ensure!(cfg.masks > 0, "RELAX needs at least one mask");
        ensure!(cfg.batch > 0, "RELAX mask batch must be at least 1");
        ensure!(
            cfg.masks as u64 <= u32::MAX as u64,
            "RELAX: at most 2^32 - 1 masks"
        );
        let s = self.backend.shape(x);
        ensure!(
            s.n == 1 && s.c == 3,
            "relax_one takes one RGB image, got {s}"
        );
        let (h, w) = (s.h, s.w);
        let per_pass = cfg.batch.min(self.max_batch(h, w, Stage::Layer4)).max(1);
        let reference = self.embed(x)?;
        let mut acc: Option<B::Tensor> = None;
        let mut shift = 0f32;
        let mut start = 0usize;
        while start < cfg.masks {
            let count = per_pass.min(cfg.masks - start);
            let b = &mut self.backend;
            let masks = b.relax_masks(cfg.seed, start as u32, count, h, w)?;
            let xm = b.mask_images(x, &masks)?;
            let emb = self.embed(&xm)?;
            let sims = self.backend.cosine_similarity(&emb, &reference)?;
            if start == 0 {
                let first = self.backend.download(&sims)?;
                shift = (first.data.iter().map(|&v| v as f64).sum::<f64>() / count as f64) as f32;
            }
            acc = Some(
                self.backend
                    .relax_accumulate(acc.as_ref(), &masks, &sims, shift)?,
            );
            start += count;
        }
        let sums = self
            .backend
            .download(acc.as_ref().expect("at least one batch"))?;
        let (importance, uncertainty) = finish(&sums, shift);
        Ok(RelaxMaps {
            importance,
            uncertainty,
        })
    }

    /// RELAX maps of every image, image `i` resampled bilinearly to `out_sizes[i]`:
    /// `(importance, uncertainty)`, each `[1, h, w, 1]`. Images are explained one at a time
    /// (each needs `cfg.masks` forward passes).
    pub fn relax(
        &mut self,
        images: ImageBatch,
        cfg: &RelaxConfig,
        out_sizes: &[(usize, usize)],
    ) -> Result<Vec<(HostTensor, HostTensor)>> {
        ensure!(
            out_sizes.len() == images.n,
            "{} output sizes for {} images",
            out_sizes.len(),
            images.n
        );
        let mut maps = Vec::with_capacity(images.n);
        for (i, &(oh, ow)) in out_sizes.iter().enumerate() {
            let one = images.slice(i, 1);
            let x = self.backend.preprocess(one.rgb, 1, one.h, one.w)?;
            let r = self.relax_one(&x, cfg)?;
            if (oh, ow) == (one.h, one.w) {
                maps.push((r.importance, r.uncertainty));
                continue;
            }
            let both = HostTensor::new(
                Shape::new(1, one.h, one.w, 2),
                r.importance
                    .data
                    .iter()
                    .zip(&r.uncertainty.data)
                    .flat_map(|(&a, &b)| [a, b])
                    .collect(),
            );
            let t = self.backend.upload(&both)?;
            let big = self.backend.resize(&t, oh, ow, Upsample::Bilinear)?;
            let big = self.backend.download(&big)?;
            let shape = Shape::new(1, oh, ow, 1);
            let imp = big.data.iter().step_by(2).copied().collect();
            let unc = big.data.iter().skip(1).step_by(2).copied().collect();
            maps.push((HostTensor::new(shape, imp), HostTensor::new(shape, unc)));
        }
        Ok(maps)
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
