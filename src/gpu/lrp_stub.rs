// TEMPORARY until branch gpu-lrp lands.
use super::Gpu;
use crate::backend::{GateSign, LrpBackend, Pool};
use crate::Shape;
use anyhow::{bail, Result};
type T = <Gpu as crate::Backend>::Tensor;
type C = <Gpu as crate::Backend>::Conv;
impl LrpBackend for Gpu {
    fn conv_transpose(
        &mut self,
        _: &T,
        _: &C,
        _: usize,
        _: usize,
        _: Option<&T>,
        _: f32,
        _: Option<&T>,
    ) -> Result<T> {
        bail!("todo")
    }
    fn lrp_ratio(&mut self, _: &T, _: &T, _: Option<(&T, GateSign)>) -> Result<T> {
        bail!("todo")
    }
    fn residual_split(&mut self, _: &T, _: &T, _: &T) -> Result<(T, T)> {
        bail!("todo")
    }
    fn max_pool_backward(&mut self, _: &T, _: &T, _: Pool) -> Result<T> {
        bail!("todo")
    }
    fn lincomb(&mut self, _: &T, _: f32, _: Option<&T>, _: f32) -> Result<T> {
        bail!("todo")
    }
    fn add_relu(&mut self, _: &T, _: &T) -> Result<T> {
        bail!("todo")
    }
    fn clamp(&mut self, _: &T, _: f32, _: f32) -> Result<T> {
        bail!("todo")
    }
    fn fill_channels(&mut self, _: Shape, _: &[f32]) -> Result<T> {
        bail!("todo")
    }
}
