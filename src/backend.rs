//! The op set shared by the GPU and CPU backends. Methods (`explain`) and the forward pass
//! (`model::forward`) are written once over this trait, so a parity test can compare the two
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
    pub const RESNET_STEM: Pool = Pool { kernel: 3, stride: 2, pad: 1 };
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.kernel) / self.stride + 1,
            (w + 2 * self.pad - self.kernel) / self.stride + 1,
        )
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

    /// Per image: `(x - min) / (max - min + 1e-6)` over all of its h*w*c values.
    fn minmax_normalise(&mut self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Resample every channel of every image to `h`x`w`.
    fn resize(&mut self, x: &Self::Tensor, h: usize, w: usize, mode: Upsample) -> Result<Self::Tensor>;
}
