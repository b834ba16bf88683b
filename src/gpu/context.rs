//! Adapter and device selection, device limits, error capture, and the process-wide cache of
//! devices (so that pipelines are compiled once per process and device).

use super::pipelines::Pipelines;
use anyhow::{anyhow, Context as _, Result};
use std::sync::{Arc, Mutex, OnceLock};

/// How to choose the GPU. Unset fields follow wgpu's environment variables:
/// `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`; default: the primary backends
/// Vulkan/Metal/DX12), `WGPU_ADAPTER_NAME` (case-insensitive substring of the adapter name)
/// and `WGPU_POWER_PREF` (`high`/`low`; default: high performance).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GpuOptions {
    /// Case-insensitive substring of the adapter name; overrides `WGPU_ADAPTER_NAME`.
    pub adapter_name: Option<String>,
    /// Backends to consider; overrides `WGPU_BACKEND`.
    pub backends: Option<wgpu::Backends>,
}

/// A device with its compiled pipelines, shared by every [`Gpu`](super::Gpu) created with the
/// same options in this process.
pub(crate) struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// What the adapter offers (the device is opened with no optional features).
    pub adapter_features: wgpu::Features,
    pub pipelines: Pipelines,
    /// Validation / out-of-memory errors raised outside an error scope (recording, submit),
    /// and device loss: reported by the next `download` instead of wgpu's default panic.
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Context {
    /// Takes (and clears) the errors recorded so far.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

type Cache = Mutex<Vec<(GpuOptions, Arc<Context>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

/// The context for `opts`, created on first use (adapter, device, pipelines).
pub(crate) fn shared_context(opts: &GpuOptions) -> Result<Arc<Context>> {
    // Holding the lock while creating serialises concurrent first uses (tests).
    let mut guard = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, ctx)) = guard.iter().find(|(o, _)| o == opts) {
        return Ok(ctx.clone());
    }
    let ctx = Arc::new(pollster::block_on(create_context(opts))?);
    guard.push((opts.clone(), ctx.clone()));
    Ok(ctx)
}

async fn choose_adapter(opts: &GpuOptions) -> Result<wgpu::Adapter> {
    let backends = opts
        .backends
        .or_else(wgpu::Backends::from_env)
        .unwrap_or(wgpu::Backends::PRIMARY);
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let wanted = opts
        .adapter_name
        .clone()
        .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
        .filter(|s| !s.is_empty());
    if let Some(name) = wanted {
        let adapters = instance.enumerate_adapters(backends).await;
        let names: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        let lower = name.to_lowercase();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&lower))
            .ok_or_else(|| {
                anyhow!(
                    "no GPU adapter found (none named like '{name}' among backends {backends:?}; \
                     available: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            });
    }
    let power_preference =
        wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance);
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference,
            force_fallback_adapter: false,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|e| {
            anyhow!(
                "no GPU adapter found (backends {backends:?}: {e}; on Linux without a GPU \
                 install Mesa's lavapipe: apt-get install mesa-vulkan-drivers libvulkan1)"
            )
        })
}

/// The limits requested from the device: wgpu's defaults, raised to what the adapter offers
/// for the limits that bound batch size and kernel shapes.
fn wanted_limits(adapter: &wgpu::Limits) -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size,
        max_buffer_size: adapter.max_buffer_size,
        max_compute_workgroup_storage_size: adapter.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: adapter.max_compute_invocations_per_workgroup,
        max_compute_workgroup_size_x: adapter.max_compute_workgroup_size_x,
        max_compute_workgroup_size_y: adapter.max_compute_workgroup_size_y,
        max_compute_workgroup_size_z: adapter.max_compute_workgroup_size_z,
        max_compute_workgroups_per_dimension: adapter.max_compute_workgroups_per_dimension,
        max_storage_buffers_per_shader_stage: adapter.max_storage_buffers_per_shader_stage,
        max_bind_groups: adapter.max_bind_groups,
        ..wgpu::Limits::default()
    }
}

async fn create_context(opts: &GpuOptions) -> Result<Context> {
    let adapter = choose_adapter(opts).await?;
    let info = adapter.get_info();
    let adapter_limits = adapter.limits();
    let required_limits = wanted_limits(&adapter_limits);
    anyhow::ensure!(
        adapter_limits.max_compute_invocations_per_workgroup >= 256
            && adapter_limits.max_compute_workgroup_storage_size >= 16384
            && adapter_limits.max_storage_buffers_per_shader_stage >= 6,
        "GPU adapter '{}' is too limited for lafam-gpu (needs 256 invocations per workgroup, \
         16 KiB workgroup memory, 6 storage buffers per stage)",
        info.name
    );
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("lafam-gpu"),
            required_features: wgpu::Features::empty(),
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
    let pipelines = Pipelines::new(&device)
        .with_context(|| format!("compiling the WGSL kernels on '{}'", info.name))?;
    Ok(Context {
        device,
        queue,
        info,
        limits,
        adapter_features,
        pipelines,
        errors,
    })
}
