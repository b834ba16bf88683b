//! The op set shared by the GPU and CPU backends. Methods (`explain`) and the forward pass
//! (`explain::tape`) are written once over this trait, so a parity test can compare the two
//! backends op by op and end to end.

pub use crate::ops::{shapes, ConvLayer, ConvShape, GramOver, Pool, Upsample};
use crate::tensor::{HostTensor, Shape};
use anyhow::Result;

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
///
/// Every op with a shape rule is a provided method: it checks its operands through
/// [`shapes`] and then calls the backend's `*_unchecked` implementation with the result's
/// shape, so both backends accept and refuse the same inputs with the same message. Backends
/// implement the `*_unchecked` methods (adding only their own device limits) and must not
/// override the checked ones; callers never call the `*_unchecked` ones.
pub trait Backend {
    /// A device tensor: a cheap, clonable handle (shared storage + offset + shape).
    type Tensor: Clone;
    /// A convolution's folded weights, prepared for this device once at load.
    type Conv: ConvShape;

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
    fn preprocess(&mut self, rgb: &[u8], n: usize, h: usize, w: usize) -> Result<Self::Tensor> {
        let out = shapes::preprocess(rgb.len(), n, h, w)?;
        self.preprocess_unchecked(rgb, out)
    }

    /// `act(conv(x) + bias + residual)` where act is ReLU if `relu`; `residual` has the
    /// output's shape. Zero padding.
    fn conv2d(
        &mut self,
        x: &Self::Tensor,
        conv: &Self::Conv,
        residual: Option<&Self::Tensor>,
        relu: bool,
    ) -> Result<Self::Tensor> {
        let residual_shape = residual.map(|r| self.shape(r));
        let out = shapes::conv2d(&conv.geometry(), self.shape(x), residual_shape)?;
        self.conv2d_unchecked(x, conv, residual, relu, out)
    }

    /// Max-pool with implicit -inf padding (as torch).
    fn max_pool(&mut self, x: &Self::Tensor, pool: Pool) -> Result<Self::Tensor> {
        let out = shapes::max_pool(self.shape(x), pool)?;
        self.max_pool_unchecked(x, pool, out)
    }

    /// Mean over channels: [n,h,w,c] -> [n,h,w,1].
    fn channel_mean(&mut self, x: &Self::Tensor) -> Result<Self::Tensor> {
        let out = shapes::channel_mean(self.shape(x))?;
        self.channel_mean_unchecked(x, out)
    }

    /// Max over channels: [n,h,w,c] -> [n,h,w,1] (LaFAM-max).
    fn channel_max(&mut self, x: &Self::Tensor) -> Result<Self::Tensor> {
        let out = shapes::channel_max(self.shape(x))?;
        self.channel_max_unchecked(x, out)
    }

    /// Per image: `(x - min) / (max - min + 1e-6)` over all of its h*w*c values.
    fn minmax_normalise(&mut self, x: &Self::Tensor) -> Result<Self::Tensor> {
        shapes::minmax_normalise(self.shape(x))?;
        self.minmax_normalise_unchecked(x)
    }

    /// Resample every channel of every image to `h`x`w`.
    fn resize(
        &mut self,
        x: &Self::Tensor,
        h: usize,
        w: usize,
        mode: Upsample,
    ) -> Result<Self::Tensor> {
        let out = shapes::resize(self.shape(x), h, w)?;
        self.resize_unchecked(x, out, mode)
    }

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

    // The implementations, called by the methods above once the shapes are checked; `out` is
    // the result's shape.

    /// [`preprocess`](Self::preprocess) of a checked batch.
    fn preprocess_unchecked(&mut self, rgb: &[u8], out: Shape) -> Result<Self::Tensor>;
    /// [`conv2d`](Self::conv2d) of checked operands.
    fn conv2d_unchecked(
        &mut self,
        x: &Self::Tensor,
        conv: &Self::Conv,
        residual: Option<&Self::Tensor>,
        relu: bool,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`max_pool`](Self::max_pool) of a checked input.
    fn max_pool_unchecked(
        &mut self,
        x: &Self::Tensor,
        pool: Pool,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`channel_mean`](Self::channel_mean) of a checked input.
    fn channel_mean_unchecked(&mut self, x: &Self::Tensor, out: Shape) -> Result<Self::Tensor>;
    /// [`channel_max`](Self::channel_max) of a checked input.
    fn channel_max_unchecked(&mut self, x: &Self::Tensor, out: Shape) -> Result<Self::Tensor>;
    /// [`minmax_normalise`](Self::minmax_normalise) of a checked input.
    fn minmax_normalise_unchecked(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// [`resize`](Self::resize) of a checked input.
    fn resize_unchecked(
        &mut self,
        x: &Self::Tensor,
        out: Shape,
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
/// op by op; the LRP method needs all of them. Checked and `*_unchecked` as in [`Backend`].
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
    ) -> Result<Self::Tensor> {
        let operands = [
            ("mul", mul.map(|t| self.shape(t))),
            ("acc", acc.map(|t| self.shape(t))),
        ];
        let out = shapes::conv_transpose(&conv.geometry(), self.shape(s), in_h, in_w, operands)?;
        self.conv_transpose_unchecked(s, conv, mul, scale, acc, out)
    }

    /// `r / stab(z)` with `stab(z) = z + 1e-6 * sign(z)`, `sign(0) = +1`. With a gate, the
    /// result is zero wherever the gate's sign is not the one asked for.
    fn lrp_ratio(
        &mut self,
        r: &Self::Tensor,
        z: &Self::Tensor,
        gate: Option<(&Self::Tensor, GateSign)>,
    ) -> Result<Self::Tensor> {
        let gate_shape = gate.map(|(g, _)| self.shape(g));
        shapes::lrp_ratio(self.shape(r), self.shape(z), gate_shape)?;
        self.lrp_ratio_unchecked(r, z, gate)
    }

    /// `r / stab(conv(x) + bias)`: the ratio of a rule group with one term, its denominator
    /// `z` never stored (the GPU and CPU compute it in the conv's epilogue). `r` has the
    /// conv's output shape.
    fn conv2d_ratio(
        &mut self,
        x: &Self::Tensor,
        conv: &Self::Conv,
        r: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        let out = shapes::conv2d(&conv.geometry(), self.shape(x), Some(self.shape(r)))?;
        self.conv2d_ratio_unchecked(x, conv, r, out)
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
        let (a, b, c) = (self.shape(skip), self.shape(out), self.shape(r));
        shapes::residual_split("residual_split_relu", a, b, c)?;
        self.residual_split_relu_unchecked(skip, out, r)
    }

    /// zennit's Norm rule on a residual add `a + b`: returns `(a r / stab(a+b), b r / stab(a+b))`.
    fn residual_split(
        &mut self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        r: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        let shapes = (self.shape(a), self.shape(b), self.shape(r));
        shapes::residual_split("residual_split", shapes.0, shapes.1, shapes.2)?;
        self.residual_split_unchecked(a, b, r)
    }

    /// Gradient of max-pool: each output's relevance goes to the first maximum of its window
    /// (scan order), as torch's backward does. `x` is the pool's input.
    fn max_pool_backward(
        &mut self,
        x: &Self::Tensor,
        r: &Self::Tensor,
        pool: Pool,
    ) -> Result<Self::Tensor> {
        shapes::max_pool_backward(self.shape(x), self.shape(r), pool)?;
        self.max_pool_backward_unchecked(x, r, pool)
    }

    /// `alpha * a + beta * b` (b optional).
    fn lincomb(
        &mut self,
        a: &Self::Tensor,
        alpha: f32,
        b: Option<&Self::Tensor>,
        beta: f32,
    ) -> Result<Self::Tensor> {
        if let Some(b) = b {
            shapes::same("lincomb", self.shape(a), self.shape(b))?;
        }
        self.lincomb_unchecked(a, alpha, b, beta)
    }

    /// `relu(a + b)` (the residual add of a block when its branch is kept).
    fn add_relu(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        shapes::same("add_relu", self.shape(a), self.shape(b))?;
        self.add_relu_unchecked(a, b)
    }

    /// `clamp(x, lo, hi)`: the positive (`lo = 0`) or negative (`hi = 0`) part of an input.
    fn clamp(&mut self, x: &Self::Tensor, lo: f32, hi: f32) -> Result<Self::Tensor> {
        shapes::clamp(lo, hi)?;
        self.clamp_unchecked(x, lo, hi)
    }

    /// A tensor whose channel `c` holds `values[c]` everywhere (ones, or ZBox bounds).
    fn fill_channels(&mut self, shape: Shape, values: &[f32]) -> Result<Self::Tensor> {
        shapes::fill_channels(shape, values.len())?;
        self.fill_channels_unchecked(shape, values)
    }

    /// Every image `k` times, `[n*k, h, w, c]`: output image `j` is input image `j / k`.
    /// With `keep` (one channel per output image, `n*k` of them), output image `j` keeps
    /// only channel `keep[j]` and is zero elsewhere: the conditions of a batched conditional
    /// backward (CRP), whose lower tape is the plain repeat.
    fn repeat_images(
        &mut self,
        x: &Self::Tensor,
        k: usize,
        keep: Option<&[u32]>,
    ) -> Result<Self::Tensor> {
        let out = shapes::repeat_images(self.shape(x), k, keep)?;
        self.repeat_images_unchecked(x, k, keep, out)
    }

    // The implementations (see [`Backend`]).

    /// [`conv_transpose`](Self::conv_transpose) of checked operands; `out` is
    /// `[n, in_h, in_w, cin]`.
    fn conv_transpose_unchecked(
        &mut self,
        s: &Self::Tensor,
        conv: &Self::Conv,
        mul: Option<&Self::Tensor>,
        scale: f32,
        acc: Option<&Self::Tensor>,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`lrp_ratio`](Self::lrp_ratio) of checked operands.
    fn lrp_ratio_unchecked(
        &mut self,
        r: &Self::Tensor,
        z: &Self::Tensor,
        gate: Option<(&Self::Tensor, GateSign)>,
    ) -> Result<Self::Tensor>;
    /// [`conv2d_ratio`](Self::conv2d_ratio) of checked operands.
    fn conv2d_ratio_unchecked(
        &mut self,
        x: &Self::Tensor,
        conv: &Self::Conv,
        r: &Self::Tensor,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`residual_split_relu`](Self::residual_split_relu) of checked operands.
    fn residual_split_relu_unchecked(
        &mut self,
        skip: &Self::Tensor,
        out: &Self::Tensor,
        r: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// [`residual_split`](Self::residual_split) of checked operands.
    fn residual_split_unchecked(
        &mut self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        r: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)>;
    /// [`max_pool_backward`](Self::max_pool_backward) of checked operands.
    fn max_pool_backward_unchecked(
        &mut self,
        x: &Self::Tensor,
        r: &Self::Tensor,
        pool: Pool,
    ) -> Result<Self::Tensor>;
    /// [`lincomb`](Self::lincomb) of checked operands.
    fn lincomb_unchecked(
        &mut self,
        a: &Self::Tensor,
        alpha: f32,
        b: Option<&Self::Tensor>,
        beta: f32,
    ) -> Result<Self::Tensor>;
    /// [`add_relu`](Self::add_relu) of checked operands.
    fn add_relu_unchecked(&mut self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// [`clamp`](Self::clamp) with checked bounds.
    fn clamp_unchecked(&mut self, x: &Self::Tensor, lo: f32, hi: f32) -> Result<Self::Tensor>;
    /// [`fill_channels`](Self::fill_channels) with checked values.
    fn fill_channels_unchecked(&mut self, shape: Shape, values: &[f32]) -> Result<Self::Tensor>;
    /// [`repeat_images`](Self::repeat_images) of checked operands; `out` is `[n*k, h, w, c]`.
    fn repeat_images_unchecked(
        &mut self,
        x: &Self::Tensor,
        k: usize,
        keep: Option<&[u32]>,
        out: Shape,
    ) -> Result<Self::Tensor>;
}

/// The ops of the baseline methods (Grad-CAM, EigenCAM, RELAX), on top of the LRP ops (the
/// Grad-CAM backward reuses [`LrpBackend::conv_transpose`] for the gradient of every conv).
/// Checked and `*_unchecked` as in [`Backend`].
pub trait CamBackend: LrpBackend {
    /// Global average pooling: `[n, h, w, c] -> [n, 1, 1, c]`, the mean over pixels.
    fn spatial_mean(&mut self, x: &Self::Tensor) -> Result<Self::Tensor> {
        let out = shapes::spatial_mean(self.shape(x))?;
        self.spatial_mean_unchecked(x, out)
    }

    /// `[n, 1, 1, c] -> [n, h, w, c]`: every pixel holds `scale * v` (the gradient of a
    /// global average pool, with `scale = 1 / (h w)`).
    fn broadcast_spatial(
        &mut self,
        v: &Self::Tensor,
        h: usize,
        w: usize,
        scale: f32,
    ) -> Result<Self::Tensor> {
        let out = shapes::broadcast_spatial(self.shape(v), h, w)?;
        self.broadcast_spatial_unchecked(v, scale, out)
    }

    /// The gradient of a ReLU whose output is `y`: `g` where `y > 0`, else 0 (as torch).
    fn relu_backward(&mut self, g: &Self::Tensor, y: &Self::Tensor) -> Result<Self::Tensor> {
        shapes::same("relu_backward", self.shape(g), self.shape(y))?;
        self.relu_backward_unchecked(g, y)
    }

    /// `out[n, p] = Σ_c w[n, c] (x[n, p, c] - mean[n, c])` (`mean` defaults to zeros), then a
    /// ReLU if `relu`: `[n, h, w, c] -> [n, h, w, 1]`. `w` and `mean` are `[n, 1, 1, c]`.
    fn channel_projection(
        &mut self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        mean: Option<&Self::Tensor>,
        relu: bool,
    ) -> Result<Self::Tensor> {
        let mean_shape = mean.map(|m| self.shape(m));
        let out = shapes::channel_projection(self.shape(x), self.shape(w), mean_shape)?;
        self.channel_projection_unchecked(x, w, mean, relu, out)
    }

    /// The centred Gram matrix of every image of `x` (`mean` = its `spatial_mean`), as
    /// `[n, d, d, 1]` with `d = h w` ([`GramOver::Pixels`]) or `d = c` ([`GramOver::Channels`]).
    fn centred_gram(
        &mut self,
        x: &Self::Tensor,
        mean: &Self::Tensor,
        over: GramOver,
    ) -> Result<Self::Tensor> {
        let out = shapes::centred_gram(self.shape(x), self.shape(mean), over)?;
        self.centred_gram_unchecked(x, mean, over, out)
    }

    /// RELAX occlusion masks `start .. start + count` of the stream `seed`, `[count, h, w, 1]`
    /// (`h, w >= 4`). Mask `i` is a function of `(seed, i)` only, identical on every backend:
    /// see [`crate::ops::relax_mask`] for the generator.
    fn relax_masks(
        &mut self,
        seed: u64,
        start: u32,
        count: usize,
        h: usize,
        w: usize,
    ) -> Result<Self::Tensor> {
        let out = shapes::relax_masks(start, count, h, w)?;
        self.relax_masks_unchecked(seed, start, out)
    }

    /// `x [1, h, w, c]` times every mask of `m [b, h, w, 1]`: `[b, h, w, c]`.
    fn mask_images(&mut self, x: &Self::Tensor, m: &Self::Tensor) -> Result<Self::Tensor> {
        let out = shapes::mask_images(self.shape(x), self.shape(m))?;
        self.mask_images_unchecked(x, m, out)
    }

    /// Cosine similarity of every row of `e [b, 1, 1, c]` with `r [1, 1, 1, c]`:
    /// `e·r / max(|e| |r|, 1e-8)`, `[b, 1, 1, 1]`.
    fn cosine_similarity(&mut self, e: &Self::Tensor, r: &Self::Tensor) -> Result<Self::Tensor> {
        let out = shapes::cosine_similarity(self.shape(e), self.shape(r))?;
        self.cosine_similarity_unchecked(e, r, out)
    }

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
    ) -> Result<Self::Tensor> {
        let acc_shape = acc.map(|a| self.shape(a));
        let out = shapes::relax_accumulate(self.shape(masks), self.shape(sims), acc_shape)?;
        self.relax_accumulate_unchecked(acc, masks, sims, shift, out)
    }

    // The implementations (see [`Backend`]).

    /// [`spatial_mean`](Self::spatial_mean) of a checked input.
    fn spatial_mean_unchecked(&mut self, x: &Self::Tensor, out: Shape) -> Result<Self::Tensor>;
    /// [`broadcast_spatial`](Self::broadcast_spatial) of a checked input.
    fn broadcast_spatial_unchecked(
        &mut self,
        v: &Self::Tensor,
        scale: f32,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`relu_backward`](Self::relu_backward) of checked operands.
    fn relu_backward_unchecked(
        &mut self,
        g: &Self::Tensor,
        y: &Self::Tensor,
    ) -> Result<Self::Tensor>;
    /// [`channel_projection`](Self::channel_projection) of checked operands.
    fn channel_projection_unchecked(
        &mut self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        mean: Option<&Self::Tensor>,
        relu: bool,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`centred_gram`](Self::centred_gram) of checked operands.
    fn centred_gram_unchecked(
        &mut self,
        x: &Self::Tensor,
        mean: &Self::Tensor,
        over: GramOver,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`relax_masks`](Self::relax_masks) of a checked range; `out` is `[count, h, w, 1]`.
    fn relax_masks_unchecked(&mut self, seed: u64, start: u32, out: Shape) -> Result<Self::Tensor>;
    /// [`mask_images`](Self::mask_images) of checked operands.
    fn mask_images_unchecked(
        &mut self,
        x: &Self::Tensor,
        m: &Self::Tensor,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`cosine_similarity`](Self::cosine_similarity) of checked operands.
    fn cosine_similarity_unchecked(
        &mut self,
        e: &Self::Tensor,
        r: &Self::Tensor,
        out: Shape,
    ) -> Result<Self::Tensor>;
    /// [`relax_accumulate`](Self::relax_accumulate) of checked operands.
    fn relax_accumulate_unchecked(
        &mut self,
        acc: Option<&Self::Tensor>,
        masks: &Self::Tensor,
        sims: &Self::Tensor,
        shift: f32,
        out: Shape,
    ) -> Result<Self::Tensor>;
}
