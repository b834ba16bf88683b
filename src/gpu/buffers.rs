//! A size-bucketed pool of storage buffers fed by dropped tensors.
//!
//! The pool keeps an `Arc` of every buffer it made; a buffer is free when the pool's `Arc` is
//! the only one left (every tensor and view holding it was dropped). Handing a free buffer out
//! again inside the pending command encoder is safe: wgpu orders the dispatches of one encoder
//! and inserts the barriers, so the new write comes after the last recorded read. Uploads never
//! write into a pooled buffer through the queue (whose writes run before the pending encoder);
//! they get a fresh buffer initialised at creation, which joins the pool afterwards.

use std::sync::Arc;
use wgpu::util::DeviceExt;

pub(crate) const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

struct Entry {
    buffer: Arc<wgpu::Buffer>,
    size: u64,
    /// Allocation counter value when last handed out (for least-recently-used trimming).
    last_use: u64,
}

pub(crate) struct BufferPool {
    entries: Vec<Entry>,
    /// Largest buffer size allowed (the storage binding limit, a multiple of 16).
    max_size: u64,
    /// Free bytes kept after `trim`.
    keep_free: u64,
    clock: u64,
    /// Most bytes ever held by live tensors at once since the last `reset_peak`.
    peak_live: u64,
}

impl BufferPool {
    pub fn new(max_size: u64, keep_free: u64) -> Self {
        BufferPool {
            entries: Vec::new(),
            max_size,
            keep_free,
            clock: 0,
            peak_live: 0,
        }
    }

    /// The size class of a request: at least 256 bytes, rounded up to an eighth of its power
    /// of two (at most 12.5% waste), a multiple of 16, capped at the binding limit.
    pub fn bucket(&self, bytes: u64) -> u64 {
        let b = bytes.max(256);
        let step = (b.next_power_of_two() / 8).max(16);
        let rounded = b.div_ceil(step) * step;
        if rounded <= self.max_size {
            rounded
        } else {
            b.div_ceil(16) * 16
        }
    }

    /// A buffer of at least `bytes` (a multiple of 16) with no live tensor on it.
    pub fn alloc(&mut self, device: &wgpu::Device, bytes: u64) -> Arc<wgpu::Buffer> {
        let size = self.bucket(bytes);
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.size == size && Arc::strong_count(&e.buffer) == 1)
        {
            e.last_use = self.clock;
            let buffer = e.buffer.clone();
            self.note_live();
            return buffer;
        }
        let buffer = Arc::new(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tensor"),
            size,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        }));
        self.push(buffer.clone(), size);
        self.note_live();
        buffer
    }

    /// A new buffer holding `data` (padded with zeros to its size class).
    pub fn alloc_init(&mut self, device: &wgpu::Device, data: &[u8]) -> Arc<wgpu::Buffer> {
        let size = self.bucket(data.len() as u64);
        self.clock += 1;
        let mut padded = Vec::with_capacity(size as usize);
        padded.extend_from_slice(data);
        padded.resize(size as usize, 0);
        let buffer = Arc::new(
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("upload"),
                contents: &padded,
                usage: STORAGE_USAGE,
            }),
        );
        self.push(buffer.clone(), size);
        self.note_live();
        buffer
    }

    /// Bytes of buffers some tensor still holds.
    pub fn live_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| Arc::strong_count(&e.buffer) > 1)
            .map(|e| e.size)
            .sum()
    }

    fn note_live(&mut self) {
        self.peak_live = self.peak_live.max(self.live_bytes());
    }

    /// The most bytes live tensors held at once since the last reset.
    pub fn peak_live_bytes(&self) -> u64 {
        self.peak_live
    }

    pub fn reset_peak(&mut self) {
        self.peak_live = self.live_bytes();
    }

    fn push(&mut self, buffer: Arc<wgpu::Buffer>, size: u64) {
        self.entries.push(Entry {
            buffer,
            size,
            last_use: self.clock,
        });
    }

    /// Drops the least recently used free buffers beyond `keep_free` bytes.
    pub fn trim(&mut self) {
        let mut free: Vec<(u64, usize)> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| Arc::strong_count(&e.buffer) == 1)
            .map(|(i, e)| (e.last_use, i))
            .collect();
        let mut free_bytes: u64 = free.iter().map(|&(_, i)| self.entries[i].size).sum();
        if free_bytes <= self.keep_free {
            return;
        }
        free.sort_unstable();
        let mut drop_idx = Vec::new();
        for &(_, i) in &free {
            if free_bytes <= self.keep_free {
                break;
            }
            free_bytes -= self.entries[i].size;
            drop_idx.push(i);
        }
        drop_idx.sort_unstable();
        for i in drop_idx.into_iter().rev() {
            self.entries.swap_remove(i);
        }
    }

    /// (buffers, bytes) held, live or free.
    pub fn stats(&self) -> (usize, u64) {
        (
            self.entries.len(),
            self.entries.iter().map(|e| e.size).sum(),
        )
    }
}
