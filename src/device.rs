//! Choosing and opening a compute backend: `auto` (a hardware GPU if there is one, else the
//! CPU), `gpu` (any adapter, software ones included), `cpu`. Code that is generic over the
//! backend runs on the chosen one through [`with_backend!`](crate::with_backend).

use crate::cpu::Cpu;
use crate::gpu::{ConvTiles, Gpu, GpuOptions};
use crate::Backend;
use anyhow::{Context, Result};

/// Which compute backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// A hardware GPU if wgpu finds one, otherwise the CPU (the choice and why are printed).
    /// Software GPUs (lavapipe, SwiftShader, WARP) are slower than the CPU backend and only
    /// used when named through WGPU_ADAPTER_NAME.
    #[default]
    Auto,
    /// The GPU through wgpu (Vulkan, Metal, DX12), software adapters included; an error if
    /// there is no adapter.
    Gpu,
    /// The CPU backend (multi-threaded; the reference implementation).
    Cpu,
}

impl BackendChoice {
    pub const ALL: [BackendChoice; 3] = [BackendChoice::Auto, BackendChoice::Gpu, BackendChoice::Cpu];
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Gpu => "gpu",
            BackendChoice::Cpu => "cpu",
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BackendChoice::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown backend '{s}' (known: auto, gpu, cpu)"))
    }
}

/// The backend a command runs on.
pub enum AnyBackend {
    Gpu(Box<Gpu>),
    Cpu(Cpu),
}

impl AnyBackend {
    /// "gpu" or "cpu".
    pub fn kind(&self) -> &'static str {
        match self {
            AnyBackend::Gpu(_) => "gpu",
            AnyBackend::Cpu(_) => "cpu",
        }
    }
    /// One line for `backend: ...` on stderr.
    pub fn describe(&self) -> String {
        match self {
            AnyBackend::Gpu(g) => format!("gpu: {}", g.adapter_summary()),
            AnyBackend::Cpu(c) => c.name(),
        }
    }
    /// Adapter limits (GPU) or the CPU's tensor limit, for `info`.
    pub fn limits(&self) -> Vec<(String, String)> {
        match self {
            AnyBackend::Gpu(g) => g.limits_summary(),
            AnyBackend::Cpu(c) => {
                vec![("max_tensor_bytes".into(), c.max_tensor_bytes().to_string())]
            }
        }
    }
}

/// Runs `$body` with `$b` bound to the concrete backend (moved out of `$any`).
#[macro_export]
#[doc(hidden)]
macro_rules! with_backend {
    ($any:expr, $b:ident => $body:expr) => {
        match $any {
            $crate::device::AnyBackend::Gpu($b) => {
                let $b = *$b;
                $body
            }
            $crate::device::AnyBackend::Cpu($b) => $body,
        }
    };
}

/// Opens the chosen backend. With `Auto`, a failure to open the GPU falls back to the CPU;
/// the returned note says why (for the `backend:` line). A malformed `LAFAM_GPU_TILES` is a
/// usage error, not a reason to fall back.
pub fn open_backend(choice: BackendChoice) -> Result<(AnyBackend, Option<String>)> {
    match choice {
        BackendChoice::Cpu => Ok((AnyBackend::Cpu(make_cpu()?), None)),
        BackendChoice::Gpu => {
            let gpu = Gpu::new(&GpuOptions::default()).context("--backend gpu")?;
            Ok((AnyBackend::Gpu(Box::new(gpu)), None))
        }
        BackendChoice::Auto => {
            ConvTiles::from_env()?;
            let opts = GpuOptions {
                hardware_only: true,
                ..GpuOptions::default()
            };
            match Gpu::new(&opts) {
                Ok(gpu) => {
                    let why = if gpu.is_software() {
                        "auto: named by WGPU_ADAPTER_NAME"
                    } else {
                        "auto: a hardware GPU"
                    };
                    Ok((AnyBackend::Gpu(Box::new(gpu)), Some(why.into())))
                }
                Err(e) => {
                    let mut why = format!("auto: {e:#}");
                    if why.starts_with(&format!("auto: {}", crate::gpu::SOFTWARE_ONLY)) {
                        why.push_str("; --backend gpu uses one anyway");
                    }
                    Ok((AnyBackend::Cpu(make_cpu()?), Some(why)))
                }
            }
        }
    }
}

fn make_cpu() -> Result<Cpu> {
    Ok(Cpu::new())
}
