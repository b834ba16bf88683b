//! Which output tile the conv kernels use, per adapter and GEMM shape, overridable for tests
//! and benchmarks: 64x64 or 128x128, for the forward conv (`shaders/conv.wgsl`: `conv2d` or
//! `conv2d_large`) and the transposed conv of the LRP / Grad-CAM backward
//! (`shaders/conv_backward.wgsl`: `conv_transpose` or `conv_transpose_large`; `m`, `n` its
//! input pixels and input channels, see src/gpu/lrp.rs).

use anyhow::{bail, Result};

/// The environment variable read by [`GpuOptions::from_env`](super::GpuOptions::from_env): `auto`, `64` or `128`.
pub const TILES_ENV: &str = "LAFAM_GPU_TILES";

/// Output tile M edge of `conv2d_thin` (16 output pixels by 64 channels).
pub(crate) const THIN_TILE: u64 = 16;
/// GEMMs of at most this many rows take the thin tile under `Auto`.
const MAX_THIN_ROWS: u64 = 32;
/// Output tile edge of `conv2d`.
pub(crate) const SMALL_TILE: u64 = 64;
/// Output tile edge of `conv2d_large`.
pub(crate) const LARGE_TILE: u64 = 128;

/// Streaming multiprocessors of an NVIDIA H100 SXM, the largest GPU this project targets
/// (DESIGN.md section 4). wgpu does not report a compute-unit count.
const BIG_GPU_SMS: u64 = 132;
/// Large-tile workgroups a GEMM needs before `Auto` picks them: two per SM of the big GPU.
const MIN_LARGE_WORKGROUPS: u64 = 2 * BIG_GPU_SMS;

/// The value of the environment variable `name` (lossily decoded), `None` when unset.
pub(crate) fn env_value(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Tile policy of the conv kernels (forward and transposed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvTiles {
    /// Per adapter and shape, see [`ConvTiles::tile`].
    #[default]
    Auto,
    /// Always the 64x64 tile.
    Small,
    /// Always the 128x128 tile.
    Large,
}

impl std::fmt::Display for ConvTiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConvTiles::Auto => "auto",
            ConvTiles::Small => "64",
            ConvTiles::Large => "128",
        })
    }
}

impl ConvTiles {
    /// Parses a value of `LAFAM_GPU_TILES`: unset or empty is `Auto`; else `auto`, `64` or
    /// `128` (surrounding blanks and case ignored). Anything else is an error naming the
    /// variable and the accepted values.
    pub fn from_env_value(value: Option<&str>) -> Result<ConvTiles> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(ConvTiles::Auto);
        };
        Ok(match v.to_ascii_lowercase().as_str() {
            "auto" => ConvTiles::Auto,
            "64" => ConvTiles::Small,
            "128" => ConvTiles::Large,
            _ => bail!("{TILES_ENV}={v:?} is not a conv tile policy (accepted: auto, 64, 128)"),
        })
    }

    /// The policy set by `LAFAM_GPU_TILES` in this process's environment.
    pub fn from_env() -> Result<ConvTiles> {
        Self::from_env_value(env_value(TILES_ENV).as_deref())
    }

    /// The output tile's M edge (16: the 16x64 thin tile; 64 or 128: square tiles) for an
    /// `m` x `n` output GEMM (forward conv: m = output pixels, n = output channels; transposed
    /// conv: m = input pixels, n = input channels) on an adapter of type `device`.
    ///
    /// `Auto` takes the 16x64 tile when `m <= 32`: a 64-row tile would be more than half
    /// padding (layer3/4 of small images at batch 1: at 64 px, 16 and 4 rows, 75% and 94% of
    /// the FMAs wasted). It takes the 128x128 tile when
    /// - `m >= 128` and `n >= 128`: a tile that is at least half empty in one dimension wastes
    ///   the FMAs the larger register block is meant to save (ResNet's 64-channel convs). On
    ///   lavapipe (2 cores) the 128x128 tile measured 1.4-1.7x faster for m, n >= 128 and
    ///   0.83-0.88x for n = 64 or m = 32 (`bench_conv_tiles` in tests/gpu_ops.rs,
    ///   docs/perf.md); a CPU adapter (`DeviceType::Cpu`) needs nothing more;
    /// - and, on a GPU, the large-tile grid has at least 2 x 132 workgroups, two per SM of an H100: a
    ///   128x128 workgroup (256 threads, ~100+ registers each, 16 KiB of workgroup memory) runs
    ///   about two to an SM, so fewer tiles leave SMs idle or end in a badly quantised last
    ///   wave, where the 64x64 tile's 4x as many workgroups balance better. GPUs with fewer
    ///   compute units fill up sooner, so for them the bound is conservative.
    ///
    /// At batch 64, 224x224, ResNet-50 this picks 128 for layer1's 256-channel convs
    /// (3136 tiles), all of layer2, layer3's 1024-channel convs (784), layer4's 2048-channel
    /// convs (400) and the first 1x1 conv of layer3 and layer4 (at the previous stage's size);
    /// 64 for the stem and every 64-channel conv (n < 128), layer3's other 256-channel convs
    /// at 14x14 (196 tiles) and layer4's other 512-channel convs at 7x7 (100).
    /// Not yet measured on an H100 (issue 6): retune the bound once it is.
    pub fn tile(self, device: wgpu::DeviceType, m: usize, n: usize) -> u64 {
        self.tile_in_phases(device, m, n, 1)
    }

    /// The output tile edge for `phases` GEMMs of `m` x `n` outputs each, dispatched in one
    /// grid: the transposed conv's stride^2 phases (m = the largest phase's input pixels,
    /// n = input channels, src/gpu/lrp.rs). `Auto` is [`ConvTiles::tile`]'s rule with a tile's
    /// fill judged by one phase's `m` and the workgroups of all phases counted, i.e. the
    /// grid's. (With m summed over the phases, a 1x1/2 transposed conv of 128 input pixels
    /// took the 128 tile for phases of 32 rows and ran 0.76x the 64 tile's speed on lavapipe.)
    pub fn tile_in_phases(
        self,
        device: wgpu::DeviceType,
        m: usize,
        n: usize,
        phases: usize,
    ) -> u64 {
        self.tile_within(device, m, n, phases, LARGE_TILE)
    }

    /// [`ConvTiles::tile_in_phases`] on a device whose limits fit tiles of M edge at most
    /// `largest` (16, 64 or 128; src/gpu/limits.rs): a tile that does not fit, chosen by
    /// `Auto` or forced, gives way to the next smaller one (128 to 64; the 16x64 and 64x64
    /// tiles fit every device the engine opens).
    pub fn tile_within(
        self,
        device: wgpu::DeviceType,
        m: usize,
        n: usize,
        phases: usize,
        largest: u64,
    ) -> u64 {
        let edge = self.policy_edge(device, m, n, phases);
        [LARGE_TILE, SMALL_TILE, THIN_TILE]
            .into_iter()
            .find(|&e| e <= edge && e <= largest)
            .unwrap_or(THIN_TILE)
    }

    /// The policy's tile on a device that fits every tile.
    fn policy_edge(self, device: wgpu::DeviceType, m: usize, n: usize, phases: usize) -> u64 {
        match self {
            ConvTiles::Small => SMALL_TILE,
            ConvTiles::Large => LARGE_TILE,
            ConvTiles::Auto if m as u64 <= MAX_THIN_ROWS => THIN_TILE,
            ConvTiles::Auto => {
                let (m, n) = (m as u64, n as u64);
                let groups = phases as u64 * m.div_ceil(LARGE_TILE) * n.div_ceil(LARGE_TILE);
                if m >= LARGE_TILE
                    && n >= LARGE_TILE
                    && (device == wgpu::DeviceType::Cpu || groups >= MIN_LARGE_WORKGROUPS)
                {
                    LARGE_TILE
                } else {
                    SMALL_TILE
                }
            }
        }
    }
}
