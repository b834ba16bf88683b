//! GPU-vs-CPU parity, op by op: every kernel against the CPU backend (the single reference),
//! with odd sizes, batches, per-image views (element offsets) and every conv shape a ResNet
//! uses. Runs on whatever adapter wgpu finds (lavapipe in CI) and FAILS when there is none.

mod common;

use common::{check_parity, gpu, gpu_view, random_conv, random_tensor, RESNET_CONVS};
use lafam_gpu::backend::Pool;
use lafam_gpu::cpu::Cpu;
use lafam_gpu::explain::ImageBatch;
use lafam_gpu::explain::{Engine, Method};
use lafam_gpu::gpu::{ConvTiles, Gpu};
use lafam_gpu::model::{Block, BlockKind, ConvLayer, Heads, ResNet, Stage};
use lafam_gpu::{Backend, HostTensor, Shape, Upsample};

/// Runs `op` on both backends with the same host inputs and compares.
fn parity(
    label: &str,
    g: &mut Gpu,
    c: &mut Cpu,
    inputs: &[&HostTensor],
    op_g: impl FnOnce(&mut Gpu, &[<Gpu as Backend>::Tensor]) -> <Gpu as Backend>::Tensor,
    op_c: impl FnOnce(&mut Cpu, &[<Cpu as Backend>::Tensor]) -> <Cpu as Backend>::Tensor,
) -> f64 {
    let xg: Vec<_> = inputs.iter().map(|t| g.upload(t).unwrap()).collect();
    let xc: Vec<_> = inputs.iter().map(|t| c.upload(t).unwrap()).collect();
    let yg = op_g(g, &xg);
    let yc = op_c(c, &xc);
    let got = g.download(&yg).unwrap();
    let want = c.download(&yc).unwrap();
    check_parity(label, &got, &want)
}

/// How a conv case feeds its operands.
#[derive(Clone, Copy, Debug)]
enum ConvCase {
    /// The whole batch, with or without a residual and a ReLU.
    Batch { residual: bool, relu: bool },
    /// Image 1 of the input batch and image 2 of the residual batch (per-image views at
    /// element offsets), ReLU on.
    Images,
    /// Input and residual uploaded at these element offsets (unaligned views), ReLU on.
    Offsets([usize; 2]),
}

/// Every epilogue on the whole batch.
const EPILOGUES: [ConvCase; 4] = [
    ConvCase::Batch {
        residual: false,
        relu: false,
    },
    ConvCase::Batch {
        residual: false,
        relu: true,
    },
    ConvCase::Batch {
        residual: true,
        relu: false,
    },
    ConvCase::Batch {
        residual: true,
        relu: true,
    },
];

/// `layer` on both backends for `n` images of `h`x`w` (input and residual drawn from `seed`),
/// once per case; asserts parity and returns the worst error.
fn conv_cases(
    g: &mut Gpu,
    c: &mut Cpu,
    layer: &ConvLayer,
    (n, h, w): (usize, usize, usize),
    cases: &[ConvCase],
    seed: u64,
    what: &str,
) -> f64 {
    let cg = g.prepare_conv(layer).unwrap();
    let cc = c.prepare_conv(layer).unwrap();
    let (ho, wo) = layer.out_size(h, w);
    let x = random_tensor(Shape::new(n, h, w, layer.cin), -1.0, 1.0, seed);
    let r = random_tensor(Shape::new(n, ho, wo, layer.cout), -1.0, 1.0, seed + 1);
    let (xc, rc) = (c.upload(&x).unwrap(), c.upload(&r).unwrap());
    let mut worst = 0f64;
    for &case in cases {
        let label = format!("{what}{} {n}x{h}x{w} {case:?}", layer.name);
        let (yg, yc) = match case {
            ConvCase::Batch { residual, relu } => {
                let (xg, rg) = (g.upload(&x).unwrap(), g.upload(&r).unwrap());
                (
                    g.conv2d(&xg, &cg, residual.then_some(&rg), relu).unwrap(),
                    c.conv2d(&xc, &cc, residual.then_some(&rc), relu).unwrap(),
                )
            }
            ConvCase::Images => {
                let (xg, rg) = (g.upload(&x).unwrap(), g.upload(&r).unwrap());
                let (xi, ri) = (g.image(&xg, 1), g.image(&rg, 2));
                let yg = g.conv2d(&xi, &cg, Some(&ri), true).unwrap();
                let (xi, ri) = (c.image(&xc, 1), c.image(&rc, 2));
                (yg, c.conv2d(&xi, &cc, Some(&ri), true).unwrap())
            }
            ConvCase::Offsets(offs) => {
                let (xg, rg) = (gpu_view(g, &x, offs[0]), gpu_view(g, &r, offs[1]));
                (
                    g.conv2d(&xg, &cg, Some(&rg), true).unwrap(),
                    c.conv2d(&xc, &cc, Some(&rc), true).unwrap(),
                )
            }
        };
        let err = check_parity(&label, &g.download(&yg).unwrap(), &c.download(&yc).unwrap());
        worst = worst.max(err);
    }
    worst
}

#[test]
fn conv2d_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let mut cases = 0;
    // (cin, cout): scalar paths (3, 5), odd sizes over two N tiles (37, 70), vec4 paths (16, 12),
    // and conv2d_narrow (cout <= 4): scalar (3, 1), vec4 (16, 4).
    let channels = [(3usize, 5usize), (37, 70), (16, 12), (3, 1), (16, 4)];
    for (ci, &(cin, cout)) in channels.iter().enumerate() {
        for (ki, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
            let layer = random_conv(cin, cout, k, stride, pad, (ci * 10 + ki) as u64);
            for n in [1usize, 3] {
                let err = conv_cases(
                    &mut g,
                    &mut c,
                    &layer,
                    (n, 13, 9),
                    &EPILOGUES,
                    100 + cases,
                    "",
                );
                worst = worst.max(err);
                cases += 4;
            }
            let err = conv_cases(
                &mut g,
                &mut c,
                &layer,
                (3, 13, 9),
                &[ConvCase::Images],
                300 + cases,
                "",
            );
            worst = worst.max(err);
            cases += 1;
        }
    }
    // Several M, N and K tiles on the vec4 and plain-GEMM paths.
    for &(k, stride, pad) in &[(3, 1, 1), (1, 1, 0)] {
        let layer = random_conv(64, 96, k, stride, pad, 77);
        let err = conv_cases(
            &mut g,
            &mut c,
            &layer,
            (2, 17, 11),
            &EPILOGUES[1..2],
            78,
            "",
        );
        worst = worst.max(err);
        cases += 1;
    }
    eprintln!("conv2d: {cases} cases, max rel err {worst:e}");
}

/// The 128x128-tile kernel (`conv2d_large`) forced on, vs the CPU: every ResNet conv shape with
/// scalar A and B (3 -> 5), odd channel counts over two N tiles with partial K tiles (cin 37:
/// K = 37 k^2, never a multiple of 8) and scalar (150) or vec4 (200) B, vec4 A (64), several M
/// tiles (2 images 17x23: M = 782 at stride 1), plain GEMM (1x1/1), every epilogue, and an
/// input and residual at element offsets (image 1 and 2 of 3).
#[test]
fn conv2d_large_tiles_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    g.set_conv_tiles(ConvTiles::Large);
    let mut worst = 0f64;
    let mut cases = 0u64;
    let channels = [(3usize, 5usize), (37, 150), (37, 200), (64, 150), (64, 200)];
    for (ki, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
        for (ci, &(cin, cout)) in channels.iter().enumerate() {
            let layer = random_conv(cin, cout, k, stride, pad, 900 + (ki * 10 + ci) as u64);
            let (h, w) = (17, 23);
            let (ho, wo) = layer.out_size(h, w);
            assert_eq!(g.conv_tile(2 * ho * wo, cout), 128);
            let what = "large tiles: ";
            let seed = 1000 + cases;
            worst = worst.max(conv_cases(
                &mut g,
                &mut c,
                &layer,
                (2, h, w),
                &EPILOGUES,
                seed,
                what,
            ));
            let images = [ConvCase::Images];
            worst = worst.max(conv_cases(
                &mut g,
                &mut c,
                &layer,
                (3, h, w),
                &images,
                seed + 2,
                what,
            ));
            cases += 5;
        }
    }
    // A long reduction (K = 2304, 288 K tiles) over 4 M and 2 N tiles, im2col and plain GEMM.
    for &(k, pad) in &[(3usize, 1usize), (1, 0)] {
        let layer = random_conv(256, 256, k, 1, pad, 1400);
        let err = conv_cases(
            &mut g,
            &mut c,
            &layer,
            (2, 14, 14),
            &EPILOGUES[1..2],
            1401,
            "large tiles: ",
        );
        worst = worst.max(err);
        cases += 1;
    }
    eprintln!("conv2d (128x128 tiles): {cases} cases, max rel err {worst:e}");
}

/// The 16x64 tile (`conv2d_thin`, GEMMs of at most 32 output pixels under `Auto`): every ResNet
/// conv shape on inputs of 4-30 output pixels, scalar and vec4 paths, N over one to three tiles,
/// K over several tiles, every epilogue, and views at unaligned offsets.
#[test]
fn conv2d_thin_tiles_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    g.set_conv_tiles(ConvTiles::Auto);
    let mut worst = 0f64;
    let mut cases = 0u64;
    let channels = [(3usize, 5usize), (37, 70), (16, 12), (64, 136)];
    let thin_cases = [EPILOGUES[0], EPILOGUES[3], ConvCase::Offsets([3, 1])];
    for (ci, &(cin, cout)) in channels.iter().enumerate() {
        for (ki, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
            let layer = random_conv(cin, cout, k, stride, pad, 1700 + (ci * 10 + ki) as u64);
            for &(n, h, w) in &[(1usize, 4usize, 4usize), (1, 5, 6), (2, 4, 4)] {
                let (ho, wo) = layer.out_size(h, w);
                let m = n * ho * wo;
                assert_eq!(g.conv_tile(m, cout), 16, "{m} rows take the thin tile");
                let seed = 1800 + cases;
                let err = conv_cases(
                    &mut g,
                    &mut c,
                    &layer,
                    (n, h, w),
                    &thin_cases,
                    seed,
                    "16x64: ",
                );
                worst = worst.max(err);
                cases += thin_cases.len() as u64;
            }
        }
    }
    eprintln!("conv2d (16x64 tiles): {cases} cases, worst max rel err {worst:e}");
}

/// `LAFAM_GPU_TILES` parsing (tested on the parser: the environment is process-wide and tests
/// run in parallel), the `Auto` rule, and the setter: both tiles give the same conv.
#[test]
fn conv_tile_policy() {
    use wgpu::DeviceType::{Cpu as CpuDevice, DiscreteGpu};
    for (v, want) in [
        (None, ConvTiles::Auto),
        (Some(""), ConvTiles::Auto),
        (Some("auto"), ConvTiles::Auto),
        (Some("AUTO"), ConvTiles::Auto),
        (Some("64"), ConvTiles::Small),
        (Some(" 128 "), ConvTiles::Large),
    ] {
        assert_eq!(ConvTiles::from_env_value(v).unwrap(), want, "{v:?}");
    }
    for bad in ["256", "large", "64x64", "0", "12 8"] {
        let err = ConvTiles::from_env_value(Some(bad))
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"))
            .to_string();
        assert!(
            err.contains("LAFAM_GPU_TILES") && err.contains("auto, 64, 128") && err.contains(bad),
            "{err}"
        );
    }
    for t in [ConvTiles::Auto, ConvTiles::Small, ConvTiles::Large] {
        let shown = t.to_string();
        assert_eq!(ConvTiles::from_env_value(Some(&shown)).unwrap(), t);
    }
    // Auto: on a GPU for ResNet-50 at batch 64, 224x224 (M, N); on a CPU adapter whenever
    // M and N are at least 128.
    let r50 = |m_side: usize, n: usize| (64 * m_side * m_side, n);
    for ((m, n), want) in [
        (r50(112, 64), 64),   // stem: n < 128
        (r50(56, 64), 64),    // layer1 3x3: n < 128
        (r50(56, 256), 128),  // layer1 1x1 expand: 3136 tiles
        (r50(28, 128), 128),  // layer2 3x3: 392 tiles
        (r50(14, 256), 64),   // layer3 3x3: 196 tiles < 264
        (r50(14, 1024), 128), // layer3 1x1 expand: 784 tiles
        (r50(7, 512), 64),    // layer4 3x3: 100 tiles
        (r50(7, 2048), 128),  // layer4 1x1 expand: 400 tiles
        ((100, 4096), 64),    // m < 128
        ((49, 512), 64),      // layer4 at batch 1, 224x224: 49 rows fill 77% of a 64 tile
        ((32, 2048), 16),     // m <= 32: the 16x64 tile
        ((16, 256), 16),      // layer3 at batch 1, 64x64
        ((4, 512), 16),       // layer4 at batch 1, 64x64
    ] {
        assert_eq!(ConvTiles::Auto.tile(DiscreteGpu, m, n), want, "{m}x{n}");
        let on_cpu = match (m, n) {
            _ if m <= 32 => 16,
            _ if m >= 128 && n >= 128 => 128,
            _ => 64,
        };
        assert_eq!(
            ConvTiles::Auto.tile(CpuDevice, m, n),
            on_cpu,
            "{m}x{n} on a CPU"
        );
        assert_eq!(ConvTiles::Small.tile(DiscreteGpu, m, n), 64);
        assert_eq!(ConvTiles::Large.tile(CpuDevice, m, n), 128);
    }

    let (mut g, mut c) = (gpu(), Cpu::new());
    assert_eq!(g.conv_tiles(), ConvTiles::from_env().unwrap());
    let layer = random_conv(64, 200, 3, 1, 1, 1500);
    let (cg, cc) = (
        g.prepare_conv(&layer).unwrap(),
        c.prepare_conv(&layer).unwrap(),
    );
    let x = random_tensor(Shape::new(2, 17, 23, 64), -1.0, 1.0, 1501);
    let xg = g.upload(&x).unwrap();
    let xc = c.upload(&x).unwrap();
    let yc = c.conv2d(&xc, &cc, None, true).unwrap();
    let want = c.download(&yc).unwrap();
    let mut got = Vec::new();
    for (t, edge) in [(ConvTiles::Small, 64), (ConvTiles::Large, 128)] {
        g.set_conv_tiles(t);
        assert_eq!(g.conv_tiles(), t);
        assert_eq!(g.conv_tile(2 * 17 * 23, 200), edge);
        let y = g.conv2d(&xg, &cg, None, true).unwrap();
        let y = g.download(&y).unwrap();
        check_parity(&format!("conv with tiles {t}"), &y, &want);
        got.push(y);
    }
    check_parity("64 vs 128 tiles", &got[1], &got[0]);
}

#[test]
fn conv2d_rejects_bad_shapes() {
    let mut g = gpu();
    let layer = random_conv(4, 8, 3, 1, 1, 1);
    let cg = g.prepare_conv(&layer).unwrap();
    let x = g
        .upload(&HostTensor::zeros(Shape::new(1, 5, 5, 5)))
        .unwrap();
    assert!(g.conv2d(&x, &cg, None, false).is_err(), "channel mismatch");
    let x = g
        .upload(&HostTensor::zeros(Shape::new(1, 5, 5, 4)))
        .unwrap();
    let bad = g
        .upload(&HostTensor::zeros(Shape::new(1, 5, 4, 8)))
        .unwrap();
    assert!(
        g.conv2d(&x, &cg, Some(&bad), false).is_err(),
        "residual shape"
    );
    let big = random_conv(4, 8, 7, 1, 0, 2);
    let cbig = g.prepare_conv(&big).unwrap();
    assert!(
        g.conv2d(&x, &cbig, None, false).is_err(),
        "input smaller than kernel"
    );
    // The GPU is still usable afterwards.
    let y = g.conv2d(&x, &cg, None, true).unwrap();
    assert_eq!(g.download(&y).unwrap().shape, Shape::new(1, 5, 5, 8));
}

#[test]
fn max_pool_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let pools = [
        Pool::RESNET_STEM,
        Pool {
            kernel: 2,
            stride: 2,
            pad: 0,
        },
        Pool {
            kernel: 3,
            stride: 1,
            pad: 1,
        },
    ];
    for (i, &pool) in pools.iter().enumerate() {
        for &shape in &[Shape::new(3, 13, 9, 5), Shape::new(1, 16, 16, 64)] {
            // Negative inputs make the -inf padding matter.
            let x = random_tensor(shape, -2.0, -0.5, i as u64);
            let err = parity(
                &format!("max_pool {pool:?} {shape}"),
                &mut g,
                &mut c,
                &[&x],
                |g, t| g.max_pool(&t[0], pool).unwrap(),
                |c, t| c.max_pool(&t[0], pool).unwrap(),
            );
            worst = worst.max(err);
        }
    }
    let x = random_tensor(Shape::new(3, 13, 9, 5), -1.0, 1.0, 9);
    worst = worst.max(parity(
        "max_pool on image 2 of 3",
        &mut g,
        &mut c,
        &[&x],
        |g, t| {
            let v = g.image(&t[0], 2);
            g.max_pool(&v, Pool::RESNET_STEM).unwrap()
        },
        |c, t| {
            let v = c.image(&t[0], 2);
            c.max_pool(&v, Pool::RESNET_STEM).unwrap()
        },
    ));
    eprintln!("max_pool: max rel err {worst:e}");
}

#[test]
fn channel_mean_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    for (i, &shape) in [
        Shape::new(3, 13, 9, 37),
        Shape::new(2, 7, 7, 64),
        Shape::new(1, 5, 3, 1),
    ]
    .iter()
    .enumerate()
    {
        let x = random_tensor(shape, -1.0, 2.0, i as u64);
        worst = worst.max(parity(
            &format!("channel_mean {shape}"),
            &mut g,
            &mut c,
            &[&x],
            |g, t| g.channel_mean(&t[0]).unwrap(),
            |c, t| c.channel_mean(&t[0]).unwrap(),
        ));
    }
    let x = random_tensor(Shape::new(3, 13, 9, 37), 0.0, 1.0, 5);
    worst = worst.max(parity(
        "channel_mean on image 1 of 3",
        &mut g,
        &mut c,
        &[&x],
        |g, t| {
            let v = g.image(&t[0], 1);
            g.channel_mean(&v).unwrap()
        },
        |c, t| {
            let v = c.image(&t[0], 1);
            c.channel_mean(&v).unwrap()
        },
    ));
    eprintln!("channel_mean: max rel err {worst:e}");
}

/// The channel max (LaFAM-max) is exact: the GPU's must equal the CPU's bit for bit, on a
/// view too, with all-negative channels (the max starts at -inf, not 0).
#[test]
fn channel_max_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    for (i, &(shape, lo, hi)) in [
        (Shape::new(3, 13, 9, 37), -1.0, 2.0),
        (Shape::new(2, 7, 7, 64), -3.0, -1.0),
        (Shape::new(1, 5, 3, 1), -1.0, 1.0),
    ]
    .iter()
    .enumerate()
    {
        let x = random_tensor(shape, lo, hi, 20 + i as u64);
        for view in [None, Some(shape.n - 1)] {
            let xg = g.upload(&x).unwrap();
            let xc = c.upload(&x).unwrap();
            let (xg, xc) = match view {
                Some(j) => (g.image(&xg, j), c.image(&xc, j)),
                None => (xg, xc),
            };
            let mg = g.channel_max(&xg).unwrap();
            let mc = c.channel_max(&xc).unwrap();
            let got = g.download(&mg).unwrap();
            let want = c.download(&mc).unwrap();
            assert_eq!(got.shape, want.shape, "channel_max {shape} view {view:?}");
            assert_eq!(got.data, want.data, "channel_max {shape} view {view:?}");
            if lo < 0.0 && hi < 0.0 {
                assert!(want.data.iter().all(|&v| v < 0.0), "max of negatives is negative");
            }
        }
    }
}

#[test]
fn minmax_normalise_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    for (i, &shape) in [
        Shape::new(3, 13, 9, 1),
        Shape::new(2, 5, 4, 7),
        Shape::new(1, 40, 33, 1),
    ]
    .iter()
    .enumerate()
    {
        let x = random_tensor(shape, -3.0, 5.0, 10 + i as u64);
        worst = worst.max(parity(
            &format!("minmax {shape}"),
            &mut g,
            &mut c,
            &[&x],
            |g, t| g.minmax_normalise(&t[0]).unwrap(),
            |c, t| c.minmax_normalise(&t[0]).unwrap(),
        ));
    }
    // A constant image (max == min) next to a varying one; then a view.
    let mut x = random_tensor(Shape::new(2, 6, 5, 1), 0.0, 1.0, 20);
    x.data[..30].fill(0.25);
    worst = worst.max(parity(
        "minmax with a constant image",
        &mut g,
        &mut c,
        &[&x],
        |g, t| g.minmax_normalise(&t[0]).unwrap(),
        |c, t| c.minmax_normalise(&t[0]).unwrap(),
    ));
    worst = worst.max(parity(
        "minmax on image 1 of 2",
        &mut g,
        &mut c,
        &[&x],
        |g, t| {
            let v = g.image(&t[0], 1);
            g.minmax_normalise(&v).unwrap()
        },
        |c, t| {
            let v = c.image(&t[0], 1);
            c.minmax_normalise(&v).unwrap()
        },
    ));
    eprintln!("minmax_normalise: max rel err {worst:e}");
}

#[test]
fn resize_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    for mode in [Upsample::Nearest, Upsample::Bilinear] {
        let mut worst = 0f64;
        // (input h, w, c) -> (output h, w): up, down, non-square, identity, non-integer ratios.
        let cases = [
            ((7, 5, 1), (48, 40)),
            ((13, 9, 3), (4, 3)),
            ((8, 8, 1), (8, 8)),
            ((6, 6, 2), (13, 13)),
            ((7, 7, 1), (224, 224)),
            ((56, 40, 1), (17, 23)),
            ((3, 11, 4), (10, 2)),
        ];
        for (i, &((h, w, ch), (ho, wo))) in cases.iter().enumerate() {
            let x = random_tensor(Shape::new(2, h, w, ch), -1.0, 1.0, 30 + i as u64);
            worst = worst.max(parity(
                &format!("resize {mode:?} {h}x{w}x{ch} -> {ho}x{wo}"),
                &mut g,
                &mut c,
                &[&x],
                |g, t| g.resize(&t[0], ho, wo, mode).unwrap(),
                |c, t| c.resize(&t[0], ho, wo, mode).unwrap(),
            ));
        }
        let x = random_tensor(Shape::new(3, 7, 5, 1), 0.0, 1.0, 40);
        worst = worst.max(parity(
            &format!("resize {mode:?} on image 2 of 3"),
            &mut g,
            &mut c,
            &[&x],
            |g, t| {
                let v = g.image(&t[0], 2);
                g.resize(&v, 31, 19, mode).unwrap()
            },
            |c, t| {
                let v = c.image(&t[0], 2);
                c.resize(&v, 31, 19, mode).unwrap()
            },
        ));
        eprintln!("resize {mode:?}: max rel err {worst:e}");
    }
}

#[test]
fn preprocess_matches_cpu() {
    use rand::{Rng, SeedableRng};
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut worst = 0f64;
    // 13x9x3 = 351 bytes per image: the last u32 word is partial.
    for &(n, h, w) in &[(1usize, 13usize, 9usize), (3, 13, 9), (2, 16, 20)] {
        let mut rgb: Vec<u8> = (0..n * h * w * 3).map(|_| rng.random()).collect();
        rgb[0] = 0;
        rgb[1] = 255;
        let got = {
            let t = g.preprocess(&rgb, n, h, w).unwrap();
            g.download(&t).unwrap()
        };
        let want = {
            let t = c.preprocess(&rgb, n, h, w).unwrap();
            c.download(&t).unwrap()
        };
        worst = worst.max(check_parity(
            &format!("preprocess {n}x{h}x{w}"),
            &got,
            &want,
        ));
    }
    assert!(
        g.preprocess(&[0u8; 10], 1, 2, 2).is_err(),
        "wrong byte count"
    );
    eprintln!("preprocess: max rel err {worst:e}");
}

/// Many ops recorded before one download, buffers recycled through the pool in between.
#[test]
fn lazy_recording_and_buffer_reuse() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let layer = random_conv(8, 8, 3, 1, 1, 3);
    let (cg, cc) = (
        g.prepare_conv(&layer).unwrap(),
        c.prepare_conv(&layer).unwrap(),
    );
    let x = random_tensor(Shape::new(2, 9, 7, 8), -1.0, 1.0, 4);
    let (mut yg, mut yc) = (g.upload(&x).unwrap(), c.upload(&x).unwrap());
    // 40 chained convs: each intermediate is dropped and its buffer reused while the
    // encoder is still pending.
    for _ in 0..40 {
        yg = g.conv2d(&yg, &cg, Some(&yg), true).unwrap();
        yc = c.conv2d(&yc, &cc, Some(&yc), true).unwrap();
        let mg = g
            .max_pool(
                &yg,
                Pool {
                    kernel: 3,
                    stride: 1,
                    pad: 1,
                },
            )
            .unwrap();
        let mc = c
            .max_pool(
                &yc,
                Pool {
                    kernel: 3,
                    stride: 1,
                    pad: 1,
                },
            )
            .unwrap();
        yg = g.resize(&mg, 9, 7, Upsample::Bilinear).unwrap();
        yc = c.resize(&mc, 9, 7, Upsample::Bilinear).unwrap();
        yg = g.minmax_normalise(&yg).unwrap();
        yc = c.minmax_normalise(&yc).unwrap();
    }
    let err = check_parity(
        "40 chained blocks",
        &g.download(&yg).unwrap(),
        &c.download(&yc).unwrap(),
    );
    eprintln!("chained: max rel err {err:e}");
    // An upload recorded after pending work must not be overwritten by it.
    let a = random_tensor(Shape::new(1, 4, 4, 8), 0.0, 1.0, 5);
    let ta = g.upload(&a).unwrap();
    let tb = g.conv2d(&ta, &cg, None, false).unwrap();
    drop(ta);
    let b = random_tensor(Shape::new(1, 4, 4, 8), 0.0, 1.0, 6);
    let tbb = g.upload(&b).unwrap();
    let want = {
        let t = c.upload(&a).unwrap();
        let y = c.conv2d(&t, &cc, None, false).unwrap();
        c.download(&y).unwrap()
    };
    check_parity("conv of a dropped upload", &g.download(&tb).unwrap(), &want);
    assert_eq!(g.download(&tbb).unwrap().data, b.data);
}

#[test]
fn adapter_is_described() {
    let g = gpu();
    let s = g.adapter_summary();
    assert!(!s.is_empty());
    let limits = g.limits_summary();
    assert!(limits
        .iter()
        .any(|(k, _)| k == "max_storage_buffer_binding_size"));
    assert!(g.max_tensor_bytes() >= 128 << 20);
    eprintln!("{s}");
    for (k, v) in limits {
        eprintln!("  {k}: {v}");
    }
}

/// Timestamp queries time every pass by kernel name, and only while timing is on; the
/// results are unchanged. Adapters without timestamps say so (start returns false).
#[test]
fn kernel_timing_names_and_counts_passes() {
    let mut g = gpu();
    let layer = random_conv(16, 12, 3, 1, 1, 5);
    let conv = g.prepare_conv(&layer).unwrap();
    let x = g
        .upload(&random_tensor(Shape::new(1, 9, 7, 16), -1.0, 1.0, 6))
        .unwrap();
    let untimed = g.conv2d(&x, &conv, None, true).unwrap();
    let untimed = g.download(&untimed).unwrap();
    let has = g
        .device_features()
        .contains(wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(g.start_kernel_timing(), has);
    let y = g.conv2d(&x, &conv, None, true).unwrap();
    let y = g.max_pool(&y, Pool::RESNET_STEM).unwrap();
    let y = g.download(&y).unwrap();
    let times = g.stop_kernel_timing().unwrap();
    if !has {
        assert!(times.is_none());
        return;
    }
    let times = times.expect("timing was on");
    let names: Vec<&String> = times.kernels.keys().collect();
    // The conv's entry point follows the tile policy (LAFAM_GPU_TILES may force 128).
    let entry = match g.conv_tile(9 * 7, 12) {
        128 => "conv2d_large[A_VEC4,B_VEC4]",
        _ => "conv2d[A_VEC4,B_VEC4]",
    };
    assert_eq!(names, [entry, "max_pool"], "{times:?}");
    assert_eq!(times.passes(), 2);
    assert!(times.total_ns() > 0.0, "{times:?}");
    // Timing off again: nothing recorded, same results.
    let again = g.conv2d(&x, &conv, None, true).unwrap();
    assert_eq!(g.download(&again).unwrap().data, untimed.data);
    assert!(g.stop_kernel_timing().unwrap().is_none());
    assert_eq!(y.shape, Shape::new(1, 5, 4, 12));
}

fn basic_block(cin: usize, cout: usize, stride: usize, seed: u64) -> Block<ConvLayer> {
    Block {
        convs: vec![
            random_conv(cin, cout, 3, stride, 1, seed),
            random_conv(cout, cout, 3, 1, 1, seed + 1),
        ],
        downsample: (stride != 1 || cin != cout)
            .then(|| random_conv(cin, cout, 1, stride, 0, seed + 2)),
    }
}

fn bottleneck(cin: usize, mid: usize, stride: usize, seed: u64) -> Block<ConvLayer> {
    Block {
        convs: vec![
            random_conv(cin, mid, 1, 1, 0, seed),
            random_conv(mid, mid, 3, stride, 1, seed + 1),
            random_conv(mid, mid * 4, 1, 1, 0, seed + 2),
        ],
        downsample: (stride != 1 || cin != mid * 4)
            .then(|| random_conv(cin, mid * 4, 1, stride, 0, seed + 3)),
    }
}

/// A small random ResNet of either block kind, through `Engine<Gpu>` and `Engine<Cpu>`.
#[test]
fn explainer_smoke_small_resnets() {
    let nets = [
        ResNet {
            kind: BlockKind::Basic,
            stem: random_conv(3, 8, 7, 2, 3, 1),
            stages: [
                vec![basic_block(8, 8, 1, 10), basic_block(8, 8, 1, 13)],
                vec![basic_block(8, 16, 2, 20)],
                vec![basic_block(16, 24, 2, 30)],
                vec![basic_block(24, 32, 2, 40)],
            ],
            heads: Heads::default(),
        },
        ResNet {
            kind: BlockKind::Bottleneck,
            stem: random_conv(3, 16, 7, 2, 3, 2),
            stages: [
                vec![bottleneck(16, 4, 1, 50), bottleneck(16, 4, 1, 54)],
                vec![bottleneck(16, 8, 2, 60)],
                vec![bottleneck(32, 12, 2, 70)],
                vec![bottleneck(48, 16, 2, 80)],
            ],
            heads: Heads::default(),
        },
    ];
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (n, h, w) = (2, 45, 38);
    let rgb: Vec<u8> = (0..n * h * w * 3).map(|_| rng.random()).collect();
    let batch = ImageBatch::new(&rgb, n, h, w).unwrap();
    for net in &nets {
        let mut eg = Engine::new(gpu(), net).unwrap();
        let mut ec = Engine::new(Cpu::new(), net).unwrap();
        let ag = eg.stage_activations(batch, Stage::Layer4).unwrap();
        let ac = ec.stage_activations(batch, Stage::Layer4).unwrap();
        for (s, (a, b)) in ag.iter().zip(&ac).enumerate() {
            let err = check_parity(&format!("{:?} layer{}", net.kind, s + 1), a, b);
            eprintln!(
                "explainer {:?} layer{}: {} max rel err {err:e}",
                net.kind,
                s + 1,
                a.shape
            );
        }
        for mode in [Upsample::Nearest, Upsample::Bilinear] {
            let sizes = [(h, w), (60, 50)];
            let mg = eg
                .explain_method(batch, Method::Lafam, Stage::Layer3, mode, &sizes)
                .unwrap();
            let mc = ec
                .explain_method(batch, Method::Lafam, Stage::Layer3, mode, &sizes)
                .unwrap();
            for (a, b) in mg.iter().zip(&mc) {
                let err = check_parity(&format!("{:?} lafam {mode:?}", net.kind), a, b);
                eprintln!(
                    "explainer {:?} lafam {mode:?} {}: max rel err {err:e}",
                    net.kind, a.shape
                );
            }
        }
    }
}

/// Dispatches over more than 65535 workgroups in one dimension are tiled over two.
#[test]
fn large_grids_are_tiled() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    // 4200 x 4200 outputs: 68906 workgroups of 256.
    let x = random_tensor(Shape::new(1, 7, 7, 1), 0.0, 1.0, 50);
    let err = parity(
        "resize to 4200x4200",
        &mut g,
        &mut c,
        &[&x],
        |g, t| g.resize(&t[0], 4200, 4200, Upsample::Bilinear).unwrap(),
        |c, t| c.resize(&t[0], 4200, 4200, Upsample::Bilinear).unwrap(),
    );
    eprintln!("resize 7x7 -> 4200x4200: max rel err {err:e}");
    // 2100 x 2100 output pixels: 68907 M tiles of 64 (cout 5: the tiled kernel, not
    // conv2d_narrow).
    let layer = random_conv(4, 5, 1, 1, 0, 51);
    let (cg, cc) = (
        g.prepare_conv(&layer).unwrap(),
        c.prepare_conv(&layer).unwrap(),
    );
    let x = random_tensor(Shape::new(1, 2100, 2100, 4), -1.0, 1.0, 52);
    let err = parity(
        "conv 1x1 4->5 over 2100x2100",
        &mut g,
        &mut c,
        &[&x],
        |g, t| g.conv2d(&t[0], &cg, None, true).unwrap(),
        |c, t| c.conv2d(&t[0], &cc, None, true).unwrap(),
    );
    eprintln!("conv 1x1 4->5 over 2100x2100: max rel err {err:e}");
}

/// The 128x128-tile conv over more M tiles than one grid dimension holds (about 12 s on
/// lavapipe: 65703 workgroups).
#[test]
fn large_tile_grids_are_tiled() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    g.set_conv_tiles(ConvTiles::Large);
    // 2900 x 2900 output pixels: 65703 M tiles of 128 (the limit is 65535 per dimension).
    // A forced tile keeps cout 3 on the tiled kernel (not conv2d_narrow).
    let layer = random_conv(1, 3, 1, 1, 0, 53);
    let (cg, cc) = (
        g.prepare_conv(&layer).unwrap(),
        c.prepare_conv(&layer).unwrap(),
    );
    let x = random_tensor(Shape::new(1, 2900, 2900, 1), -1.0, 1.0, 54);
    let err = parity(
        "conv 1x1 1->3 over 2900x2900, 128x128 tiles",
        &mut g,
        &mut c,
        &[&x],
        |g, t| g.conv2d(&t[0], &cg, None, true).unwrap(),
        |c, t| c.conv2d(&t[0], &cc, None, true).unwrap(),
    );
    eprintln!("conv 1x1 1->3 over 2900x2900 (128x128 tiles): max rel err {err:e}");
}

/// Without a matching adapter `Gpu::new` returns an error (it does not panic).
#[test]
fn missing_adapter_is_an_error() {
    let opts = lafam_gpu::gpu::GpuOptions {
        adapter_name: Some("no-such-adapter-xyz".into()),
        ..Default::default()
    };
    let err = Gpu::new(&opts).err().expect("no adapter has that name");
    assert!(err.to_string().contains("no GPU adapter found"), "{err}");
    let opts = lafam_gpu::gpu::GpuOptions {
        backends: Some(wgpu::Backends::empty()),
        ..Default::default()
    };
    let err = Gpu::new(&opts).err().expect("no backend, no adapter");
    assert!(err.to_string().contains("no GPU adapter found"), "{err}");
}

/// wgpu's GL backend is refused with one line saying why (src/gpu/context.rs, `refuse_gl`);
/// without a GL adapter the error is the missing adapter's.
#[test]
fn gl_backend_is_refused() {
    let opts = lafam_gpu::gpu::GpuOptions {
        backends: Some(wgpu::Backends::GL),
        ..Default::default()
    };
    let err = Gpu::new(&opts)
        .err()
        .expect("the GL backend is refused")
        .to_string();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::GL;
    let gl_adapters =
        pollster::block_on(wgpu::Instance::new(desc).enumerate_adapters(wgpu::Backends::GL));
    if gl_adapters.is_empty() {
        assert!(err.contains("no GPU adapter found"), "{err}");
    } else {
        assert!(
            err.starts_with("the GL backend is not supported (adapter '")
                && err.ends_with("; use Vulkan, Metal or DX12")
                && err.contains("panics after waiting 6 s")
                && !err.contains('\n'),
            "{err}"
        );
    }
}
