//! The baseline ops ([`CamBackend`]) on the GPU: `shaders/cam.wgsl`, dispatched on the LRP
//! kernels' bind-group layout. Every view and size is validated here before a dispatch is
//! recorded (the kernels run without runtime bounds checks).

use super::{u32_of, Gpu, GpuTensor};
use crate::backend::{CamBackend, GramOver};
use crate::explain::relax::seed_key;
use crate::tensor::Shape;
use anyhow::{ensure, Result};

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

/// The parameter block of `shaders/cam.wgsl`.
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
    fn words(&self) -> Result<[u32; 16]> {
        Ok([
            u32_of(self.total, "elements")?,
            u32_of(self.c, "channels")?,
            u32_of(self.offs[0], "offset")?,
            u32_of(self.offs[1], "offset")?,
            u32_of(self.offs[2], "offset")?,
            self.flags,
            self.f0.to_bits(),
            u32_of(self.hw, "pixels")?,
            u32_of(self.h, "height")?,
            u32_of(self.w, "width")?,
            u32_of(self.d, "size")?,
            self.start,
            self.key,
            0,
            0,
            0,
        ])
    }
}

fn vector(s: Shape) -> bool {
    s.h == 1 && s.w == 1
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
        let words = p.words()?;
        self.lrp_dispatch(pipeline, &words, inputs, [Some(out), None], p.total)
    }
}

impl CamBackend for Gpu {
    fn spatial_mean(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        let s = x.shape;
        ensure!(!s.is_empty(), "spatial mean of an empty tensor {s}");
        let out = self.alloc(Shape::new(s.n, 1, 1, s.c))?;
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

    fn broadcast_spatial(
        &mut self,
        v: &GpuTensor,
        h: usize,
        w: usize,
        scale: f32,
    ) -> Result<GpuTensor> {
        let s = v.shape;
        ensure!(vector(s), "broadcast_spatial: {s} is not [n, 1, 1, c]");
        let shape = Shape::new(s.n, h, w, s.c);
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

    fn relu_backward(&mut self, g: &GpuTensor, y: &GpuTensor) -> Result<GpuTensor> {
        self.same_shape("relu_backward", g, y)?;
        let out = self.alloc(g.shape)?;
        let p = P {
            total: g.shape.len(),
            offs: [g.offset, y.offset, 0],
            ..P::default()
        };
        self.cam_dispatch(|p| &p.cam.relu_backward, &p, [Some(g), Some(y), None], &out)?;
        Ok(out)
    }

    fn channel_projection(
        &mut self,
        x: &GpuTensor,
        w: &GpuTensor,
        mean: Option<&GpuTensor>,
        relu: bool,
    ) -> Result<GpuTensor> {
        let s = x.shape;
        let want = Shape::new(s.n, 1, 1, s.c);
        ensure!(
            w.shape == want,
            "channel_projection: weights {} for input {s}",
            w.shape
        );
        if let Some(m) = mean {
            ensure!(
                m.shape == want,
                "channel_projection: mean {} for input {s}",
                m.shape
            );
        }
        let out = self.alloc(Shape::new(s.n, s.h, s.w, 1))?;
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

    fn centred_gram(
        &mut self,
        x: &GpuTensor,
        mean: &GpuTensor,
        over: GramOver,
    ) -> Result<GpuTensor> {
        let s = x.shape;
        ensure!(
            mean.shape == Shape::new(s.n, 1, 1, s.c),
            "centred_gram: mean {} for input {s}",
            mean.shape
        );
        let hw = s.h * s.w;
        let d = match over {
            GramOver::Pixels => hw,
            GramOver::Channels => s.c,
        };
        let shape = Shape::new(s.n, d, d, 1);
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

    fn relax_masks(
        &mut self,
        seed: u64,
        start: u32,
        count: usize,
        h: usize,
        w: usize,
    ) -> Result<GpuTensor> {
        ensure!(
            h >= 4 && w >= 4,
            "RELAX masks need an image of at least 4x4, got {h}x{w}"
        );
        ensure!(
            (start as u64) + (count as u64) <= u32::MAX as u64,
            "RELAX mask index beyond 2^32"
        );
        let shape = Shape::new(count, h, w, 1);
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

    fn mask_images(&mut self, x: &GpuTensor, m: &GpuTensor) -> Result<GpuTensor> {
        let (s, ms) = (x.shape, m.shape);
        ensure!(
            s.n == 1 && (ms.h, ms.w, ms.c) == (s.h, s.w, 1),
            "mask_images: image {s} and masks {ms}"
        );
        let shape = Shape::new(ms.n, s.h, s.w, s.c);
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

    fn cosine_similarity(&mut self, e: &GpuTensor, r: &GpuTensor) -> Result<GpuTensor> {
        let (es, rs) = (e.shape, r.shape);
        ensure!(
            vector(es) && rs == Shape::new(1, 1, 1, es.c),
            "cosine_similarity: embeddings {es} and reference {rs}"
        );
        let out = self.alloc(Shape::new(es.n, 1, 1, 1))?;
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

    fn relax_accumulate(
        &mut self,
        acc: Option<&GpuTensor>,
        masks: &GpuTensor,
        sims: &GpuTensor,
        shift: f32,
    ) -> Result<GpuTensor> {
        let ms = masks.shape;
        ensure!(
            ms.c == 1 && sims.shape == Shape::new(ms.n, 1, 1, 1),
            "relax_accumulate: masks {ms} and similarities {}",
            sims.shape
        );
        let shape = Shape::new(1, ms.h, ms.w, 3);
        if let Some(a) = acc {
            ensure!(
                a.shape == shape,
                "relax_accumulate: sums {} for masks {ms}",
                a.shape
            );
        }
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
