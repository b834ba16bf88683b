//! Helpers shared by the integration tests.
#![allow(dead_code)]

use lafam_gpu::gpu::{Gpu, GpuOptions};
use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

pub fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("fixture manifest");
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// The GPU backend. Tests must FAIL, not skip, when CI has no adapter.
pub fn gpu() -> Gpu {
    Gpu::new(&GpuOptions::default()).expect("no GPU adapter: install mesa-vulkan-drivers + libvulkan1 (lavapipe)")
}

/// A float32 .npy file: (shape, data).
pub fn read_npy(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// An RGB8 fixture image: (bytes, h, w).
pub fn read_rgb(name: &str) -> (Vec<u8>, usize, usize) {
    let img = image::open(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}")).to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), h as usize, w as usize)
}
