//! lafam-gpu: label-free feature attribution maps (LaFAM, LaFAM-LRP) for ResNet backbones,
//! computed by hand-written WGSL kernels through wgpu, with a CPU twin for parity.
//!
//! Layout (one job per module):
//! - [`tensor`]: host tensors (NHWC f32) and error measures used by tests.
//! - [`backend`]: the op set every backend implements; methods are written once over it.
//! - [`model`]: safetensors -> ResNet spec (key normalisation, depth/width detection, BN folding)
//!   and the generic forward pass.
//! - [`gpu`]: wgpu context, pipelines (WGSL in `shaders/`), lazy command recording.
//! - [`cpu`]: the same ops in plain Rust (rayon + gemm), the reference for tests.
//! - [`explain`]: the attribution methods.
//! - [`io`]: image decoding/resizing, .npy, colormaps, overlays, atomic writes.
//! - [`checkpoint`]: PyTorch checkpoints without Python (audited unpickler, zip and legacy
//!   formats), known models by name with a download cache.
//! - [`eval`]: localisation metrics (Quantus 0.6.0 semantics), dataset readers, reports.
//! - [`cli`]: clap subcommands (`run`, `info`, `bench`, `eval`).

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod cpu;
pub mod eval;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod io;
pub mod model;
pub mod tensor;

pub use backend::{Backend, Upsample};
pub use tensor::{HostTensor, Shape};
