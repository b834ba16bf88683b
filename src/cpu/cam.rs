//! The baseline ops ([`CamBackend`]) on the CPU: plain loops, summing in the same order as
//! the WGSL kernels in `shaders/cam.wgsl` so the two backends round alike.

use super::{Cpu, CpuTensor};
use crate::backend::{CamBackend, GramOver};
use crate::ops::relax_mask::{mask_value, MaskStream};
use crate::tensor::Shape;
use anyhow::Result;
use rayon::prelude::*;

impl CamBackend for Cpu {
    fn spatial_mean_unchecked(&mut self, x: &CpuTensor, out_shape: Shape) -> Result<CpuTensor> {
        let s = x.shape;
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
        Ok(CpuTensor::new(out_shape, out))
    }

    fn broadcast_spatial_unchecked(
        &mut self,
        v: &CpuTensor,
        scale: f32,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let (s, h, w) = (v.shape, out_shape.h, out_shape.w);
        let vs = v.as_slice();
        let per = h * w * s.c;
        let out = (0..out_shape.len())
            .into_par_iter()
            .map(|i| scale * vs[(i / per) * s.c + i % s.c])
            .collect();
        Ok(CpuTensor::new(out_shape, out))
    }

    fn relu_backward_unchecked(&mut self, g: &CpuTensor, y: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.zip_map(g, y, |g, y| if y > 0.0 { g } else { 0.0 }))
    }

    fn channel_projection_unchecked(
        &mut self,
        x: &CpuTensor,
        w: &CpuTensor,
        mean: Option<&CpuTensor>,
        relu: bool,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let s = x.shape;
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
        Ok(CpuTensor::new(out_shape, out))
    }

    fn centred_gram_unchecked(
        &mut self,
        x: &CpuTensor,
        mean: &CpuTensor,
        over: GramOver,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let s = x.shape;
        let (hw, d) = (s.h * s.w, out_shape.h);
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
        Ok(CpuTensor::new(out_shape, out))
    }

    fn relax_masks_unchecked(&mut self, seed: u64, start: u32, shape: Shape) -> Result<CpuTensor> {
        let (count, h, w) = (shape.n, shape.h, shape.w);
        let stream = MaskStream::new(seed, h, w);
        let out = (0..count * h * w)
            .into_par_iter()
            .map(|i| {
                let b = i / (h * w);
                let (y, x) = ((i / w) % h, i % w);
                mask_value(&stream, start + b as u32, y, x)
            })
            .collect();
        Ok(CpuTensor::new(shape, out))
    }

    fn mask_images_unchecked(
        &mut self,
        x: &CpuTensor,
        m: &CpuTensor,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let s = x.shape;
        let (xs, mv) = (x.as_slice(), m.as_slice());
        let hw = s.h * s.w;
        let out = (0..out_shape.len())
            .into_par_iter()
            .map(|i| {
                let px = i / s.c;
                xs[(px % hw) * s.c + i % s.c] * mv[px]
            })
            .collect();
        Ok(CpuTensor::new(out_shape, out))
    }

    fn cosine_similarity_unchecked(
        &mut self,
        e: &CpuTensor,
        r: &CpuTensor,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let es = e.shape;
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
        Ok(CpuTensor::new(out_shape, out))
    }

    fn relax_accumulate_unchecked(
        &mut self,
        acc: Option<&CpuTensor>,
        masks: &CpuTensor,
        sims: &CpuTensor,
        shift: f32,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let ms = masks.shape;
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
