//! Localisation metrics of attribution maps against segmentation masks, per image, as Quantus
//! 0.6.0 computes them with its defaults (`normalise=True` with `normalise_by_max`, `abs=False`
//! except for Sparseness):
//!
//! - **pointing game**: 1 if a pixel tied for the map's maximum lies in the mask, else 0
//!   (`weighted=False`; Quantus' bool-cast quirk is not copied).
//! - **top-k intersection**: `|topk(a) ∩ S| / k`, k absolute pixels (Quantus' `k`, default
//!   1000; `concept_influence=False`). Undefined (None) when the image has fewer than k pixels.
//! - **relevance mass accuracy**: `Σ_S a / Σ a` (None when `Σ a = 0`).
//! - **relevance rank accuracy**: `|top_|S|(a) ∩ S| / |S|`.
//! - **AUC**: ROC AUC of the map as a score for the mask (sklearn's `roc_curve` + `auc`, i.e.
//!   the Mann-Whitney statistic with tied (object, background) pairs counting ½). None when
//!   the mask covers the whole image (no background: undefined).
//! - **sparseness**: Gini index of `|a| / max|a| + 1e-7` (Chalasani et al.):
//!   `Σ_i (2i - n - 1) v_(i) / (n Σ v)`, `v` sorted ascending, i from 1.
//!
//! Normalising by a positive scalar changes neither the pixel order nor the mass ratio, so
//! only Sparseness applies it (it does change `v` there, through the `+ 1e-7`); every sum is
//! in f64.
//!
//! **Ties at the top-k / |S| cut.** Quantus ranks pixels with `np.argsort(-a)`, whose order
//! among equal values is unspecified and in practice differs between numpy builds and CPUs
//! (SIMD sorts). Nearest-upsampled LaFAM maps are plateaus of equal values, so a plateau
//! straddling the cut is common. Two deterministic rules are offered:
//! [`Ties::Expected`] (default): the tied pixels at the cut count in proportion to the free
//! slots (the mean over every tie order); [`Ties::Index`]: lower row-major index first, which
//! is Quantus with `np.argsort(kind="stable")`. Both equal Quantus exactly when no tie
//! straddles the cut.
//!
//! Cost: a few O(n) passes and radix sorts of the object and background values (a third of
//! |a| only for maps with negative values); no comparison sort.

use std::fmt;

/// The six metrics, in output order.
pub const METRICS: [&str; 6] = [
    "pointing_game",
    "top_k_intersection",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "auc",
    "sparseness",
];

/// Short column titles for tables, in [`METRICS`] order.
pub const METRIC_TITLES: [&str; 6] = ["PG", "TopK", "RMA", "RRA", "AUC", "Sparse"];

/// How pixels of equal value at the top-k / |S| cut are counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Ties {
    /// Tied pixels at the cut count in proportion to the free slots (mean over tie orders).
    #[default]
    Expected,
    /// Lower row-major index first (= Quantus with a stable argsort).
    Index,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricOptions {
    /// k of top-k intersection (absolute pixels).
    pub top_k: usize,
    pub ties: Ties,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions {
            top_k: 1000,
            ties: Ties::Expected,
        }
    }
}

/// One image's scores in [`METRICS`] order; None where the metric is undefined for it.
pub type Scores = [Option<f64>; 6];

/// Why an image cannot be scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    EmptyMask,
    SizeMismatch { map: usize, mask: usize },
    NonFinite,
    NoPixels,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::EmptyMask => f.write_str("empty mask (no object pixels)"),
            Skip::SizeMismatch { map, mask } => {
                write!(f, "map has {map} pixels but the mask {mask}")
            }
            Skip::NonFinite => f.write_str("map holds NaN or infinite values"),
            Skip::NoPixels => f.write_str("no pixels to score"),
        }
    }
}

/// Order-preserving u32 key of a finite f32 (-0.0 and 0.0 share a key).
#[inline]
fn key(x: f32) -> u32 {
    let b = (x + 0.0).to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Scores one map against one mask (`mask[i]` = pixel i is object), both row-major.
pub fn score(map: &[f32], mask: &[bool], opts: &MetricOptions) -> Result<Scores, Skip> {
    let n = map.len();
    if mask.len() != n {
        return Err(Skip::SizeMismatch {
            map: n,
            mask: mask.len(),
        });
    }
    if n == 0 {
        return Err(Skip::NoPixels);
    }
    if !map.iter().all(|x| x.is_finite()) {
        return Err(Skip::NonFinite);
    }
    let npos = mask.iter().filter(|&&m| m).count();
    if npos == 0 {
        return Err(Skip::EmptyMask);
    }
    let keys: Vec<u32> = map.iter().map(|&x| key(x)).collect();

    // Pointing game and relevance mass in one pass.
    let kmax = *keys.iter().max().expect("n > 0");
    let mut hit = false;
    let (mut inside, mut total) = (0f64, 0f64);
    for ((&k, &m), &a) in keys.iter().zip(mask).zip(map) {
        hit |= m && k == kmax;
        total += a as f64;
        if m {
            inside += a as f64;
        }
    }
    let pointing = if hit { 1.0 } else { 0.0 };
    let rma = (total != 0.0).then(|| inside / total);

    // Object and background keys, each sorted ascending: every rank question below is a
    // binary search in them.
    let mut pos = Vec::with_capacity(npos);
    let mut neg = Vec::with_capacity(n - npos);
    for (&k, &m) in keys.iter().zip(mask) {
        if m {
            pos.push(k);
        } else {
            neg.push(k);
        }
    }
    let mut tmp = Vec::new();
    radix_sort(&mut pos, &mut tmp);
    radix_sort(&mut neg, &mut tmp);
    let ranked = Ranked {
        keys: &keys,
        mask,
        pos: &pos,
        neg: &neg,
    };

    let topk = (opts.top_k >= 1 && opts.top_k <= n)
        .then(|| ranked.top_hits(opts.top_k, opts.ties) / opts.top_k as f64);
    let rra = ranked.top_hits(npos, opts.ties) / npos as f64;
    let auc = ranked.roc_auc();
    let sparse = if keys.iter().all(|&k| k >= key(0.0)) {
        // Non-negative map: |a| is already in order (merge the two sorted halves).
        let mut sorted = tmp;
        sorted.clear();
        merge_sorted(&pos, &neg, &mut sorted);
        let dec = |k: u32| f32::from_bits(k & 0x7fff_ffff);
        gini(sorted.iter().map(|&k| dec(k)), n, dec(sorted[n - 1]))
    } else {
        let mut abs: Vec<u32> = map.iter().map(|x| x.abs().to_bits()).collect();
        radix_sort(&mut abs, &mut tmp);
        gini(
            abs.iter().map(|&b| f32::from_bits(b)),
            n,
            f32::from_bits(abs[n - 1]),
        )
    };
    Ok([Some(pointing), topk, rma, Some(rra), auc, Some(sparse)])
}

struct Ranked<'a> {
    keys: &'a [u32],
    mask: &'a [bool],
    /// Object keys, ascending.
    pos: &'a [u32],
    /// Background keys, ascending.
    neg: &'a [u32],
}

/// (#elements < t, #elements == t) of an ascending slice.
fn below_equal(v: &[u32], t: u32) -> (usize, usize) {
    let lo = v.partition_point(|&x| x < t);
    let hi = v.partition_point(|&x| x <= t);
    (lo, hi - lo)
}

impl Ranked<'_> {
    /// The k-th largest key (1 <= k <= n), by bisection over the two sorted halves.
    fn kth_largest(&self, k: usize) -> u32 {
        // The (n-k)-th smallest (0-based) of the union.
        let want = self.pos.len() + self.neg.len() - k;
        let (a, b) = (self.pos, self.neg);
        // Find i (taken from a) with i + j = want + 1 elements being the smallest.
        let total = want + 1;
        let (mut lo, mut hi) = (total.saturating_sub(b.len()), total.min(a.len()));
        while lo < hi {
            let i = (lo + hi) / 2;
            let j = total - i;
            // Too few from a if a[i] < b[j-1].
            if j > 0 && i < a.len() && a[i] < b[j - 1] {
                lo = i + 1;
            } else {
                hi = i;
            }
        }
        let i = lo;
        let j = total - i;
        let la = if i > 0 { Some(a[i - 1]) } else { None };
        let lb = if j > 0 { Some(b[j - 1]) } else { None };
        la.max(lb).expect("k <= n")
    }

    /// Object pixels among the `k` highest (1 <= k <= n), ties at the cut per `ties`.
    fn top_hits(&self, k: usize, ties: Ties) -> f64 {
        let t = self.kth_largest(k);
        let (pb, pe) = below_equal(self.pos, t);
        let (nb, ne) = below_equal(self.neg, t);
        let pos_above = self.pos.len() - pb - pe;
        let above = pos_above + self.neg.len() - nb - ne;
        let (tied, pos_tied) = (pe + ne, pe);
        let free = k - above;
        if free == tied {
            return (pos_above + pos_tied) as f64;
        }
        match ties {
            Ties::Expected => pos_above as f64 + pos_tied as f64 * free as f64 / tied as f64,
            Ties::Index => {
                let mut left = free;
                let mut hits = pos_above;
                for (&kk, &m) in self.keys.iter().zip(self.mask) {
                    if left == 0 {
                        break;
                    }
                    if kk == t {
                        left -= 1;
                        hits += m as usize;
                    }
                }
                hits as f64
            }
        }
    }

    /// ROC AUC (Mann-Whitney, ties ½); None without background.
    fn roc_auc(&self) -> Option<f64> {
        let (pos, neg) = (self.pos, self.neg);
        if neg.is_empty() {
            return None;
        }
        // U = Σ over positives of (#negatives below + ½ #negatives equal), doubled.
        let mut u2: u64 = 0;
        let mut j = 0usize;
        let mut i = 0;
        while i < pos.len() {
            let v = pos[i];
            let mut run = 1;
            while i + run < pos.len() && pos[i + run] == v {
                run += 1;
            }
            while j < neg.len() && neg[j] < v {
                j += 1;
            }
            let mut eq = 0;
            while j + eq < neg.len() && neg[j + eq] == v {
                eq += 1;
            }
            u2 += run as u64 * (2 * j as u64 + eq as u64);
            i += run;
        }
        Some(u2 as f64 / 2.0 / (pos.len() as f64 * neg.len() as f64))
    }
}

fn merge_sorted(a: &[u32], b: &[u32], out: &mut Vec<u32>) {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

/// Gini index of `|a| / max|a| + 1e-7` (Quantus' Sparseness) from `|a|` in ascending order.
/// `m` = max |a|.
fn gini(sorted_abs: impl Iterator<Item = f32>, n: usize, m: f32) -> f64 {
    let m = m as f64;
    let (mut weighted, mut sum) = (0f64, 0f64);
    let nn = n as f64;
    for (i, x) in sorted_abs.enumerate() {
        // An all-zero map is left as is by normalise_by_max.
        let x = x as f64;
        let v = if m > 0.0 { x / m } else { x } + 1e-7;
        weighted += (2.0 * (i + 1) as f64 - nn - 1.0) * v;
        sum += v;
    }
    weighted / (nn * sum)
}

/// LSD radix sort of u32 in 11-bit digits (3 passes; digits shared by every element are
/// skipped). Small slices use the standard sort.
pub fn radix_sort(v: &mut [u32], tmp: &mut Vec<u32>) {
    let n = v.len();
    if n < 512 {
        v.sort_unstable();
        return;
    }
    const BITS: u32 = 11;
    const B: usize = 1 << BITS;
    let mut hist = vec![[0usize; B]; 3];
    for &x in v.iter() {
        for (d, h) in hist.iter_mut().enumerate() {
            h[((x >> (BITS * d as u32)) as usize) & (B - 1)] += 1;
        }
    }
    tmp.clear();
    tmp.resize(n, 0);
    let mut in_v = true;
    for (d, h) in hist.iter().enumerate() {
        if h.contains(&n) {
            continue;
        }
        let mut offs = [0usize; B];
        let mut acc = 0;
        for (o, &c) in offs.iter_mut().zip(h.iter()) {
            *o = acc;
            acc += c;
        }
        let shift = BITS * d as u32;
        let (src, dst): (&[u32], &mut [u32]) = if in_v {
            (&*v, &mut tmp[..])
        } else {
            (&tmp[..], &mut *v)
        };
        for &x in src {
            let b = ((x >> shift) as usize) & (B - 1);
            dst[offs[b]] = x;
            offs[b] += 1;
        }
        in_v = !in_v;
    }
    if !in_v {
        v.copy_from_slice(tmp);
    }
}
