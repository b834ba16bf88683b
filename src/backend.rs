//! The op set shared by the GPU and CPU backends. Methods (`explain`) and the forward pass
//! (`explain::tape`) are written once over this trait, so a parity test can compare the two
//! backends op by op and end to end.

use crate::model::ConvLayer;
use crate::tensor::{HostTensor, Shape};
use anyhow::Result;

/// How a map is resampled. Both follow `torch.nn.functional.interpolate` with
/// `align_corners=False`: nearest picks `floor(dst * in / out)`, bilinear samples at
/// `(dst + 0.5) * in / out - 0.5` clamped at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Upsample {
    Nearest,
    Bilinear,
}

/// Parameters of a max-pool (ResNet's stem uses 3x3, stride 2, padding 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Pool {
    pub const RESNET_STEM: Pool = Pool {
        kernel: 3,
        stride: 2,
        pad: 1,
    };
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.kernel) / self.stride + 1,
            (w + 2 * self.pad - self.kernel) / self.stride + 1,
        )
    }
}

/// Device memory in use, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Prepared weights (including LRP rule variants).
    pub weights: u64,
    /// The most bytes live tensors (activations, relevance, temporaries) held at once since
    /// the last `reset_peak_memory`.
    pub peak_tensors: u64,
}

/// Device time per kernel, from GPU timestamp queries: kernel name -> (passes, nanoseconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelTimes {
    pub kernels: std::collections::BTreeMap<String, (usize, f64)>,
    /// Every pass in recording order: (kernel, nanoseconds).
    pub sequence: Vec<(String, f64)>,
}

impl KernelTimes {
    pub fn add(&mut self, kernel: &str, ns: f64) {
        let e = self.kernels.entry(kernel.to_string()).or_default();
        e.0 += 1;
        e.1 += ns;
        self.sequence.push((kernel.to_string(), ns));
    }
    /// Adds `other`'s passes and times to the per-kernel totals (the sequence stays this
    /// one's).
    pub fn merge(&mut self, other: &KernelTimes) {
        for (name, &(n, ns)) in &other.kernels {
            let e = self.kernels.entry(name.clone()).or_default();
            e.0 += n;
            e.1 += ns;
        }
    }
    /// Total device time of all passes, in nanoseconds.
    pub fn total_ns(&self) -> f64 {
        self.kernels.values().map(|k| k.1).sum()
    }
    /// Total number of passes.
    pub fn passes(&self) -> usize {
        self.kernels.values().map(|k| k.0).sum()
    }
    /// Kernels by descending time.
    pub fn by_time(&self) -> Vec<(&str, usize, f64)> {
        let mut v: Vec<_> = self
            .kernels
            .iter()
            .map(|(k, &(n, t))| (k.as_str(), n, t))
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }
}

/// A compute backend. Tensors are NHWC f32 living on the backend's device; ops may be
/// recorded lazily (the GPU backend records into one command encoder and only submits when
/// a result is downloaded), so `download` is the only synchronisation point.
pub trait Backend {
    /// A device tensor: a cheap, clonable handle (shared storage + offset + shape).
    type Tensor: Clone;
    /// A convolution's folded weights, prepared for this device once at load.
    type Conv;

    /// Human-readable name, e.g. "gpu: NVIDIA H100 (Vulkan)" or "cpu (2 threads)".
    fn name(&self) -> String;

    /// Largest tensor (in bytes) one op may read or write; the forward pass splits batches so
    /// that no activation exceeds it (the adapter's storage-binding limit on the GPU).
    fn max_tensor_bytes(&self) -> u64;

    fn prepare_conv(&mut self, conv: &ConvLayer) -> Result<Self::Conv>;

    fn upload(&mut self, t: &HostTensor) -> Result<Self::Tensor>;
    /// Waits for all recorded work that `t` depends on and copies it to the host.
    fn download(&mut self, t: &Self::Tensor) -> Result<HostTensor>;
    fn shape(&self, t: &Self::Tensor) -> Shape;
    /// A view of image `i` of a batch (no copy).
    fn image(&self, t: &Self::Tensor, i: usize) -> Self::Tensor;

    /// `n` RGB8 images of `h`x`w` (`rgb.len() == n*h*w*3`, row-major, interleaved) to
    /// ImageNet-normalised NHWC f32: `(v/255 - mean_c) / std_c`.
    fn preprocess(&mut self, rgb: &[u8], n: usize, h: usize, w: usize) -> Result<Self::Tensor>;

    /// `act(conv(x) + bias + residual)` where act is ReLU if `relu`; `residual` has the
    /// output's shape. Zero padding.
    fn conv2d(
        &mut self,
        x: &Self::Tensor,
        conv: &Self::Conv,
        residual: Option<&Self::Tensor>,
        relu: bool,
    ) -> Result<Self::Tensor>;

    /// Max-pool with implicit -inf padding (as torch).
    fn max_pool(&mut self, x: &Self::Tensor, pool: Pool) -> Result<Self::Tensor>;

    /// Mean over channels: [n,h,w,c] -> [n,h,w,1].
    fn channel_mean(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Max over channels: [n,h,w,c] -> [n,h,w,1] (LaFAM-max).
    fn channel_max(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Per image: `(x - min) / (max - min + 1e-6)` over all of its h*w*c values.
    fn minmax_normalise(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Device memory use, where the backend tracks it (the GPU does).
    fn memory(&self) -> Option<MemoryStats> {
        None
    }

    /// Starts a new peak-memory measurement.
    fn reset_peak_memory(&mut self) {}

    /// Starts timing device work per kernel (GPU timestamp queries). Returns false where the
    /// backend cannot (the CPU, adapters without timestamp queries).
    fn start_kernel_timing(&mut self) -> bool {
        false
    }

    /// Stops timing and returns the device time per kernel of the work recorded since
    /// `start_kernel_timing` (waiting for it), or None where timing is not on.
    fn stop_kernel_timing(&mut self) -> Result<Option<KernelTimes>> {
        Ok(None)
    }

    /// Resample every channel of every image to `h`x`w`.
    fn resize(
        &mut self,
        x: &Self::Tensor,
        h: usize,
        w: usize,
        mode: Upsample,
    ) -> Result<Self::Tensor>;
}

/// Which sign of a gate tensor lets a ratio through (zennit's Gamma rule masks its two
/// denominators by the sign of the layer's unmodified output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateSign {
    Positive,
    Negative,
}

/// The relevance-propagation (LRP) ops. Separate from [`Backend`] so a backend can grow them
/// op by op; the LRP method needs all of them.
pub trait LrpBackend: Backend {
    /// Gradient of `conv2d` with respect to its input (a transposed convolution) of `s`
    /// (`[n, ho, wo, cout]`) back to `[n, in_h, in_w, cin]`, with the fused LRP epilogue
    /// `out = scale * (mul ⊙ convT(s)) + acc` (`mul` defaults to ones, `acc` to zeros).
    #[allow(clippy::too_many_arguments)]
    fn conv_transpose(
        &mut self,
        s: &Self::Tensor,
        conv: &Self::Conv,
        in_h: usize,
        in_w: usize,
        mul: Option<&Self::Tensor>,
        scale: f32,
        acc: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// `r / stab(z)` with `stab(z) = z + 1e-6 * sign(z)`, `sign(0) = +1`. With a gate, the
    /// result is zero wherever the gate's sign is not the one asked for.
    fn lrp_ratio(
        &mut self,
        r: &Self::Tensor,
        z: &Self::Tensor,
        gate: Option<(&Self::Tensor, GateSign)>,
    ) -> Result<Self::Tensor>;

    /// `r / stab(conv(x) + bias)`: the ratio of a rule group with one term, its denominator
    /// `z` never stored (the GPU and CPU compute it in the conv's epilogue).
    fn conv2d_ratio(
        &mut self,
        x: &Self::Tensor,
        conv: &Self::Conv,
        r: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let z = self.conv2d(x, conv, None, false)?;
        self.lrp_ratio(r, &z, None)
    }

    /// [`residual_split`](Self::residual_split) of a block whose add `skip + branch` fed a
    /// ReLU, from that ReLU's output `out` instead of the branch: `q = r / stab(out)`,
    /// returns `(skip q, (out - skip) q)`. Equal to the split of `skip + branch` wherever
    /// `out > 0`; where `out = 0` the caller guarantees `r = 0` (both results are then 0), so
    /// the branch never needs to be kept.
    fn residual_split_relu(
        &mut self,
        skip: &Self::Tensor,
        out: &Self::Tensor,
        r: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let branch = self.lincomb(out, 1.0, Some(skip), -1.0)?;
        self.residual_split(skip, &branch, r)
    }

    /// zennit's Norm rule on a residual add `a + b`: returns `(a r / stab(a+b), b r / stab(a+b))`.
    fn residual_split(
        &mut self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        r: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)>;

    /// Gradient of max-pool: each output's relevance goes to the first maximum of its window
    /// (scan order), as torch's backward does. `x` is the pool's input.
    fn max_pool_backward(
        &mut self,
        x: &Self::Tensor,
        r: &Self::Tensor,
        pool: Pool,
    ) -> Result<Self::Tensor>;

    /// `alpha * a + beta * b` (b optional).
    fn lincomb(
        &mut self,
        a: &Self::Tensor,
        alpha: f32,
        b: Option<&Self::Tensor>,
        beta: f32,
    ) -> Result<Self::Tensor>;

    /// `relu(a + b)` (the residual add of a block when its branch is kept).
    fn add_relu(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// `clamp(x, lo, hi)`: the positive (`lo = 0`) or negative (`hi = 0`) part of an input.
    fn clamp(&mut self, x: &Self::Tensor, lo: f32, hi: f32) -> Result<Self::Tensor>;

    /// A tensor whose channel `c` holds `values[c]` everywhere (ones, or ZBox bounds).
    fn fill_channels(&mut self, shape: Shape, values: &[f32]) -> Result<Self::Tensor>;

    /// Every image `k` times, `[n*k, h, w, c]`: output image `j` is input image `j / k`.
    /// With `keep` (one channel per output image, `n*k` of them), output image `j` keeps
    /// only channel `keep[j]` and is zero elsewhere: the conditions of a batched conditional
    /// backward (CRP), whose lower tape is the plain repeat.
    fn repeat_images(
        &mut self,
        x: &Self::Tensor,
        k: usize,
        keep: Option<&[u32]>,
    ) -> Result<Self::Tensor>;
}

/// Which centred Gram matrix [`CamBackend::centred_gram`] forms from an activation `X`
/// (`hw x c` per image, centred per channel: `Xc = X - mean_hw X`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GramOver {
    /// `Xc Xcᵀ`, `hw x hw`: the smaller one when the map has fewer pixels than channels.
    Pixels,
    /// `Xcᵀ Xc`, `c x c`.
    Channels,
}

/// The ops of the baseline methods (Grad-CAM, EigenCAM, RELAX), on top of the LRP ops (the
/// Grad-CAM backward reuses [`LrpBackend::conv_transpose`] for the gradient of every conv).
pub trait CamBackend: LrpBackend {
    /// Global average pooling: `[n, h, w, c] -> [n, 1, 1, c]`, the mean over pixels.
    fn spatial_mean(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// `[n, 1, 1, c] -> [n, h, w, c]`: every pixel holds `scale * v` (the gradient of a
    /// global average pool, with `scale = 1 / (h w)`).
    fn broadcast_spatial(
        &mut self,
        v: &Self::Tensor,
        h: usize,
        w: usize,
        scale: f32,
    ) -> Result<Self::Tensor>;

    /// The gradient of a ReLU whose output is `y`: `g` where `y > 0`, else 0 (as torch).
    fn relu_backward(&mut self, g: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor>;

    /// `out[n, p] = Σ_c w[n, c] (x[n, p, c] - mean[n, c])` (`mean` defaults to zeros), then a
    /// ReLU if `relu`: `[n, h, w, c] -> [n, h, w, 1]`. `w` and `mean` are `[n, 1, 1, c]`.
    fn channel_projection(
        &mut self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        mean: Option<&Self::Tensor>,
        relu: bool,
    ) -> Result<Self::Tensor>;

    /// The centred Gram matrix of every image of `x` (`mean` = its `spatial_mean`), as
    /// `[n, d, d, 1]` with `d = h w` ([`GramOver::Pixels`]) or `d = c` ([`GramOver::Channels`]).
    fn centred_gram(
        &mut self,
        x: &Self::Tensor,
        mean: &Self::Tensor,
        over: GramOver,
    ) -> Result<Self::Tensor>;

    /// RELAX occlusion masks `start .. start + count` of the stream `seed`, `[count, h, w, 1]`
    /// (`h, w >= 4`). Mask `i` is a function of `(seed, i)` only, identical on every backend:
    /// see [`crate::explain::relax`] for the generator.
    fn relax_masks(
        &mut self,
        seed: u64,
        start: u32,
        count: usize,
        h: usize,
        w: usize,
    ) -> Result<Self::Tensor>;

    /// `x [1, h, w, c]` times every mask of `m [b, h, w, 1]`: `[b, h, w, c]`.
    fn mask_images(&mut self, x: &Self::Tensor, m: &Self::Tensor) -> Result<Self::Tensor>;

    /// Cosine similarity of every row of `e [b, 1, 1, c]` with `r [1, 1, 1, c]`:
    /// `e·r / max(|e| |r|, 1e-8)`, `[b, 1, 1, 1]`.
    fn cosine_similarity(&mut self, e: &Self::Tensor, r: &Self::Tensor) -> Result<Self::Tensor>;

    /// RELAX running sums per pixel, `[1, h, w, 3]`: `acc + Σ_b (m_b, m_b t_b, m_b t_b²)` with
    /// `t_b = s_b - shift` (the shift keeps the variance free of cancellation), for masks
    /// `m [b, h, w, 1]` and similarities `s [b, 1, 1, 1]`; `acc` defaults to zeros. Sums over
    /// `b` in order, so both backends round alike.
    fn relax_accumulate(
        &mut self,
        acc: Option<&Self::Tensor>,
        masks: &Self::Tensor,
        sims: &Self::Tensor,
        shift: f32,
    ) -> Result<Self::Tensor>;
}

/// Shape rules of the ops, shared by the backends so that both accept and refuse the same
/// inputs with the same message (the GPU adds its own device limits: binding sizes, 32-bit
/// indices, view extents).
pub mod shapes {
    use super::{GramOver, Pool};
    use crate::tensor::Shape;
    use anyhow::{bail, ensure, Result};

    /// What the shape rules need of a convolution.
    #[derive(Clone, Copy, Debug)]
    pub struct ConvGeometry<'a> {
        pub name: &'a str,
        pub cin: usize,
        pub cout: usize,
        pub kh: usize,
        pub kw: usize,
        pub stride: usize,
        pub pad: usize,
    }

    impl ConvGeometry<'_> {
        /// The output size of an `h`x`w` input, or an error where the kernel does not fit.
        pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
            let (name, kh, kw, pad) = (self.name, self.kh, self.kw, self.pad);
            ensure!(
                self.stride > 0 && kh > 0 && kw > 0,
                "conv {name}: kernel and stride must be positive"
            );
            ensure!(
                h + 2 * pad >= kh && w + 2 * pad >= kw,
                "conv {name}: input {h}x{w} smaller than its {kh}x{kw} kernel (padding {pad})"
            );
            Ok((
                (h + 2 * pad - kh) / self.stride + 1,
                (w + 2 * pad - kw) / self.stride + 1,
            ))
        }
    }

    /// `a` and `b` of an elementwise op have one shape.
    pub fn same(what: &str, a: Shape, b: Shape) -> Result<()> {
        ensure!(a == b, "{what}: shapes {a} and {b} differ");
        Ok(())
    }

    /// The output shape of a conv of `x` (with `residual`, which must have it).
    pub fn conv2d(c: &ConvGeometry, x: Shape, residual: Option<Shape>) -> Result<Shape> {
        ensure!(
            x.c == c.cin,
            "conv {}: input {x} has {} channels, the conv expects {}",
            c.name,
            x.c,
            c.cin
        );
        ensure!(x.n > 0, "conv {}: empty input {x}", c.name);
        let (ho, wo) = c.out_size(x.h, x.w)?;
        let out = Shape::new(x.n, ho, wo, c.cout);
        if let Some(r) = residual {
            ensure!(
                r == out,
                "conv {}: residual {r} does not match the output {out}",
                c.name
            );
        }
        Ok(out)
    }

    /// The result shape `[n, in_h, in_w, cin]` of a transposed conv of the relevance `s`;
    /// the named epilogue `operands` must have it.
    pub fn conv_transpose(
        c: &ConvGeometry,
        s: Shape,
        in_h: usize,
        in_w: usize,
        operands: [(&str, Option<Shape>); 2],
    ) -> Result<Shape> {
        let (ho, wo) = c.out_size(in_h, in_w)?;
        ensure!(
            (s.h, s.w, s.c) == (ho, wo, c.cout) && s.n > 0,
            "conv_transpose {}: relevance {s} does not come from a {in_h}x{in_w} input \
             (expected [n, {ho}, {wo}, {}])",
            c.name,
            c.cout
        );
        let result = Shape::new(s.n, in_h, in_w, c.cin);
        for (what, t) in operands {
            if let Some(t) = t {
                ensure!(
                    t == result,
                    "conv_transpose {}: {what} operand {t} is not {result}",
                    c.name
                );
            }
        }
        Ok(result)
    }

    /// The relevance `r` of a max-pool of `x` has the pool's output shape.
    pub fn repeat_images(x: Shape, k: usize, keep: Option<&[u32]>) -> Result<Shape> {
        ensure!(k >= 1, "repeat_images: k must be at least 1");
        let out = Shape::new(x.n * k, x.h, x.w, x.c);
        if let Some(keep) = keep {
            ensure!(
                keep.len() == out.n,
                "repeat_images: {} kept channels for {} output images",
                keep.len(),
                out.n
            );
            if let Some(&c) = keep.iter().find(|&&c| c as usize >= x.c) {
                bail!("repeat_images: channel {c} out of range ({} channels)", x.c);
            }
        }
        Ok(out)
    }

    pub fn max_pool_backward(x: Shape, r: Shape, pool: Pool) -> Result<()> {
        ensure!(
            pool.kernel > 0 && pool.stride > 0 && 2 * pool.pad <= pool.kernel,
            "max-pool backward {pool:?}: kernel and stride must be positive and padding at \
             most half the kernel"
        );
        ensure!(
            x.h + 2 * pool.pad >= pool.kernel && x.w + 2 * pool.pad >= pool.kernel && !x.is_empty(),
            "max-pool backward {pool:?} on input {x}: input smaller than the window"
        );
        let (ho, wo) = pool.out_size(x.h, x.w);
        let want = Shape::new(x.n, ho, wo, x.c);
        ensure!(
            r == want,
            "max_pool_backward: relevance {r} for input {x} (expected {want})"
        );
        Ok(())
    }

    /// The output shape `[n, h, w, 1]` of projecting `x` on per-image channel weights `w`
    /// (`[n, 1, 1, c]`, as the optional `mean`).
    pub fn channel_projection(x: Shape, w: Shape, mean: Option<Shape>) -> Result<Shape> {
        let want = Shape::new(x.n, 1, 1, x.c);
        ensure!(w == want, "channel_projection: weights {w} for input {x}");
        if let Some(m) = mean {
            ensure!(m == want, "channel_projection: mean {m} for input {x}");
        }
        Ok(Shape::new(x.n, x.h, x.w, 1))
    }

    fn is_vector(s: Shape) -> bool {
        s.h == 1 && s.w == 1
    }

    /// `[n, 1, 1, c]`: the spatial mean of a non-empty `x`.
    pub fn spatial_mean(x: Shape) -> Result<Shape> {
        ensure!(!x.is_empty(), "spatial mean of an empty tensor {x}");
        Ok(Shape::new(x.n, 1, 1, x.c))
    }

    /// `[n, h, w, c]`: a per-image vector `v` (`[n, 1, 1, c]`) broadcast over `h`x`w`.
    pub fn broadcast_spatial(v: Shape, h: usize, w: usize) -> Result<Shape> {
        ensure!(is_vector(v), "broadcast_spatial: {v} is not [n, 1, 1, c]");
        Ok(Shape::new(v.n, h, w, v.c))
    }

    /// `[n, d, d, 1]`: the centred Gram matrix of `x` over pixels (`d = h w`) or channels
    /// (`d = c`), given its channel means `mean` (`[n, 1, 1, c]`).
    pub fn centred_gram(x: Shape, mean: Shape, over: GramOver) -> Result<Shape> {
        ensure!(
            mean == Shape::new(x.n, 1, 1, x.c),
            "centred_gram: mean {mean} for input {x}"
        );
        let d = match over {
            GramOver::Pixels => x.h * x.w,
            GramOver::Channels => x.c,
        };
        Ok(Shape::new(x.n, d, d, 1))
    }

    /// `[count, h, w, 1]`: RELAX masks `start .. start + count` of an `h`x`w` image.
    pub fn relax_masks(start: u32, count: usize, h: usize, w: usize) -> Result<Shape> {
        ensure!(
            h >= 4 && w >= 4,
            "RELAX masks need an image of at least 4x4, got {h}x{w}"
        );
        ensure!(
            (start as u64) + (count as u64) <= u32::MAX as u64,
            "RELAX mask index beyond 2^32"
        );
        Ok(Shape::new(count, h, w, 1))
    }

    /// `[b, h, w, c]`: one image `x` (`[1, h, w, c]`) times each of the masks `m`.
    pub fn mask_images(x: Shape, m: Shape) -> Result<Shape> {
        ensure!(
            x.n == 1 && (m.h, m.w, m.c) == (x.h, x.w, 1),
            "mask_images: image {x} and masks {m}"
        );
        Ok(Shape::new(m.n, x.h, x.w, x.c))
    }

    /// `[n, 1, 1, 1]`: the cosine similarity of embeddings `e` with one reference `r`.
    pub fn cosine_similarity(e: Shape, r: Shape) -> Result<Shape> {
        ensure!(
            is_vector(e) && r == Shape::new(1, 1, 1, e.c),
            "cosine_similarity: embeddings {e} and reference {r}"
        );
        Ok(Shape::new(e.n, 1, 1, 1))
    }

    /// `[1, h, w, 3]`: RELAX's running sums over `masks` with one similarity each (and the
    /// previous sums `acc`, which must have that shape).
    pub fn relax_accumulate(masks: Shape, sims: Shape, acc: Option<Shape>) -> Result<Shape> {
        ensure!(
            masks.c == 1 && sims == Shape::new(masks.n, 1, 1, 1),
            "relax_accumulate: masks {masks} and similarities {sims}"
        );
        let out = Shape::new(1, masks.h, masks.w, 3);
        if let Some(a) = acc {
            ensure!(a == out, "relax_accumulate: sums {a} for masks {masks}");
        }
        Ok(out)
    }
}
