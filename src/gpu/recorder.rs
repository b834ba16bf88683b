//! The command recorder of [`Gpu`]: ops record compute passes into one pending command
//! encoder, their parameters go to a uniform ring bound at dynamic offsets (uploaded once per
//! submission), and [`Gpu::flush`] submits. Also the shared checks of every dispatch (tensor
//! sizes, grid sizes) and output allocation.

use super::params::ShaderParams;
use super::pipelines::{self, PARAMS_BYTES};
use super::{Gpu, GpuTensor, WG};
use crate::tensor::Shape;
use anyhow::{anyhow, ensure, Result};

/// Parameter slots in the uniform ring (a full ring submits the pending work and restarts).
pub(super) const RING_SLOTS: u64 = 1024;
/// Distance between parameter blocks (>= every adapter's uniform offset alignment).
pub(super) const SLOT_BYTES: u64 = 256;

impl Gpu {
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

    pub(super) fn check_errors(&self) -> Result<()> {
        let errors = self.ctx.take_errors();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("GPU error: {}", errors.join("; ")))
        }
    }

    /// The pending encoder for a command outside compute passes (the open pass is ended).
    pub(super) fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        pending_encoder(&mut self.encoder, &self.ctx.device)
    }

    pub(super) fn check_bytes(&self, what: &str, shape: Shape) -> Result<()> {
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

    pub(super) fn alloc(&mut self, shape: Shape) -> Result<GpuTensor> {
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
    pub(super) fn grid_2d(&self, groups: u64) -> Result<(u32, u32)> {
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
    pub(super) fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        layout: &wgpu::BindGroupLayout,
        params: &impl ShaderParams,
        buffers: &[&wgpu::Buffer],
        grid: (u32, u32, u32),
    ) -> Result<()> {
        let timing_full = self.timing && self.profiler.as_ref().is_some_and(|p| p.is_full());
        if self.params.len() as u64 >= RING_SLOTS * SLOT_BYTES || timing_full {
            self.flush()?;
        }
        let slot = self.params.len() as u64;
        self.params.extend_from_slice(bytemuck::bytes_of(params));
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
    pub(super) fn unary(
        &mut self,
        pipeline: fn(&pipelines::Pipelines) -> &wgpu::ComputePipeline,
        params: &impl ShaderParams,
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
