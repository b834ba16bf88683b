//! The concept atlas: for every channel of a concept layer, the dataset's top samples by
//! activation (ActMax) and by relevance (RelMax), with zennit-crp 0.6.0's semantics
//! (`FeatureVisualization` with its defaults `max_target="sum"`, `abs_norm=True`):
//!
//! - a sample's value for a channel is the channel's sum over positions (of the activation,
//!   or of the relevance arriving at the concept layer), divided by the sum over channels of
//!   the absolute sums, plus 1e-10 (`ChannelConcept.reference_sampling`);
//! - its receptive-field neuron is the position of the channel's maximum (`argmax` over the
//!   flattened positions: the first maximum in row-major order);
//! - the top `n` samples per channel, highest value first. zennit-crp sorts with
//!   `torch.argsort`, whose order among equal values is unspecified; here equal values keep
//!   the lower dataset index first, so a result never depends on batching or sharding.
//!
//! [`TopN`] never holds more than `n` samples, so the state is bounded by channels × `n`,
//! not by the dataset. [`crop_box`] is zennit-crp's receptive-field crop
//! (`crp.image.vis_img_heatmap(rf=True)`): the neuron's map blurred (torchvision's
//! `gaussian_blur`, kernel 19, sigma 3.2, reflected borders), divided by its maximum, and the
//! bounding box of the pixels above 0.1 (its end row and column excluded, as zennit-crp
//! slices them).

use crate::tensor::HostTensor;
use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// One sample of a channel's top list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Position in the (sorted, `--limit`ed) dataset, before sharding.
    pub index: usize,
    pub stem: String,
    /// The ranked value: the channel's sum over positions over the sum of |channel sums|.
    pub value: f64,
    /// The channel's sum over positions (not normalised).
    pub sum: f64,
    /// The receptive-field neuron: `[y, x]` of the channel's maximum at the concept layer.
    pub neuron: [usize; 2],
    /// The crop (`crops/...png`, relative to the atlas directory), once written.
    #[serde(default)]
    pub crop: Option<String>,
    /// The neuron's conditional map over the crop (a heatmap PNG), once written.
    #[serde(default)]
    pub heatmap: Option<String>,
    /// `[row0, row1, col0, col1]` of the crop in the network input (ends excluded).
    #[serde(default)]
    pub crop_box: Option<[usize; 4]>,
}

/// Whether `a` ranks before `b`: higher value first, then lower dataset index.
fn before(a: &Sample, b: &Sample) -> bool {
    match b.value.total_cmp(&a.value) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => a.index < b.index,
    }
}

/// The best `n` samples seen so far, best first; never more than `n`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopN {
    pub n: usize,
    pub samples: Vec<Sample>,
}

impl TopN {
    pub fn new(n: usize) -> Self {
        TopN {
            n,
            samples: Vec::with_capacity(n),
        }
    }

    /// Keeps `s` if it ranks among the best `n`.
    pub fn offer(&mut self, s: Sample) {
        if self.n == 0 {
            return;
        }
        if self.samples.len() == self.n && !before(&s, &self.samples[self.n - 1]) {
            return;
        }
        // Full: `s` displaces the last (popped first, so the vector never grows past n).
        if self.samples.len() == self.n {
            self.samples.pop();
        }
        let at = self.samples.partition_point(|x| before(x, &s));
        self.samples.insert(at, s);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// One channel's running state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub channel: usize,
    /// Sum over images of the channel's relevance (sum over positions) and of its
    /// activation, for the dataset means.
    pub relevance_sum: f64,
    pub activation_sum: f64,
    /// ActMax: top samples by activation.
    pub actmax: TopN,
    /// RelMax: top samples by relevance.
    pub relmax: TopN,
}

/// The atlas's state: bounded by channels × `per_concept`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Atlas {
    pub per_concept: usize,
    /// Images that contributed.
    pub images: usize,
    pub channels: Vec<Channel>,
}

/// Per channel of image `i` of `t` (`[n, h, w, c]`): (normalised sum, sum, argmax position).
pub fn channel_values(t: &HostTensor, i: usize) -> Vec<(f64, f64, usize)> {
    let s = t.shape;
    let img = &t.data[i * s.image_len()..(i + 1) * s.image_len()];
    let mut sums = vec![0.0f64; s.c];
    let mut best = vec![(f32::NEG_INFINITY, 0usize); s.c];
    for (p, px) in img.chunks(s.c).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            sums[c] += v as f64;
            // The first maximum (torch.argmax); NaN never wins.
            if v > best[c].0 {
                best[c] = (v, p);
            }
        }
    }
    let norm: f64 = sums.iter().map(|v| v.abs()).sum::<f64>() + 1e-10;
    sums.iter()
        .zip(best)
        .map(|(&v, (_, p))| (v / norm, v, p))
        .collect()
}

impl Atlas {
    pub fn new(channels: usize, per_concept: usize) -> Self {
        Atlas {
            per_concept,
            images: 0,
            channels: (0..channels)
                .map(|c| Channel {
                    channel: c,
                    relevance_sum: 0.0,
                    activation_sum: 0.0,
                    actmax: TopN::new(per_concept),
                    relmax: TopN::new(per_concept),
                })
                .collect(),
        }
    }

    /// Adds image `i` of a batch's activations and relevance at the concept layer
    /// (`[n, h, w, c]` each) as dataset sample `index`.
    pub fn add(
        &mut self,
        act: &HostTensor,
        rel: &HostTensor,
        i: usize,
        index: usize,
        stem: &str,
    ) -> Result<()> {
        let s = act.shape;
        ensure!(
            rel.shape == s && s.c == self.channels.len() && i < s.n,
            "activations {} and relevance {} do not fit {} channels",
            s,
            rel.shape,
            self.channels.len()
        );
        let a = channel_values(act, i);
        let r = channel_values(rel, i);
        let sample = |(value, sum, p): (f64, f64, usize)| Sample {
            index,
            stem: stem.to_string(),
            value,
            sum,
            neuron: [p / s.w, p % s.w],
            crop: None,
            heatmap: None,
            crop_box: None,
        };
        for ((ch, av), rv) in self.channels.iter_mut().zip(a).zip(r) {
            ch.activation_sum += av.1;
            ch.relevance_sum += rv.1;
            ch.actmax.offer(sample(av));
            ch.relmax.offer(sample(rv));
        }
        self.images += 1;
        Ok(())
    }

    /// Combines atlases of disjoint parts of one dataset into the atlas of the whole.
    pub fn merge(parts: Vec<Atlas>) -> Result<Atlas> {
        let mut it = parts.into_iter();
        let mut out = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("nothing to merge"))?;
        for p in it {
            ensure!(
                p.channels.len() == out.channels.len() && p.per_concept == out.per_concept,
                "parts differ in channels ({} vs {}) or samples per concept ({} vs {})",
                p.channels.len(),
                out.channels.len(),
                p.per_concept,
                out.per_concept
            );
            out.images += p.images;
            for (o, c) in out.channels.iter_mut().zip(p.channels) {
                o.activation_sum += c.activation_sum;
                o.relevance_sum += c.relevance_sum;
                c.actmax.samples.into_iter().for_each(|s| o.actmax.offer(s));
                c.relmax.samples.into_iter().for_each(|s| o.relmax.offer(s));
            }
        }
        Ok(out)
    }

    /// Every (dataset index, channel, neuron `[y, x]`) whose map the crops need, each once,
    /// by dataset index.
    pub fn neurons(&self) -> std::collections::BTreeMap<usize, Vec<(usize, [usize; 2])>> {
        let mut m: std::collections::BTreeMap<usize, Vec<(usize, [usize; 2])>> = Default::default();
        for ch in &self.channels {
            for s in ch.actmax.samples.iter().chain(&ch.relmax.samples) {
                let v = m.entry(s.index).or_default();
                if !v.contains(&(ch.channel, s.neuron)) {
                    v.push((ch.channel, s.neuron));
                }
            }
        }
        m
    }
}

/// torchvision's `gaussian_blur(kernel_size=19)` of an `h`×`w` map (sigma
/// `0.3 * ((19 - 1) * 0.5 - 1) + 0.8 = 3.2`, reflected borders), separably, in f64.
pub fn gaussian_blur(map: &[f32], h: usize, w: usize) -> Vec<f64> {
    const K: usize = 19;
    let half = (K / 2) as isize;
    let sigma = 0.3 * ((K as f64 - 1.0) * 0.5 - 1.0) + 0.8;
    let mut k: Vec<f64> = (0..K)
        .map(|i| {
            let x = (i as isize - half) as f64 / sigma;
            (-0.5 * x * x).exp()
        })
        .collect();
    let total: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= total);
    // Reflection without repeating the edge (numpy/torch "reflect"), bouncing as needed.
    let reflect = |i: isize, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n as isize - 1);
        let m = i.rem_euclid(period);
        (if m < n as isize { m } else { period - m }) as usize
    };
    let mut rows = vec![0.0f64; h * w];
    for y in 0..h {
        for x in 0..w {
            rows[y * w + x] = (0..K)
                .map(|j| k[j] * map[y * w + reflect(x as isize + j as isize - half, w)] as f64)
                .sum();
        }
    }
    let mut out = vec![0.0f64; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (0..K)
                .map(|j| k[j] * rows[reflect(y as isize + j as isize - half, h) * w + x])
                .sum();
        }
    }
    out
}

/// zennit-crp's receptive-field crop of an `h`×`w` conditional map: `[row0, row1, col0, col1]`
/// (ends excluded) of the pixels whose blurred, max-normalised value exceeds 0.1; where there
/// are none (or the box is a point) `[0, h-1, 0, w-1]` as zennit-crp's `0:-1` slices; the
/// whole image where the crop would be empty or its map sum zero.
pub fn crop_box(map: &[f32], h: usize, w: usize) -> [usize; 4] {
    let blurred = gaussian_blur(map, h, w);
    let max = blurred.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (mut r0, mut r1, mut c0, mut c1) = (usize::MAX, 0, usize::MAX, 0);
    let mut any = false;
    for y in 0..h {
        for x in 0..w {
            if blurred[y * w + x] / (max + 1e-10) > 0.1 {
                any = true;
                r0 = r0.min(y);
                r1 = r1.max(y);
                c0 = c0.min(x);
                c1 = c1.max(x);
            }
        }
    }
    let b = if !any || (r0 >= r1 && c0 >= c1) {
        [0, h.saturating_sub(1), 0, w.saturating_sub(1)]
    } else {
        [r0, r1, c0, c1]
    };
    let heat: f64 = (b[0]..b[1])
        .flat_map(|y| (b[2]..b[3]).map(move |x| map[y * w + x] as f64))
        .sum();
    if b[1] <= b[0] || b[3] <= b[2] || heat == 0.0 {
        [0, h, 0, w]
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(index: usize, value: f64) -> Sample {
        Sample {
            index,
            stem: format!("s{index}"),
            value,
            sum: value,
            neuron: [0, 0],
            crop: None,
            heatmap: None,
            crop_box: None,
        }
    }

    #[test]
    fn top_n_keeps_the_best_n_lower_index_first_on_ties() {
        let mut t = TopN::new(3);
        for (i, v) in [1.0, 5.0, 3.0, 5.0, 0.5, 4.0, 5.0].into_iter().enumerate() {
            t.offer(s(i, v));
            assert!(t.len() <= 3);
        }
        let got: Vec<usize> = t.samples.iter().map(|x| x.index).collect();
        assert_eq!(got, vec![1, 3, 6]);
    }

    #[test]
    fn crop_box_of_a_point_is_a_window_around_it() {
        let (h, w) = (40, 40);
        let mut m = vec![0.0f32; h * w];
        m[20 * w + 20] = 1.0;
        let [r0, r1, c0, c1] = crop_box(&m, h, w);
        // exp(-x²/(2·3.2²)) > 0.1 for |x| < 6.87
        assert_eq!([r0, r1, c0, c1], [14, 26, 14, 26]);
    }
}
