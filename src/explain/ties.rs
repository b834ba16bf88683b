//! Comparing LaFAM-LRP between two engines (a GPU and the CPU reference) where the map is
//! ill-conditioned.
//!
//! LRP has places where a rounding-sized change of the forward pass moves relevance by a
//! large amount, so two correct f32 engines that sum in different orders disagree there:
//! - **Max-pool**: the rule gives a window's whole relevance to its (first) largest input.
//!   When the two largest differ by less than the rounding error of the conv that made
//!   them, another summation order picks the other one.
//! - **Residual adds** (what the bundled `chelsea.jpg` hits): zennit's Norm rule splits a
//!   block's relevance `R` into `skip R / stab(p)` and `branch R / stab(p)`, `p = skip +
//!   branch`, `stab(p) = p + 1e-6`, and `R` is proportional to `relu(p)`. Where skip and
//!   branch cancel to within ~1e-5, the halves are `skip u f` and `branch u f` with
//!   `f = p / stab(p)` jumping from 0 to ~1 over `p` in [0, 1e-5]: one engine's `p = 8e-6`
//!   gives halves of ±0.5, another's `p <= 0` gives 0. They travel different paths, so
//!   ~1e-3 of the map moves between pixels while its total is unchanged.
//!
//! [`compare_lrp`] separates the two sources of difference. It runs the reference's
//! backward on the other engine's forward tensors (replayed through
//! [`ForwardTap`](super::lrp::ForwardTap)): against the other engine's map that isolates
//! the backward kernels, which must agree everywhere. Against the reference's own map it
//! isolates what the forward's rounding does through the ill-conditioned places; the pixels
//! where that is large are excluded when the two engines' maps are compared, and the tight
//! tolerance holds on the rest. A race or a wrong kernel shows up in the forward tensors or
//! the backward, which are compared in full.

use super::engine::{Engine, ImageBatch};
use super::lrp::{ForwardTap, LrpWeights, RelevanceTrace};
use crate::backend::{LrpBackend, Pool};
use crate::model::Stage;
use crate::tensor::{max_rel_err, HostTensor};
use anyhow::Result;

/// Default share of a map that the forward's rounding may still move, through
/// ill-conditioned places, on the pixels a comparison keeps, both as relative L2 and as max
/// relative error: half the parity tests' 1e-4, the other half left to the kernels.
pub const NEAR_TIE_BUDGET: f64 = 5e-5;

/// One engine's LaFAM-LRP against the reference's, with the differences taken apart.
#[derive(Clone, Debug)]
pub struct LrpComparison {
    /// Per pixel (N x H x W, summed over RGB): the reference's map, the other engine's, and
    /// the reference's backward run on the other's forward tensors.
    pub reference: Vec<f32>,
    pub other: Vec<f32>,
    pub reference_on_other_forward: Vec<f32>,
    /// Worst relative error (max |d| / max |ref|) of the other engine's forward tensors.
    pub forward_err: f64,
    /// Max-pool windows that the engines route to different inputs.
    pub pool_routes_differ: usize,
    /// Activations that are 0 on one engine and positive on the other (ReLU decided
    /// differently).
    pub relu_flips: usize,
    /// Pixels where the forward's rounding moves the map (largest first, until what is left
    /// is within the budget).
    pub excluded: Vec<bool>,
}

impl LrpComparison {
    /// Share of the pixels excluded.
    pub fn excluded_share(&self) -> f64 {
        self.excluded.iter().filter(|&&e| e).count() as f64 / self.excluded.len().max(1) as f64
    }
}

/// The first maximum (scan order) of each window of `pool` over `x`: where max-pool's
/// backward routes, per `(n, oy, ox, c)`.
fn pool_routes(x: &HostTensor, pool: Pool) -> Vec<(usize, usize)> {
    let s = x.shape;
    let (oh, ow) = pool.out_size(s.h, s.w);
    let mut routes = Vec::with_capacity(s.n * oh * ow * s.c);
    for n in 0..s.n {
        for oy in 0..oh {
            for ox in 0..ow {
                let ys = (oy * pool.stride).saturating_sub(pool.pad)
                    ..(oy * pool.stride + pool.kernel - pool.pad).min(s.h);
                let xs = (ox * pool.stride).saturating_sub(pool.pad)
                    ..(ox * pool.stride + pool.kernel - pool.pad).min(s.w);
                for c in 0..s.c {
                    let mut best = (f32::NEG_INFINITY, (0, 0));
                    for y in ys.clone() {
                        for xx in xs.clone() {
                            let v = x.data[((n * s.h + y) * s.w + xx) * s.c + c];
                            if v > best.0 {
                                best = (v, (y, xx));
                            }
                        }
                    }
                    routes.push(best.1);
                }
            }
        }
    }
    routes
}

/// One LRP pass with `tap` on the forward: the map per pixel and the tap back.
fn lrp_pass<B: LrpBackend>(
    ex: &mut Engine<B, LrpWeights<B::Conv>>,
    images: ImageBatch,
    stage: Stage,
    tap: ForwardTap,
) -> Result<(Vec<f32>, ForwardTap)> {
    let x = ex
        .backend
        .preprocess(images.rgb, images.n, images.h, images.w)?;
    let mut trace = RelevanceTrace {
        forward: Some(tap),
        ..Default::default()
    };
    let (r_in, _) = ex.lrp_input_relevance(x, stage, Some(&mut trace))?;
    let r_in = ex.backend.download(&r_in)?;
    let map = r_in
        .data
        .chunks(r_in.shape.c)
        .map(|px| px.iter().sum())
        .collect();
    Ok((map, trace.forward.unwrap_or_default()))
}

/// Compares `other`'s LaFAM-LRP of `images` at `stage` with `reference`'s (the CPU), the same
/// rules enabled on both; see the module docs. Pixels are excluded, per image, largest
/// forward-induced difference first, until what is left of it is at most `budget` of the
/// reference map, as relative L2 and as max relative error.
pub fn compare_lrp<R: LrpBackend, O: LrpBackend>(
    reference: &mut Engine<R, LrpWeights<R::Conv>>,
    other: &mut Engine<O, LrpWeights<O::Conv>>,
    images: ImageBatch,
    stage: Stage,
    budget: f64,
) -> Result<LrpComparison> {
    let (other_map, other_fwd) = lrp_pass(other, images, stage, ForwardTap::record())?;
    let (ref_map, ref_fwd) = lrp_pass(reference, images, stage, ForwardTap::record())?;
    let (mixed, _) = lrp_pass(
        reference,
        images,
        stage,
        ForwardTap::replay(other_fwd.clone()),
    )?;
    let mut forward_err = 0f64;
    let mut relu_flips = 0;
    for (a, b) in other_fwd.tensors.iter().zip(&ref_fwd.tensors) {
        forward_err = forward_err.max(max_rel_err(&a.data, &b.data));
        relu_flips += a
            .data
            .iter()
            .zip(&b.data)
            .filter(|(&x, &y)| (x == 0.0) != (y == 0.0) && x >= 0.0 && y >= 0.0)
            .count();
    }
    let pool_routes_differ = match (other_fwd.tensors.first(), ref_fwd.tensors.first()) {
        (Some(a), Some(b)) => pool_routes(a, Pool::RESNET_STEM)
            .iter()
            .zip(&pool_routes(b, Pool::RESNET_STEM))
            .filter(|(x, y)| x != y)
            .count(),
        _ => 0,
    };
    let (n, h, w) = (images.n, images.h, images.w);
    let mut excluded = vec![false; n * h * w];
    for ((img, mix), out) in ref_map
        .chunks(h * w)
        .zip(mixed.chunks(h * w))
        .zip(excluded.chunks_mut(h * w))
    {
        let moved: Vec<f64> = img.iter().zip(mix).map(|(&a, &b)| (a - b) as f64).collect();
        let top = img.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        let allowed_l2 = budget * budget * img.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        let mut left_l2: f64 = moved.iter().map(|d| d * d).sum();
        let mut order: Vec<usize> = (0..moved.len()).collect();
        order.sort_by(|&a, &b| moved[b].abs().total_cmp(&moved[a].abs()));
        for i in order {
            // Largest first: once this one is within budget, so is every one after it.
            if left_l2 <= allowed_l2 && moved[i].abs() <= budget * top {
                break;
            }
            out[i] = true;
            left_l2 -= moved[i] * moved[i];
        }
    }
    Ok(LrpComparison {
        reference: ref_map,
        other: other_map,
        reference_on_other_forward: mixed,
        forward_err,
        pool_routes_differ,
        relu_flips,
        excluded,
    })
}

/// The values of `v` at the pixels not `excluded` (empty on a length mismatch).
fn kept(v: &[f32], excluded: &[bool]) -> Vec<f32> {
    if v.len() != excluded.len() {
        return Vec::new();
    }
    v.iter()
        .zip(excluded)
        .filter(|(_, &e)| !e)
        .map(|(&x, _)| x)
        .collect()
}

/// max|a-b| / max|b| over the pixels not `excluded`; +inf on a length mismatch.
pub fn max_rel_err_excluding(a: &[f32], b: &[f32], excluded: &[bool]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    max_rel_err(&kept(a, excluded), &kept(b, excluded))
}

/// ||a-b||_2 / ||b||_2 over the pixels not `excluded` (a map per pixel, as `excluded`).
/// +inf on a length mismatch, so a comparison cannot pass by accident.
pub fn rel_l2_err_excluding(a: &[f32], b: &[f32], excluded: &[bool]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    crate::tensor::rel_l2_err(&kept(a, excluded), &kept(b, excluded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Shape;

    #[test]
    fn pool_routes_take_the_first_maximum() {
        // 1 image, 4x4, 1 channel: window (0,0) covers rows/cols 0..2 and holds a tie.
        let mut x = HostTensor::zeros(Shape::new(1, 4, 4, 1));
        x.data[0] = 1.0; // (0,0)
        x.data[5] = 1.0; // (1,1), tied: the first in scan order wins
        x.data[15] = 2.0; // (3,3)
        let routes = pool_routes(&x, Pool::RESNET_STEM);
        assert_eq!(routes.len(), 4);
        assert_eq!(routes[0], (0, 0));
        assert_eq!(routes[3], (3, 3));
        // Nudging the second input up by one ulp reroutes the window.
        x.data[5] = f32::from_bits(1.0f32.to_bits() + 1);
        assert_eq!(pool_routes(&x, Pool::RESNET_STEM)[0], (1, 1));
    }

    #[test]
    fn excluded_pixels_do_not_count() {
        let a = [1.0, 2.0, 100.0];
        let b = [1.0, 2.0, 0.0];
        assert!(rel_l2_err_excluding(&a, &b, &[false, false, false]) > 10.0);
        assert_eq!(rel_l2_err_excluding(&a, &b, &[false, false, true]), 0.0);
        assert!(rel_l2_err_excluding(&a, &b, &[false, true]).is_infinite());
        assert!(max_rel_err_excluding(&a, &b, &[false, false, false]) > 10.0);
        assert_eq!(max_rel_err_excluding(&a, &b, &[false, false, true]), 0.0);
        assert!(max_rel_err_excluding(&a, &b, &[true, true, true]).is_infinite());
    }
}
