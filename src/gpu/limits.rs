//! Which device limits the GPU is opened with (`LAFAM_GPU_LIMITS`, [`GpuOptions::limits`]),
//! and what each kernel needs of them: the tile policy only picks conv tiles whose kernels fit
//! the device, and `create_context` refuses a device on which even the smallest does not.
//!
//! [`GpuOptions::limits`]: super::GpuOptions::limits

use super::pipelines::Tile;
use anyhow::{bail, Result};

/// The environment variable read by [`GpuOptions::from_env`](super::GpuOptions::from_env): `adapter` or `webgpu`.
pub const LIMITS_ENV: &str = "LAFAM_GPU_LIMITS";

/// The limits the device is opened with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GpuLimits {
    /// wgpu's defaults raised to the adapter's own values for the limits that bound batch
    /// size and kernel shapes (storage-binding size, workgroup memory, invocations, ...).
    #[default]
    Adapter,
    /// WebGPU's default limits (`wgpu::Limits::default()`: 16 KiB of workgroup memory, 256
    /// invocations per workgroup, 8 storage buffers per stage, 128 MiB per storage binding),
    /// lowered further wherever the adapter has less: the floor Apple, Intel and mobile
    /// adapters meet, forced on a bigger adapter to test that the engine runs within it.
    WebGpu,
}

impl std::fmt::Display for GpuLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GpuLimits::Adapter => "adapter",
            GpuLimits::WebGpu => "webgpu",
        })
    }
}

impl GpuLimits {
    /// Parses a value of `LAFAM_GPU_LIMITS`: unset or empty is `Adapter`; else `adapter` or
    /// `webgpu` (surrounding blanks and case ignored). Anything else is an error naming the
    /// variable and the accepted values.
    pub fn from_env_value(value: Option<&str>) -> Result<GpuLimits> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(GpuLimits::Adapter);
        };
        Ok(match v.to_ascii_lowercase().as_str() {
            "adapter" => GpuLimits::Adapter,
            "webgpu" => GpuLimits::WebGpu,
            _ => bail!("{LIMITS_ENV}={v:?} is not a limits mode (accepted: adapter, webgpu)"),
        })
    }

    /// The mode set by `LAFAM_GPU_LIMITS` in this process's environment.
    pub fn from_env() -> Result<GpuLimits> {
        Self::from_env_value(super::tiles::env_value(LIMITS_ENV).as_deref())
    }

    /// The limits to request of an adapter offering `adapter`: never above it.
    pub fn wanted(self, adapter: &wgpu::Limits) -> wgpu::Limits {
        match self {
            GpuLimits::Adapter => wgpu::Limits {
                max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size,
                max_buffer_size: adapter.max_buffer_size,
                max_compute_workgroup_storage_size: adapter.max_compute_workgroup_storage_size,
                max_compute_invocations_per_workgroup: adapter
                    .max_compute_invocations_per_workgroup,
                max_compute_workgroup_size_x: adapter.max_compute_workgroup_size_x,
                max_compute_workgroup_size_y: adapter.max_compute_workgroup_size_y,
                max_compute_workgroup_size_z: adapter.max_compute_workgroup_size_z,
                max_compute_workgroups_per_dimension: adapter.max_compute_workgroups_per_dimension,
                max_storage_buffers_per_shader_stage: adapter.max_storage_buffers_per_shader_stage,
                max_bind_groups: adapter.max_bind_groups,
                ..wgpu::Limits::default()
            }
            // wgpu's defaults are requested as they are in `Adapter` mode wherever they are
            // not raised, so an adapter below one of them fails there too (`request_device`).
            // Here, whatever the adapter lacks is lowered to its value instead, so the device
            // opens and the kernel checks below name the limit that does not fit.
            .or_worse_values_from(adapter),
            GpuLimits::WebGpu => wgpu::Limits::default().or_worse_values_from(adapter),
        }
    }
}

/// What a kernel needs of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelNeeds {
    /// Bytes of `var<workgroup>` memory its entry point uses.
    pub workgroup_storage: u32,
    /// `@workgroup_size` (x, y); z is 1 everywhere.
    pub workgroup_size: (u32, u32),
    /// Storage buffers bound (the bind-group layouts of src/gpu/pipelines.rs).
    pub storage_buffers: u32,
}

impl KernelNeeds {
    /// The first limit of `l` this kernel exceeds, as "<limit> is <have>, <what> needs
    /// <need>"; None when it fits.
    pub fn misfit(&self, l: &wgpu::Limits, what: &str) -> Option<String> {
        let (x, y) = self.workgroup_size;
        let checks = [
            (
                "max_compute_workgroup_storage_size",
                l.max_compute_workgroup_storage_size,
                self.workgroup_storage,
            ),
            (
                "max_compute_invocations_per_workgroup",
                l.max_compute_invocations_per_workgroup,
                x * y,
            ),
            (
                "max_compute_workgroup_size_x",
                l.max_compute_workgroup_size_x,
                x,
            ),
            (
                "max_compute_workgroup_size_y",
                l.max_compute_workgroup_size_y,
                y,
            ),
            (
                "max_storage_buffers_per_shader_stage",
                l.max_storage_buffers_per_shader_stage,
                self.storage_buffers,
            ),
        ];
        checks
            .iter()
            .find(|(_, have, need)| have < need)
            .map(|(name, have, need)| format!("{name} is {have}, {what} needs {need}"))
    }
}

/// Storage buffers of the widest bind-group layout (`conv` and `lrp`: 5 each).
const STORAGE_BUFFERS: u32 = 5;

/// The elementwise, pooling, reduction and narrow-conv kernels: 256 invocations in x, at most
/// 2 KiB of workgroup memory (`minmax_normalise`).
pub(crate) const ELEMENTWISE: KernelNeeds = KernelNeeds {
    workgroup_storage: 2 * 256 * 4,
    workgroup_size: (256, 1),
    storage_buffers: STORAGE_BUFFERS,
};

/// What the forward conv and the transposed conv of `tile` need together (the larger of
/// the two; `tests/shaders_validate.rs` checks these against the shaders):
/// - 16x64 and 64x64: one entry point each (`TILE_ROWS` 16 or 64), 16x4 or 16x16 threads;
///   `conv2d` stages As and Bs (4 KiB each), `conv_transpose` At (4 KiB) and Bt (5 KiB);
/// - 128x128 (`*_large`): 16x16 threads, two 8 KiB stages (16 KiB).
pub(crate) fn tile_needs(tile: Tile) -> KernelNeeds {
    let (workgroup_storage, workgroup_size) = match tile {
        Tile::Thin => (9 * 1024, (16, 4)),
        Tile::Small => (9 * 1024, (16, 16)),
        Tile::Large => (16 * 1024, (16, 16)),
    };
    KernelNeeds {
        workgroup_storage,
        workgroup_size,
        storage_buffers: STORAGE_BUFFERS,
    }
}

/// The conv tiles whose kernels fit a device of limits `l`, or an error naming the adapter
/// and the first limit the kernels every run needs (the elementwise kernels and the 16x64 and
/// 64x64 tiles) exceed. The 128x128 tile is an optional extra.
pub(crate) fn usable_tiles(adapter: &str, l: &wgpu::Limits) -> Result<Vec<Tile>> {
    // What every dispatch needs: one bind group of a 64-byte uniform block at a dynamic
    // offset in 256-byte slots (src/gpu/mod.rs) and 6 bindings.
    let device_wide = [
        ("max_bind_groups", l.max_bind_groups, 1, true),
        (
            "max_bindings_per_bind_group",
            l.max_bindings_per_bind_group,
            6,
            true,
        ),
        (
            "max_dynamic_uniform_buffers_per_pipeline_layout",
            l.max_dynamic_uniform_buffers_per_pipeline_layout,
            1,
            true,
        ),
        (
            "max_uniform_buffer_binding_size",
            l.max_uniform_buffer_binding_size.min(u32::MAX as u64) as u32,
            64,
            true,
        ),
        (
            "min_uniform_buffer_offset_alignment",
            l.min_uniform_buffer_offset_alignment,
            256,
            false,
        ),
    ];
    for (name, have, need, at_least) in device_wide {
        if (at_least && have < need) || (!at_least && have > need) {
            let bound = if at_least { "at least" } else { "at most" };
            bail!(
                "GPU adapter '{adapter}' is too limited for lafam-gpu: {name} is {have}, \
                 the kernels' parameters need {bound} {need}"
            );
        }
    }
    let required = [
        (ELEMENTWISE, "every elementwise kernel"),
        (tile_needs(Tile::Thin), "the 16x64 conv tile"),
        (tile_needs(Tile::Small), "the 64x64 conv tile"),
    ];
    for (needs, what) in required {
        if let Some(why) = needs.misfit(l, what) {
            bail!("GPU adapter '{adapter}' is too limited for lafam-gpu: {why}");
        }
    }
    let mut tiles = vec![Tile::Thin, Tile::Small];
    if tile_needs(Tile::Large).misfit(l, "").is_none() {
        tiles.push(Tile::Large);
    }
    Ok(tiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strictly() {
        assert_eq!(GpuLimits::from_env_value(None).unwrap(), GpuLimits::Adapter);
        assert_eq!(
            GpuLimits::from_env_value(Some(" ")).unwrap(),
            GpuLimits::Adapter
        );
        assert_eq!(
            GpuLimits::from_env_value(Some(" WebGPU ")).unwrap(),
            GpuLimits::WebGpu
        );
        assert_eq!(
            GpuLimits::from_env_value(Some("adapter")).unwrap(),
            GpuLimits::Adapter
        );
        let e = GpuLimits::from_env_value(Some("webgl")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LAFAM_GPU_LIMITS=\"webgl\" is not a limits mode (accepted: adapter, webgpu)"
        );
        for m in [GpuLimits::Adapter, GpuLimits::WebGpu] {
            assert_eq!(GpuLimits::from_env_value(Some(&m.to_string())).unwrap(), m);
        }
    }

    #[test]
    fn webgpu_limits_never_exceed_the_adapter() {
        let big = wgpu::Limits {
            max_compute_workgroup_storage_size: 65536,
            max_compute_invocations_per_workgroup: 1024,
            max_storage_buffer_binding_size: 1 << 31,
            max_buffer_size: 1 << 32,
            max_storage_buffers_per_shader_stage: 64,
            ..wgpu::Limits::default()
        };
        assert_eq!(GpuLimits::WebGpu.wanted(&big), wgpu::Limits::default());
        assert_eq!(
            GpuLimits::Adapter
                .wanted(&big)
                .max_compute_workgroup_storage_size,
            65536
        );
        let small = wgpu::Limits {
            max_compute_workgroup_storage_size: 12 * 1024,
            max_storage_buffer_binding_size: 64 << 20,
            ..wgpu::Limits::default()
        };
        for mode in [GpuLimits::WebGpu, GpuLimits::Adapter] {
            let l = mode.wanted(&small);
            assert_eq!(l.max_compute_workgroup_storage_size, 12 * 1024, "{mode}");
            assert_eq!(l.max_storage_buffer_binding_size, 64 << 20, "{mode}");
        }
    }

    #[test]
    fn tiles_follow_the_limits() {
        let d = wgpu::Limits::default();
        assert_eq!(
            usable_tiles("a", &d).unwrap(),
            [Tile::Thin, Tile::Small, Tile::Large]
        );
        // 12 KiB of workgroup memory: the 128x128 tile (16 KiB) does not fit.
        let l = wgpu::Limits {
            max_compute_workgroup_storage_size: 12 * 1024,
            ..d.clone()
        };
        assert_eq!(usable_tiles("a", &l).unwrap(), [Tile::Thin, Tile::Small]);
        // 8 KiB: not even the transposed conv's 64x64 tile (9 KiB).
        let l = wgpu::Limits {
            max_compute_workgroup_storage_size: 8 * 1024,
            ..d.clone()
        };
        assert_eq!(
            usable_tiles("Tiny GPU", &l).unwrap_err().to_string(),
            "GPU adapter 'Tiny GPU' is too limited for lafam-gpu: \
             max_compute_workgroup_storage_size is 8192, the 16x64 conv tile needs 9216"
        );
        let l = wgpu::Limits {
            max_compute_invocations_per_workgroup: 128,
            ..d.clone()
        };
        assert!(usable_tiles("a", &l).unwrap_err().to_string().ends_with(
            "max_compute_invocations_per_workgroup is 128, every elementwise kernel needs 256"
        ));
        let l = wgpu::Limits {
            max_storage_buffers_per_shader_stage: 4,
            ..d.clone()
        };
        assert!(usable_tiles("a", &l).unwrap_err().to_string().ends_with(
            "max_storage_buffers_per_shader_stage is 4, every elementwise kernel needs 5"
        ));
    }

    #[test]
    fn a_tile_that_does_not_fit_gives_way_to_the_next_smaller() {
        use super::super::ConvTiles;
        let cpu = wgpu::DeviceType::Cpu;
        for t in [ConvTiles::Auto, ConvTiles::Large] {
            assert_eq!(t.tile_within(cpu, 1024, 256, 1, 128), 128, "{t}");
            assert_eq!(t.tile_within(cpu, 1024, 256, 1, 64), 64, "{t}");
        }
        assert_eq!(ConvTiles::Small.tile_within(cpu, 1024, 256, 1, 64), 64);
        assert_eq!(ConvTiles::Auto.tile_within(cpu, 20, 256, 1, 64), 16);
        assert_eq!(ConvTiles::Auto.tile_within(cpu, 20, 256, 1, 16), 16);
        assert_eq!(ConvTiles::Large.tile_within(cpu, 20, 256, 1, 16), 16);
    }
}
