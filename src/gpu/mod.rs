//! GPU backend over wgpu: WGSL kernels in `shaders/`, lazy command recording.
//!
//! STUB (branch `cli` only): the names the CLI calls, so it compiles before the real backend
//! lands. `Gpu::new` always fails, so `--backend auto` falls back to the CPU. Replace this
//! whole file with the `gpu` branch's at merge.

use crate::backend::{Backend, Pool, Upsample};
use crate::model::ConvLayer;
use crate::tensor::{HostTensor, Shape};
use anyhow::{bail, Result};

/// How to pick and configure the adapter (real fields live in the `gpu` branch).
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {}

/// The wgpu backend (stub: cannot be constructed).
pub struct Gpu {
    _never: std::convert::Infallible,
}

impl Gpu {
    pub fn new(_opts: &GpuOptions) -> Result<Gpu> {
        bail!("no GPU adapter (the GPU backend is not built into this binary yet)")
    }
    pub fn adapter_summary(&self) -> String {
        match self._never {}
    }
    pub fn limits_summary(&self) -> Vec<(String, String)> {
        match self._never {}
    }
}

impl Backend for Gpu {
    type Tensor = ();
    type Conv = ();
    fn name(&self) -> String {
        match self._never {}
    }
    fn max_tensor_bytes(&self) -> u64 {
        match self._never {}
    }
    fn prepare_conv(&mut self, _: &ConvLayer) -> Result<()> {
        match self._never {}
    }
    fn upload(&mut self, _: &HostTensor) -> Result<()> {
        match self._never {}
    }
    fn download(&mut self, _: &()) -> Result<HostTensor> {
        match self._never {}
    }
    fn shape(&self, _: &()) -> Shape {
        match self._never {}
    }
    fn image(&self, _: &(), _: usize) {
        match self._never {}
    }
    fn preprocess(&mut self, _: &[u8], _: usize, _: usize, _: usize) -> Result<()> {
        match self._never {}
    }
    fn conv2d(&mut self, _: &(), _: &(), _: Option<&()>, _: bool) -> Result<()> {
        match self._never {}
    }
    fn max_pool(&mut self, _: &(), _: Pool) -> Result<()> {
        match self._never {}
    }
    fn channel_mean(&mut self, _: &()) -> Result<()> {
        match self._never {}
    }
    fn minmax_normalise(&mut self, _: &()) -> Result<()> {
        match self._never {}
    }
    fn resize(&mut self, _: &(), _: usize, _: usize, _: Upsample) -> Result<()> {
        match self._never {}
    }
}
