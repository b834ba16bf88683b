//! EigenCAM (Muhammad & Yeasin 2020) with the semantics of pytorch-grad-cam 1.5's
//! `get_2d_projection`: the stage's activations as an `hw x c` matrix `X`, centred per
//! channel (`Xc = X - mean_hw X`), projected on its first right singular vector `v₁`:
//! `p = Xc v₁`; then as every CAM there: `ReLU`, min-max normalised, bilinearly upsampled,
//! normalised again.
//!
//! **Sign convention.** A singular vector's sign is arbitrary (numpy's SVD returns whichever
//! LAPACK finds). We fix it so that `p` correlates positively with the channel mean of the
//! activations (the LaFAM map before normalisation): `Σ_i p_i (m_i - mean m) >= 0`, else
//! `p = -p`. pytorch-grad-cam's map equals ours whenever its SVD happened to return that sign.
//!
//! **Where it runs.** The centred Gram matrix is formed on the device (the only pass over the
//! activations), over whichever side is smaller: `Xc Xcᵀ` (`hw x hw`, e.g. 49x49 at layer4 of
//! a 224² image) or `Xcᵀ Xc` (`c x c`). Its top eigenvector is found on the host by power
//! iteration in f64: the matrix is at most a few hundred wide for the usual layers, a
//! device-side power iteration would need one dispatch and one synchronisation per iteration,
//! and downloading a 49x49 matrix costs less than either. For `Xc Xcᵀ` the top eigenpair
//! `(λ₁, u₁)` gives `p = sqrt(λ₁) u₁` directly; for `Xcᵀ Xc` it gives `v₁` and `p` is projected
//! on the device.

use super::method::{Display, MethodInfo, Needs, Pass, Produced, Resample};
use crate::backend::{CamBackend, GramOver};
use crate::tensor::{HostTensor, Shape};
use anyhow::{Context, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "eigencam",
    about: "EigenCAM: the layer's activations projected on their first principal component \
            (pytorch-grad-cam semantics, sign fixed to agree with lafam)",
    needs: Needs::Activations,
    outputs: &[""],
    resample: Resample::BilinearRenormalised,
    display: Display::Unit,
    needs_classifier: false,
};

pub fn run<B: CamBackend>(pass: &mut Pass<'_, B>) -> Result<Produced<B::Tensor>> {
    let a = pass.tape.as_ref().context("EigenCAM needs a forward pass")?.activations();
    let (small, non_finite) = eigencam_small(pass.b, a)?;
    Ok(Produced {
        non_finite,
        ..Produced::one(small)
    })
}

/// Top eigenpair of a symmetric positive semi-definite `d x d` matrix by power iteration in
/// f64. Returns `(λ₁, v₁)` with `|v₁| = 1`.
pub fn top_eigenpair(a: &[f32], d: usize) -> (f64, Vec<f64>) {
    let a: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    // Start from the row sums of |A| (not orthogonal to the top eigenvector of a PSD matrix
    // with non-negative... in practice), nudged so it is never zero.
    let mut v: Vec<f64> = (0..d)
        .map(|i| {
            a[i * d..(i + 1) * d].iter().map(|x| x.abs()).sum::<f64>()
                + 1e-3 * (1.0 + i as f64 / d as f64)
        })
        .collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let n0 = norm(&v);
    v.iter_mut().for_each(|x| *x /= n0);
    let mut lambda = 0.0;
    let mut w = vec![0f64; d];
    for _ in 0..20_000 {
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = a[i * d..(i + 1) * d]
                .iter()
                .zip(&v)
                .map(|(x, y)| x * y)
                .sum();
        }
        lambda = w.iter().zip(&v).map(|(x, y)| x * y).sum();
        let n = norm(&w);
        if n == 0.0 {
            return (0.0, v);
        }
        let mut delta = 0f64;
        for (vi, wi) in v.iter_mut().zip(&w) {
            let new = wi / n;
            delta = delta.max((new - *vi).abs());
            *vi = new;
        }
        if delta < 1e-13 {
            break;
        }
    }
    (lambda.max(0.0), v)
}

/// EigenCAM at the stage's resolution from the stage's activations `a` (`[n, h, w, c]`):
/// sign-fixed, ReLU'd and min-max normalised, `[n, h, w, 1]`; with, per image, whether
/// its activations were not finite (its map is then meaningless: the ReLU would turn
/// the NaNs into zeros, so the caller must not use it).
pub fn eigencam_small<B: CamBackend>(b: &mut B, a: &B::Tensor) -> Result<(B::Tensor, Vec<bool>)> {
    let p = eigen_projection(b, a)?;
    let hw = p.shape.h * p.shape.w;
    let bad: Vec<bool> = (0..p.shape.n)
        .map(|i| p.data[i * hw..(i + 1) * hw].iter().any(|v| !v.is_finite()))
        .collect();
    let relu = HostTensor::new(p.shape, p.data.iter().map(|&v| v.max(0.0)).collect());
    let t = b.upload(&relu)?;
    Ok((b.minmax_normalise(&t)?, bad))
}

/// The sign-fixed projection `p = Xc v₁` of every image, `[n, h, w, 1]` (before ReLU).
/// An image whose activations are not finite (seen in the downloaded channel means and
/// Gram matrix) gets a NaN projection.
pub fn eigen_projection<B: CamBackend>(b: &mut B, a: &B::Tensor) -> Result<HostTensor> {
    let s = b.shape(a);
    let hw = s.h * s.w;
    let mean = b.spatial_mean(a)?;
    let over = if hw <= s.c {
        GramOver::Pixels
    } else {
        GramOver::Channels
    };
    let gram = b.centred_gram(a, &mean, over)?;
    let cmean = b.channel_mean(a)?;
    let gram = b.download(&gram)?;
    let cmean = b.download(&cmean)?;
    let d = gram.shape.h;
    let bad: Vec<bool> = (0..s.n)
        .map(|img| {
            let g = &gram.data[img * d * d..(img + 1) * d * d];
            let m = &cmean.data[img * hw..(img + 1) * hw];
            g.iter().chain(m).any(|v| !v.is_finite())
        })
        .collect();
    let mut p: Vec<f32> = Vec::with_capacity(s.n * hw);
    match over {
        GramOver::Pixels => {
            for (img, &bad) in bad.iter().enumerate() {
                if bad {
                    p.extend(std::iter::repeat_n(f32::NAN, hw));
                    continue;
                }
                let (l, u) = top_eigenpair(&gram.data[img * d * d..(img + 1) * d * d], d);
                p.extend(u.iter().map(|&x| (x * l.sqrt()) as f32));
            }
        }
        GramOver::Channels => {
            let mut vs = Vec::with_capacity(s.n * s.c);
            for (img, &bad) in bad.iter().enumerate() {
                if bad {
                    vs.extend(std::iter::repeat_n(0.0, s.c));
                    continue;
                }
                let (_, v) = top_eigenpair(&gram.data[img * d * d..(img + 1) * d * d], d);
                vs.extend(v.iter().map(|&x| x as f32));
            }
            let v = b.upload(&HostTensor::new(Shape::new(s.n, 1, 1, s.c), vs))?;
            let proj = b.channel_projection(a, &v, Some(&mean), false)?;
            p = b.download(&proj)?.data;
            for img in (0..s.n).filter(|&i| bad[i]) {
                p[img * hw..(img + 1) * hw].fill(f32::NAN);
            }
        }
    }
    for img in 0..s.n {
        let m = &cmean.data[img * hw..(img + 1) * hw];
        let mm = m.iter().map(|&x| x as f64).sum::<f64>() / hw as f64;
        let pi = &mut p[img * hw..(img + 1) * hw];
        let corr: f64 = pi
            .iter()
            .zip(m)
            .map(|(&x, &y)| x as f64 * (y as f64 - mm))
            .sum();
        if corr < 0.0 {
            pi.iter_mut().for_each(|x| *x = -*x);
        }
    }
    Ok(HostTensor::new(Shape::new(s.n, s.h, s.w, 1), p))
}
