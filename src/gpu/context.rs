//! Adapter and device selection, device limits, error capture, and the process-wide cache of
//! devices (so that pipelines are compiled once per process and device).

use super::limits::GpuLimits;
use super::pipelines::{Pipelines, Tile};
use super::tiles::ConvTiles;
use anyhow::{anyhow, Context as _, Result};
use std::sync::{Arc, Mutex, OnceLock};

/// How to choose and open the GPU. [`Gpu::new`](super::Gpu::new) reads no environment
/// variable: [`GpuOptions::from_env`] fills these fields from wgpu's variables
/// (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`, `WGPU_POWER_PREF`, `WGPU_VALIDATION` and wgpu's other
/// instance flags) and this crate's (`LAFAM_GPU_LIMITS`, `LAFAM_GPU_TILES`), for the CLI and
/// the tests; `Default` is wgpu's defaults and this crate's. GL adapters are refused
/// (`refuse_gl`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GpuOptions {
    /// Case-insensitive substring of the adapter name (`WGPU_ADAPTER_NAME`); an adapter named
    /// this way is used whatever its type.
    pub adapter_name: Option<String>,
    /// Backends to consider (`WGPU_BACKEND`; default: the primary backends Vulkan, Metal,
    /// DX12).
    pub backends: Option<wgpu::Backends>,
    /// Which adapter type is preferred (`WGPU_POWER_PREF`; default: high performance).
    pub power: Option<wgpu::PowerPreference>,
    /// wgpu's instance flags (`WGPU_VALIDATION`, `WGPU_DEBUG`, ...; default: wgpu's for this
    /// build). With [`wgpu::InstanceFlags::VALIDATION`] the Khronos layer's errors become
    /// errors of the next GPU call (src/gpu/validation.rs).
    pub instance_flags: Option<wgpu::InstanceFlags>,
    /// The limits the device is opened with (`LAFAM_GPU_LIMITS`; default:
    /// [`GpuLimits::Adapter`]).
    pub limits: Option<GpuLimits>,
    /// The initial tile policy of the convs (`LAFAM_GPU_TILES`; default: [`ConvTiles::Auto`]).
    pub tiles: ConvTiles,
    /// Directory where compiled pipelines are persisted per adapter and driver; `None` does
    /// not persist them. The CLI sets it to `<cache dir>/pipelines` unless
    /// `LAFAM_GPU_PIPELINE_CACHE=0`.
    pub pipeline_cache: Option<std::path::PathBuf>,
    /// Only hardware adapters (discrete, integrated, virtual): software ones (lavapipe,
    /// SwiftShader, WARP; wgpu's `DeviceType::Cpu`) run our kernels 40-70x slower than the
    /// CPU backend, so `--backend auto` skips them. An adapter named through `adapter_name`
    /// is used whatever its type.
    pub hardware_only: bool,
    /// Test only: compile the GEMM shaders without their workgroup barriers, a deliberate
    /// race that the parity tests must catch.
    #[doc(hidden)]
    pub drop_barriers: bool,
}

/// The variable that turns the CLI's persisted pipeline cache off (`0`).
pub const PIPELINE_CACHE_ENV: &str = "LAFAM_GPU_PIPELINE_CACHE";

impl GpuOptions {
    /// The options the environment asks for: `WGPU_ADAPTER_NAME` (empty: unset),
    /// `WGPU_BACKEND`, `WGPU_POWER_PREF`, wgpu's instance-flag variables (`WGPU_VALIDATION`,
    /// ...), `LAFAM_GPU_LIMITS` and `LAFAM_GPU_TILES`. Fails where `LAFAM_GPU_LIMITS` or
    /// `LAFAM_GPU_TILES` holds a value they do not accept. `pipeline_cache` stays `None`.
    pub fn from_env() -> Result<GpuOptions> {
        Ok(GpuOptions {
            adapter_name: std::env::var("WGPU_ADAPTER_NAME")
                .ok()
                .filter(|s| !s.is_empty()),
            backends: wgpu::Backends::from_env(),
            power: wgpu::PowerPreference::from_env(),
            instance_flags: Some(wgpu::InstanceFlags::from_build_config().with_env()),
            limits: Some(GpuLimits::from_env()?),
            tiles: ConvTiles::from_env()?,
            ..GpuOptions::default()
        })
    }

    /// Whether the environment leaves the persisted pipeline cache on
    /// (`LAFAM_GPU_PIPELINE_CACHE` is not `0`).
    pub fn pipeline_cache_wanted() -> bool {
        std::env::var(PIPELINE_CACHE_ENV).map_or(true, |v| v != "0")
    }

    fn power(&self) -> wgpu::PowerPreference {
        self.power.unwrap_or(wgpu::PowerPreference::HighPerformance)
    }
}

/// A device with its compiled pipelines, shared by every [`Gpu`](super::Gpu) created with the
/// same options in this process.
pub(crate) struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// How `limits` were chosen.
    pub limits_mode: GpuLimits,
    /// The adapter's own limits.
    pub adapter_limits: wgpu::Limits,
    /// The conv tiles whose kernels fit `limits` (and were compiled), smallest first.
    pub tiles: Vec<Tile>,
    /// What the adapter offers (the device is opened with [`OPTIONAL_FEATURES`] among them).
    pub adapter_features: wgpu::Features,
    /// Where the compiled pipelines are persisted, and whether they were found there.
    pub pipeline_cache: Option<(std::path::PathBuf, bool)>,
    pub pipelines: Pipelines,
    /// Validation / out-of-memory errors raised outside an error scope (recording, submit),
    /// and device loss: reported by the next `download` instead of wgpu's default panic.
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Context {
    /// Takes (and clears) the errors recorded so far, the validation layer's among them.
    pub fn take_errors(&self) -> Vec<String> {
        let mut errors =
            std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()));
        errors.extend(super::validation::take());
        errors
    }
}

type Cache = Mutex<Vec<(GpuOptions, Arc<Context>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

/// The context for `opts`, created on first use (adapter, device, pipelines).
pub(crate) fn shared_context(opts: &GpuOptions) -> Result<Arc<Context>> {
    // The tile policy is each `Gpu`'s own; unset limits are the adapter's.
    let opts = &GpuOptions {
        limits: Some(opts.limits.unwrap_or_default()),
        tiles: ConvTiles::default(),
        ..opts.clone()
    };
    // Holding the lock while creating serialises concurrent first uses (tests).
    let mut guard = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, ctx)) = guard.iter().find(|(o, _)| o == opts) {
        return Ok(ctx.clone());
    }
    let ctx = Arc::new(pollster::block_on(create_context(opts))?);
    guard.push((opts.clone(), ctx.clone()));
    Ok(ctx)
}

/// On a machine without a desktop session (`XDG_RUNTIME_DIR` unset or not a directory),
/// turns off Mesa's Vulkan device-select layer (`NODEVICE_SELECT=1`), which otherwise
/// prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` twice while
/// looking for a Wayland display to rank GPUs by. We rank adapters ourselves. Call it at the
/// start of `main`, before any other thread exists (it sets an environment variable).
pub fn quiet_headless_vulkan() {
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR");
    let headless = runtime_dir.is_none_or(|d| !std::path::Path::new(&d).is_dir());
    if headless && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

/// How the error of a `hardware_only` choice starts when only software adapters exist.
pub const SOFTWARE_ONLY: &str = "no hardware GPU adapter";

/// How much an adapter of each type is preferred (higher first) under `power`.
fn preference(kind: wgpu::DeviceType, power: wgpu::PowerPreference) -> u8 {
    use wgpu::DeviceType::*;
    match (kind, power) {
        (DiscreteGpu, wgpu::PowerPreference::LowPower) => 4,
        (DiscreteGpu, _) => 5,
        (IntegratedGpu, wgpu::PowerPreference::LowPower) => 5,
        (IntegratedGpu, _) => 4,
        (VirtualGpu, _) => 3,
        (Other, _) => 2,
        (Cpu, _) => 1,
    }
}

/// `name (backend, type)` of each adapter, for messages.
fn describe(adapters: &[wgpu::Adapter]) -> String {
    if adapters.is_empty() {
        return "none".into();
    }
    let names: Vec<String> = adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        })
        .collect();
    names.join(", ")
}

/// Every adapter wgpu finds for `opts`' backends (default Vulkan, Metal and DX12).
async fn enumerate(opts: &GpuOptions) -> (Vec<wgpu::Adapter>, wgpu::Backends) {
    let backends = opts.backends.unwrap_or(wgpu::Backends::PRIMARY);
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    desc.flags = opts
        .instance_flags
        .unwrap_or_else(wgpu::InstanceFlags::from_build_config);
    if super::validation::requested(desc.flags) {
        super::validation::install();
    }
    let instance = wgpu::Instance::new(desc);
    (instance.enumerate_adapters(backends).await, backends)
}

/// The adapters wgpu finds with `opts` (name, backend, type), best first, as [`Gpu::new`]
/// would choose among them (before `hardware_only` and the name filter).
///
/// [`Gpu::new`]: super::Gpu::new
pub fn adapters(opts: &GpuOptions) -> Vec<wgpu::AdapterInfo> {
    let (adapters, _) = pollster::block_on(enumerate(opts));
    let mut infos: Vec<wgpu::AdapterInfo> = adapters.iter().map(|a| a.get_info()).collect();
    let power = opts.power();
    infos.sort_by_key(|i| std::cmp::Reverse(rank(i, power)));
    infos
}

/// An adapter's rank: its type's preference, and GL last (refused, see [`refuse_gl`]).
fn rank(info: &wgpu::AdapterInfo, power: wgpu::PowerPreference) -> (bool, u8) {
    (
        info.backend != wgpu::Backend::Gl,
        preference(info.device_type, power),
    )
}

async fn choose_adapter(opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let (adapters, backends) = enumerate(opts).await;
    let wanted = opts.adapter_name.clone().filter(|s| !s.is_empty());
    if let Some(name) = wanted {
        let lower = name.to_lowercase();
        let found = describe(&adapters);
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&lower))
            .ok_or_else(|| {
                anyhow!(
                    "no GPU adapter found (none named like '{name}' among backends \
                     {backends:?}; available: {found})"
                )
            });
    }
    let power = opts.power();
    let found = describe(&adapters);
    let best = adapters
        .into_iter()
        .filter(|a| !opts.hardware_only || a.get_info().device_type != wgpu::DeviceType::Cpu)
        // The first of the best (max_by_key would take the last), as `adapters` lists them.
        .min_by_key(|a| std::cmp::Reverse(rank(&a.get_info(), power)));
    match best {
        Some(a) => Ok(a),
        None if opts.hardware_only && found != "none" => Err(anyhow!(
            "{SOFTWARE_ONLY}: only software ones ({found}), which run slower than the CPU \
             backend"
        )),
        None => Err(anyhow!(
            "no GPU adapter found (backends {backends:?}; on Linux without a GPU install \
             Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)"
        )),
    }
}

/// Features requested where the adapter has them: timestamp queries (kernel timing in
/// `bench`) and a driver pipeline cache (start-up).
const OPTIONAL_FEATURES: wgpu::Features =
    wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::PIPELINE_CACHE);

/// The file that persists compiled pipelines for this adapter and driver in `dir`.
fn pipeline_cache_file(
    dir: &std::path::Path,
    info: &wgpu::AdapterInfo,
) -> Option<std::path::PathBuf> {
    let key = wgpu::util::pipeline_cache_key(info)?;
    // The driver version is in the name too: a driver update starts a fresh file.
    let driver: String = format!("{}_{}", info.driver, info.driver_info)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    Some(dir.join(format!("{key}_{driver}.bin")))
}

/// Writes the pipeline cache's data whole (temp file + rename), unless it is what was loaded.
/// Failure only costs the next start-up its compile time, so it is not an error.
fn save_pipeline_cache(cache: &wgpu::PipelineCache, path: &std::path::Path, loaded: Option<&[u8]>) {
    let Some(data) = cache.get_data() else {
        return;
    };
    if loaded == Some(&data[..]) {
        return;
    }
    if let Some(dir) = path.parent() {
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
    }
    let _ = crate::io::output::write_atomic(path, |w| Ok(w.write_all(&data)?));
}

/// The limits requested from the device in mode `mode` (never above the adapter's): in
/// `Adapter` mode wgpu's defaults raised to what the adapter offers for the limits that bound
/// batch size and kernel shapes; in `WebGpu` mode WebGPU's defaults.
fn wanted_limits(adapter: &wgpu::Limits, mode: GpuLimits) -> wgpu::Limits {
    mode.wanted(adapter)
}

/// Refuses adapters of wgpu's GL backend. Their results match the CPU (llvmpipe GL: LaFAM
/// and LaFAM-LRP maps within 5e-6), but wgpu-hal's GLES backend runs every GL call under one
/// context lock that it gives up on after 6 s (`Could not lock adapter context. This is
/// most-likely a deadlock.`, a panic, inside a `Drop` an abort): a kernel running longer
/// than that while another thread uses the device kills the process. `cargo test --test
/// gpu_ops` on llvmpipe GL did so in `large_grids_are_tiled` (it passes single-threaded).
fn refuse_gl(info: &wgpu::AdapterInfo) -> Result<()> {
    anyhow::ensure!(
        info.backend != wgpu::Backend::Gl,
        "the GL backend is not supported (adapter '{}'): wgpu's GL backend serialises every GL \
         call through one context lock and panics after waiting 6 s for it, so a kernel running \
         longer while another thread uses the device aborts the process; use Vulkan, Metal or \
         DX12",
        info.name
    );
    Ok(())
}

async fn create_context(opts: &GpuOptions) -> Result<Context> {
    let adapter = choose_adapter(opts).await?;
    let info = adapter.get_info();
    refuse_gl(&info)?;
    // With validation on, a missing layer has been reported by now.
    let missing = super::validation::take();
    anyhow::ensure!(missing.is_empty(), "{}", missing.join("; "));
    let adapter_limits = adapter.limits();
    let limits_mode = opts.limits.unwrap_or_default();
    let required_limits = wanted_limits(&adapter_limits, limits_mode);
    // Every kernel is checked against the limits the device will have; the tile policy only
    // picks among `tiles`, and only their pipelines are compiled.
    let tiles = super::limits::usable_tiles(&info.name, &required_limits)?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("lafam-gpu"),
            required_features: adapter.features() & OPTIONAL_FEATURES,
            required_limits,
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .with_context(|| format!("cannot open GPU device on adapter '{}'", info.name))?;
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string());
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(format!("GPU device lost ({reason:?}): {msg}"));
        });
    }
    let limits = device.limits();
    let adapter_features = adapter.features();
    // Pipelines compile through the driver's cache, persisted per adapter and driver: a
    // second start-up loads them instead of compiling.
    let cache_file = device
        .features()
        .contains(wgpu::Features::PIPELINE_CACHE)
        .then_some(opts.pipeline_cache.as_deref())
        .flatten()
        .and_then(|dir| pipeline_cache_file(dir, &info))
        .filter(|_| !opts.drop_barriers);
    let cached = cache_file.as_ref().and_then(|f| std::fs::read(f).ok());
    let cache = cache_file.as_ref().map(|_| {
        // SAFETY: the data is what `PipelineCache::get_data` wrote for an adapter with the
        // same cache key and driver; `fallback` makes the driver discard data it rejects.
        unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("lafam-gpu pipelines"),
                data: cached.as_deref(),
                fallback: true,
            })
        }
    });
    let pipelines = Pipelines::new(&device, cache.as_ref(), &tiles, opts.drop_barriers)
        .with_context(|| format!("compiling the WGSL kernels on '{}'", info.name))?;
    // Pipelines built on worker threads report to the uncaptured-error handler (wgpu's error
    // scopes are per thread).
    let failed = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
    anyhow::ensure!(
        failed.is_empty(),
        "compiling the WGSL kernels on '{}': {}",
        info.name,
        failed.join("; ")
    );
    if let (Some(c), Some(f)) = (&cache, &cache_file) {
        save_pipeline_cache(c, f, cached.as_deref());
    }
    let pipeline_cache = cache_file.map(|f| (f, cached.is_some()));
    Ok(Context {
        device,
        queue,
        info,
        limits,
        limits_mode,
        adapter_limits,
        tiles,
        adapter_features,
        pipeline_cache,
        pipelines,
        errors,
    })
}
