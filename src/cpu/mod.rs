//! CPU backend: the same ops as the GPU in plain Rust (rayon + gemm). The reference for tests.
//! (stub: being written)
