//! The baseline ops ([`CamBackend`]) on the GPU: `shaders/cam.wgsl`, dispatched on the LRP
//! kernels' bind-group layout. Every view and size is validated here before a dispatch is
//! recorded (the kernels run without runtime bounds checks).

use super::params::CamParams;
use super::{u32_of, Gpu, GpuTensor};
use crate::backend::{CamBackend, GramOver};
use crate::ops::relax_mask::seed_key;
use crate::tensor::Shape;
use anyhow::Result;

/// The pipelines of `shaders/cam.wgsl`.
pub(crate) struct CamPipelines {
    pub spatial_mean: wgpu::ComputePipeline,
    pub broadcast_spatial: wgpu::ComputePipeline,
    pub relu_backward: wgpu::ComputePipeline,
    pub channel_projection: wgpu::ComputePipeline,
    pub centred_gram: wgpu::ComputePipeline,
    pub relax_masks: wgpu::ComputePipeline,
    pub mask_images: wgpu::ComputePipeline,
    pub cosine_similarity: wgpu::ComputePipeline,
    pub relax_accumulate: wgpu::ComputePipeline,
}

/// The fields of `shaders/cam.wgsl`'s parameter block an op sets, in host sizes (checked to
/// fit the kernels' 32-bit indices by [`P::params`]).
#[derive(Default)]
struct P {
    total: usize,
    c: usize,
    offs: [usize; 3],
    flags: u32,
    f0: f32,
    hw: usize,
    h: usize,
    w: usize,
    d: usize,
    start: u32,
    key: u32,
}

impl P {
    fn params(&self) -> Result<CamParams> {
        Ok(CamParams {
            total: u32_of(self.total, "elements")?,
            c: u32_of(self.c, "channels")?,
            a_off: u32_of(self.offs[0], "offset")?,
            b_off: u32_of(self.offs[1], "offset")?,
            c_off: u32_of(self.offs[2], "offset")?,
            flags: self.flags,
            f0: self.f0,
            hw: u32_of(self.hw, "pixels")?,
            h: u32_of(self.h, "height")?,
            w: u32_of(self.w, "width")?,
            d: u32_of(self.d, "size")?,
            start: self.start,
            key: self.key,
            ..Default::default()
        })
    }
}

impl Gpu {
    fn cam_dispatch(
        &mut self,
        pipeline: fn(&super::pipelines::Pipelines) -> &wgpu::ComputePipeline,
        p: &P,
        inputs: [Option<&GpuTensor>; 3],
        out: &GpuTensor,
    ) -> Result<()> {
        for t in inputs.iter().flatten() {
            self.check_view("cam op operand", t)?;
        }
        let params = p.params()?;
        self.lrp_dispatch(pipeline, &params, inputs, [Some(out), None], p.total)
    }
}

impl CamBackend for Gpu {
    fn spatial_mean_unchecked(&mut self, x: &GpuTensor, shape: Shape) -> Result<GpuTensor> {
        let s = x.shape;
        let out = self.alloc(shape)?;
        let p = P {
            total: s.n * s.c,
            c: s.c,
            offs: [x.offset, 0, 0],
            hw: s.h * s.w,
            ..P::default()
        };
        self.cam_dispatch(|p| &p.cam.spatial_mean, &p, [Some(x), None, None], &out)?;
        Ok(out)
    }

    fn broadcast_spatial_unchecked(
        &mut self,
        v: &GpuTensor,
        scale: f32,
        shape: Shape,
    ) -> Result<GpuTensor> {
        let (s, h, w) = (v.shape, shape.h, shape.w);
        let out = self.alloc(shape)?;
        let p = P {
            total: shape.len(),
            c: s.c,
            offs: [v.offset, 0, 0],
            f0: scale,
            hw: h * w,
            ..P::default()
        };
        self.cam_dispatch(
            |p| &p.cam.broadcast_spatial,
            &p,
            [Some(v), None, None],
            &out,
        )?;
        Ok(out)
    }

    fn relu_backward_unchecked(&mut self, g: &GpuTensor, y: &GpuTensor) -> Result<GpuTensor> {
        let out = self.alloc(g.shape)?;
        let p = P {
            total: g.shape.len(),
            offs: [g.offset, y.offset, 0],
            ..P::default()
        };
        self.cam_dispatch(|p| &p.cam.relu_backward, &p, [Some(g), Some(y), None], &out)?;
        Ok(out)
    }

    fn channel_projection_unchecked(
        &mut self,
        x: &GpuTensor,
        w: &GpuTensor,
        mean: Option<&GpuTensor>,
        relu: bool,
        out_shape: Shape,
    ) -> Result<GpuTensor> {
        let s = x.shape;
        let out = self.alloc(out_shape)?;
        let p = P {
            total: s.n * s.h * s.w,
            c: s.c,
            offs: [x.offset, w.offset, mean.map_or(0, |m| m.offset)],
            flags: mean.is_some() as u32 | (relu as u32) << 1,
            hw: s.h * s.w,
            ..P::default()
        };
        self.cam_dispatch(
            |p| &p.cam.channel_projection,
            &p,
            [Some(x), Some(w), mean],
            &out,
        )?;
        Ok(out)
    }

    fn centred_gram_unchecked(
        &mut self,
        x: &GpuTensor,
        mean: &GpuTensor,
        over: GramOver,
        shape: Shape,
    ) -> Result<GpuTensor> {
        let s = x.shape;
        let (hw, d) = (s.h * s.w, shape.h);
        let out = self.alloc(shape)?;
        let p = P {
            total: shape.len(),
            c: s.c,
            offs: [x.offset, mean.offset, 0],
            flags: (over == GramOver::Channels) as u32,
            hw,
            d,
            ..P::default()
        };
        self.cam_dispatch(
            |p| &p.cam.centred_gram,
            &p,
            [Some(x), Some(mean), None],
            &out,
        )?;
        Ok(out)
    }

    fn relax_masks_unchecked(&mut self, seed: u64, start: u32, shape: Shape) -> Result<GpuTensor> {
        let (h, w) = (shape.h, shape.w);
        let out = self.alloc(shape)?;
        let p = P {
            total: shape.len(),
            hw: h * w,
            h,
            w,
            start,
            key: seed_key(seed),
            ..P::default()
        };
        self.cam_dispatch(|p| &p.cam.relax_masks, &p, [None, None, None], &out)?;
        Ok(out)
    }

    fn mask_images_unchecked(
        &mut self,
        x: &GpuTensor,
        m: &GpuTensor,
        shape: Shape,
    ) -> Result<GpuTensor> {
        let s = x.shape;
        let out = self.alloc(shape)?;
        let p = P {
            total: shape.len(),
            c: s.c,
            offs: [x.offset, m.offset, 0],
            hw: s.h * s.w,
            ..P::default()
        };
        self.cam_dispatch(|p| &p.cam.mask_images, &p, [Some(x), Some(m), None], &out)?;
        Ok(out)
    }

    fn cosine_similarity_unchecked(
        &mut self,
        e: &GpuTensor,
        r: &GpuTensor,
        shape: Shape,
    ) -> Result<GpuTensor> {
        let es = e.shape;
        let out = self.alloc(shape)?;
        let p = P {
            total: es.n,
            c: es.c,
            offs: [e.offset, r.offset, 0],
            ..P::default()
        };
        self.cam_dispatch(
            |p| &p.cam.cosine_similarity,
            &p,
            [Some(e), Some(r), None],
            &out,
        )?;
        Ok(out)
    }

    fn relax_accumulate_unchecked(
        &mut self,
        acc: Option<&GpuTensor>,
        masks: &GpuTensor,
        sims: &GpuTensor,
        shift: f32,
        shape: Shape,
    ) -> Result<GpuTensor> {
        let ms = masks.shape;
        let out = self.alloc(shape)?;
        let p = P {
            total: ms.h * ms.w,
            offs: [masks.offset, sims.offset, acc.map_or(0, |a| a.offset)],
            flags: acc.is_some() as u32,
            f0: shift,
            hw: ms.h * ms.w,
            d: ms.n,
            ..P::default()
        };
        self.cam_dispatch(
            |p| &p.cam.relax_accumulate,
            &p,
            [Some(masks), Some(sims), acc],
            &out,
        )?;
        Ok(out)
    }
}
