//! Per-kernel device time from GPU timestamp queries (`wgpu::Features::TIMESTAMP_QUERY`).
//!
//! While timing is on, every compute pass writes a timestamp at its beginning and end into a
//! query set. At each submission the used queries are resolved and copied to a small
//! mappable buffer recorded in the same command buffer, so timing adds no synchronisation
//! inside a pass; [`Profiler::collect`] waits for those buffers when the caller asks.

use crate::backend::KernelTimes;
use anyhow::{anyhow, Result};

/// Queries in the set: two per pass; a full set submits the pending work (as a full
/// parameter ring does).
pub(super) const MAX_PASSES: u32 = wgpu::QUERY_SET_MAX_QUERIES / 2;

pub(super) struct Profiler {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Kernel names of the passes recorded in the pending encoder, in query order.
    pending: Vec<String>,
    /// Submitted but not yet read: (readback buffer, kernel names).
    submitted: Vec<(wgpu::Buffer, Vec<String>)>,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

impl Profiler {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Profiler {
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * MAX_PASSES,
        });
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: 2 * MAX_PASSES as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Profiler {
            queries,
            resolve,
            pending: Vec::new(),
            submitted: Vec::new(),
            period_ns: queue.get_timestamp_period() as f64,
        }
    }

    /// Whether the query set is full (the pending work must be submitted first).
    pub fn is_full(&self) -> bool {
        self.pending.len() as u32 >= MAX_PASSES
    }

    /// The timestamp writes of the next pass, which runs `kernel`.
    pub fn next_pass(&mut self, kernel: &str) -> wgpu::ComputePassTimestampWrites<'_> {
        let i = self.pending.len() as u32;
        debug_assert!(i < MAX_PASSES);
        self.pending.push(kernel.to_string());
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        }
    }

    /// Records the resolve and readback of this encoder's timestamps (call just before
    /// finishing it).
    pub fn before_submit(&mut self, device: &wgpu::Device, enc: &mut wgpu::CommandEncoder) {
        if self.pending.is_empty() {
            return;
        }
        let n = 2 * self.pending.len() as u32;
        let bytes = n as u64 * 8;
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        enc.resolve_query_set(&self.queries, 0..n, &self.resolve, 0);
        enc.copy_buffer_to_buffer(&self.resolve, 0, &readback, 0, bytes);
        self.submitted
            .push((readback, std::mem::take(&mut self.pending)));
    }

    /// Waits for every submitted readback and adds its pass durations to `into`.
    pub fn collect(&mut self, device: &wgpu::Device, into: &mut KernelTimes) -> Result<()> {
        let submitted = std::mem::take(&mut self.submitted);
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (buf, _)) in submitted.iter().enumerate() {
            let tx = tx.clone();
            buf.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| anyhow!("waiting for the GPU failed: {e}"))?;
        for (i, r) in rx {
            r.map_err(|e| anyhow!("mapping the timestamp readback failed: {e}"))?;
            let (buf, names) = &submitted[i];
            let view = buf
                .get_mapped_range(..)
                .map_err(|e| anyhow!("reading the timestamp readback failed: {e:?}"))?;
            let ticks: &[u64] = bytemuck::cast_slice(&view);
            for (name, t) in names.iter().zip(ticks.chunks_exact(2)) {
                // An end before its beginning (a wrapped or unsupported counter) counts 0.
                let ns = t[1].saturating_sub(t[0]) as f64 * self.period_ns;
                into.add(name, ns);
            }
        }
        Ok(())
    }
}
