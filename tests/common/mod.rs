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

/// The GPU backend. Tests must FAIL, not skip, when CI has no adapter. With
/// `LAFAM_TEST_ADAPTER` set (CI's SwiftShader and validation passes), the adapter's name must
/// contain it: a pass meant for one driver cannot silently run on another.
pub fn gpu() -> Gpu {
    let gpu = Gpu::new(&GpuOptions::default())
        .expect("no GPU adapter: install mesa-vulkan-drivers + libvulkan1 (lavapipe)");
    if let Ok(want) = std::env::var("LAFAM_TEST_ADAPTER") {
        let name = gpu.adapter_summary();
        assert!(
            name.to_lowercase().contains(&want.to_lowercase()),
            "LAFAM_TEST_ADAPTER={want} but the adapter is {name}"
        );
    }
    gpu
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
    let img = image::open(fixtures().join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .to_rgb8();
    let (w, h) = img.dimensions();
    (img.into_raw(), h as usize, w as usize)
}

/// A random conv layer (weights ~ U(-1,1)/sqrt(fan_in), bias ~ U(-0.1,0.1)).
pub fn random_conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    seed: u64,
) -> lafam_gpu::model::ConvLayer {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let scale = 1.0 / ((k * k * cin) as f32).sqrt();
    lafam_gpu::model::ConvLayer {
        name: format!("test conv {k}x{k}/{stride} p{pad} {cin}->{cout}"),
        cin,
        cout,
        kh: k,
        kw: k,
        stride,
        pad,
        weight: (0..k * k * cin * cout)
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect(),
        bias: (0..cout).map(|_| rng.random_range(-0.1..0.1)).collect(),
    }
}

/// A random NHWC tensor with values in [lo, hi).
pub fn random_tensor(
    shape: lafam_gpu::Shape,
    lo: f32,
    hi: f32,
    seed: u64,
) -> lafam_gpu::HostTensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    lafam_gpu::HostTensor::new(
        shape,
        (0..shape.len()).map(|_| rng.random_range(lo..hi)).collect(),
    )
}

/// Every (kernel, stride, padding) a ResNet uses.
pub const RESNET_CONVS: [(usize, usize, usize); 5] =
    [(7, 2, 3), (3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0)];

/// Bound for f32 GPU-vs-CPU parity (max |Δ| / max |cpu|).
pub const PARITY_TOL: f64 = 1e-4;

/// Asserts `max_rel_err(got, want) <= PARITY_TOL` with equal shapes; returns the error.
pub fn check_parity(label: &str, got: &lafam_gpu::HostTensor, want: &lafam_gpu::HostTensor) -> f64 {
    assert_eq!(got.shape, want.shape, "{label}: shape");
    let err = lafam_gpu::tensor::max_rel_err(&got.data, &want.data);
    assert!(
        err <= PARITY_TOL,
        "{label}: max rel err {err:e} > {PARITY_TOL:e}"
    );
    err
}

/// At most this share of a map's pixels may be excluded from an LRP comparison (chelsea on
/// SwiftShader: 1.1%), so the exclusion cannot hide a broad difference.
pub const MAX_EXCLUDED: f64 = 0.10;

/// An LRP comparison (`lafam_gpu::explain::ties::compare_lrp`) passes: the forward tensors
/// and, on every pixel, the backward on the same forward within the parity tolerance (max
/// relative error); the maps too, without the pixels the forward's rounding moves through
/// LRP's ill-conditioned places. Returns the map's error.
pub fn check_lrp_parity(label: &str, cmp: &lafam_gpu::explain::ties::LrpComparison) -> f64 {
    use lafam_gpu::explain::ties::max_rel_err_excluding;
    use lafam_gpu::tensor::max_rel_err;
    assert!(
        cmp.forward_err <= PARITY_TOL,
        "{label}: forward tensors' max rel err {:e}",
        cmp.forward_err
    );
    let backward = max_rel_err(&cmp.other, &cmp.reference_on_other_forward);
    assert!(
        backward <= PARITY_TOL,
        "{label}: backward on the same forward, max rel err {backward:e}"
    );
    let share = cmp.excluded_share();
    assert!(
        share <= MAX_EXCLUDED,
        "{label}: {:.1}% of pixels excluded",
        100.0 * share
    );
    let err = max_rel_err_excluding(&cmp.other, &cmp.reference, &cmp.excluded);
    assert!(
        err <= PARITY_TOL,
        "{label}: max rel err {err:e} ({:.2}% of pixels excluded)",
        100.0 * share
    );
    err
}

/// `t` uploaded behind `off` junk elements and returned as a view at element offset `off`,
/// so kernels are exercised on unaligned tensor views.
pub fn gpu_view(g: &mut Gpu, t: &lafam_gpu::HostTensor, off: usize) -> lafam_gpu::gpu::GpuTensor {
    use lafam_gpu::Backend;
    let mut data: Vec<f32> = (0..off).map(|i| 1e3 + i as f32).collect();
    data.extend_from_slice(&t.data);
    let whole = g
        .upload(&lafam_gpu::HostTensor::new(
            lafam_gpu::Shape::new(1, 1, 1, data.len()),
            data,
        ))
        .unwrap();
    lafam_gpu::gpu::GpuTensor {
        buffer: whole.buffer,
        offset: off,
        shape: t.shape,
    }
}
