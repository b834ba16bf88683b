//! Faithfulness metrics with the semantics and defaults of Quantus 0.6.0
//! (`quantus/metrics/faithfulness/*.py`, `functions/perturb_func.py`, `helpers/utils.py`),
//! label-free: the model's output is a scalar *score* per image (see
//! [`crate::explain::score`]), given to the metrics as a batched closure ([`Scorer`]), so the
//! same code runs on the CPU and GPU backends and in tests with any function.
//!
//! Layout as Quantus sees a torch model's input: one image is `3·h·w` values, channel-first
//! (`[3, h, w]`, row-major), in the network's normalised input space; a map is `h·w` values.
//! Quantus broadcasts the map to the input's 3 channels and orders the `3·h·w` *elements*
//! (not pixels) by attribution; so do we ([`element_order`]). Quantus sorts with numpy's
//! unstable `argsort`; ties (the three channel copies of one pixel, or equal map values) are
//! taken here in index order, i.e. `np.argsort(..., kind="stable")`, which gives Quantus'
//! numbers whenever its step covers whole pixels (a multiple of 3) and map values differ.
//!
//! Random choices (uniform baselines, Faithfulness Correlation's subsets, ROAD's noise) come
//! from a [`Draws`]: [`SeededDraws`] in normal use; the parity tests replay numpy's draws.
//!
//! Quantus' ROAD (0.6.0) indexes a `[3·h·w]` order into an `[h·w]` mask and fails on RGB
//! input; [`road`] is ROAD as its authors define it (Rong et al. 2022) with Quantus'
//! [`noisy_linear_imputation`] and percentages: whole pixels are imputed, in MoRF and LeRF
//! order, and the curve is the score (not the accuracy) at each percentage.

use anyhow::{bail, ensure, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Channels of an input image.
pub const CHANNELS: usize = 3;

/// The closure behind a [`Scorer`].
pub type ScoreFn<'a> = dyn FnMut(&[Vec<f64>]) -> Result<Vec<f64>> + 'a;

/// A batched score: images (`[3, h, w]` each, normalised input space) to one score each.
pub struct Scorer<'a> {
    f: Box<ScoreFn<'a>>,
    /// Images per call of the closure.
    pub batch: usize,
    /// Images scored so far (perturbed forward passes, including unperturbed references).
    pub passes: usize,
}

impl<'a> Scorer<'a> {
    pub fn new(batch: usize, f: impl FnMut(&[Vec<f64>]) -> Result<Vec<f64>> + 'a) -> Self {
        Scorer {
            f: Box::new(f),
            batch: batch.max(1),
            passes: 0,
        }
    }

    /// Scores `images`, `batch` at a time.
    pub fn score(&mut self, images: &[Vec<f64>]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch) {
            let s = (self.f)(chunk)?;
            ensure!(
                s.len() == chunk.len(),
                "the score returned {} values for {} images",
                s.len(),
                chunk.len()
            );
            out.extend(s);
            self.passes += chunk.len();
        }
        Ok(out)
    }

    /// The score of one image.
    pub fn one(&mut self, image: &[f64]) -> Result<f64> {
        Ok(self.score(&[image.to_vec()])?[0])
    }
}

/// Collects perturbed images and scores them a batch at a time (bounded memory).
struct Pending<'s, 'a> {
    scorer: &'s mut Scorer<'a>,
    images: Vec<Vec<f64>>,
    scores: Vec<f64>,
}

impl<'s, 'a> Pending<'s, 'a> {
    fn new(scorer: &'s mut Scorer<'a>) -> Self {
        Pending {
            images: Vec::with_capacity(scorer.batch),
            scorer,
            scores: Vec::new(),
        }
    }
    fn push(&mut self, image: Vec<f64>) -> Result<()> {
        self.images.push(image);
        if self.images.len() >= self.scorer.batch {
            self.flush()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if !self.images.is_empty() {
            let s = self.scorer.score(&self.images)?;
            self.scores.extend(s);
            self.images.clear();
        }
        Ok(())
    }
    fn finish(mut self) -> Result<Vec<f64>> {
        self.flush()?;
        Ok(self.scores)
    }
}

/// The random numbers the metrics use, in the order Quantus draws them.
pub trait Draws {
    /// One value of `U(0, 1)` (Quantus' "uniform" baseline, one per image and perturbation).
    fn uniform(&mut self) -> f64;
    /// `k` distinct indices of `0..n` (`np.random.choice(n, k, replace=False)`).
    fn choice(&mut self, n: usize, k: usize) -> Vec<usize>;
    /// `k` standard normal values (`np.random.randn`).
    fn normal(&mut self, k: usize) -> Vec<f64>;
}

/// [`Draws`] from a seeded generator (reproducible; not numpy's stream).
pub struct SeededDraws(StdRng);

impl SeededDraws {
    pub fn new(seed: u64) -> Self {
        SeededDraws(StdRng::seed_from_u64(seed))
    }
}

impl Draws for SeededDraws {
    fn uniform(&mut self) -> f64 {
        self.0.random::<f64>()
    }
    fn choice(&mut self, n: usize, k: usize) -> Vec<usize> {
        rand::seq::index::sample(&mut self.0, n, k.min(n)).into_vec()
    }
    fn normal(&mut self, k: usize) -> Vec<f64> {
        (0..k).map(|_| self.0.sample(StandardNormal)).collect()
    }
}

/// The value perturbed features are replaced with (Quantus' `perturb_baseline`), computed
/// per image over the array being perturbed, in the normalised input space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// The array's minimum (Quantus' "black": the darkest normalised value present).
    Black,
    /// The array's mean.
    Mean,
    /// One draw of `U(0, 1)` per perturbation.
    Uniform,
}

impl Baseline {
    fn value(self, arr: &[f64], draws: &mut dyn Draws) -> f64 {
        match self {
            Baseline::Black => arr.iter().copied().fold(f64::INFINITY, f64::min),
            Baseline::Mean => arr.iter().sum::<f64>() / arr.len() as f64,
            Baseline::Uniform => draws.uniform(),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Black => "black",
            Baseline::Mean => "mean",
            Baseline::Uniform => "uniform",
        }
    }
}

/// Checks an image and its map; the map's values must be finite.
fn check(x: &[f64], map: &[f64], h: usize, w: usize) -> Result<()> {
    ensure!(h > 0 && w > 0, "empty image {h}x{w}");
    ensure!(
        x.len() == CHANNELS * h * w,
        "image holds {} values, expected 3x{h}x{w}",
        x.len()
    );
    ensure!(
        map.len() == h * w,
        "map holds {} values, expected {h}x{w}",
        map.len()
    );
    ensure!(map.iter().all(|v| v.is_finite()), "map is not finite");
    Ok(())
}

/// Descending (`descending`) or ascending order of `keys`, ties in index order (a stable
/// `np.argsort(-keys)` / `np.argsort(keys)`; -0.0 and 0.0 are equal, as in numpy).
fn argsort(keys: &[f64], descending: bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..keys.len()).collect();
    idx.sort_by(|&i, &j| {
        let (a, b) = if descending {
            (keys[j], keys[i])
        } else {
            (keys[i], keys[j])
        };
        a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal)
    });
    idx
}

/// The `3·h·w` input elements in descending order of the map broadcast over the channels
/// (element `c·h·w + p` has attribution `map[p]`), ties in index order.
pub fn element_order(map: &[f64]) -> Vec<usize> {
    let hw = map.len();
    let mut idx: Vec<usize> = (0..CHANNELS * hw).collect();
    idx.sort_by(|&i, &j| {
        map[j % hw]
            .partial_cmp(&map[i % hw])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    idx
}

/// A curve and the trapezoidal area under it (`np.trapz(curve, dx=1)`, Quantus'
/// `calculate_auc`).
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    pub points: Vec<f64>,
    pub auc: f64,
}

/// `np.trapz(y, dx=1)`.
pub fn trapz(y: &[f64]) -> f64 {
    y.windows(2).map(|p| (p[0] + p[1]) / 2.0).sum()
}

/// Pixel-Flipping (Bach et al. 2015; Quantus `PixelFlipping`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PixelFlipping {
    /// Input elements (of `3·h·w`) replaced per step; Quantus' default 1.
    pub features_in_step: usize,
    pub baseline: Baseline,
}

impl Default for PixelFlipping {
    fn default() -> Self {
        PixelFlipping {
            features_in_step: 1,
            baseline: Baseline::Black,
        }
    }
}

/// The score after each step of cumulatively replacing the most relevant elements with the
/// baseline (computed over the current, already perturbed image), `ceil(3hw / step)` points,
/// and its AUC. A faithful map makes the curve fall fast (low AUC).
pub fn pixel_flipping(
    x: &[f64],
    map: &[f64],
    (h, w): (usize, usize),
    opts: &PixelFlipping,
    draws: &mut dyn Draws,
    scorer: &mut Scorer,
) -> Result<Curve> {
    check(x, map, h, w)?;
    ensure!(opts.features_in_step > 0, "features_in_step must be >= 1");
    let order = element_order(map);
    let mut xp = x.to_vec();
    let mut pending = Pending::new(scorer);
    for step in order.chunks(opts.features_in_step) {
        let v = opts.baseline.value(&xp, draws);
        for &i in step {
            xp[i] = v;
        }
        pending.push(xp.clone())?;
    }
    let points = pending.finish()?;
    Ok(Curve {
        auc: trapz(&points),
        points,
    })
}

/// Perturbation order of [`region_perturbation`] and [`road`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Most relevant first.
    Morf,
    /// Least relevant first.
    Lerf,
}

/// Region Perturbation (Samek et al. 2016; Quantus `RegionPerturbation`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegionPerturbation {
    /// Side of the square, non-overlapping patches (Quantus' default 8).
    pub patch_size: usize,
    /// Patches perturbed, in order (Quantus' default 100).
    pub regions: usize,
    pub order: Order,
    pub baseline: Baseline,
}

impl Default for RegionPerturbation {
    fn default() -> Self {
        RegionPerturbation {
            patch_size: 8,
            regions: 100,
            order: Order::Morf,
            baseline: Baseline::Black,
        }
    }
}

/// Region perturbation's curve and its AOPC.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionCurve {
    /// `f(x) - f(x_k)` after the first `k = 1..=L` patches are replaced.
    pub points: Vec<f64>,
    /// Samek et al.'s area over the perturbation curve: `Σ_{k=0}^{L} (f(x) - f(x_k)) / (L+1)`
    /// (the `k = 0` term is 0).
    pub aopc: f64,
}

/// Quantus' `get_padding_size`.
fn padding(dim: usize, patch: usize) -> (usize, usize) {
    let m = dim % patch;
    if m == 0 {
        return (0, 0);
    }
    let total = patch - m;
    (total / 2, total - total / 2)
}

/// Region Perturbation: the image is padded to a multiple of the patch size (edge values;
/// the map with zeros), patches are ordered by their summed attribution and replaced
/// cumulatively, all channels, with the baseline of the current padded image.
pub fn region_perturbation(
    x: &[f64],
    map: &[f64],
    (h, w): (usize, usize),
    opts: &RegionPerturbation,
    draws: &mut dyn Draws,
    scorer: &mut Scorer,
) -> Result<RegionCurve> {
    check(x, map, h, w)?;
    let ps = opts.patch_size;
    ensure!(ps > 0, "patch size must be >= 1");
    let (ph, pw) = (padding(h, ps), padding(w, ps));
    let (hp, wp) = (h + ph.0 + ph.1, w + pw.0 + pw.1);
    // Padded image (edge mode) and map (zeros).
    let clamp = |v: usize, lo: usize, n: usize| v.saturating_sub(lo).min(n - 1);
    let mut xpad = vec![0f64; CHANNELS * hp * wp];
    let mut apad = vec![0f64; hp * wp];
    for y in 0..hp {
        for xx in 0..wp {
            let (sy, sx) = (clamp(y, ph.0, h), clamp(xx, pw.0, w));
            for c in 0..CHANNELS {
                xpad[(c * hp + y) * wp + xx] = x[(c * h + sy) * w + sx];
            }
            let inside = y >= ph.0 && y < ph.0 + h && xx >= pw.0 && xx < pw.0 + w;
            if inside {
                apad[y * wp + xx] = map[(y - ph.0) * w + (xx - pw.0)];
            }
        }
    }
    let (bh, bw) = (hp / ps, wp / ps);
    // Summed attribution per patch over the 3 broadcast channels, row-major patches.
    let sums: Vec<f64> = (0..bh * bw)
        .map(|b| {
            let (by, bx) = (b / bw, b % bw);
            let mut s = 0.0;
            for _ in 0..CHANNELS {
                for y in by * ps..(by + 1) * ps {
                    for xx in bx * ps..(bx + 1) * ps {
                        s += apad[y * wp + xx];
                    }
                }
            }
            s
        })
        .collect();
    let order = argsort(&sums, opts.order == Order::Morf);
    let y0 = scorer.one(x)?;
    let crop = |xpad: &[f64]| {
        let mut out = Vec::with_capacity(CHANNELS * h * w);
        for c in 0..CHANNELS {
            for y in 0..h {
                let row = (c * hp + y + ph.0) * wp + pw.0;
                out.extend_from_slice(&xpad[row..row + w]);
            }
        }
        out
    };
    let mut pending = Pending::new(scorer);
    for &b in order.iter().take(opts.regions) {
        let v = opts.baseline.value(&xpad, draws);
        let (by, bx) = (b / bw, b % bw);
        for c in 0..CHANNELS {
            for y in by * ps..(by + 1) * ps {
                for xx in bx * ps..(bx + 1) * ps {
                    xpad[(c * hp + y) * wp + xx] = v;
                }
            }
        }
        pending.push(crop(&xpad))?;
    }
    let points: Vec<f64> = pending.finish()?.iter().map(|s| y0 - s).collect();
    let aopc = points.iter().sum::<f64>() / (points.len() + 1) as f64;
    Ok(RegionCurve { points, aopc })
}

/// Faithfulness Correlation (Bhatt et al. 2020; Quantus `FaithfulnessCorrelation`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaithfulnessCorrelation {
    /// Random subsets (Quantus' default 100).
    pub runs: usize,
    /// Elements (of `3·h·w`) per subset (Quantus' default 224).
    pub subset_size: usize,
    pub baseline: Baseline,
}

impl Default for FaithfulnessCorrelation {
    fn default() -> Self {
        FaithfulnessCorrelation {
            runs: 100,
            subset_size: 224,
            baseline: Baseline::Black,
        }
    }
}

/// Pearson's r (`scipy.stats.pearsonr`); None when either side is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let ma = a.iter().sum::<f64>() / n;
    let mb = b.iter().sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        return None;
    }
    Some((sab / (saa.sqrt() * sbb.sqrt())).clamp(-1.0, 1.0))
}

/// Faithfulness Correlation's result: r and what it correlates.
#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    /// Pearson's r between `attribution_sums` and `deltas`; None when one is constant.
    pub r: Option<f64>,
    /// Per run, the summed attribution of the subset.
    pub attribution_sums: Vec<f64>,
    /// Per run, `f(x) - f(x with the subset replaced)`.
    pub deltas: Vec<f64>,
}

/// Faithfulness Correlation: per run a random subset of elements is replaced with the
/// baseline of the original image; r between the subsets' attribution sums and the score
/// drops.
pub fn faithfulness_correlation(
    x: &[f64],
    map: &[f64],
    (h, w): (usize, usize),
    opts: &FaithfulnessCorrelation,
    draws: &mut dyn Draws,
    scorer: &mut Scorer,
) -> Result<Correlation> {
    check(x, map, h, w)?;
    let n = x.len();
    ensure!(
        opts.subset_size < n,
        "subset size {} must be smaller than the input's {n} elements",
        opts.subset_size
    );
    // Attributions normalised by their maximum magnitude, as Quantus' default.
    let max = map.iter().fold(0f64, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { 1.0 / max } else { 1.0 };
    let hw = h * w;
    let y0 = scorer.one(x)?;
    let mut pending = Pending::new(scorer);
    let mut sums = Vec::with_capacity(opts.runs);
    for _ in 0..opts.runs {
        let idx = draws.choice(n, opts.subset_size);
        ensure!(
            idx.len() == opts.subset_size && idx.iter().all(|&i| i < n),
            "bad random subset"
        );
        let v = opts.baseline.value(x, draws);
        let mut xp = x.to_vec();
        for &i in &idx {
            xp[i] = v;
        }
        sums.push(idx.iter().map(|&i| map[i % hw] * scale).sum::<f64>());
        pending.push(xp)?;
    }
    let deltas: Vec<f64> = pending.finish()?.iter().map(|s| y0 - s).collect();
    Ok(Correlation {
        r: pearson(&sums, &deltas),
        attribution_sums: sums,
        deltas,
    })
}

/// ROAD (Rong et al. 2022): RemOve And Debias with noisy linear imputation.
#[derive(Clone, Debug, PartialEq)]
pub struct Road {
    /// Percentages of pixels imputed (Quantus' default 1, 3, ..., 99).
    pub percentages: Vec<f64>,
    /// Standard deviation of the noise added to imputed values (Quantus' default 0.01).
    pub noise: f64,
}

impl Default for Road {
    fn default() -> Self {
        Road {
            percentages: (1..100).step_by(2).map(f64::from).collect(),
            noise: 0.01,
        }
    }
}

/// ROAD's two curves: the score after imputing the top `p`% (MoRF) and the bottom `p`%
/// (LeRF) pixels, per percentage, with their means.
#[derive(Clone, Debug, PartialEq)]
pub struct RoadCurves {
    pub morf: Vec<f64>,
    pub lerf: Vec<f64>,
    pub morf_mean: f64,
    pub lerf_mean: f64,
}

/// ROAD: for each percentage `p`, the `floor(hw·p/100)` most (MoRF) or least (LeRF)
/// relevant pixels are imputed from their neighbours ([`noisy_linear_imputation`], all
/// channels) on the original image and the result is scored. Draws: per percentage, MoRF
/// then LeRF, `3·k` normal values each.
pub fn road(
    x: &[f64],
    map: &[f64],
    (h, w): (usize, usize),
    opts: &Road,
    draws: &mut dyn Draws,
    scorer: &mut Scorer,
) -> Result<RoadCurves> {
    check(x, map, h, w)?;
    ensure!(
        opts.percentages.iter().all(|p| (0.0..100.0).contains(p)),
        "ROAD percentages must lie in [0, 100)"
    );
    let hw = h * w;
    let desc = argsort(map, true);
    let asc = argsort(map, false);
    // (pixels, MoRF?) per scored image, in Quantus' order: per percentage, MoRF then LeRF.
    let jobs: Vec<&[usize]> = opts
        .percentages
        .iter()
        .flat_map(|&p| {
            let k = (hw as f64 * p / 100.0) as usize;
            [&desc[..k], &asc[..k]]
        })
        .collect();
    let mut pending = Pending::new(scorer);
    let chunk = pending.scorer.batch.max(1);
    for part in jobs.chunks(chunk) {
        // The noise is drawn in order; the solves (independent) run in parallel.
        let noise: Vec<Vec<f64>> = part
            .iter()
            .map(|px| draws.normal(CHANNELS * px.len()))
            .collect();
        let images: Vec<Result<Vec<f64>>> = part
            .par_iter()
            .zip(&noise)
            .map(|(px, z)| impute_with_noise(x, (h, w), px, opts.noise, z))
            .collect();
        for img in images {
            pending.push(img?)?;
        }
    }
    let s = pending.finish()?;
    let morf: Vec<f64> = s.iter().step_by(2).copied().collect();
    let lerf: Vec<f64> = s.iter().skip(1).step_by(2).copied().collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    Ok(RoadCurves {
        morf_mean: mean(&morf),
        lerf_mean: mean(&lerf),
        morf,
        lerf,
    })
}

/// Quantus' `noisy_linear_imputation` for an image `[3, h, w]` and pixel indices: each
/// imputed pixel is the weighted mean of its 8 neighbours (weights 1/6 for the 4 direct,
/// 1/12 for the diagonal ones; neighbours outside the image dropped, unknown neighbours
/// solved for jointly), per channel, plus `noise · N(0, 1)`. Quantus solves the sparse
/// system with `spsolve`; it is symmetric positive definite (diagonally dominant, with at
/// least one known pixel), solved here by conjugate gradients to 1e-13 relative residual.
/// Draws `3·k` normal values, channel-major.
pub fn noisy_linear_imputation(
    x: &[f64],
    (h, w): (usize, usize),
    pixels: &[usize],
    noise: f64,
    draws: &mut dyn Draws,
) -> Result<Vec<f64>> {
    let z = draws.normal(CHANNELS * pixels.len());
    impute_with_noise(x, (h, w), pixels, noise, &z)
}

/// [`noisy_linear_imputation`] with its `3·k` standard normal values given (channel-major);
/// the three channels' systems are solved in parallel.
fn impute_with_noise(
    x: &[f64],
    (h, w): (usize, usize),
    pixels: &[usize],
    noise: f64,
    z: &[f64],
) -> Result<Vec<f64>> {
    const OFFSETS: [((i64, i64), f64); 8] = [
        ((1, 1), 1.0 / 12.0),
        ((0, 1), 1.0 / 6.0),
        ((-1, 1), 1.0 / 12.0),
        ((1, -1), 1.0 / 12.0),
        ((0, -1), 1.0 / 6.0),
        ((-1, -1), 1.0 / 12.0),
        ((1, 0), 1.0 / 6.0),
        ((-1, 0), 1.0 / 6.0),
    ];
    let hw = h * w;
    let k = pixels.len();
    let mut out = x.to_vec();
    if k == 0 {
        return Ok(out);
    }
    ensure!(k < hw, "cannot impute every pixel of the image");
    let mut var = vec![usize::MAX; hw];
    for (i, &p) in pixels.iter().enumerate() {
        ensure!(p < hw, "pixel index {p} out of range");
        ensure!(var[p] == usize::MAX, "pixel {p} listed twice");
        var[p] = i;
    }
    // M = D - W_unknown (M u = rhs), rhs = Σ_known w · x_known per channel.
    let mut diag = vec![0f64; k];
    let mut nbrs: Vec<Vec<(usize, f64)>> = vec![Vec::new(); k];
    let mut rhs = vec![0f64; CHANNELS * k];
    for (i, &p) in pixels.iter().enumerate() {
        let (py, px) = ((p / w) as i64, (p % w) as i64);
        for &((dy, dx), wt) in &OFFSETS {
            let (ny, nx) = (py + dy, px + dx);
            if ny < 0 || nx < 0 || ny >= h as i64 || nx >= w as i64 {
                continue;
            }
            diag[i] += wt;
            let q = ny as usize * w + nx as usize;
            match var[q] {
                usize::MAX => {
                    for c in 0..CHANNELS {
                        rhs[c * k + i] += wt * x[c * hw + q];
                    }
                }
                j => nbrs[i].push((j, wt)),
            }
        }
    }
    let apply = |v: &[f64], out: &mut [f64]| {
        for i in 0..k {
            let mut s = diag[i] * v[i];
            for &(j, wt) in &nbrs[i] {
                s -= wt * v[j];
            }
            out[i] = s;
        }
    };
    ensure!(z.len() == CHANNELS * k, "too few noise values");
    let solved: Vec<Result<Vec<f64>>> = (0..CHANNELS)
        .into_par_iter()
        .map(|c| conjugate_gradient(&apply, &diag, &rhs[c * k..(c + 1) * k]))
        .collect();
    for (c, u) in solved.into_iter().enumerate() {
        let u = u?;
        for (i, &p) in pixels.iter().enumerate() {
            out[c * hw + p] = u[i] + noise * z[c * k + i];
        }
    }
    Ok(out)
}

/// Jacobi-preconditioned conjugate gradients for a symmetric positive definite operator.
fn conjugate_gradient(
    apply: &(dyn Fn(&[f64], &mut [f64]) + Sync),
    diag: &[f64],
    b: &[f64],
) -> Result<Vec<f64>> {
    let n = b.len();
    let bnorm = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut x = vec![0f64; n];
    if bnorm == 0.0 {
        return Ok(x);
    }
    let mut r = b.to_vec();
    let mut z: Vec<f64> = r.iter().zip(diag).map(|(r, d)| r / d).collect();
    let mut p = z.clone();
    let mut rz: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
    let mut ap = vec![0f64; n];
    for _ in 0..(10 * n + 100) {
        apply(&p, &mut ap);
        let pap: f64 = p.iter().zip(&ap).map(|(a, b)| a * b).sum();
        if pap <= 0.0 {
            bail!("imputation system is not positive definite");
        }
        let alpha = rz / pap;
        for i in 0..n {
            x[i] += alpha * p[i];
            r[i] -= alpha * ap[i];
        }
        let rnorm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        if rnorm <= 1e-13 * bnorm {
            return Ok(x);
        }
        for i in 0..n {
            z[i] = r[i] / diag[i];
        }
        let rz_new: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
        let beta = rz_new / rz;
        rz = rz_new;
        for i in 0..n {
            p[i] = z[i] + beta * p[i];
        }
    }
    bail!("imputation did not converge")
}

/// Ranks (1-based) with ties given their average rank (`scipy.stats.rankdata`).
fn average_ranks(v: &[f64]) -> Vec<f64> {
    let order = argsort(v, false);
    let mut ranks = vec![0f64; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation (`scipy.stats.spearmanr`, Quantus'
/// `correlation_spearman`); None when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() {
        return None;
    }
    pearson(&average_ranks(a), &average_ranks(b))
}

/// `scipy.ndimage.uniform_filter1d(x, size)` with its default `reflect` boundary
/// (`d c b a | a b c d | d c b a`).
fn uniform_filter(x: &[f64], size: usize) -> Vec<f64> {
    let n = x.len() as i64;
    let half = (size / 2) as i64;
    let at = |mut i: i64| {
        // Half-sample symmetric reflection, repeated for windows longer than the signal.
        let period = 2 * n;
        i = i.rem_euclid(period);
        if i >= n {
            i = period - 1 - i;
        }
        x[i as usize]
    };
    (0..n)
        .map(|i| (i - half..i - half + size as i64).map(at).sum::<f64>() / size as f64)
        .collect()
}

/// Quantus' `ssim` of two flattened maps: `skimage.metrics.structural_similarity` on the
/// 1-D arrays (window 7, uniform filter, sample covariance, K1 0.01, K2 0.03) with
/// `data_range` = max - min over both; None when the arrays are shorter than the window.
pub fn ssim(a: &[f64], b: &[f64]) -> Option<f64> {
    const WIN: usize = 7;
    if a.len() != b.len() || a.len() < WIN {
        return None;
    }
    let all = a.iter().chain(b);
    let max = all.clone().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = all.copied().fold(f64::INFINITY, f64::min);
    let range = (max - min).abs();
    let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
    let prod = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).collect::<Vec<_>>();
    let (ux, uy) = (uniform_filter(a, WIN), uniform_filter(b, WIN));
    let uxx = uniform_filter(&prod(a, a), WIN);
    let uyy = uniform_filter(&prod(b, b), WIN);
    let uxy = uniform_filter(&prod(a, b), WIN);
    let cov_norm = WIN as f64 / (WIN as f64 - 1.0);
    let pad = (WIN - 1) / 2;
    let n = a.len();
    let mut sum = 0.0;
    for i in pad..n - pad {
        let vx = cov_norm * (uxx[i] - ux[i] * ux[i]);
        let vy = cov_norm * (uyy[i] - uy[i] * uy[i]);
        let vxy = cov_norm * (uxy[i] - ux[i] * uy[i]);
        let s = ((2.0 * ux[i] * uy[i] + c1) * (2.0 * vxy + c2))
            / ((ux[i] * ux[i] + uy[i] * uy[i] + c1) * (vx + vy + c2));
        sum += s;
    }
    Some(sum / (n - 2 * pad) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trapz_matches_numpy() {
        assert_eq!(trapz(&[1.0, 2.0, 4.0]), 4.5);
        assert_eq!(trapz(&[3.0]), 0.0);
    }

    #[test]
    fn order_is_stable_over_channel_copies() {
        let o = element_order(&[0.5, 1.0]);
        assert_eq!(o, vec![1, 3, 5, 0, 2, 4]);
    }

    #[test]
    fn padding_as_quantus() {
        assert_eq!(padding(36, 8), (2, 2));
        assert_eq!(padding(35, 8), (2, 3));
        assert_eq!(padding(32, 8), (0, 0));
    }

    #[test]
    fn imputation_of_constant_image_is_constant() {
        let (h, w) = (5, 6);
        let x = vec![0.25; 3 * h * w];
        let mut d = SeededDraws::new(1);
        let y = noisy_linear_imputation(&x, (h, w), &[0, 7, 8, 13, 29], 0.0, &mut d).unwrap();
        for v in y {
            assert!((v - 0.25).abs() < 1e-12, "{v}");
        }
    }

    #[test]
    fn pixel_flipping_counts_steps() {
        let (h, w) = (2, 3);
        let x: Vec<f64> = (0..18).map(|i| i as f64).collect();
        let map = [0.1, 0.9, 0.3, 0.2, 0.5, 0.4];
        let mut s = Scorer::new(4, |imgs: &[Vec<f64>]| {
            Ok(imgs.iter().map(|i| i.iter().sum()).collect())
        });
        let opts = PixelFlipping {
            features_in_step: 3,
            baseline: Baseline::Black,
        };
        let c = pixel_flipping(&x, &map, (h, w), &opts, &mut SeededDraws::new(0), &mut s).unwrap();
        assert_eq!(c.points.len(), 6);
        assert_eq!(s.passes, 6);
        // Step 1 replaces pixel 1 in all channels (values 1, 7, 13) with the minimum 0.
        assert_eq!(c.points[0], 153.0 - 21.0);
    }
}
