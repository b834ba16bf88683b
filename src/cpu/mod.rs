//! CPU backend: the same ops as the GPU in plain Rust (rayon for data parallelism, the `gemm`
//! crate for the convolution's matrix product). It is the reference every GPU kernel is
//! tested against, and the fallback on machines without an adapter.

use crate::backend::{Backend, ConvShape, Pool, Upsample};
use crate::ops::ConvGeometry;
use crate::ops::ConvLayer;
use crate::tensor::{HostTensor, Shape};
use anyhow::{anyhow, bail, ensure, Result};
use rayon::prelude::*;
use std::sync::Arc;

mod cam;
mod lrp;

pub use crate::ops::{IMAGENET_MEAN, IMAGENET_STD};

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

impl ConvShape for CpuConv {
    fn geometry(&self) -> ConvGeometry<'_> {
        self.layer.geometry()
    }
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
    /// Grows the im2col scratch to `len` values (one image), checked and with the old
    /// scratch freed before anything else is allocated.
    pub(crate) fn reserve_cols(&mut self, conv: &str, len: usize) -> Result<()> {
        if self.cols.len() < len {
            self.cols = Vec::new();
            self.cols = zeros(&format!("conv {conv} columns (one image)"), len, 1)?;
        }
        Ok(())
    }

    /// The conv's GEMM without its epilogue: `out_shape` (`[n, ho, wo, cout]`, checked) of
    /// `Σ x w` (no bias).
    fn conv_gemm(&mut self, x: &CpuTensor, conv: &CpuConv, out_shape: Shape) -> Result<Vec<f32>> {
        let c = &conv.layer;
        let s = x.shape;
        let (ho, wo) = (out_shape.h, out_shape.w);
        let k = c.kh * c.kw * c.cin;
        let m = ho * wo;
        let direct = c.kh == 1 && c.kw == 1 && c.stride == 1 && c.pad == 0;
        if !direct {
            self.reserve_cols(&c.name, m * k)?;
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
        Ok(out)
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

    fn preprocess_unchecked(&mut self, rgb: &[u8], shape: Shape) -> Result<CpuTensor> {
        let n = shape.n;
        // The f32 batch is 4x the bytes: checked before it is allocated.
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

    fn conv2d_unchecked(
        &mut self,
        x: &CpuTensor,
        conv: &CpuConv,
        residual: Option<&CpuTensor>,
        relu: bool,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let c = &conv.layer;
        let mut out = self.conv_gemm(x, conv, out_shape)?;
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

    fn max_pool_unchecked(
        &mut self,
        x: &CpuTensor,
        pool: Pool,
        out_shape: Shape,
    ) -> Result<CpuTensor> {
        let s = x.shape;
        let (ho, wo) = (out_shape.h, out_shape.w);
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

    fn channel_mean_unchecked(&mut self, x: &CpuTensor, out_shape: Shape) -> Result<CpuTensor> {
        let c = x.shape.c as f32;
        Ok(channel_reduce(x, out_shape, |px| {
            px.iter().sum::<f32>() / c
        }))
    }

    fn channel_max_unchecked(&mut self, x: &CpuTensor, out_shape: Shape) -> Result<CpuTensor> {
        Ok(channel_reduce(x, out_shape, |px| {
            px.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        }))
    }

    fn minmax_normalise_unchecked(&mut self, x: &CpuTensor) -> Result<CpuTensor> {
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

    fn resize_unchecked(
        &mut self,
        x: &CpuTensor,
        out_shape: Shape,
        mode: Upsample,
    ) -> Result<CpuTensor> {
        let s = x.shape;
        let (h, w) = (out_shape.h, out_shape.w);
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

impl Cpu {
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

/// `[n,h,w,c] -> out_shape = [n,h,w,1]` (checked by the shape rules): `f` over each pixel's
/// channels.
fn channel_reduce(
    x: &CpuTensor,
    out_shape: Shape,
    f: impl Fn(&[f32]) -> f32 + Sync + Send,
) -> CpuTensor {
    let out = x.as_slice().par_chunks(x.shape.c).map(f).collect();
    CpuTensor::new(out_shape, out)
}
