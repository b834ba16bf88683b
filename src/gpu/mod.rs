//! GPU backend over wgpu: WGSL kernels in `shaders/`, lazy command recording. (stub)
