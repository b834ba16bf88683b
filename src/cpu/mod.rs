//! CPU backend: the same ops as the GPU in plain Rust (rayon + gemm). The reference for tests.
//!
//! STUB (branch `cli` only): a naive, single-threaded implementation of the Backend trait so
//! the CLI can be exercised end to end before the real backend lands. Replace this whole file
//! with the `cpu` branch's at merge.

use crate::backend::{Backend, Pool, Upsample};
use crate::model::ConvLayer;
use crate::tensor::{HostTensor, Shape};
use anyhow::{ensure, Result};

#[derive(Default)]
pub struct Cpu;

impl Cpu {
    pub fn new() -> Cpu {
        Cpu
    }
}

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

fn src_index(dst: usize, inp: usize, out: usize, mode: Upsample) -> (usize, usize, f32) {
    match mode {
        Upsample::Nearest => {
            let i = (dst * inp / out).min(inp - 1);
            (i, i, 0.0)
        }
        Upsample::Bilinear => {
            let s = ((dst as f32 + 0.5) * inp as f32 / out as f32 - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(inp - 1);
            let i1 = (i0 + 1).min(inp - 1);
            (i0, i1, s - i0 as f32)
        }
    }
}

impl Backend for Cpu {
    type Tensor = HostTensor;
    type Conv = ConvLayer;
    fn name(&self) -> String {
        "cpu (naive stub)".into()
    }
    fn max_tensor_bytes(&self) -> u64 {
        1 << 30
    }
    fn prepare_conv(&mut self, conv: &ConvLayer) -> Result<ConvLayer> {
        Ok(conv.clone())
    }
    fn upload(&mut self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }
    fn download(&mut self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }
    fn shape(&self, t: &HostTensor) -> Shape {
        t.shape
    }
    fn image(&self, t: &HostTensor, i: usize) -> HostTensor {
        t.image(i)
    }
    fn preprocess(&mut self, rgb: &[u8], n: usize, h: usize, w: usize) -> Result<HostTensor> {
        ensure!(rgb.len() == n * h * w * 3);
        let data = rgb
            .iter()
            .enumerate()
            .map(|(i, &v)| (v as f32 / 255.0 - MEAN[i % 3]) / STD[i % 3])
            .collect();
        Ok(HostTensor::new(Shape::new(n, h, w, 3), data))
    }
    fn conv2d(
        &mut self,
        x: &HostTensor,
        c: &ConvLayer,
        residual: Option<&HostTensor>,
        relu: bool,
    ) -> Result<HostTensor> {
        let s = x.shape;
        ensure!(s.c == c.cin, "conv {}: input has {} channels", c.name, s.c);
        let (oh, ow) = c.out_size(s.h, s.w);
        let mut out = HostTensor::zeros(Shape::new(s.n, oh, ow, c.cout));
        for n in 0..s.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = ((n * oh + oy) * ow + ox) * c.cout;
                    let acc = &mut out.data[o..o + c.cout];
                    acc.copy_from_slice(&c.bias);
                    for ky in 0..c.kh {
                        let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                        if iy < 0 || iy >= s.h as isize {
                            continue;
                        }
                        for kx in 0..c.kw {
                            let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                            if ix < 0 || ix >= s.w as isize {
                                continue;
                            }
                            let xi = ((n * s.h + iy as usize) * s.w + ix as usize) * s.c;
                            for ci in 0..s.c {
                                let xv = x.data[xi + ci];
                                let wi = ((ky * c.kw + kx) * c.cin + ci) * c.cout;
                                for (a, wv) in acc.iter_mut().zip(&c.weight[wi..wi + c.cout]) {
                                    *a += xv * wv;
                                }
                            }
                        }
                    }
                    if let Some(r) = residual {
                        for (a, rv) in acc.iter_mut().zip(&r.data[o..o + c.cout]) {
                            *a += rv;
                        }
                    }
                    if relu {
                        acc.iter_mut().for_each(|a| *a = a.max(0.0));
                    }
                }
            }
        }
        Ok(out)
    }
    fn max_pool(&mut self, x: &HostTensor, p: Pool) -> Result<HostTensor> {
        let s = x.shape;
        let (oh, ow) = p.out_size(s.h, s.w);
        let mut out = HostTensor::new(
            Shape::new(s.n, oh, ow, s.c),
            vec![f32::NEG_INFINITY; s.n * oh * ow * s.c],
        );
        for n in 0..s.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..p.kernel {
                        for kx in 0..p.kernel {
                            let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                            let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                            if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                continue;
                            }
                            for ch in 0..s.c {
                                let v = x.data
                                    [((n * s.h + iy as usize) * s.w + ix as usize) * s.c + ch];
                                let o = &mut out.data[((n * oh + oy) * ow + ox) * s.c + ch];
                                *o = o.max(v);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
    fn channel_mean(&mut self, x: &HostTensor) -> Result<HostTensor> {
        let s = x.shape;
        let data = x
            .data
            .chunks(s.c)
            .map(|p| p.iter().sum::<f32>() / s.c as f32)
            .collect();
        Ok(HostTensor::new(Shape { c: 1, ..s }, data))
    }
    fn minmax_normalise(&mut self, x: &HostTensor) -> Result<HostTensor> {
        let mut out = x.clone();
        for img in out.data.chunks_mut(x.shape.image_len()) {
            let lo = img.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = img.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            img.iter_mut()
                .for_each(|v| *v = (*v - lo) / (hi - lo + 1e-6));
        }
        Ok(out)
    }
    fn resize(&mut self, x: &HostTensor, h: usize, w: usize, mode: Upsample) -> Result<HostTensor> {
        let s = x.shape;
        let mut out = HostTensor::zeros(Shape::new(s.n, h, w, s.c));
        for n in 0..s.n {
            for y in 0..h {
                let (y0, y1, fy) = src_index(y, s.h, h, mode);
                for xx in 0..w {
                    let (x0, x1, fx) = src_index(xx, s.w, w, mode);
                    for ch in 0..s.c {
                        let at =
                            |yy: usize, xv: usize| x.data[((n * s.h + yy) * s.w + xv) * s.c + ch];
                        let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                        let bot = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                        out.data[((n * h + y) * w + xx) * s.c + ch] = top * (1.0 - fy) + bot * fy;
                    }
                }
            }
        }
        Ok(out)
    }
}
