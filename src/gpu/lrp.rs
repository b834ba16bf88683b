//! The LRP ops on the GPU: the transposed conv as an implicit GEMM with the fused LRP epilogue
//! (`shaders/conv_backward.wgsl`) and the elementwise steps plus the max-pool backward as a
//! gather (`shaders/lrp.wgsl`). Every shape and view extent is validated here before a
//! dispatch is recorded (the kernels run without runtime bounds checks).

use super::params::{ConvTransposeParams, LrpParams, ShaderParams};
use super::pipelines::{ConvTransposeVariant, Pipelines, Tile};
use super::{u32_of, Gpu, GpuConv, GpuTensor, WG};
use crate::backend::{GateSign, LrpBackend, Pool};
use crate::tensor::Shape;
use anyhow::{ensure, Result};

impl Gpu {
    /// A view the kernels may read: its elements lie inside its buffer, its size within the
    /// binding limit, and its offset fits the 32-bit indices.
    pub(super) fn check_view(&self, what: &str, t: &GpuTensor) -> Result<()> {
        self.check_bytes(what, t.shape)?;
        let end = (t.offset as u64 + t.shape.len() as u64) * 4;
        ensure!(
            end <= t.buffer.size(),
            "{what}: view {}..{} of {} outside its buffer of {} bytes",
            t.offset * 4,
            end,
            t.shape,
            t.buffer.size()
        );
        u32_of(t.offset + t.shape.len(), "view end")?;
        Ok(())
    }

    /// Records one kernel of `shaders/lrp.wgsl` over `total` elements. `inputs` are bound to
    /// a, b, c (the dummy where absent), `outputs` to out0, out1.
    pub(super) fn lrp_dispatch(
        &mut self,
        pipeline: fn(&Pipelines) -> &wgpu::ComputePipeline,
        params: &impl ShaderParams,
        inputs: [Option<&GpuTensor>; 3],
        outputs: [Option<&GpuTensor>; 2],
        total: usize,
    ) -> Result<()> {
        if total == 0 {
            return Ok(());
        }
        let (x, y) = self.grid_2d((total as u64).div_ceil(WG))?;
        let ctx = self.ctx.clone();
        let ins = inputs.map(|t| t.map_or(&self.dummy, |t| &*t.buffer).clone());
        let outs = outputs.map(|t| t.map_or(&self.dummy_out, |t| &*t.buffer).clone());
        self.dispatch(
            pipeline(&ctx.pipelines),
            &ctx.pipelines.lrp_layout,
            params,
            &[&ins[0], &ins[1], &ins[2], &outs[0], &outs[1]],
            (x, y, 1),
        )
    }
}

/// Parameter block of `shaders/lrp.wgsl` with the fields its elementwise kernels use.
#[allow(clippy::too_many_arguments)]
fn ew_params(
    total: usize,
    a_off: usize,
    b_off: usize,
    c_off: usize,
    flags: u32,
    alpha: f32,
    beta: f32,
) -> Result<LrpParams> {
    Ok(LrpParams {
        total: u32_of(total, "elements")?,
        a_off: u32_of(a_off, "offset")?,
        b_off: u32_of(b_off, "offset")?,
        c_off: u32_of(c_off, "offset")?,
        flags,
        alpha,
        beta,
        ..Default::default()
    })
}

impl Gpu {
    /// The Norm split (`shaders/lrp.wgsl` `residual_split`); `relu_sum`: `b` is the block's
    /// ReLU output rather than the branch.
    fn split(
        &mut self,
        a: &GpuTensor,
        b: &GpuTensor,
        r: &GpuTensor,
        relu_sum: bool,
    ) -> Result<(GpuTensor, GpuTensor)> {
        for t in [a, b, r] {
            self.check_view("residual_split operand", t)?;
        }
        let ra = self.alloc(a.shape)?;
        let rb = self.alloc(a.shape)?;
        let total = a.shape.len();
        let params = ew_params(
            total,
            a.offset,
            b.offset,
            r.offset,
            relu_sum as u32,
            0.0,
            0.0,
        )?;
        self.lrp_dispatch(
            |p| &p.residual_split,
            &params,
            [Some(a), Some(b), Some(r)],
            [Some(&ra), Some(&rb)],
            total,
        )?;
        Ok((ra, rb))
    }
}

impl LrpBackend for Gpu {
    fn conv_transpose_unchecked(
        &mut self,
        s: &GpuTensor,
        conv: &GpuConv,
        mul: Option<&GpuTensor>,
        scale: f32,
        acc: Option<&GpuTensor>,
        in_shape: Shape,
    ) -> Result<GpuTensor> {
        let ss = s.shape;
        let (in_h, in_w) = (in_shape.h, in_shape.w);
        let (ho, wo) = (ss.h, ss.w);
        self.check_view("conv_transpose relevance", s)?;
        self.check_bytes("conv_transpose output", in_shape)?;
        for t in mul.iter().chain(acc.iter()) {
            self.check_view("conv_transpose operand", t)?;
        }
        let m = in_shape.len() / conv.cin;
        u32_of(m, "input pixels")?;
        u32_of(conv.kh * conv.kw * conv.cout, "reduction length")?;
        // The tile: the forward conv's policy (`ConvTiles`; `LAFAM_GPU_TILES` forces both
        // kernels) over the grid below, stride^2 phases of n*ceil(h/s)*ceil(w/s) rows by cin.
        let tile = self.conv_transpose_tile(in_shape, conv.stride);
        let variant = ConvTransposeVariant {
            k_vec4: conv.cout.is_multiple_of(4) && s.offset.is_multiple_of(4),
            n_vec4: conv.cin.is_multiple_of(4)
                && mul.is_none_or(|t| t.offset.is_multiple_of(4))
                && acc.is_none_or(|t| t.offset.is_multiple_of(4)),
            plain_gemm: conv.kh == 1 && conv.kw == 1 && conv.stride == 1 && conv.pad == 0,
            tile: Tile::of_edge(tile),
            narrow: conv.cin <= 4,
        };
        let grid = if variant.narrow {
            let (x, y) = self.grid_2d((m as u64).div_ceil(WG))?;
            (x, y, 1)
        } else {
            // Every stride phase given as many M tiles as the largest, phases varying fastest
            // (shaders/conv_backward.wgsl, `tiles_per_phase` and `phase_of`).
            let st = conv.stride as u64;
            let (tile_m, tile_n) = variant.tile.edges();
            let n_tiles = (conv.cin as u64).div_ceil(tile_n);
            let per_phase = (ss.n as u64 * (in_h as u64).div_ceil(st) * (in_w as u64).div_ceil(st))
                .div_ceil(tile_m);
            let (x, y) = self.grid_2d(st * st * n_tiles * per_phase)?;
            (x, y, 1)
        };
        let out = self.alloc(in_shape)?;
        let params = ConvTransposeParams {
            n: u32_of(ss.n, "batch")?,
            h: u32_of(in_h, "height")?,
            w: u32_of(in_w, "width")?,
            cin: u32_of(conv.cin, "input channels")?,
            ho: ho as u32,
            wo: wo as u32,
            cout: u32_of(conv.cout, "output channels")?,
            kh: u32_of(conv.kh, "kernel height")?,
            kw: u32_of(conv.kw, "kernel width")?,
            stride: u32_of(conv.stride, "stride")?,
            pad: u32_of(conv.pad, "padding")?,
            s_off: u32_of(s.offset, "relevance offset")?,
            mul_off: u32_of(mul.map_or(0, |t| t.offset), "mul offset")?,
            acc_off: u32_of(acc.map_or(0, |t| t.offset), "acc offset")?,
            flags: mul.is_some() as u32 | (acc.is_some() as u32) << 1,
            scale,
        };
        let ctx = self.ctx.clone();
        let mul_buf = mul.map_or(&self.dummy, |t| &*t.buffer).clone();
        let acc_buf = acc.map_or(&self.dummy, |t| &*t.buffer).clone();
        self.dispatch(
            ctx.pipelines.conv_transpose(variant)?,
            &ctx.pipelines.conv_layout,
            &params,
            &[&s.buffer, &conv.weight, &mul_buf, &acc_buf, &out.buffer],
            grid,
        )?;
        Ok(out)
    }

    fn lrp_ratio_unchecked(
        &mut self,
        r: &GpuTensor,
        z: &GpuTensor,
        gate: Option<(&GpuTensor, GateSign)>,
    ) -> Result<GpuTensor> {
        self.check_view("lrp_ratio relevance", r)?;
        self.check_view("lrp_ratio denominator", z)?;
        let mut flags = 0;
        if let Some((g, sign)) = gate {
            self.check_view("lrp_ratio gate", g)?;
            flags = 1 | ((sign == GateSign::Negative) as u32) << 1;
        }
        let out = self.alloc(r.shape)?;
        let total = r.shape.len();
        let g = gate.map(|(g, _)| g);
        let params = ew_params(
            total,
            r.offset,
            z.offset,
            g.map_or(0, |g| g.offset),
            flags,
            0.0,
            0.0,
        )?;
        self.lrp_dispatch(
            |p| &p.lrp_ratio,
            &params,
            [Some(r), Some(z), g],
            [Some(&out), None],
            total,
        )?;
        Ok(out)
    }

    fn residual_split_unchecked(
        &mut self,
        a: &GpuTensor,
        b: &GpuTensor,
        r: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        self.split(a, b, r, false)
    }

    fn residual_split_relu_unchecked(
        &mut self,
        skip: &GpuTensor,
        out: &GpuTensor,
        r: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        self.split(skip, out, r, true)
    }

    fn conv2d_ratio_unchecked(
        &mut self,
        x: &GpuTensor,
        conv: &GpuConv,
        r: &GpuTensor,
        out: Shape,
    ) -> Result<GpuTensor> {
        self.check_view("conv2d_ratio relevance", r)?;
        self.conv(x, conv, Some(r), 4, out)
    }

    fn max_pool_backward_unchecked(
        &mut self,
        x: &GpuTensor,
        r: &GpuTensor,
        pool: Pool,
    ) -> Result<GpuTensor> {
        let s = x.shape;
        let (ho, wo) = (r.shape.h, r.shape.w);
        self.check_view("max-pool backward input", x)?;
        self.check_view("max-pool backward relevance", r)?;
        u32_of(s.h + pool.pad + pool.kernel, "padded height")?;
        u32_of(s.w + pool.pad + pool.kernel, "padded width")?;
        // Pass 1: each window's first maximum (u32 positions in an f32 tensor of r's shape);
        // pass 2: the gather (shaders/lrp.wgsl).
        let argmax = self.alloc(r.shape)?;
        let out = self.alloc(s)?;
        let mut params = LrpParams {
            c: s.c as u32,
            h: s.h as u32,
            w: s.w as u32,
            ho: ho as u32,
            wo: wo as u32,
            kernel: u32_of(pool.kernel, "pool kernel")?,
            stride: u32_of(pool.stride, "pool stride")?,
            pad: u32_of(pool.pad, "pool padding")?,
            ..ew_params(r.shape.len(), x.offset, r.offset, 0, 0, 0.0, 0.0)?
        };
        self.lrp_dispatch(
            |p| &p.max_pool_argmax,
            &params,
            [Some(x), None, None],
            [Some(&argmax), None],
            r.shape.len(),
        )?;
        params.total = u32_of(s.len(), "max-pool input elements")?;
        self.lrp_dispatch(
            |p| &p.max_pool_backward,
            &params,
            [None, Some(r), Some(&argmax)],
            [Some(&out), None],
            s.len(),
        )?;
        Ok(out)
    }

    fn lincomb_unchecked(
        &mut self,
        a: &GpuTensor,
        alpha: f32,
        b: Option<&GpuTensor>,
        beta: f32,
    ) -> Result<GpuTensor> {
        self.check_view("lincomb operand", a)?;
        if let Some(b) = b {
            self.check_view("lincomb operand", b)?;
        }
        let out = self.alloc(a.shape)?;
        let total = a.shape.len();
        let params = ew_params(
            total,
            a.offset,
            b.map_or(0, |b| b.offset),
            0,
            b.is_some() as u32,
            alpha,
            beta,
        )?;
        self.lrp_dispatch(
            |p| &p.lincomb,
            &params,
            [Some(a), b, None],
            [Some(&out), None],
            total,
        )?;
        Ok(out)
    }

    fn add_relu_unchecked(&mut self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        self.check_view("add_relu operand", a)?;
        self.check_view("add_relu operand", b)?;
        let out = self.alloc(a.shape)?;
        let total = a.shape.len();
        let params = ew_params(total, a.offset, b.offset, 0, 0, 0.0, 0.0)?;
        self.lrp_dispatch(
            |p| &p.add_relu,
            &params,
            [Some(a), Some(b), None],
            [Some(&out), None],
            total,
        )?;
        Ok(out)
    }

    fn clamp_unchecked(&mut self, x: &GpuTensor, lo: f32, hi: f32) -> Result<GpuTensor> {
        self.check_view("clamp operand", x)?;
        let out = self.alloc(x.shape)?;
        let total = x.shape.len();
        let params = ew_params(total, x.offset, 0, 0, 0, lo, hi)?;
        self.lrp_dispatch(
            |p| &p.clamp,
            &params,
            [Some(x), None, None],
            [Some(&out), None],
            total,
        )?;
        Ok(out)
    }

    fn fill_channels_unchecked(&mut self, shape: Shape, values: &[f32]) -> Result<GpuTensor> {
        self.check_bytes("fill_channels output", shape)?;
        let out = self.alloc(shape)?;
        let total = shape.len();
        if total == 0 {
            return Ok(out);
        }
        let vals = GpuTensor {
            buffer: self
                .pool
                .alloc_init(&self.ctx.device, bytemuck::cast_slice(values)),
            offset: 0,
            shape: Shape::new(1, 1, 1, shape.c),
        };
        let params = LrpParams {
            c: shape.c as u32,
            ..ew_params(total, 0, 0, 0, 0, 0.0, 0.0)?
        };
        self.lrp_dispatch(
            |p| &p.fill_channels,
            &params,
            [Some(&vals), None, None],
            [Some(&out), None],
            total,
        )?;
        Ok(out)
    }

    fn repeat_images_unchecked(
        &mut self,
        x: &GpuTensor,
        k: usize,
        keep: Option<&[u32]>,
        shape: Shape,
    ) -> Result<GpuTensor> {
        self.check_view("repeat_images operand", x)?;
        let out = self.alloc(shape)?;
        let total = shape.len();
        if total == 0 {
            return Ok(out);
        }
        let keep = keep.map(|keep| {
            let as_f32: Vec<f32> = keep.iter().map(|&c| c as f32).collect();
            GpuTensor {
                buffer: self
                    .pool
                    .alloc_init(&self.ctx.device, bytemuck::cast_slice(&as_f32)),
                offset: 0,
                shape: Shape::new(1, 1, 1, as_f32.len()),
            }
        });
        let params = LrpParams {
            c: u32_of(shape.c, "channels")?,
            h: u32_of(shape.image_len(), "elements per image")?,
            w: u32_of(k, "repeats")?,
            ..ew_params(total, x.offset, 0, 0, keep.is_some() as u32, 0.0, 0.0)?
        };
        self.lrp_dispatch(
            |p| &p.repeat_images,
            &params,
            [Some(x), keep.as_ref(), None],
            [Some(&out), None],
            total,
        )?;
        Ok(out)
    }
}
