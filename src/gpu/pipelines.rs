//! The pipeline registry: every WGSL module compiled once per device, without runtime bounds
//! checks (indices are guarded in the kernels and sizes validated on the host; checked modules
//! ran 37x slower, DESIGN.md section 4), and one pipeline per specialisation.

use anyhow::{anyhow, Result};
use rayon::prelude::*;

/// Size of every kernel's uniform parameter block (16 u32), bound at a dynamic offset.
pub(crate) const PARAMS_BYTES: u64 = 64;

const PREPROCESS: &str = include_str!("../../shaders/preprocess.wgsl");
const CONV: &str = include_str!("../../shaders/conv.wgsl");
const POOL: &str = include_str!("../../shaders/pool.wgsl");
const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
const RESAMPLE: &str = include_str!("../../shaders/resample.wgsl");
const CONV_BACKWARD: &str = include_str!("../../shaders/conv_backward.wgsl");
const LRP: &str = include_str!("../../shaders/lrp.wgsl");
const CAM: &str = include_str!("../../shaders/cam.wgsl");
const GEMM_CORE: &str = include_str!("../../shaders/gemm_core.wgsl");

/// The line of a module that [`compose`] replaces with `shaders/gemm_core.wgsl`.
const INCLUDE_GEMM_CORE: &str = "// #include gemm_core.wgsl";

/// Every shader module: its label and its WGSL file (`shaders/<label>.wgsl`), before
/// composition.
const MODULES: [(&str, &str); 8] = [
    ("preprocess", PREPROCESS),
    ("conv", CONV),
    ("pool", POOL),
    ("reduce", REDUCE),
    ("resample", RESAMPLE),
    ("conv_backward", CONV_BACKWARD),
    ("lrp", LRP),
    ("cam", CAM),
];

/// A module's source as compiled: the file, with `shaders/gemm_core.wgsl` in place of its
/// include line (the two convs have one; the other modules none).
fn compose(label: &str, file: &str) -> String {
    match file.matches(INCLUDE_GEMM_CORE).count() {
        0 => file.to_string(),
        1 => file.replacen(
            INCLUDE_GEMM_CORE,
            &format!(
                "// ---- begin shaders/gemm_core.wgsl ----\n{GEMM_CORE}// ---- end \
                 shaders/gemm_core.wgsl ----"
            ),
            1,
        ),
        n => panic!("shaders/{label}.wgsl includes the GEMM core {n} times"),
    }
}

/// Every shader module: its label and its WGSL source as compiled ([`compose`]d).
#[doc(hidden)]
pub fn shader_modules() -> &'static [(&'static str, String)] {
    static COMPOSED: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    COMPOSED.get_or_init(|| {
        MODULES
            .iter()
            .map(|&(label, file)| (label, compose(label, file)))
            .collect()
    })
}

/// The compiled source of module `label`.
fn source(label: &str) -> &'static str {
    shader_modules()
        .iter()
        .find(|m| m.0 == label)
        .map(|m| m.1.as_str())
        .expect("a module of MODULES")
}

/// The entry points without override constants, by module: one pipeline each.
const PLAIN_ENTRY_POINTS: [(&str, &[&str]); 6] = [
    (
        "cam",
        &[
            "spatial_mean",
            "broadcast_spatial",
            "relu_backward",
            "channel_projection",
            "centred_gram",
            "relax_masks",
            "mask_images",
            "cosine_similarity",
            "relax_accumulate",
        ],
    ),
    (
        "lrp",
        &[
            "lrp_ratio",
            "residual_split",
            "lincomb",
            "add_relu",
            "clamp_range",
            "fill_channels",
            "repeat_images",
            "max_pool_argmax",
            "max_pool_backward",
        ],
    ),
    ("preprocess", &["preprocess"]),
    ("pool", &["max_pool"]),
    (
        "reduce",
        &["channel_mean", "channel_max", "minmax_normalise"],
    ),
    ("resample", &["resize_nearest", "resize_bilinear"]),
];

/// One compute pipeline that [`Pipelines`] creates: the shader module, the entry point and
/// its override constants. `tests/shaders_translate.rs` translates each through naga.
#[doc(hidden)]
#[derive(Clone, Debug, PartialEq)]
pub struct Specialisation {
    /// The module's label, `shaders/<module>.wgsl`.
    pub module: &'static str,
    /// The module's WGSL source.
    pub source: &'static str,
    pub entry_point: String,
    /// The kernel's name in timing reports (`Pipelines::name`), unique per pipeline.
    pub kernel: String,
    /// The pipeline's override constants.
    pub constants: Vec<(String, f64)>,
}

/// Every pipeline specialisation `Pipelines::build` compiles, in no particular order.
/// `Gpu::kernel_names` (the names of the compiled pipelines) matches their `kernel`s, as
/// `tests/shaders_translate.rs` checks on a device.
#[doc(hidden)]
pub fn specialisations() -> Vec<Specialisation> {
    let spec = |module: &'static str, entry: &str, kernel: &str, constants: &[(&str, f64)]| {
        let source = source(module);
        Specialisation {
            module,
            source,
            entry_point: entry.to_string(),
            kernel: kernel_name(kernel, constants),
            constants: constants.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
        }
    };
    let mut out = Vec::new();
    for i in 0..ConvVariant::COUNT {
        let v = ConvVariant::from_index(i);
        let constants = gemm_constants(v.tile, v.flags());
        out.push(spec(
            "conv",
            &v.tile.entry_point("conv2d"),
            &v.tile.kernel("conv2d"),
            &constants,
        ));
    }
    for b_vec4 in [false, true] {
        let constants = conv_narrow_constants(b_vec4);
        out.push(spec("conv", "conv2d_narrow", "conv2d_narrow", &constants));
    }
    for i in 0..ConvTransposeVariant::COUNT {
        let v = ConvTransposeVariant::from_index(i);
        let constants = gemm_constants(v.tile, v.flags());
        out.push(spec(
            "conv_backward",
            &v.tile.entry_point("conv_transpose"),
            &v.tile.kernel("conv_transpose"),
            &constants,
        ));
    }
    for k_vec4 in [false, true] {
        let constants = conv_transpose_narrow_constants(k_vec4);
        let entry = "conv_transpose_narrow";
        out.push(spec("conv_backward", entry, entry, &constants));
    }
    for (module, entries) in PLAIN_ENTRY_POINTS {
        for entry in entries {
            out.push(spec(module, entry, entry, &[]));
        }
    }
    out
}

/// A kernel's name in timing reports: `kernel` followed by the boolean specialisations that
/// are on (numeric ones, such as a tile size, are in `kernel`).
fn kernel_name(kernel: &str, constants: &[(&str, f64)]) -> String {
    let on: Vec<&str> = constants
        .iter()
        .filter(|c| c.1 == 1.0)
        .map(|c| c.0)
        .collect();
    if on.is_empty() {
        kernel.to_string()
    } else {
        format!("{kernel}[{}]", on.join(","))
    }
}

/// The override constants of a tiled GEMM pipeline: its boolean flags and the tile's rows.
fn gemm_constants(tile: Tile, flags: [(&'static str, bool); 3]) -> Vec<(&'static str, f64)> {
    let mut constants: Vec<(&str, f64)> = flags
        .iter()
        .map(|&(k, on)| (k, if on { 1.0 } else { 0.0 }))
        .collect();
    constants.extend(tile.rows_constant());
    constants
}

/// The override constants of `conv2d_narrow` (only `B_VEC4` varies).
fn conv_narrow_constants(b_vec4: bool) -> [(&'static str, f64); 3] {
    [
        ("A_VEC4", 0.0),
        ("B_VEC4", if b_vec4 { 1.0 } else { 0.0 }),
        ("PLAIN_GEMM", 0.0),
    ]
}

/// The override constants of `conv_transpose_narrow`.
fn conv_transpose_narrow_constants(k_vec4: bool) -> [(&'static str, f64); 1] {
    [("K_VEC4", if k_vec4 { 1.0 } else { 0.0 })]
}

/// Which tiled entry point of a conv shader: 16x64 (`*_thin`), 64x64 or 128x128 (`*_large`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    Thin,
    Small,
    Large,
}

impl Tile {
    /// The tile of M edge `edge` (`ConvTiles`' answer, src/gpu/tiles.rs).
    pub fn of_edge(edge: u64) -> Tile {
        match edge {
            super::tiles::THIN_TILE => Tile::Thin,
            super::tiles::LARGE_TILE => Tile::Large,
            _ => Tile::Small,
        }
    }
    /// (M, N) edges of the output tile.
    pub fn edges(self) -> (u64, u64) {
        match self {
            Tile::Thin => (super::tiles::THIN_TILE, super::tiles::SMALL_TILE),
            Tile::Small => (super::tiles::SMALL_TILE, super::tiles::SMALL_TILE),
            Tile::Large => (super::tiles::LARGE_TILE, super::tiles::LARGE_TILE),
        }
    }
    fn index(self) -> usize {
        self as usize
    }
    fn from_index(i: usize) -> Tile {
        [Tile::Thin, Tile::Small, Tile::Large][i]
    }
    /// The kernel's name in timing reports, for a shader whose 64x64 entry point is `base`.
    fn kernel(self, base: &str) -> String {
        match self {
            Tile::Thin => format!("{base}_thin"),
            Tile::Small => base.to_string(),
            Tile::Large => format!("{base}_large"),
        }
    }
    /// The shader entry point: the 64x64 and the 16x64 tiles are one entry point specialised
    /// by its `TILE_ROWS` override, the 128x128 tile has its own.
    fn entry_point(self, base: &str) -> String {
        match self {
            Tile::Large => format!("{base}_large"),
            _ => base.to_string(),
        }
    }
    /// The `TILE_ROWS` override of the entry point (none for the 128x128 one).
    fn rows_constant(self) -> Option<(&'static str, f64)> {
        match self {
            Tile::Large => None,
            t => Some(("TILE_ROWS", t.edges().0 as f64)),
        }
    }
}

/// Conv specialisations, see `shaders/conv.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvVariant {
    pub a_vec4: bool,
    pub b_vec4: bool,
    pub plain_gemm: bool,
    pub tile: Tile,
    /// cout <= 4: `conv2d_narrow`, one invocation per output pixel (only `b_vec4` applies).
    pub narrow: bool,
}

impl ConvVariant {
    const COUNT: usize = 24;
    fn index(self) -> usize {
        self.a_vec4 as usize
            | (self.b_vec4 as usize) << 1
            | (self.plain_gemm as usize) << 2
            | self.tile.index() << 3
    }
    fn from_index(i: usize) -> Self {
        ConvVariant {
            a_vec4: i & 1 != 0,
            b_vec4: i & 2 != 0,
            plain_gemm: i & 4 != 0,
            tile: Tile::from_index(i >> 3),
            narrow: false,
        }
    }
    /// The boolean override constants of the tiled pipeline.
    fn flags(self) -> [(&'static str, bool); 3] {
        [
            ("A_VEC4", self.a_vec4),
            ("B_VEC4", self.b_vec4),
            ("PLAIN_GEMM", self.plain_gemm),
        ]
    }
}

/// Transposed-conv specialisations, see `shaders/conv_backward.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvTransposeVariant {
    pub k_vec4: bool,
    pub n_vec4: bool,
    pub plain_gemm: bool,
    /// The tiled entry point (ignored when `narrow`).
    pub tile: Tile,
    /// cin <= 4: one invocation per input pixel instead of the tiled GEMM.
    pub narrow: bool,
}

impl ConvTransposeVariant {
    const COUNT: usize = 24;
    fn index(self) -> usize {
        self.k_vec4 as usize
            | (self.n_vec4 as usize) << 1
            | (self.plain_gemm as usize) << 2
            | self.tile.index() << 3
    }
    fn from_index(i: usize) -> Self {
        ConvTransposeVariant {
            k_vec4: i & 1 != 0,
            n_vec4: i & 2 != 0,
            plain_gemm: i & 4 != 0,
            tile: Tile::from_index(i >> 3),
            narrow: false,
        }
    }
    /// The boolean override constants of the tiled pipeline.
    fn flags(self) -> [(&'static str, bool); 3] {
        [
            ("K_VEC4", self.k_vec4),
            ("N_VEC4", self.n_vec4),
            ("PLAIN_GEMM", self.plain_gemm),
        ]
    }
}

pub(crate) struct Pipelines {
    /// uniform params + one read-only input + one read-write output.
    pub unary_layout: wgpu::BindGroupLayout,
    /// uniform params + x, weight, bias, residual (read-only) + output.
    pub conv_layout: wgpu::BindGroupLayout,
    /// Indexed by [`ConvVariant::index`]; None for tiles that do not fit the device.
    conv: Vec<Option<wgpu::ComputePipeline>>,
    /// `conv2d_narrow` (cout <= 4), indexed by B_VEC4.
    conv_narrow: [wgpu::ComputePipeline; 2],
    /// uniform params + a, b, c (read-only) + out0, out1 (the LRP elementwise kernels).
    pub lrp_layout: wgpu::BindGroupLayout,
    /// Indexed by [`ConvTransposeVariant::index`]; None for tiles that do not fit the device.
    conv_transpose: Vec<Option<wgpu::ComputePipeline>>,
    /// `conv_transpose_narrow` (cin <= 4), indexed by K_VEC4.
    conv_transpose_narrow: [wgpu::ComputePipeline; 2],
    pub lrp_ratio: wgpu::ComputePipeline,
    pub residual_split: wgpu::ComputePipeline,
    pub lincomb: wgpu::ComputePipeline,
    pub add_relu: wgpu::ComputePipeline,
    pub clamp: wgpu::ComputePipeline,
    pub fill_channels: wgpu::ComputePipeline,
    pub repeat_images: wgpu::ComputePipeline,
    pub max_pool_argmax: wgpu::ComputePipeline,
    pub max_pool_backward: wgpu::ComputePipeline,
    pub preprocess: wgpu::ComputePipeline,
    pub max_pool: wgpu::ComputePipeline,
    pub channel_mean: wgpu::ComputePipeline,
    pub channel_max: wgpu::ComputePipeline,
    pub minmax: wgpu::ComputePipeline,
    pub resize_nearest: wgpu::ComputePipeline,
    pub resize_bilinear: wgpu::ComputePipeline,
    /// `shaders/cam.wgsl` (on `lrp_layout`).
    pub cam: super::cam::CamPipelines,
    /// Kernel names for timing reports: entry point and the specialisations that are on.
    names: std::collections::HashMap<wgpu::ComputePipeline, String>,
}

fn storage(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn params_entry() -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES),
        },
        count: None,
    }
}

impl Pipelines {
    /// Compiles every kernel, through `cache` where the device has a pipeline cache. Errors of
    /// the pipelines built on this thread come back here; those built on rayon's workers (the
    /// GEMM variants) go to the device's uncaptured-error handler, which the caller checks.
    /// Of the tiled GEMM kernels, only those of `tiles` (the ones that fit the device's
    /// limits, src/gpu/limits.rs) are built.
    pub fn new(
        device: &wgpu::Device,
        cache: Option<&wgpu::PipelineCache>,
        tiles: &[Tile],
        drop_barriers: bool,
    ) -> Result<Self> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let built = Self::build(device, cache, tiles, drop_barriers);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(anyhow!("pipeline creation failed: {e}"));
        }
        Ok(built)
    }

    /// The kernel name of `p`, e.g. `conv2d[A_VEC4,PLAIN_GEMM]`.
    pub fn name(&self, p: &wgpu::ComputePipeline) -> &str {
        self.names.get(p).map_or("unnamed kernel", |s| s.as_str())
    }

    /// The names of every compiled pipeline, sorted (one per [`Specialisation`] whose tile
    /// fits the device).
    pub fn kernel_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.names.values().cloned().collect();
        names.sort();
        names
    }

    /// The pipeline of `v`; an error for a tile that does not fit the device (the tile
    /// policy never picks one).
    pub fn conv(&self, v: ConvVariant) -> Result<&wgpu::ComputePipeline> {
        if v.narrow {
            Ok(&self.conv_narrow[v.b_vec4 as usize])
        } else {
            self.conv[v.index()]
                .as_ref()
                .ok_or_else(|| anyhow!("the conv tile {:?} does not fit this device", v.tile))
        }
    }

    /// The pipeline of `v`; an error for a tile that does not fit the device.
    pub fn conv_transpose(&self, v: ConvTransposeVariant) -> Result<&wgpu::ComputePipeline> {
        if v.narrow {
            Ok(&self.conv_transpose_narrow[v.k_vec4 as usize])
        } else {
            self.conv_transpose[v.index()].as_ref().ok_or_else(|| {
                anyhow!(
                    "the transposed-conv tile {:?} does not fit this device",
                    v.tile
                )
            })
        }
    }

    /// `drop_barriers` (tests only) removes the GEMM shaders' workgroup barriers: a race.
    fn build(
        device: &wgpu::Device,
        cache: Option<&wgpu::PipelineCache>,
        tiles: &[Tile],
        drop_barriers: bool,
    ) -> Self {
        let unary_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("unary"),
            entries: &[params_entry(), storage(1, true), storage(2, false)],
        });
        let conv_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("conv"),
            entries: &[
                params_entry(),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, true),
                storage(5, false),
            ],
        });
        let lrp_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("lrp"),
            entries: &[
                params_entry(),
                storage(1, true),
                storage(2, true),
                storage(3, true),
                storage(4, false),
                storage(5, false),
            ],
        });
        let lrp_pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("lrp"),
            bind_group_layouts: &[Some(&lrp_layout)],
            immediate_size: 0,
        });
        let unary_pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("unary"),
            bind_group_layouts: &[Some(&unary_layout)],
            immediate_size: 0,
        });
        let conv_pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("conv"),
            bind_group_layouts: &[Some(&conv_layout)],
            immediate_size: 0,
        });
        let module = |label: &str, src: &str| {
            let src = if drop_barriers && (label == "conv" || label == "conv_backward") {
                src.replace("workgroupBarrier();", "")
            } else {
                src.to_string()
            };
            // SAFETY: every kernel guards its indices against the sizes in its parameters,
            // and the host validates those sizes (non-zero divisors, buffer extents) before
            // recording a dispatch (src/gpu/mod.rs), so unchecked access stays in bounds.
            unsafe {
                device.create_shader_module_trusted(
                    wgpu::ShaderModuleDescriptor {
                        label: Some(label),
                        source: wgpu::ShaderSource::Wgsl(src.into()),
                    },
                    wgpu::ShaderRuntimeChecks::unchecked(),
                )
            }
        };
        let names = std::sync::Mutex::new(std::collections::HashMap::new());
        // `kernel` names the pipeline in timing reports (see `kernel_name`).
        let named_pipeline = |layout: &wgpu::PipelineLayout,
                              m: &wgpu::ShaderModule,
                              entry: &str,
                              kernel: &str,
                              constants: &[(&str, f64)]| {
            let name = kernel_name(kernel, constants);
            let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(layout),
                module: m,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    // Every kernel writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache,
            });
            names
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.clone(), name);
            p
        };
        let pipeline = |layout: &wgpu::PipelineLayout,
                        m: &wgpu::ShaderModule,
                        entry: &str,
                        constants: &[(&str, f64)]| {
            named_pipeline(layout, m, entry, entry, constants)
        };
        let conv_m = module("conv", source("conv"));
        // A tiled GEMM pipeline of the shader entry `base` (conv2d, conv_transpose) for `tile`
        // with its boolean specialisations.
        let gemm =
            |m: &wgpu::ShaderModule, base: &str, tile: Tile, flags: [(&'static str, bool); 3]| {
                let constants = gemm_constants(tile, flags);
                named_pipeline(
                    &conv_pl,
                    m,
                    &tile.entry_point(base),
                    &tile.kernel(base),
                    &constants,
                )
            };
        // The GEMM variants are most of the start-up: the driver compiles them on all cores.
        let conv = (0..ConvVariant::COUNT)
            .into_par_iter()
            .map(|i| {
                let v = ConvVariant::from_index(i);
                if !tiles.contains(&v.tile) {
                    return None;
                }
                Some(gemm(&conv_m, "conv2d", v.tile, v.flags()))
            })
            .collect();
        let conv_narrow = [false, true].map(|b_vec4| {
            let constants = conv_narrow_constants(b_vec4);
            pipeline(&conv_pl, &conv_m, "conv2d_narrow", &constants)
        });
        let convt_m = module("conv_backward", source("conv_backward"));
        let conv_transpose = (0..ConvTransposeVariant::COUNT)
            .into_par_iter()
            .map(|i| {
                let v = ConvTransposeVariant::from_index(i);
                if !tiles.contains(&v.tile) {
                    return None;
                }
                Some(gemm(&convt_m, "conv_transpose", v.tile, v.flags()))
            })
            .collect();
        let conv_transpose_narrow = [false, true].map(|k_vec4| {
            let constants = conv_transpose_narrow_constants(k_vec4);
            pipeline(&conv_pl, &convt_m, "conv_transpose_narrow", &constants)
        });
        let lrp_m = module("lrp", source("lrp"));
        let pre_m = module("preprocess", source("preprocess"));
        let pool_m = module("pool", source("pool"));
        let reduce_m = module("reduce", source("reduce"));
        let resample_m = module("resample", source("resample"));
        let cam_m = module("cam", source("cam"));
        let cam = super::cam::CamPipelines {
            spatial_mean: pipeline(&lrp_pl, &cam_m, "spatial_mean", &[]),
            broadcast_spatial: pipeline(&lrp_pl, &cam_m, "broadcast_spatial", &[]),
            relu_backward: pipeline(&lrp_pl, &cam_m, "relu_backward", &[]),
            channel_projection: pipeline(&lrp_pl, &cam_m, "channel_projection", &[]),
            centred_gram: pipeline(&lrp_pl, &cam_m, "centred_gram", &[]),
            relax_masks: pipeline(&lrp_pl, &cam_m, "relax_masks", &[]),
            mask_images: pipeline(&lrp_pl, &cam_m, "mask_images", &[]),
            cosine_similarity: pipeline(&lrp_pl, &cam_m, "cosine_similarity", &[]),
            relax_accumulate: pipeline(&lrp_pl, &cam_m, "relax_accumulate", &[]),
        };
        Pipelines {
            cam,
            conv,
            conv_narrow,
            conv_transpose,
            conv_transpose_narrow,
            lrp_ratio: pipeline(&lrp_pl, &lrp_m, "lrp_ratio", &[]),
            residual_split: pipeline(&lrp_pl, &lrp_m, "residual_split", &[]),
            lincomb: pipeline(&lrp_pl, &lrp_m, "lincomb", &[]),
            add_relu: pipeline(&lrp_pl, &lrp_m, "add_relu", &[]),
            clamp: pipeline(&lrp_pl, &lrp_m, "clamp_range", &[]),
            fill_channels: pipeline(&lrp_pl, &lrp_m, "fill_channels", &[]),
            repeat_images: pipeline(&lrp_pl, &lrp_m, "repeat_images", &[]),
            max_pool_argmax: pipeline(&lrp_pl, &lrp_m, "max_pool_argmax", &[]),
            max_pool_backward: pipeline(&lrp_pl, &lrp_m, "max_pool_backward", &[]),
            lrp_layout,
            preprocess: pipeline(&unary_pl, &pre_m, "preprocess", &[]),
            max_pool: pipeline(&unary_pl, &pool_m, "max_pool", &[]),
            channel_mean: pipeline(&unary_pl, &reduce_m, "channel_mean", &[]),
            channel_max: pipeline(&unary_pl, &reduce_m, "channel_max", &[]),
            minmax: pipeline(&unary_pl, &reduce_m, "minmax_normalise", &[]),
            resize_nearest: pipeline(&unary_pl, &resample_m, "resize_nearest", &[]),
            resize_bilinear: pipeline(&unary_pl, &resample_m, "resize_bilinear", &[]),
            unary_layout,
            conv_layout,
            // Last: the initialisers above still register their names.
            names: names.into_inner().unwrap_or_else(|e| e.into_inner()),
        }
    }
}
