//! The baseline ops ([`CamBackend`]) on the CPU: plain loops, summing in the same order as
//! the WGSL kernels in `shaders/cam.wgsl` so the two backends round alike.

use super::{Cpu, CpuTensor};
use crate::backend::{CamBackend, GramOver};
use crate::explain::relax::{mask_value, MaskStream};
use crate::tensor::Shape;
use anyhow::{ensure, Result};
use rayon::prelude::*;

fn is_vector(s: Shape) -> bool {
    s.h == 1 && s.w == 1
}

impl CamBackend for Cpu {
    fn spatial_mean(&mut self, x: &CpuTensor) -> Result<CpuTensor> {
        let s = x.shape;
        ensure!(!s.is_empty(), "spatial mean of an empty tensor {s}");
        let hw = s.h * s.w;
        let xs = x.as_slice();
        let out = (0..s.n * s.c)
            .into_par_iter()
            .map(|i| {
                let (img, ch) = (i / s.c, i % s.c);
                let mut acc = 0f32;
                for p in 0..hw {
                    acc += xs[(img * hw + p) * s.c + ch];
                }
                acc / hw as f32
            })
            .collect();
        Ok(CpuTensor::new(Shape::new(s.n, 1, 1, s.c), out))
    }

    fn broadcast_spatial(
        &mut self,
        v: &CpuTensor,
        h: usize,
        w: usize,
        scale: f32,
    ) -> Result<CpuTensor> {
        let s = v.shape;
        ensure!(is_vector(s), "broadcast_spatial: {s} is not [n, 1, 1, c]");
        let out_shape = Shape::new(s.n, h, w, s.c);
        let vs = v.as_slice();
        let per = h * w * s.c;
        let out = (0..out_shape.len())
            .into_par_iter()
            .map(|i| scale * vs[(i / per) * s.c + i % s.c])
            .collect();
        Ok(CpuTensor::new(out_shape, out))
    }

    fn relu_backward(&mut self, g: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor> {
        self.same_shape("relu_backward", g, y)?;
        Ok(self.zip_map(g, y, |g, y| if y > 0.0 { g } else { 0.0 }))
    }

    fn channel_projection(
        &mut self,
        x: &CpuTensor,
        w: &CpuTensor,
        mean: Option<&CpuTensor>,
        relu: bool,
    ) -> Result<CpuTensor> {
        let s = x.shape;
        let want = Shape::new(s.n, 1, 1, s.c);
        ensure!(
            w.shape == want,
            "channel_projection: weights {} for input {s}",
            w.shape
        );
        if let Some(m) = mean {
            ensure!(
                m.shape == want,
                "channel_projection: mean {} for input {s}",
                m.shape
            );
        }
        let (xs, ws, ms) = (x.as_slice(), w.as_slice(), mean.map(|m| m.as_slice()));
        let hw = s.h * s.w;
        let out = (0..s.n * hw)
            .into_par_iter()
            .map(|p| {
                let img = p / hw;
                let mut acc = 0f32;
                for k in 0..s.c {
                    let mu = ms.map_or(0.0, |m| m[img * s.c + k]);
                    acc += ws[img * s.c + k] * (xs[p * s.c + k] - mu);
                }
                if relu {
                    acc.max(0.0)
                } else {
                    acc
                }
            })
            .collect();
        Ok(CpuTensor::new(Shape::new(s.n, s.h, s.w, 1), out))
    }

    fn centred_gram(
        &mut self,
        x: &CpuTensor,
        mean: &CpuTensor,
        over: GramOver,
    ) -> Result<CpuTensor> {
        let s = x.shape;
        ensure!(
            mean.shape == Shape::new(s.n, 1, 1, s.c),
            "centred_gram: mean {} for input {s}",
            mean.shape
        );
        let hw = s.h * s.w;
        let d = match over {
            GramOver::Pixels => hw,
            GramOver::Channels => s.c,
        };
        let (xs, ms) = (x.as_slice(), mean.as_slice());
        let out = (0..s.n * d * d)
            .into_par_iter()
            .map(|i| {
                let img = i / (d * d);
                let (r, q) = ((i / d) % d, i % d);
                let base = img * hw * s.c;
                let mu = &ms[img * s.c..(img + 1) * s.c];
                let mut acc = 0f32;
                match over {
                    GramOver::Pixels => {
                        for k in 0..s.c {
                            acc +=
                                (xs[base + r * s.c + k] - mu[k]) * (xs[base + q * s.c + k] - mu[k]);
                        }
                    }
                    GramOver::Channels => {
                        for p in 0..hw {
                            acc +=
                                (xs[base + p * s.c + r] - mu[r]) * (xs[base + p * s.c + q] - mu[q]);
                        }
                    }
                }
                acc
            })
            .collect();
        Ok(CpuTensor::new(Shape::new(s.n, d, d, 1), out))
    }

    fn relax_masks(
        &mut self,
        seed: u64,
        start: u32,
        count: usize,
        h: usize,
        w: usize,
    ) -> Result<CpuTensor> {
        ensure!(
            h >= 4 && w >= 4,
            "RELAX masks need an image of at least 4x4, got {h}x{w}"
        );
        ensure!(
            (start as u64) + (count as u64) <= u32::MAX as u64,
            "RELAX mask index beyond 2^32"
        );
        let stream = MaskStream::new(seed, h, w);
        let out = (0..count * h * w)
            .into_par_iter()
            .map(|i| {
                let b = i / (h * w);
                let (y, x) = ((i / w) % h, i % w);
                mask_value(&stream, start + b as u32, y, x)
            })
            .collect();
        Ok(CpuTensor::new(Shape::new(count, h, w, 1), out))
    }

    fn mask_images(&mut self, x: &CpuTensor, m: &CpuTensor) -> Result<CpuTensor> {
        let (s, ms) = (x.shape, m.shape);
        ensure!(
            s.n == 1 && (ms.h, ms.w, ms.c) == (s.h, s.w, 1),
            "mask_images: image {s} and masks {ms}"
        );
        let (xs, mv) = (x.as_slice(), m.as_slice());
        let hw = s.h * s.w;
        let out_shape = Shape::new(ms.n, s.h, s.w, s.c);
        let out = (0..out_shape.len())
            .into_par_iter()
            .map(|i| {
                let px = i / s.c;
                xs[(px % hw) * s.c + i % s.c] * mv[px]
            })
            .collect();
        Ok(CpuTensor::new(out_shape, out))
    }

    fn cosine_similarity(&mut self, e: &CpuTensor, r: &CpuTensor) -> Result<CpuTensor> {
        let (es, rs) = (e.shape, r.shape);
        ensure!(
            is_vector(es) && rs == Shape::new(1, 1, 1, es.c),
            "cosine_similarity: embeddings {es} and reference {rs}"
        );
        let (ev, rv) = (e.as_slice(), r.as_slice());
        let out = (0..es.n)
            .map(|b| {
                let (mut dot, mut ne, mut nr) = (0f32, 0f32, 0f32);
                for k in 0..es.c {
                    let (a, q) = (ev[b * es.c + k], rv[k]);
                    dot += a * q;
                    ne += a * a;
                    nr += q * q;
                }
                dot / (ne.sqrt() * nr.sqrt()).max(1e-8)
            })
            .collect();
        Ok(CpuTensor::new(Shape::new(es.n, 1, 1, 1), out))
    }

    fn relax_accumulate(
        &mut self,
        acc: Option<&CpuTensor>,
        masks: &CpuTensor,
        sims: &CpuTensor,
        shift: f32,
    ) -> Result<CpuTensor> {
        let ms = masks.shape;
        ensure!(
            ms.c == 1 && sims.shape == Shape::new(ms.n, 1, 1, 1),
            "relax_accumulate: masks {ms} and similarities {}",
            sims.shape
        );
        let out_shape = Shape::new(1, ms.h, ms.w, 3);
        if let Some(a) = acc {
            ensure!(
                a.shape == out_shape,
                "relax_accumulate: sums {} for masks {ms}",
                a.shape
            );
        }
        let hw = ms.h * ms.w;
        let (mv, sv, av) = (masks.as_slice(), sims.as_slice(), acc.map(|a| a.as_slice()));
        let mut out = vec![0f32; out_shape.len()];
        out.par_chunks_mut(3).enumerate().for_each(|(p, o)| {
            let (mut w, mut s1, mut s2) = match av {
                Some(a) => (a[p * 3], a[p * 3 + 1], a[p * 3 + 2]),
                None => (0.0, 0.0, 0.0),
            };
            for (b, &s) in sv.iter().enumerate() {
                let m = mv[b * hw + p];
                let t = s - shift;
                w += m;
                s1 += m * t;
                s2 += m * t * t;
            }
            o.copy_from_slice(&[w, s1, s2]);
        });
        Ok(CpuTensor::new(out_shape, out))
    }
}
