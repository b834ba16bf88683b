//! GPU backend over wgpu: WGSL kernels in `shaders/`, lazy command recording.
//!
//! - [`Gpu::new`] picks an adapter (honouring `WGPU_BACKEND`, `WGPU_ADAPTER_NAME`; GL
//!   adapters are refused), opens a device with the adapter's own size limits or WebGPU's
//!   defaults (`LAFAM_GPU_LIMITS`, [`GpuLimits`]), and compiles every kernel that fits those
//!   limits once per process and device (modules without runtime bounds checks; the host
//!   validates every dispatch).
//! - Ops record compute passes into one pending command encoder; their parameters go to a
//!   uniform ring bound at dynamic offsets, uploaded once per submission. [`Backend::download`]
//!   is the only synchronisation point: it submits, copies to a staging buffer and maps it.
//! - Activations live in pooled storage buffers (size buckets); a buffer returns to the pool
//!   when the last tensor on it is dropped.

mod cam;
mod context;
mod limits;
mod lrp;
mod pipelines;
mod pool;
mod profile;
mod tiles;
mod validation;

pub use context::{adapters, quiet_headless_vulkan, GpuOptions, SOFTWARE_ONLY};
pub use limits::{GpuLimits, LIMITS_ENV};
#[doc(hidden)]
pub use pipelines::{specialisations, Specialisation};
pub use tiles::{ConvTiles, TILES_ENV};

use crate::backend::{shapes, Backend, Pool, Upsample};
use crate::io::Shown;
use crate::model::ConvLayer;
use crate::tensor::{HostTensor, Shape};
use anyhow::{anyhow, bail, ensure, Result};
use context::Context;
use pipelines::{ConvVariant, Tile, PARAMS_BYTES};
use pool::BufferPool;
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// A tensor on the GPU: NHWC f32 elements `offset..offset + shape.len()` of `buffer`.
/// Views (e.g. one image of a batch) share the buffer.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    pub buffer: Arc<wgpu::Buffer>,
    /// Offset in elements (f32).
    pub offset: usize,
    pub shape: Shape,
}

/// A convolution's folded weight (HWIO, `[kh*kw*cin][cout]`) and bias, uploaded once.
#[derive(Clone, Debug)]
pub struct GpuConv {
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    weight: Arc<wgpu::Buffer>,
    bias: Arc<wgpu::Buffer>,
}

impl GpuConv {
    /// The conv's shapes, for the shape rules shared with the CPU backend.
    pub fn geometry(&self) -> shapes::ConvGeometry<'_> {
        shapes::ConvGeometry {
            name: &self.name,
            cin: self.cin,
            cout: self.cout,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
        }
    }
}

/// Parameter slots in the uniform ring (a full ring submits the pending work and restarts).
const RING_SLOTS: u64 = 1024;
/// Distance between parameter blocks (>= every adapter's uniform offset alignment).
const SLOT_BYTES: u64 = 256;
/// Threads per workgroup of the elementwise kernels.
const WG: u64 = 256;

/// The wgpu backend.
pub struct Gpu {
    ctx: Arc<Context>,
    pool: BufferPool,
    /// The open compute pass of `encoder` (untimed recording); ended (dropped) before any
    /// other command is recorded on the encoder and before it is finished. Declared first:
    /// it is dropped before the encoder.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    /// Parameter blocks of the pending encoder, written to `ring` at submission.
    params: Vec<u8>,
    ring: wgpu::Buffer,
    /// Bound where a kernel's optional input is absent.
    dummy: wgpu::Buffer,
    /// Bound where a kernel's optional output is absent.
    dummy_out: wgpu::Buffer,
    staging: Option<wgpu::Buffer>,
    max_tensor_bytes: u64,
    /// Bytes of prepared conv weights and biases.
    weight_bytes: u64,
    /// Timestamp queries, created on the first `start_kernel_timing`.
    profiler: Option<profile::Profiler>,
    /// Whether passes are being timed.
    timing: bool,
    /// Tile policy of the conv and the transposed conv (`LAFAM_GPU_TILES`,
    /// [`Gpu::set_conv_tiles`]).
    conv_tiles: ConvTiles,
}

impl Gpu {
    /// Opens the GPU chosen by `opts` (and the environment, see [`GpuOptions`]). Fails with
    /// "no GPU adapter found (...)" when there is none, when `LAFAM_GPU_TILES` is set to
    /// something other than `auto`, `64` or `128` (see [`ConvTiles`]), when
    /// `LAFAM_GPU_LIMITS` (read where `opts.limits` is unset) is other than `adapter` or
    /// `webgpu` (see [`GpuLimits`]), and when the device's limits fit not even the smallest
    /// conv tile.
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        let conv_tiles = ConvTiles::from_env()?;
        let ctx = context::shared_context(&opts.resolved()?)?;
        let l = &ctx.limits;
        let max_tensor_bytes = l.max_storage_buffer_binding_size.min(l.max_buffer_size) / 16 * 16;
        let device = &ctx.device;
        let ring = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params ring"),
            size: RING_SLOTS * SLOT_BYTES,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let dummy_out = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy output"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(Gpu {
            dummy_out,
            pool: BufferPool::new(max_tensor_bytes, 2 * max_tensor_bytes),
            ctx,
            encoder: None,
            pass: None,
            params: Vec::new(),
            ring,
            dummy,
            staging: None,
            max_tensor_bytes,
            weight_bytes: 0,
            profiler: None,
            timing: false,
            conv_tiles,
        })
    }

    /// The tile policy of the conv and the transposed conv (default: `LAFAM_GPU_TILES`, else
    /// [`ConvTiles::Auto`]).
    pub fn conv_tiles(&self) -> ConvTiles {
        self.conv_tiles
    }

    /// Sets the tile policy for the convs and transposed convs recorded from now on.
    pub fn set_conv_tiles(&mut self, tiles: ConvTiles) {
        self.conv_tiles = tiles;
    }

    /// The output tile's M edge (16 for the 16x64 tile, 64 or 128) the forward conv uses on
    /// this adapter for `m` output pixels and `n` output channels under the current policy.
    pub fn conv_tile(&self, m: usize, n: usize) -> u64 {
        self.conv_tiles
            .tile_within(self.ctx.info.device_type, m, n, 1, self.largest_conv_tile())
    }

    /// The M edge of the largest conv tile whose kernels fit this device's limits (128 under
    /// WebGPU's defaults; src/gpu/limits.rs); the tile policy picks none larger.
    pub fn largest_conv_tile(&self) -> u64 {
        self.ctx
            .tiles
            .last()
            .map_or(tiles::THIN_TILE, |t| t.edges().0)
    }

    /// How the device's limits were chosen (`LAFAM_GPU_LIMITS`, [`GpuOptions::limits`]).
    pub fn limits_mode(&self) -> GpuLimits {
        self.ctx.limits_mode
    }

    /// The limits the device was opened with.
    pub fn device_limits(&self) -> &wgpu::Limits {
        &self.ctx.limits
    }

    /// The adapter's own limits (at least the device's).
    pub fn adapter_limits(&self) -> &wgpu::Limits {
        &self.ctx.adapter_limits
    }

    /// The output tile's M edge (16, 64 or 128) the transposed conv uses on this adapter for a result
    /// of `in_shape` (`[n, h, w, cin]`) from a conv of stride `stride` under the current
    /// policy: [`ConvTiles::tile_in_phases`] over its stride^2 phases of
    /// n*ceil(h/stride)*ceil(w/stride) rows (the grid's M tiles, src/gpu/lrp.rs) and cin.
    pub fn conv_transpose_tile(&self, in_shape: Shape, stride: usize) -> u64 {
        let rows = in_shape.n * in_shape.h.div_ceil(stride) * in_shape.w.div_ceil(stride);
        self.conv_tiles.tile_within(
            self.ctx.info.device_type,
            rows,
            in_shape.c,
            stride * stride,
            self.largest_conv_tile(),
        )
    }

    /// Adapter name, backend, device type and driver, e.g. for an `info` command.
    /// Whether the adapter is a software implementation (lavapipe, SwiftShader, WARP).
    pub fn is_software(&self) -> bool {
        self.ctx.info.device_type == wgpu::DeviceType::Cpu
    }

    pub fn adapter_summary(&self) -> String {
        let i = &self.ctx.info;
        let driver = match (i.driver.is_empty(), i.driver_info.is_empty()) {
            (true, true) => "unknown driver".to_string(),
            (false, true) => i.driver.clone(),
            (true, false) => i.driver_info.clone(),
            (false, false) => format!("{} {}", i.driver, i.driver_info),
        };
        format!(
            "{} ({:?}, {:?}, {driver})",
            i.name, i.backend, i.device_type
        )
    }

    /// The optional features the device was opened with (timestamp queries, pipeline cache).
    pub fn device_features(&self) -> wgpu::Features {
        self.ctx.device.features()
    }

    /// The device limits and adapter features that matter to this crate, as (name, value).
    /// The names of every compiled pipeline, sorted: one per [`specialisations`] entry.
    #[doc(hidden)]
    pub fn kernel_names(&self) -> Vec<String> {
        self.ctx.pipelines.kernel_names()
    }

    pub fn limits_summary(&self) -> Vec<(String, String)> {
        let l = &self.ctx.limits;
        let f = self.ctx.adapter_features;
        let mib = |b: u64| format!("{} MiB", b >> 20);
        let yes = |x: bool| if x { "yes" } else { "no" }.to_string();
        let (bufs, bytes) = self.pool.stats();
        vec![
            (
                format!("limits ({LIMITS_ENV})"),
                match self.ctx.limits_mode {
                    GpuLimits::Adapter => "adapter (the adapter's own)".to_string(),
                    GpuLimits::WebGpu => "webgpu (WebGPU's defaults)".to_string(),
                },
            ),
            ("max tensor bytes".into(), mib(self.max_tensor_bytes)),
            (
                "max_storage_buffer_binding_size".into(),
                mib(l.max_storage_buffer_binding_size),
            ),
            ("max_buffer_size".into(), mib(l.max_buffer_size)),
            (
                "max_compute_workgroup_storage_size".into(),
                format!("{} KiB", l.max_compute_workgroup_storage_size / 1024),
            ),
            (
                "max_compute_invocations_per_workgroup".into(),
                l.max_compute_invocations_per_workgroup.to_string(),
            ),
            (
                "max_compute_workgroups_per_dimension".into(),
                l.max_compute_workgroups_per_dimension.to_string(),
            ),
            (
                "max_storage_buffers_per_shader_stage".into(),
                l.max_storage_buffers_per_shader_stage.to_string(),
            ),
            (
                "shader f16".into(),
                yes(f.contains(wgpu::Features::SHADER_F16)),
            ),
            (
                "subgroups".into(),
                yes(f.contains(wgpu::Features::SUBGROUP)),
            ),
            (
                "timestamp queries".into(),
                yes(f.contains(wgpu::Features::TIMESTAMP_QUERY)),
            ),
            (
                "pipeline cache".into(),
                match &self.ctx.pipeline_cache {
                    Some((path, true)) => format!("{} (loaded)", path.shown()),
                    Some((path, false)) => format!("{} (written)", path.shown()),
                    None => "none (the adapter has no pipeline cache)".into(),
                },
            ),
            (
                format!("conv tiles ({TILES_ENV})"),
                self.conv_tiles.to_string(),
            ),
            (
                "largest conv tile the limits fit".into(),
                format!("{0}x{0}", self.largest_conv_tile()),
            ),
            (
                "buffer pool".into(),
                format!("{bufs} buffers, {}", mib(bytes)),
            ),
        ]
    }

    /// Submits the pending work (if any) without waiting for it.
    pub fn flush(&mut self) -> Result<()> {
        self.pass = None; // ends the open pass
        if let Some(mut enc) = self.encoder.take() {
            if let Some(p) = &mut self.profiler {
                p.before_submit(&self.ctx.device, &mut enc);
            }
            if !self.params.is_empty() {
                self.ctx.queue.write_buffer(&self.ring, 0, &self.params);
                self.params.clear();
            }
            self.ctx.queue.submit([enc.finish()]);
            self.pool.trim();
        }
        self.check_errors()
    }

    fn check_errors(&self) -> Result<()> {
        let errors = self.ctx.take_errors();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("GPU error: {}", errors.join("; ")))
        }
    }

    /// The pending encoder for a command outside compute passes (the open pass is ended).
    fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        pending_encoder(&mut self.encoder, &self.ctx.device)
    }

    fn check_bytes(&self, what: &str, shape: Shape) -> Result<()> {
        let bytes = shape.len() as u64 * 4;
        // The batch planner (`Engine::max_batch`) splits batches by this limit, so a
        // tensor over it is (almost always) one image that is too large on its own.
        let fix = if shape.n <= 1 {
            "a single image at this network input size is too large for this GPU: use a \
             smaller --size"
        } else {
            "split the batch"
        };
        ensure!(
            bytes <= self.max_tensor_bytes && shape.len() < (1usize << 31),
            "{what} {shape} needs {bytes} bytes, over this GPU's {} byte storage-binding limit \
             ({fix})",
            self.max_tensor_bytes
        );
        Ok(())
    }

    fn alloc(&mut self, shape: Shape) -> Result<GpuTensor> {
        self.check_bytes("tensor", shape)?;
        let buffer = self
            .pool
            .alloc(&self.ctx.device, (shape.len() as u64 * 4).max(16));
        Ok(GpuTensor {
            buffer,
            offset: 0,
            shape,
        })
    }

    /// A 2D grid covering `groups` workgroups within the per-dimension limit.
    fn grid_2d(&self, groups: u64) -> Result<(u32, u32)> {
        let max = self.ctx.limits.max_compute_workgroups_per_dimension as u64;
        let x = groups.clamp(1, max);
        let y = groups.div_ceil(x).max(1);
        ensure!(
            y <= max,
            "dispatch of {groups} workgroups exceeds the device's {max}x{max} grid"
        );
        Ok((x as u32, y as u32))
    }

    /// Records one dispatch: parameters to the ring, a bind group over `buffers` (bindings
    /// 1..), and the compute pass.
    fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        layout: &wgpu::BindGroupLayout,
        params: &[u32],
        buffers: &[&wgpu::Buffer],
        grid: (u32, u32, u32),
    ) -> Result<()> {
        debug_assert!(params.len() * 4 <= PARAMS_BYTES as usize);
        let timing_full = self.timing && self.profiler.as_ref().is_some_and(|p| p.is_full());
        if self.params.len() as u64 >= RING_SLOTS * SLOT_BYTES || timing_full {
            self.flush()?;
        }
        let slot = self.params.len() as u64;
        self.params.extend_from_slice(bytemuck::cast_slice(params));
        self.params.resize((slot + SLOT_BYTES) as usize, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.ring,
                offset: 0,
                size: wgpu::BufferSize::new(PARAMS_BYTES),
            }),
        }];
        for (i, b) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.as_entire_binding(),
            });
        }
        let bind_group = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout,
                entries: &entries,
            });
        let ctx = self.ctx.clone();
        // Untimed, every dispatch of the encoder goes into one compute pass (each dispatch is
        // its own usage scope, so wgpu still orders a dispatch after the writes it reads; a
        // pass per dispatch cost ~20 us of recording each). Timed, each dispatch gets its own
        // pass with timestamps at its ends (no pass is open then: `start_kernel_timing`
        // flushes, and a timed pass ends right after its dispatch).
        let pass = match &mut self.pass {
            Some(p) => p,
            None => {
                let timestamp_writes = match &mut self.profiler {
                    Some(p) if self.timing => Some(p.next_pass(ctx.pipelines.name(pipeline))),
                    _ => None,
                };
                let enc = pending_encoder(&mut self.encoder, &ctx.device);
                let pass = enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes,
                    })
                    .forget_lifetime();
                self.pass.insert(pass)
            }
        };
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[slot as u32]);
        pass.dispatch_workgroups(grid.0, grid.1, grid.2);
        if self.timing {
            self.pass = None; // ends the pass: its end timestamp is written
        }
        Ok(())
    }

    /// An elementwise kernel over `total` invocations on the unary layout.
    fn unary(
        &mut self,
        pipeline: fn(&pipelines::Pipelines) -> &wgpu::ComputePipeline,
        params: &[u32],
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        total: u64,
    ) -> Result<()> {
        let (x, y) = self.grid_2d(total.div_ceil(WG))?;
        let ctx = self.ctx.clone();
        self.dispatch(
            pipeline(&ctx.pipelines),
            &ctx.pipelines.unary_layout,
            params,
            &[src, dst],
            (x, y, 1),
        )
    }

    /// `[n,h,w,c] -> [n,h,w,1]` by one of `reduce.wgsl`'s per-pixel channel reductions.
    fn channel_reduce(
        &mut self,
        x: &GpuTensor,
        pipeline: fn(&pipelines::Pipelines) -> &wgpu::ComputePipeline,
        what: &str,
    ) -> Result<GpuTensor> {
        let s = x.shape;
        ensure!(!s.is_empty(), "{what} of an empty tensor {s}");
        self.check_bytes(what, s)?;
        let oshape = Shape::new(s.n, s.h, s.w, 1);
        let out = self.alloc(oshape)?;
        let pixels = oshape.len();
        let params = [
            pixels as u32,
            s.c as u32,
            u32_of(x.offset, "input offset")?,
            0,
        ];
        self.unary(pipeline, &params, &x.buffer, &out.buffer, pixels as u64)?;
        Ok(out)
    }
}

/// The pending command encoder, created on first use.
fn pending_encoder<'a>(
    slot: &'a mut Option<wgpu::CommandEncoder>,
    device: &wgpu::Device,
) -> &'a mut wgpu::CommandEncoder {
    slot.get_or_insert_with(|| {
        device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("lafam"),
        })
    })
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| anyhow!("{what} = {v} does not fit the kernels' 32-bit indices"))
}

impl Gpu {
    /// Records `shaders/conv.wgsl` with epilogue `flags` (bit 0 add `residual`, bit 1 ReLU,
    /// bit 2 LRP ratio `residual / stab(z)`); `residual` has the output's shape.
    pub(super) fn conv(
        &mut self,
        x: &GpuTensor,
        conv: &GpuConv,
        residual: Option<&GpuTensor>,
        flags: u32,
    ) -> Result<GpuTensor> {
        let s = x.shape;
        let oshape = shapes::conv2d(&conv.geometry(), s, residual.map(|r| r.shape))?;
        let (ho, wo) = (oshape.h, oshape.w);
        self.check_bytes("conv input", s)?;
        let m = s.n * ho * wo;
        let k = conv.kh * conv.kw * conv.cin;
        let tile = self.conv_tile(m, conv.cout);
        let variant = ConvVariant {
            a_vec4: conv.cin.is_multiple_of(4) && x.offset.is_multiple_of(4),
            b_vec4: conv.cout.is_multiple_of(4)
                && residual.is_none_or(|r| r.offset.is_multiple_of(4)),
            plain_gemm: conv.kh == 1 && conv.kw == 1 && conv.stride == 1 && conv.pad == 0,
            tile: Tile::of_edge(tile),
            // A forced tile (`LAFAM_GPU_TILES`) keeps every shape on the tiled kernels.
            narrow: conv.cout <= 4 && self.conv_tiles == ConvTiles::Auto,
        };
        let grid = if variant.narrow {
            let (x, y) = self.grid_2d((m as u64).div_ceil(WG))?;
            (x, y, 1)
        } else {
            let max = self.ctx.limits.max_compute_workgroups_per_dimension as u64;
            let (tile_m, tile_n) = variant.tile.edges();
            let n_tiles = (conv.cout as u64).div_ceil(tile_n);
            ensure!(
                n_tiles <= max,
                "conv {}: {} output channels exceed the dispatch grid",
                conv.name,
                conv.cout
            );
            let (gy, gz) = self.grid_2d((m as u64).div_ceil(tile_m))?;
            (n_tiles as u32, gy, gz)
        };
        let out = self.alloc(oshape)?;
        let params = [
            u32_of(s.n, "batch")?,
            u32_of(s.h, "height")?,
            u32_of(s.w, "width")?,
            u32_of(s.c, "channels")?,
            ho as u32,
            wo as u32,
            u32_of(conv.cout, "output channels")?,
            u32_of(conv.kh, "kernel height")?,
            u32_of(conv.kw, "kernel width")?,
            u32_of(conv.stride, "stride")?,
            u32_of(conv.pad, "padding")?,
            u32_of(m, "output pixels")?,
            u32_of(k, "reduction length")?,
            u32_of(x.offset, "input offset")?,
            u32_of(residual.map_or(0, |r| r.offset), "residual offset")?,
            flags,
        ];
        let ctx = self.ctx.clone();
        let res_buf = residual.map_or(&self.dummy, |r| &*r.buffer).clone();
        self.dispatch(
            ctx.pipelines.conv(variant)?,
            &ctx.pipelines.conv_layout,
            &params,
            &[&x.buffer, &conv.weight, &conv.bias, &res_buf, &out.buffer],
            grid,
        )?;
        Ok(out)
    }
}

impl Backend for Gpu {
    fn memory(&self) -> Option<crate::backend::MemoryStats> {
        Some(crate::backend::MemoryStats {
            weights: self.weight_bytes,
            peak_tensors: self.pool.peak_live_bytes(),
        })
    }

    fn start_kernel_timing(&mut self) -> bool {
        if !self
            .ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return false;
        }
        // Work recorded before timing starts is not timed.
        if self.encoder.is_some() && self.flush().is_err() {
            return false;
        }
        if self.profiler.is_none() {
            self.profiler = Some(profile::Profiler::new(&self.ctx.device, &self.ctx.queue));
        }
        self.timing = true;
        true
    }

    fn stop_kernel_timing(&mut self) -> Result<Option<crate::backend::KernelTimes>> {
        if !self.timing {
            return Ok(None);
        }
        self.flush()?;
        self.timing = false;
        let mut times = crate::backend::KernelTimes::default();
        if let Some(p) = &mut self.profiler {
            p.collect(&self.ctx.device, &mut times)?;
        }
        self.check_errors()?;
        Ok(Some(times))
    }

    fn reset_peak_memory(&mut self) {
        self.pool.reset_peak();
    }

    type Tensor = GpuTensor;
    type Conv = GpuConv;

    fn name(&self) -> String {
        format!("gpu: {} ({:?})", self.ctx.info.name, self.ctx.info.backend)
    }

    fn max_tensor_bytes(&self) -> u64 {
        self.max_tensor_bytes
    }

    fn prepare_conv(&mut self, conv: &ConvLayer) -> Result<GpuConv> {
        let ConvLayer {
            name,
            cin,
            cout,
            kh,
            kw,
            stride,
            pad,
            weight,
            bias,
        } = conv;
        ensure!(
            *cin > 0 && *cout > 0 && *kh > 0 && *kw > 0 && *stride > 0,
            "conv {name}: empty or zero-stride conv ({kh}x{kw}, {cin}->{cout}, stride {stride})"
        );
        ensure!(
            weight.len() == kh * kw * cin * cout,
            "conv {name}: weight holds {} values, expected {kh}x{kw}x{cin}x{cout}",
            weight.len()
        );
        ensure!(
            bias.is_empty() || bias.len() == *cout,
            "conv {name}: bias holds {} values, expected {cout}",
            bias.len()
        );
        let wbytes = weight.len() as u64 * 4;
        ensure!(
            wbytes <= self.max_tensor_bytes && weight.len() < (1 << 31),
            "conv {name}: weight of {wbytes} bytes exceeds the storage-binding limit"
        );
        let upload = |label: &str, data: &[f32]| {
            let mut v = data.to_vec();
            v.resize(data.len().div_ceil(4).max(1) * 4, 0.0);
            Arc::new(
                self.ctx
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(label),
                        contents: bytemuck::cast_slice(&v),
                        usage: wgpu::BufferUsages::STORAGE,
                    }),
            )
        };
        let zeros;
        let bias = if bias.is_empty() {
            zeros = vec![0.0; *cout];
            &zeros
        } else {
            bias
        };
        self.weight_bytes += (weight.len().div_ceil(4) + bias.len().div_ceil(4)).max(1) as u64 * 16;
        Ok(GpuConv {
            name: name.clone(),
            cin: *cin,
            cout: *cout,
            kh: *kh,
            kw: *kw,
            stride: *stride,
            pad: *pad,
            weight: upload("conv weight", weight),
            bias: upload("conv bias", bias),
        })
    }

    fn upload(&mut self, t: &HostTensor) -> Result<GpuTensor> {
        ensure!(
            t.data.len() == t.shape.len(),
            "host tensor holds {} values for shape {}",
            t.data.len(),
            t.shape
        );
        self.check_bytes("upload", t.shape)?;
        let buffer = self
            .pool
            .alloc_init(&self.ctx.device, bytemuck::cast_slice(&t.data));
        Ok(GpuTensor {
            buffer,
            offset: 0,
            shape: t.shape,
        })
    }

    fn download(&mut self, t: &GpuTensor) -> Result<HostTensor> {
        let len = t.shape.len();
        if len == 0 {
            self.flush()?;
            return Ok(HostTensor::zeros(t.shape));
        }
        let bytes = len as u64 * 4;
        let offset = t.offset as u64 * 4;
        ensure!(
            offset + bytes <= t.buffer.size(),
            "tensor view {}..{} outside its buffer of {} bytes",
            offset,
            offset + bytes,
            t.buffer.size()
        );
        if self.staging.as_ref().is_none_or(|s| s.size() < bytes) {
            let size = self.pool.bucket(bytes).max(bytes);
            self.staging = Some(self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("download staging"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let staging = self.staging.clone().expect("staging buffer");
        self.encoder()
            .copy_buffer_to_buffer(&t.buffer, offset, &staging, 0, bytes);
        self.flush()?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("waiting for the GPU failed: {e}"))?;
        let mapped = rx
            .recv()
            .map_err(|_| anyhow!("GPU readback was cancelled"))?;
        if let Err(e) = mapped {
            self.check_errors()?;
            bail!("mapping the GPU readback buffer failed: {e}");
        }
        let data = {
            let view = staging
                .get_mapped_range(0..bytes)
                .map_err(|e| anyhow!("reading the GPU readback buffer failed: {e:?}"))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        self.check_errors()?;
        Ok(HostTensor::new(t.shape, data))
    }

    fn shape(&self, t: &GpuTensor) -> Shape {
        t.shape
    }

    fn image(&self, t: &GpuTensor, i: usize) -> GpuTensor {
        assert!(
            i < t.shape.n,
            "image {i} of a batch of {} ({})",
            t.shape.n,
            t.shape
        );
        GpuTensor {
            buffer: t.buffer.clone(),
            offset: t.offset + i * t.shape.image_len(),
            shape: t.shape.one(),
        }
    }

    fn preprocess(&mut self, rgb: &[u8], n: usize, h: usize, w: usize) -> Result<GpuTensor> {
        ensure!(n > 0 && h > 0 && w > 0, "empty image batch {n}x{h}x{w}");
        ensure!(
            rgb.len() == n * h * w * 3,
            "image batch holds {} bytes, expected {n}x{h}x{w}x3",
            rgb.len()
        );
        let shape = Shape::new(n, h, w, 3);
        self.check_bytes("preprocessed batch", shape)?;
        let total = shape.len();
        let words = total.div_ceil(4);
        let input = self.pool.alloc_init(&self.ctx.device, rgb);
        let out = self.alloc(shape)?;
        self.unary(
            |p| &p.preprocess,
            &[u32_of(total, "pixels")?, words as u32, 0, 0],
            &input,
            &out.buffer,
            words as u64,
        )?;
        Ok(out)
    }

    fn conv2d(
        &mut self,
        x: &GpuTensor,
        conv: &GpuConv,
        residual: Option<&GpuTensor>,
        relu: bool,
    ) -> Result<GpuTensor> {
        self.conv(
            x,
            conv,
            residual,
            residual.is_some() as u32 | (relu as u32) << 1,
        )
    }

    fn max_pool(&mut self, x: &GpuTensor, pool: Pool) -> Result<GpuTensor> {
        let s = x.shape;
        ensure!(
            pool.kernel > 0 && pool.stride > 0 && 2 * pool.pad <= pool.kernel,
            "max-pool {pool:?}: kernel and stride must be positive and padding at most half the kernel"
        );
        ensure!(
            s.h + 2 * pool.pad >= pool.kernel && s.w + 2 * pool.pad >= pool.kernel && !s.is_empty(),
            "max-pool {pool:?} on input {s}: input smaller than the window"
        );
        let (ho, wo) = pool.out_size(s.h, s.w);
        let oshape = Shape::new(s.n, ho, wo, s.c);
        self.check_bytes("max-pool input", s)?;
        let out = self.alloc(oshape)?;
        let total = oshape.len();
        let params = [
            s.n as u32,
            s.h as u32,
            s.w as u32,
            s.c as u32,
            ho as u32,
            wo as u32,
            u32_of(pool.kernel, "pool kernel")?,
            u32_of(pool.stride, "pool stride")?,
            u32_of(pool.pad, "pool padding")?,
            u32_of(x.offset, "input offset")?,
            total as u32,
            0,
            0,
            0,
            0,
            0,
        ];
        self.unary(
            |p| &p.max_pool,
            &params,
            &x.buffer,
            &out.buffer,
            total as u64,
        )?;
        Ok(out)
    }

    fn channel_mean(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        self.channel_reduce(x, |p| &p.channel_mean, "channel mean")
    }

    fn channel_max(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        self.channel_reduce(x, |p| &p.channel_max, "channel max")
    }

    fn minmax_normalise(&mut self, x: &GpuTensor) -> Result<GpuTensor> {
        let s = x.shape;
        ensure!(
            !s.is_empty(),
            "min-max normalisation of an empty tensor {s}"
        );
        self.check_bytes("min-max input", s)?;
        let out = self.alloc(s)?;
        let params = [
            s.n as u32,
            s.image_len() as u32,
            u32_of(x.offset, "input offset")?,
            0,
        ];
        let (gx, gy) = self.grid_2d(s.n as u64)?;
        let ctx = self.ctx.clone();
        self.dispatch(
            &ctx.pipelines.minmax,
            &ctx.pipelines.unary_layout,
            &params,
            &[&x.buffer, &out.buffer],
            (gx, gy, 1),
        )?;
        Ok(out)
    }

    fn resize(&mut self, x: &GpuTensor, h: usize, w: usize, mode: Upsample) -> Result<GpuTensor> {
        let s = x.shape;
        ensure!(
            !s.is_empty() && h > 0 && w > 0,
            "resize of {s} to {h}x{w}: empty input or output"
        );
        self.check_bytes("resize input", s)?;
        let oshape = Shape::new(s.n, h, w, s.c);
        self.check_bytes("resize output", oshape)?;
        // Nearest computes dst * in in 32 bits.
        ensure!(
            (h as u64) * (s.h as u64) < 1 << 32 && (w as u64) * (s.w as u64) < 1 << 32,
            "resize of {s} to {h}x{w}: sizes too large"
        );
        let out = self.alloc(oshape)?;
        let total = oshape.len();
        let params = [
            s.n as u32,
            s.h as u32,
            s.w as u32,
            s.c as u32,
            h as u32,
            w as u32,
            u32_of(x.offset, "input offset")?,
            total as u32,
        ];
        let pipeline: fn(&pipelines::Pipelines) -> &wgpu::ComputePipeline = match mode {
            Upsample::Nearest => |p| &p.resize_nearest,
            Upsample::Bilinear => |p| &p.resize_bilinear,
        };
        self.unary(pipeline, &params, &x.buffer, &out.buffer, total as u64)?;
        Ok(out)
    }
}
