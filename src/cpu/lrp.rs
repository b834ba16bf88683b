//! The LRP ops ([`LrpBackend`]) on the CPU: the transposed conv as a GEMM then col2im (the
//! adjoint of the forward's im2col) with the fused LRP epilogue, the elementwise steps and the
//! max-pool backward. The GPU twin is src/gpu/lrp.rs.

use super::{matmul, zeros, Cpu, CpuConv, CpuTensor};
use crate::backend::{GateSign, LrpBackend, Pool};
use crate::ops::ConvLayer;
use crate::tensor::Shape;
use anyhow::Result;
use rayon::prelude::*;

/// Scatter-adds im2col rows back onto an image: the adjoint of [`im2col`](super::im2col).
/// `finish(iy, row)` runs on each finished input row (the fused epilogue).
fn col2im(
    cols: &[f32],
    s: Shape,
    c: &ConvLayer,
    wo: usize,
    out: &mut [f32],
    finish: impl Fn(usize, &mut [f32]) + Sync,
) {
    let k = c.kh * c.kw * c.cin;
    let ho = cols.len() / (k * wo);
    // Parallel over input rows: each input row gathers from the output pixels covering it,
    // so no two threads write the same element.
    out.par_chunks_mut(s.w * s.c)
        .enumerate()
        .for_each(|(iy, row)| {
            row.fill(0.0);
            for ky in 0..c.kh {
                let num = iy as isize + c.pad as isize - ky as isize;
                if num < 0 || num % c.stride as isize != 0 {
                    continue;
                }
                let oy = num as usize / c.stride;
                if oy >= ho {
                    continue;
                }
                for ox in 0..wo {
                    let src_row = &cols[(oy * wo + ox) * k..(oy * wo + ox + 1) * k];
                    for kx in 0..c.kw {
                        let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                        if ix < 0 || ix >= s.w as isize {
                            continue;
                        }
                        let src = &src_row[(ky * c.kw + kx) * c.cin..(ky * c.kw + kx + 1) * c.cin];
                        let dst = &mut row[ix as usize * c.cin..(ix as usize + 1) * c.cin];
                        dst.iter_mut().zip(src).for_each(|(d, v)| *d += v);
                    }
                }
            }
            finish(iy, row);
        });
}

fn stabilise(z: f32) -> f32 {
    z + if z >= 0.0 { 1e-6 } else { -1e-6 }
}
impl Cpu {
    /// Two outputs of `f(a, b, c)` elementwise, in one pass.
    fn split(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        c: &CpuTensor,
        f: impl Fn(f32, f32, f32) -> (f32, f32) + Sync,
    ) -> (CpuTensor, CpuTensor) {
        let len = a.shape.len();
        let (mut o0, mut o1) = (vec![0f32; len], vec![0f32; len]);
        const CHUNK: usize = 4096;
        o0.par_chunks_mut(CHUNK)
            .zip(o1.par_chunks_mut(CHUNK))
            .zip(a.as_slice().par_chunks(CHUNK))
            .zip(
                b.as_slice()
                    .par_chunks(CHUNK)
                    .zip(c.as_slice().par_chunks(CHUNK)),
            )
            .for_each(|(((o0, o1), a), (b, c))| {
                for i in 0..o0.len() {
                    (o0[i], o1[i]) = f(a[i], b[i], c[i]);
                }
            });
        (CpuTensor::new(a.shape, o0), CpuTensor::new(a.shape, o1))
    }
}

impl LrpBackend for Cpu {
    fn conv_transpose_unchecked(
        &mut self,
        s: &CpuTensor,
        conv: &CpuConv,
        mul: Option<&CpuTensor>,
        scale: f32,
        acc: Option<&CpuTensor>,
        in_shape: Shape,
    ) -> Result<CpuTensor> {
        let c = &conv.layer;
        let ss = s.shape;
        let (ho, wo) = (ss.h, ss.w);
        let k = c.kh * c.kw * c.cin;
        let m = ho * wo;
        let direct = c.kh == 1 && c.kw == 1 && c.stride == 1 && c.pad == 0;
        if !direct {
            self.reserve_cols(&c.name, m * k)?;
        }
        let mut out = zeros(
            &format!("conv {} transposed output {in_shape}", c.name),
            in_shape.len(),
            in_shape.n,
        )?;
        let mut cols = std::mem::take(&mut self.cols);
        let (mul, acc) = (mul.map(|t| t.as_slice()), acc.map(|t| t.as_slice()));
        // The epilogue `scale * mul ⊙ v + acc` over a run of elements starting at `start`.
        let epilogue = |start: usize, vals: &mut [f32]| {
            let range = start..start + vals.len();
            match (mul.map(|t| &t[range.clone()]), acc.map(|t| &t[range])) {
                (Some(m), Some(a)) => vals
                    .iter_mut()
                    .zip(m.iter().zip(a))
                    .for_each(|(v, (m, a))| *v = *v * scale * m + a),
                (Some(m), None) => vals
                    .iter_mut()
                    .zip(m)
                    .for_each(|(v, m)| *v = *v * scale * m),
                (None, Some(a)) => vals
                    .iter_mut()
                    .zip(a)
                    .for_each(|(v, a)| *v = *v * scale + a),
                (None, None) => vals.iter_mut().for_each(|v| *v *= scale),
            }
        };
        let sv = s.as_slice();
        let row_len = in_shape.w * c.cin;
        for img in 0..ss.n {
            let r = &sv[img * m * c.cout..(img + 1) * m * c.cout];
            let base = img * in_shape.image_len();
            let dst = &mut out[base..base + in_shape.image_len()];
            if direct {
                matmul(dst, r, &c.weight, m, c.cout, k, true, self.parallelism());
                dst.par_chunks_mut(row_len)
                    .enumerate()
                    .for_each(|(iy, row)| epilogue(base + iy * row_len, row));
            } else {
                let cols = &mut cols[..m * k];
                matmul(cols, r, &c.weight, m, c.cout, k, true, self.parallelism());
                // The epilogue runs on each input row right after col2im has gathered it.
                col2im(cols, in_shape, c, wo, dst, |iy, row| {
                    epilogue(base + iy * row_len, row)
                });
            }
        }
        self.cols = cols;
        Ok(CpuTensor::new(in_shape, out))
    }

    fn lrp_ratio_unchecked(
        &mut self,
        r: &CpuTensor,
        z: &CpuTensor,
        gate: Option<(&CpuTensor, GateSign)>,
    ) -> Result<CpuTensor> {
        let ratio = self.zip_map(r, z, |r, z| r / stabilise(z));
        let Some((g, sign)) = gate else {
            return Ok(ratio);
        };
        Ok(self.zip_map(&ratio, g, |v, g| {
            let open = match sign {
                GateSign::Positive => g > 0.0,
                GateSign::Negative => g < 0.0,
            };
            if open {
                v
            } else {
                0.0
            }
        }))
    }

    fn residual_split_unchecked(
        &mut self,
        a: &CpuTensor,
        b: &CpuTensor,
        r: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        Ok(self.split(a, b, r, |x, y, r| {
            let q = r / stabilise(x + y);
            (x * q, y * q)
        }))
    }

    fn residual_split_relu_unchecked(
        &mut self,
        skip: &CpuTensor,
        out: &CpuTensor,
        r: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        Ok(self.split(skip, out, r, |x, s, r| {
            let q = r / stabilise(s);
            (x * q, (s - x) * q)
        }))
    }

    fn conv2d_ratio_unchecked(
        &mut self,
        x: &CpuTensor,
        conv: &CpuConv,
        r: &CpuTensor,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let c = &conv.layer;
        let mut out = self.conv_gemm(x, conv, out_shape)?;
        let rv = r.as_slice();
        out.par_chunks_mut(c.cout)
            .zip(rv.par_chunks(c.cout))
            .for_each(|(px, r)| {
                for ((v, r), b) in px.iter_mut().zip(r).zip(&c.bias) {
                    *v = r / stabilise(*v + b);
                }
            });
        Ok(CpuTensor::new(out_shape, out))
    }

    fn max_pool_backward_unchecked(
        &mut self,
        x: &CpuTensor,
        r: &CpuTensor,
        pool: Pool,
    ) -> Result<CpuTensor> {
        let s = x.shape;
        let (ho, wo) = (r.shape.h, r.shape.w);
        let (xs, rs) = (x.as_slice(), r.as_slice());
        // Scatter per image (windows overlap), images in parallel.
        let mut out = zeros(&format!("max-pool relevance {s}"), s.len(), s.n)?;
        out.par_chunks_mut(s.image_len())
            .enumerate()
            .for_each(|(img, dst)| {
                for oy in 0..ho {
                    for ox in 0..wo {
                        for ch in 0..s.c {
                            let mut best = f32::NEG_INFINITY;
                            let mut at = None;
                            for ky in 0..pool.kernel {
                                let iy = (oy * pool.stride + ky) as isize - pool.pad as isize;
                                if iy < 0 || iy >= s.h as isize {
                                    continue;
                                }
                                for kx in 0..pool.kernel {
                                    let ix = (ox * pool.stride + kx) as isize - pool.pad as isize;
                                    if ix < 0 || ix >= s.w as isize {
                                        continue;
                                    }
                                    let i = (iy as usize * s.w + ix as usize) * s.c + ch;
                                    let v = xs[img * s.image_len() + i];
                                    if v > best || at.is_none() {
                                        best = v;
                                        at = Some(i);
                                    }
                                }
                            }
                            if let Some(i) = at {
                                dst[i] += rs[((img * ho + oy) * wo + ox) * s.c + ch];
                            }
                        }
                    }
                }
            });
        Ok(CpuTensor::new(s, out))
    }

    fn lincomb_unchecked(
        &mut self,
        a: &CpuTensor,
        alpha: f32,
        b: Option<&CpuTensor>,
        beta: f32,
    ) -> Result<CpuTensor> {
        match b {
            Some(b) => Ok(self.zip_map(a, b, |x, y| alpha * x + beta * y)),
            None => Ok(CpuTensor::new(
                a.shape,
                a.as_slice().par_iter().map(|x| alpha * x).collect(),
            )),
        }
    }

    fn add_relu_unchecked(&mut self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        Ok(self.zip_map(a, b, |x, y| {
            let s = x + y;
            if s <= 0.0 {
                0.0
            } else {
                s
            }
        }))
    }

    fn clamp_unchecked(&mut self, x: &CpuTensor, lo: f32, hi: f32) -> Result<CpuTensor> {
        Ok(CpuTensor::new(
            x.shape,
            x.as_slice().par_iter().map(|v| v.clamp(lo, hi)).collect(),
        ))
    }

    fn fill_channels_unchecked(&mut self, shape: Shape, values: &[f32]) -> Result<CpuTensor> {
        let mut data = zeros(
            &format!("fill_channels output {shape}"),
            shape.len(),
            shape.n,
        )?;
        data.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = values[i % shape.c]);
        Ok(CpuTensor::new(shape, data))
    }

    fn repeat_images_unchecked(
        &mut self,
        x: &CpuTensor,
        k: usize,
        keep: Option<&[u32]>,
        shape: Shape,
    ) -> Result<CpuTensor> {
        let mut data = zeros(
            &format!("repeat_images output {shape}"),
            shape.len(),
            shape.n,
        )?;
        let (per, c) = (shape.image_len(), shape.c);
        let xs = x.as_slice();
        data.par_chunks_mut(per.max(1))
            .enumerate()
            .for_each(|(j, out)| {
                let src = &xs[(j / k) * per..(j / k + 1) * per];
                match keep {
                    None => out.copy_from_slice(src),
                    Some(keep) => {
                        let ch = keep[j] as usize;
                        for (o, s) in out.chunks_mut(c).zip(src.chunks(c)) {
                            o[ch] = s[ch];
                        }
                    }
                }
            });
        Ok(CpuTensor::new(shape, data))
    }
}
