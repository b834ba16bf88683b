//! CPU backend: the same ops as the GPU in plain Rust (rayon for data parallelism, the `gemm`
//! crate for the convolution's matrix product). It is the reference every GPU kernel is
//! tested against, and the fallback on machines without an adapter.

use crate::backend::{shapes, Backend, GateSign, Pool, Upsample};
use crate::model::ConvLayer;
use crate::tensor::{HostTensor, Shape};
use anyhow::{anyhow, bail, ensure, Result};
use rayon::prelude::*;
use std::sync::Arc;

mod cam;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A tensor on the CPU backend: shared storage, an element offset (for per-image views), a shape.
#[derive(Clone, Debug)]
pub struct CpuTensor {
    data: Arc<Vec<f32>>,
    offset: usize,
    shape: Shape,
}

impl CpuTensor {
    fn new(shape: Shape, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.len(), data.len());
        CpuTensor {
            data: Arc::new(data),
            offset: 0,
            shape,
        }
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.data[self.offset..self.offset + self.shape.len()]
    }
}

/// Weights of a conv in the GEMM layout the forward uses: `[kh*kw*cin, cout]` row-major.
pub struct CpuConv {
    layer: ConvLayer,
}

/// The CPU backend. Uses rayon's global pool (RAYON_NUM_THREADS to override).
pub struct Cpu {
    threads: usize,
    /// Scratch for im2col / the transposed conv's columns, reused across convs: a fresh
    /// multi-MiB buffer per conv costs an mmap and a page fault per 4 KiB.
    cols: Vec<f32>,
}

impl Cpu {
    pub fn new() -> Self {
        Cpu {
            threads: rayon::current_num_threads(),
            cols: Vec::new(),
        }
    }
    fn parallelism(&self) -> gemm::Parallelism {
        if self.threads > 1 {
            gemm::Parallelism::Rayon(self.threads)
        } else {
            gemm::Parallelism::None
        }
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

/// `dst[m, n] = a[m, k] * b[k, n]`, all row-major and contiguous; with `b_transposed`, `b` is
/// stored as `[n, k]` and used transposed.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b_transposed: bool,
    par: gemm::Parallelism,
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    let (b_cs, b_rs) = if b_transposed {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: the asserts above bound every access gemm makes for these sizes and strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Rows of the implicit GEMM's left matrix: for every output pixel of one image, the
/// `kh*kw*cin` input values under the kernel (zero outside the image), in HWIO order.
fn im2col(x: &[f32], s: Shape, c: &ConvLayer, wo: usize, cols: &mut [f32]) {
    let k = c.kh * c.kw * c.cin;
    cols.par_chunks_mut(k * wo)
        .enumerate()
        .for_each(|(oy, rows)| {
            for ox in 0..wo {
                let row = &mut rows[ox * k..(ox + 1) * k];
                for ky in 0..c.kh {
                    let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                    for kx in 0..c.kw {
                        let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                        let dst = &mut row[(ky * c.kw + kx) * c.cin..(ky * c.kw + kx + 1) * c.cin];
                        if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                            dst.fill(0.0);
                        } else {
                            let src = ((iy as usize) * s.w + ix as usize) * s.c;
                            dst.copy_from_slice(&x[src..src + c.cin]);
                        }
                    }
                }
            }
        });
}

/// The CPU backend's largest tensor (or scratch buffer), in bytes: see
/// [`Backend::max_tensor_bytes`].
pub const CPU_MAX_TENSOR_BYTES: u64 = 1 << 30;

/// `len` zeroed floats for `what` (a tensor of `images` images), checked against
/// [`CPU_MAX_TENSOR_BYTES`] before allocating, and allocated fallibly: an error, never an
/// abort, when it does not fit.
fn zeros(what: &str, len: usize, images: usize) -> Result<Vec<f32>> {
    let bytes = len as u64 * 4;
    if bytes > CPU_MAX_TENSOR_BYTES {
        let fix = if images <= 1 {
            "a single image at this network input size is too large: use a smaller --size"
        } else {
            "the batch is too large: split it"
        };
        bail!(
            "{what} needs {bytes} bytes, over the CPU backend's {CPU_MAX_TENSOR_BYTES} byte \
             tensor limit ({fix})"
        );
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| anyhow!("{what}: cannot allocate {bytes} bytes (out of memory)"))?;
    v.resize(len, 0.0);
    Ok(v)
}

impl Cpu {
    /// The conv's GEMM without its epilogue: `[n, ho, wo, cout]` of `Σ x w` (no bias), after
    /// checking the input (and the residual or relevance operand's shape).
    fn conv_gemm(
        &mut self,
        x: &CpuTensor,
        conv: &CpuConv,
        residual: Option<&CpuTensor>,
    ) -> Result<(Shape, Vec<f32>)> {
        let c = &conv.layer;
        let s = x.shape;
        let out_shape = shapes::conv2d(&c.geometry(), s, residual.map(|r| r.shape))?;
        let (ho, wo) = (out_shape.h, out_shape.w);
        let k = c.kh * c.kw * c.cin;
        let m = ho * wo;
        let direct = c.kh == 1 && c.kw == 1 && c.stride == 1 && c.pad == 0;
        if !direct && self.cols.len() < m * k {
            // Checked (and the old scratch freed) before the output is allocated.
            self.cols = Vec::new();
            self.cols = zeros(&format!("conv {} im2col (one image)", c.name), m * k, 1)?;
        }
        let mut out = zeros(
            &format!("conv {} output {out_shape}", c.name),
            out_shape.len(),
            out_shape.n,
        )?;
        let mut cols = std::mem::take(&mut self.cols);
        let xs = x.as_slice();
        for img in 0..s.n {
            let xin = &xs[img * s.image_len()..(img + 1) * s.image_len()];
            let dst = &mut out[img * m * c.cout..(img + 1) * m * c.cout];
            let lhs: &[f32] = if direct {
                xin
            } else {
                im2col(xin, s, c, wo, &mut cols[..m * k]);
                &cols[..m * k]
            };
            matmul(dst, lhs, &c.weight, m, k, c.cout, false, self.parallelism());
        }
        self.cols = cols;
        Ok((out_shape, out))
    }
}

impl Backend for Cpu {
    type Tensor = CpuTensor;
    type Conv = CpuConv;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn max_tensor_bytes(&self) -> u64 {
        // Bounded only by memory; keep a batch's largest activation under 1 GiB. Every
        // allocation that grows with the input is checked against it (see `zeros`).
        CPU_MAX_TENSOR_BYTES
    }

    fn prepare_conv(&mut self, conv: &ConvLayer) -> Result<CpuConv> {
        ensure!(
            conv.weight.len() == conv.kh * conv.kw * conv.cin * conv.cout
                && conv.bias.len() == conv.cout,
            "conv {}: weight/bias sizes do not match its shape",
            conv.name
        );
        ensure!(
            conv.stride > 0 && conv.kh > 0 && conv.kw > 0,
            "conv {}: zero kernel or stride",
            conv.name
        );
        Ok(CpuConv {
            layer: conv.clone(),
        })
    }

    fn upload(&mut self, t: &HostTensor) -> Result<CpuTensor> {
        Ok(CpuTensor::new(t.shape, t.data.clone()))
    }

    fn download(&mut self, t: &CpuTensor) -> Result<HostTensor> {
        Ok(HostTensor::new(t.shape, t.as_slice().to_vec()))
    }

    fn shape(&self, t: &CpuTensor) -> Shape {
        t.shape
    }

    fn image(&self, t: &CpuTensor, i: usize) -> CpuTensor {
        assert!(i < t.shape.n, "image {i} of a batch of {}", t.shape.n);
        CpuTensor {
            data: t.data.clone(),
            offset: t.offset + i * t.shape.image_len(),
            shape: t.shape.one(),
        }
    }

    fn preprocess(&mut self, rgb: &[u8], n: usize, h: usize, w: usize) -> Result<CpuTensor> {
        ensure!(
            rgb.len() == n * h * w * 3,
            "preprocess: {} bytes for {n}x{h}x{w}x3",
            rgb.len()
        );
        // The f32 batch is 4x the bytes: checked before it is allocated.
        let shape = Shape::new(n, h, w, 3);
        let mut data = zeros(&format!("preprocessed batch {shape}"), shape.len(), n)?;
        data.par_iter_mut()
            .zip(rgb.par_iter())
            .enumerate()
            .for_each(|(i, (d, &v))| {
                let c = i % 3;
                *d = (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            });
        Ok(CpuTensor::new(shape, data))
    }

    fn conv2d(
        &mut self,
        x: &CpuTensor,
        conv: &CpuConv,
        residual: Option<&CpuTensor>,
        relu: bool,
    ) -> Result<CpuTensor> {
        let c = &conv.layer;
        let (out_shape, mut out) = self.conv_gemm(x, conv, residual)?;
        // Fused epilogue: bias, residual, ReLU.
        let res = residual.map(|r| r.as_slice());
        out.par_chunks_mut(c.cout).enumerate().for_each(|(p, px)| {
            let r = res.map(|r| &r[p * c.cout..(p + 1) * c.cout]);
            for (j, v) in px.iter_mut().enumerate() {
                let mut y = *v + c.bias[j];
                if let Some(r) = r {
                    y += r[j];
                }
                // `y <= 0` rather than `y.max(0)`: the same for numbers, but a NaN (from an
                // overflow upstream) stays NaN instead of becoming a plausible 0.
                *v = if relu && y <= 0.0 { 0.0 } else { y };
            }
        });
        Ok(CpuTensor::new(out_shape, out))
    }

    fn max_pool(&mut self, x: &CpuTensor, pool: Pool) -> Result<CpuTensor> {
        let s = x.shape;
        ensure!(
            pool.kernel > 0 && pool.stride > 0 && pool.pad * 2 <= pool.kernel,
            "max-pool: bad parameters {pool:?}"
        );
        ensure!(
            s.h + 2 * pool.pad >= pool.kernel && s.w + 2 * pool.pad >= pool.kernel,
            "max-pool: input {s} too small"
        );
        let (ho, wo) = pool.out_size(s.h, s.w);
        let out_shape = Shape::new(s.n, ho, wo, s.c);
        let xs = x.as_slice();
        let mut out = zeros(
            &format!("max-pool output {out_shape}"),
            out_shape.len(),
            s.n,
        )?;
        out.par_chunks_mut(wo * s.c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (img, oy) = (row / ho, row % ho);
                for ox in 0..wo {
                    for ch in 0..s.c {
                        let mut best = f32::NEG_INFINITY;
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
                                best = best.max(
                                    xs[((img * s.h + iy as usize) * s.w + ix as usize) * s.c + ch],
                                );
                            }
                        }
                        dst[ox * s.c + ch] = best;
                    }
                }
            });
        Ok(CpuTensor::new(out_shape, out))
    }

    fn channel_mean(&mut self, x: &CpuTensor) -> Result<CpuTensor> {
        let s = x.shape;
        ensure!(s.c > 0, "channel mean of a tensor with no channels");
        let out = x
            .as_slice()
            .par_chunks(s.c)
            .map(|px| px.iter().sum::<f32>() / s.c as f32)
            .collect();
        Ok(CpuTensor::new(Shape { c: 1, ..s }, out))
    }

    fn channel_max(&mut self, x: &CpuTensor) -> Result<CpuTensor> {
        let s = x.shape;
        ensure!(s.c > 0, "channel max of a tensor with no channels");
        let out = x
            .as_slice()
            .par_chunks(s.c)
            .map(|px| px.iter().copied().fold(f32::NEG_INFINITY, f32::max))
            .collect();
        Ok(CpuTensor::new(Shape { c: 1, ..s }, out))
    }

    fn minmax_normalise(&mut self, x: &CpuTensor) -> Result<CpuTensor> {
        let s = x.shape;
        let mut out = x.as_slice().to_vec();
        out.par_chunks_mut(s.image_len()).for_each(|img| {
            let (lo, hi) = img
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            let scale = 1.0 / (hi - lo + 1e-6);
            img.iter_mut().for_each(|v| *v = (*v - lo) * scale);
        });
        Ok(CpuTensor::new(s, out))
    }

    fn resize(&mut self, x: &CpuTensor, h: usize, w: usize, mode: Upsample) -> Result<CpuTensor> {
        let s = x.shape;
        ensure!(
            h > 0 && w > 0 && s.h > 0 && s.w > 0,
            "resize: empty size {s} -> {h}x{w}"
        );
        let out_shape = Shape::new(s.n, h, w, s.c);
        let xs = x.as_slice();
        let ys: Vec<Tap> = (0..h).map(|d| Tap::new(d, s.h, h, mode)).collect();
        let xt: Vec<Tap> = (0..w).map(|d| Tap::new(d, s.w, w, mode)).collect();
        let mut out = zeros(&format!("resize output {out_shape}"), out_shape.len(), s.n)?;
        out.par_chunks_mut(w * s.c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (img, y) = (row / h, row % h);
                let ty = ys[y];
                let at =
                    |iy: usize, ix: usize, ch: usize| xs[((img * s.h + iy) * s.w + ix) * s.c + ch];
                for (x, tx) in xt.iter().enumerate() {
                    for ch in 0..s.c {
                        let top = at(ty.i0, tx.i0, ch) * (1.0 - tx.t) + at(ty.i0, tx.i1, ch) * tx.t;
                        let bottom =
                            at(ty.i1, tx.i0, ch) * (1.0 - tx.t) + at(ty.i1, tx.i1, ch) * tx.t;
                        dst[x * s.c + ch] = top * (1.0 - ty.t) + bottom * ty.t;
                    }
                }
            });
        Ok(CpuTensor::new(out_shape, out))
    }
}

/// The two source indices and weight of one output coordinate, as torch's interpolate
/// (align_corners=False) computes them.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    t: f32,
}

impl Tap {
    fn new(dst: usize, input: usize, output: usize, mode: Upsample) -> Tap {
        match mode {
            // torch 'nearest': floor(dst * in / out), in integers.
            Upsample::Nearest => {
                let i = ((dst * input) / output).min(input - 1);
                Tap {
                    i0: i,
                    i1: i,
                    t: 0.0,
                }
            }
            Upsample::Bilinear => {
                let scale = input as f32 / output as f32;
                let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                let i1 = (i0 + 1).min(input - 1);
                Tap {
                    i0,
                    i1,
                    t: src - i0 as f32,
                }
            }
        }
    }
}

/// Scatter-adds im2col rows back onto an image: the adjoint of [`im2col`].
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
    fn same_shape(&self, what: &str, a: &CpuTensor, b: &CpuTensor) -> Result<()> {
        shapes::same(what, a.shape, b.shape)
    }

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

    fn zip_map(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        f: impl Fn(f32, f32) -> f32 + Sync,
    ) -> CpuTensor {
        let out = a
            .as_slice()
            .par_iter()
            .zip(b.as_slice())
            .map(|(&x, &y)| f(x, y))
            .collect();
        CpuTensor::new(a.shape, out)
    }
}

impl crate::backend::LrpBackend for Cpu {
    fn conv_transpose(
        &mut self,
        s: &CpuTensor,
        conv: &CpuConv,
        in_h: usize,
        in_w: usize,
        mul: Option<&CpuTensor>,
        scale: f32,
        acc: Option<&CpuTensor>,
    ) -> Result<CpuTensor> {
        let c = &conv.layer;
        let ss = s.shape;
        let operands = [("mul", mul.map(|t| t.shape)), ("acc", acc.map(|t| t.shape))];
        let in_shape = shapes::conv_transpose(&c.geometry(), ss, in_h, in_w, operands)?;
        let (ho, wo) = (ss.h, ss.w);
        let k = c.kh * c.kw * c.cin;
        let m = ho * wo;
        let direct = c.kh == 1 && c.kw == 1 && c.stride == 1 && c.pad == 0;
        if !direct && self.cols.len() < m * k {
            self.cols = Vec::new();
            self.cols = zeros(&format!("conv {} columns (one image)", c.name), m * k, 1)?;
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
        let row_len = in_w * c.cin;
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

    fn lrp_ratio(
        &mut self,
        r: &CpuTensor,
        z: &CpuTensor,
        gate: Option<(&CpuTensor, GateSign)>,
    ) -> Result<CpuTensor> {
        self.same_shape("lrp_ratio", r, z)?;
        let ratio = self.zip_map(r, z, |r, z| r / stabilise(z));
        let Some((g, sign)) = gate else {
            return Ok(ratio);
        };
        self.same_shape("lrp_ratio gate", r, g)?;
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

    fn residual_split(
        &mut self,
        a: &CpuTensor,
        b: &CpuTensor,
        r: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        self.same_shape("residual_split", a, b)?;
        self.same_shape("residual_split", a, r)?;
        Ok(self.split(a, b, r, |x, y, r| {
            let q = r / stabilise(x + y);
            (x * q, y * q)
        }))
    }

    fn residual_split_relu(
        &mut self,
        skip: &CpuTensor,
        out: &CpuTensor,
        r: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        self.same_shape("residual_split_relu", skip, out)?;
        self.same_shape("residual_split_relu", skip, r)?;
        Ok(self.split(skip, out, r, |x, s, r| {
            let q = r / stabilise(s);
            (x * q, (s - x) * q)
        }))
    }

    fn conv2d_ratio(&mut self, x: &CpuTensor, conv: &CpuConv, r: &CpuTensor) -> Result<CpuTensor> {
        let c = &conv.layer;
        let (out_shape, mut out) = self.conv_gemm(x, conv, Some(r))?;
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

    fn max_pool_backward(&mut self, x: &CpuTensor, r: &CpuTensor, pool: Pool) -> Result<CpuTensor> {
        let s = x.shape;
        shapes::max_pool_backward(s, r.shape, pool)?;
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

    fn lincomb(
        &mut self,
        a: &CpuTensor,
        alpha: f32,
        b: Option<&CpuTensor>,
        beta: f32,
    ) -> Result<CpuTensor> {
        match b {
            Some(b) => {
                self.same_shape("lincomb", a, b)?;
                Ok(self.zip_map(a, b, |x, y| alpha * x + beta * y))
            }
            None => Ok(CpuTensor::new(
                a.shape,
                a.as_slice().par_iter().map(|x| alpha * x).collect(),
            )),
        }
    }

    fn add_relu(&mut self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        self.same_shape("add_relu", a, b)?;
        Ok(self.zip_map(a, b, |x, y| {
            let s = x + y;
            if s <= 0.0 {
                0.0
            } else {
                s
            }
        }))
    }

    fn clamp(&mut self, x: &CpuTensor, lo: f32, hi: f32) -> Result<CpuTensor> {
        Ok(CpuTensor::new(
            x.shape,
            x.as_slice().par_iter().map(|v| v.clamp(lo, hi)).collect(),
        ))
    }

    fn fill_channels(&mut self, shape: Shape, values: &[f32]) -> Result<CpuTensor> {
        ensure!(
            values.len() == shape.c,
            "fill_channels: {} values for {} channels",
            values.len(),
            shape.c
        );
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

    fn repeat_images(
        &mut self,
        x: &CpuTensor,
        k: usize,
        keep: Option<&[u32]>,
    ) -> Result<CpuTensor> {
        let shape = shapes::repeat_images(x.shape, k, keep)?;
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
