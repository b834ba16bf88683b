//! Per-shape GFLOP/s of the GPU conv tiles (`cargo bench --bench conv_tiles`): every shape
//! below runs with the 64x64 tile forced, the 128x128 tile forced and under `Auto` (which
//! may take the 16x64 thin tile), interleaved, six runs each, the first dropped, median
//! reported. Random weights and inputs; the GPU is the one the tests use (`LAFAM_TEST_ADAPTER`
//! checks its name). `cargo bench --bench conv_tiles -- forward` or `-- transpose` runs one
//! half. docs/perf.md's tile tables come from these two lists.
//!
//! - forward (`conv2d`): a square plain GEMM (1x1 conv, M = N = K = 1024), a 3x3 conv
//!   (M = 1024, N = 256, K = 2304) and ResNet-50 shapes at 64x64, batch 8 (stem, layer1
//!   expand, layer3 3x3, layer4 expand); M = output pixels, N = cout;
//! - transpose (`conv_transpose`, the LRP and Grad-CAM backward): the same two square shapes
//!   and ResNet-50 backward shapes at 64x64, batch 8 (layer2's 3x3/2, layer1's 1x1 256->64
//!   and 64->256, layer4's 1x1/2 downsample and 3x3); M = input pixels, N = cin.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{gpu, random_conv, random_tensor};
use lafam_gpu::gpu::{ConvTiles, Gpu, GpuTensor};
use lafam_gpu::backend::LrpBackend;
use lafam_gpu::{Backend, Shape};

/// Median seconds of `op` (recorded and downloaded) with the 64x64 and the 128x128 tile
/// forced and under `Auto`, runs interleaved, the first of 6 dropped; `Auto` again after.
fn time_tiles(g: &mut Gpu, mut op: impl FnMut(&mut Gpu) -> GpuTensor) -> [(ConvTiles, f64); 3] {
    let tiles = [ConvTiles::Small, ConvTiles::Large, ConvTiles::Auto];
    let mut secs = [vec![], vec![], vec![]];
    for rep in 0..6 {
        for (i, &t) in tiles.iter().enumerate() {
            g.set_conv_tiles(t);
            let start = std::time::Instant::now();
            let y = op(g);
            g.download(&y).unwrap();
            if rep > 0 {
                secs[i].push(start.elapsed().as_secs_f64());
            }
        }
    }
    g.set_conv_tiles(ConvTiles::Auto);
    let mut medians = tiles.map(|t| (t, 0.0));
    for (m, v) in medians.iter_mut().zip(&mut secs) {
        v.sort_by(f64::total_cmp);
        m.1 = v[v.len() / 2];
    }
    medians
}

fn forward(g: &mut Gpu) {
    // (kernel, stride, cin, cout, batch, input side)
    let shapes = [
        (1usize, 1usize, 1024usize, 1024usize, 1usize, 32usize),
        (3, 1, 256, 256, 1, 32),
        (7, 2, 3, 64, 8, 64),
        (1, 1, 64, 256, 8, 16),
        (3, 1, 256, 256, 8, 4),
        (1, 1, 512, 2048, 8, 2),
    ];
    for (k, stride, cin, cout, n, side) in shapes {
        let layer = random_conv(cin, cout, k, stride, k / 2, 1600);
        let cg = g.prepare_conv(&layer).unwrap();
        let x = g
            .upload(&random_tensor(Shape::new(n, side, side, cin), -1.0, 1.0, 1601))
            .unwrap();
        let (ho, wo) = layer.out_size(side, side);
        let m = n * ho * wo;
        let gflop = 2.0 * (m * cout * k * k * cin) as f64 / 1e9;
        for (t, med) in time_tiles(g, |g| g.conv2d(&x, &cg, None, false).unwrap()) {
            println!(
                "conv {k}x{k}/{stride} {cin}->{cout} M={m} ({gflop:.3} GFLOP), tiles {t}: \
                 median {:.1} ms = {:.2} GFLOP/s (auto: {})",
                med * 1e3,
                gflop / med,
                g.conv_tile(m, cout)
            );
        }
    }
}

fn transpose(g: &mut Gpu) {
    // (kernel, stride, cin, cout, batch, input side)
    let shapes = [
        (1usize, 1usize, 1024usize, 1024usize, 1usize, 32usize),
        (3, 1, 256, 256, 1, 32),
        (3, 2, 128, 128, 8, 16),
        (1, 1, 256, 64, 8, 16),
        (1, 1, 64, 256, 8, 16),
        (1, 2, 1024, 2048, 8, 4),
        (3, 1, 512, 512, 8, 2),
    ];
    for (k, stride, cin, cout, n, side) in shapes {
        let layer = random_conv(cin, cout, k, stride, k / 2, 2300);
        let cg = g.prepare_conv(&layer).unwrap();
        let (ho, wo) = layer.out_size(side, side);
        let s = g
            .upload(&random_tensor(Shape::new(n, ho, wo, cout), -1.0, 1.0, 2301))
            .unwrap();
        let m = n * side * side;
        let in_shape = Shape::new(n, side, side, cin);
        let gflop = 2.0 * (n * ho * wo * cout * k * k * cin) as f64 / 1e9;
        let timed = time_tiles(g, |g| {
            g.conv_transpose(&s, &cg, side, side, None, 1.0, None)
                .unwrap()
        });
        for (t, med) in timed {
            println!(
                "conv_transpose {k}x{k}/{stride} {cin}<-{cout} M={m} N={cin} ({gflop:.3} GFLOP), \
                 tiles {t}: median {:.1} ms = {:.2} GFLOP/s (auto: {})",
                med * 1e3,
                gflop / med,
                g.conv_transpose_tile(in_shape, stride)
            );
        }
    }
}

fn main() {
    // cargo passes `--bench` (and any filter) to harness=false benches.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    // Headless: keep Mesa's device-select layer quiet, as the binary does.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() && std::env::var_os("NODEVICE_SELECT").is_none() {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
    let mut g = gpu();
    println!("adapter: {}", g.adapter_summary());
    if wants("forward") {
        forward(&mut g);
    }
    if wants("transpose") {
        transpose(&mut g);
    }
}
