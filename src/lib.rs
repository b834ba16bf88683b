//! lafam-gpu: label-free feature attribution maps (LaFAM, LaFAM-LRP) for ResNet backbones,
//! computed by hand-written WGSL kernels through wgpu, with a CPU twin for parity.
//!
//! Layout (one job per module):
//! - [`tensor`]: host tensors (NHWC f32) and error measures used by tests.
//! - [`ops`]: what an op is, backend-free (a leaf): conv/pool geometry, resampling modes,
//!   ImageNet constants, the shape rules both backends enforce, the RELAX mask generator.
//! - [`backend`]: the op set every backend implements; methods are written once over it.
//! - [`model`]: safetensors -> ResNet spec (key normalisation, depth/width detection, BN folding)
//!   and sizes.
//! - [`gpu`]: wgpu context, pipelines (WGSL in `shaders/`), lazy command recording.
//! - [`cpu`]: the same ops in plain Rust (rayon + gemm), the reference for tests.
//! - [`explain`]: the attribution methods.
//! - [`io`]: image decoding/resizing, .npy, colormaps, overlays, atomic writes.
//! - [`checkpoint`]: PyTorch checkpoints without Python (audited unpickler, zip and legacy
//!   formats), known models by name with a download cache.
//! - [`eval`]: localisation metrics (Quantus 0.6.0 semantics), dataset readers, reports.
//! - [`stream`]: image files decoded, batched by size and streamed through an engine.
//! - [`device`]: choosing and opening a backend (`auto`, `gpu`, `cpu`).
//! - [`explainer`]: the front door, [`Explainer::open`] then [`Explainer::explain`].
//! - [`atlas`]: the concept atlas (top samples per channel, receptive-field crops).
//! - [`cli`]: clap subcommands (`run`, `info`, `bench`, `eval`, `atlas`, `convert`): argument parsing
//!   and output sinks only.

pub mod atlas;
pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod cpu;
pub mod device;
pub mod eval;
pub mod explain;
pub mod explainer;
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
pub mod io;
pub mod model;
pub mod ops;
pub mod serve;
pub mod stream;
pub mod tensor;

pub use backend::{Backend, Upsample};
pub use device::BackendChoice;
pub use explain::{Composite, Method, MethodMaps};
pub use explainer::{Explainer, Options};
pub use model::Stage;
pub use tensor::{HostTensor, Shape};
