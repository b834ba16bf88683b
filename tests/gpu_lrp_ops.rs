//! GPU-vs-CPU parity of the LRP ops (`LrpBackend`), op by op: the transposed conv for every
//! ResNet conv shape with odd sizes, channel counts off and on multiples of 4, batches, the
//! fused epilogue and views at aligned and unaligned element offsets; the elementwise steps
//! with their edge cases (z exactly 0, gates, ties in max-pool windows). Runs on whatever
//! adapter wgpu finds (lavapipe in CI) and FAILS when there is none.

mod common;

use common::{
    check_parity, gpu, gpu_view, random_conv, random_tensor, PARITY_TOL as TOL, RESNET_CONVS,
};
use lafam_gpu::backend::{GateSign, LrpBackend, Pool};
use lafam_gpu::cpu::Cpu;
use lafam_gpu::gpu::{ConvTiles, Gpu, GpuTensor};
use lafam_gpu::tensor::max_rel_err;
use lafam_gpu::{Backend, HostTensor, Shape};

fn report(op: &str, worst: f64, cases: usize) {
    eprintln!("{op}: {cases} cases, worst max rel err {worst:e}");
}

/// An epilogue of the transposed conv under test: (with mul, scale, with acc, element offsets
/// of the relevance, mul and acc views).
type Epilogue = (bool, f32, bool, [usize; 3]);

/// The epilogues most tests run: plain, mul + acc with a negative scale, mul only, acc only;
/// views at offset 0, aligned (4, 8) and unaligned (1, 3) offsets.
const EPILOGUES: [Epilogue; 4] = [
    (false, 1.0, false, [0, 0, 0]),
    (true, -2.0, true, [4, 3, 1]),
    (true, 0.5, false, [1, 4, 0]),
    (false, 1.5, true, [8, 0, 4]),
];

/// `layer`'s transposed conv on both backends for `n` images of `h`x`w` (relevance, mul and acc
/// drawn from `seed`), once per epilogue; asserts parity and returns the worst error.
fn conv_transpose_cases(
    g: &mut Gpu,
    c: &mut Cpu,
    layer: &lafam_gpu::model::ConvLayer,
    (n, h, w): (usize, usize, usize),
    epilogues: &[Epilogue],
    seed: u64,
    what: &str,
) -> f64 {
    let cg = g.prepare_conv(layer).unwrap();
    let cc = c.prepare_conv(layer).unwrap();
    let (ho, wo) = layer.out_size(h, w);
    let s = random_tensor(Shape::new(n, ho, wo, layer.cout), -1.0, 1.0, seed);
    let xs = Shape::new(n, h, w, layer.cin);
    let mul = random_tensor(xs, -1.0, 2.0, seed + 1);
    let acc = random_tensor(xs, -1.0, 1.0, seed + 2);
    let (sc, mc, ac) = (
        c.upload(&s).unwrap(),
        c.upload(&mul).unwrap(),
        c.upload(&acc).unwrap(),
    );
    let mut worst = 0f64;
    for &(with_mul, scale, with_acc, offs) in epilogues {
        let label = format!(
            "{what}{} {n}x{h}x{w} mul={with_mul} scale={scale} acc={with_acc} offsets={offs:?}",
            layer.name
        );
        let sg = gpu_view(g, &s, offs[0]);
        let mg = gpu_view(g, &mul, offs[1]);
        let ag = gpu_view(g, &acc, offs[2]);
        let (mg, ag) = (with_mul.then_some(&mg), with_acc.then_some(&ag));
        let yg = g.conv_transpose(&sg, &cg, h, w, mg, scale, ag).unwrap();
        let (mc, ac) = (with_mul.then_some(&mc), with_acc.then_some(&ac));
        let yc = c.conv_transpose(&sc, &cc, h, w, mc, scale, ac).unwrap();
        let err = check_parity(&label, &g.download(&yg).unwrap(), &c.download(&yc).unwrap());
        worst = worst.max(err);
    }
    worst
}

#[test]
fn conv_transpose_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let mut cases = 0usize;
    // (cin, cout): scalar K and N (5, 3), vec4 K over a scalar N (3, 64; the stem's shape),
    // scalar K over a vec4 N (64, 37), odd 37 -> 5, both vec4 (64, 64); cin <= 4 takes the
    // narrow kernel (3, 64), (4, 5).
    let channels = [
        (5usize, 3usize),
        (3, 64),
        (64, 37),
        (37, 5),
        (64, 64),
        (4, 5),
    ];
    for (ki, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
        for (ci, &(cin, cout)) in channels.iter().enumerate() {
            let layer = random_conv(cin, cout, k, stride, pad, (ki * 10 + ci) as u64);
            for &(h, w) in &[(13usize, 9usize), (16, 16)] {
                for n in [1usize, 3] {
                    cases += 1;
                    // Keep lavapipe time down: two epilogues per shape, rotating (mul + acc at
                    // unaligned offsets always).
                    let epilogues = [
                        EPILOGUES[1],
                        EPILOGUES[if cases.is_multiple_of(2) { 0 } else { 2 }],
                    ];
                    let err = conv_transpose_cases(
                        &mut g,
                        &mut c,
                        &layer,
                        (n, h, w),
                        &epilogues,
                        cases as u64 * 7,
                        "",
                    );
                    worst = worst.max(err);
                }
            }
        }
    }
    report("conv_transpose", worst, cases);
}

/// The 16x64 tile (`conv_transpose_thin`, phases of at most 32 input pixels under `Auto`):
/// every ResNet conv shape on inputs of 4-32 pixels per phase, scalar and vec4 K and N, N over
/// one to three tiles, the fused epilogue, views at unaligned offsets.
#[test]
fn conv_transpose_thin_tiles_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    g.set_conv_tiles(ConvTiles::Auto);
    let mut worst = 0f64;
    let mut cases = 0usize;
    let channels = [(5usize, 3usize), (37, 64), (64, 37), (136, 40)];
    for (ci, &(cin, cout)) in channels.iter().enumerate() {
        for (ki, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
            let layer = random_conv(cin, cout, k, stride, pad, 2600 + (ci * 10 + ki) as u64);
            for &(n, h, w) in &[(1usize, 4usize, 4usize), (1, 5, 6), (2, 4, 4)] {
                let xs = Shape::new(n, h, w, cin);
                assert_eq!(g.conv_transpose_tile(xs, stride), 16, "{xs} /{stride}");
                cases += 2;
                let err = conv_transpose_cases(
                    &mut g,
                    &mut c,
                    &layer,
                    (n, h, w),
                    &EPILOGUES[..2],
                    2700 + cases as u64,
                    "16x64 tiles: ",
                );
                worst = worst.max(err);
            }
        }
    }
    report("conv_transpose (16x64 tiles)", worst, cases);
}

/// The ratio epilogue of the 16x64-tile conv (`conv2d_thin`): outputs of 4-32 pixels.
#[test]
fn conv2d_ratio_thin_tiles_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    g.set_conv_tiles(ConvTiles::Auto);
    let channels = [(37usize, 70usize), (64, 136), (5, 8)];
    let (worst, cases) = conv2d_ratio_cases(&mut g, &mut c, &channels, (4, 4), &[1, 2], 3000);
    assert!(g.conv_tile(2 * 4 * 4, 136) == 16 && g.conv_tile(2 * 4 * 4, 8) == 16);
    report("conv2d_ratio (16x64 tiles)", worst, cases);
}

/// Several M and N tiles per stride phase, phases of unequal sizes (17 = 9 + 8 rows) so that
/// the smaller phases have spare tiles, and a 1x1/2 kernel whose odd phases get no taps; with
/// both tiles (64x64 `conv_transpose`, 128x128 `conv_transpose_large`).
#[test]
fn conv_transpose_multi_tile_phases_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let mut cases = 0;
    for (i, &(k, stride, pad)) in [(3usize, 2usize, 1usize), (1, 2, 0), (7, 2, 3), (3, 1, 1)]
        .iter()
        .enumerate()
    {
        for (&(cin, cout), tiles) in [(70usize, 68usize), (66, 9)]
            .iter()
            .flat_map(|ch| [(ch, ConvTiles::Small), (ch, ConvTiles::Large)])
        {
            g.set_conv_tiles(tiles);
            let layer = random_conv(cin, cout, k, stride, pad, 300 + i as u64);
            cases += 1;
            let err = conv_transpose_cases(
                &mut g,
                &mut c,
                &layer,
                (2, 17, 19),
                &[(true, -0.5, true, [0, 0, 0])],
                310 + i as u64,
                &format!("tiles={tiles}: "),
            );
            worst = worst.max(err);
        }
    }
    report("conv_transpose (multi-tile phases)", worst, cases);
}

/// The 128x128-tile transposed conv (`conv_transpose_large`, forced) against the CPU: every
/// ResNet conv shape on 2 images of 15x17 (M = 510: 4 M tiles at stride 1, the last partial;
/// stride-2 phases of 144, 128, 126 and 112 rows, so the smaller phases have spare tiles, and a
/// 1x1/2 kernel whose odd phases get no taps); scalar N and K (5 <- 3), scalar N (cin 150) or
/// vec4 N (cin 200) over two N tiles, scalar K (cout 37: K = 37 k^2, never a multiple of 8),
/// vec4 K with partial K tiles (cout 36) and full ones (cout 64); every epilogue flag with the
/// relevance, mul and acc at offsets 0, aligned and unaligned; then long reductions
/// (K = 2304 and 256, plain GEMM) over 4 M and 2 N tiles.
#[test]
fn conv_transpose_large_tiles_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    g.set_conv_tiles(ConvTiles::Large);
    let mut worst = 0f64;
    let mut cases = 0usize;
    let channels = [
        (5usize, 3usize),
        (150, 37),
        (200, 37),
        (150, 64),
        (200, 36),
        (200, 64),
    ];
    let mut run = |g: &mut Gpu,
                   c: &mut Cpu,
                   layer: &lafam_gpu::model::ConvLayer,
                   (n, h, w): (usize, usize, usize),
                   epilogues: &[Epilogue],
                   seed: u64| {
        let in_shape = Shape::new(n, h, w, layer.cin);
        assert_eq!(g.conv_transpose_tile(in_shape, layer.stride), 128);
        let err = conv_transpose_cases(g, c, layer, (n, h, w), epilogues, seed, "large tiles: ");
        worst = worst.max(err);
        cases += epilogues.len();
    };
    for (ki, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
        for (ci, &(cin, cout)) in channels.iter().enumerate() {
            let seed = 2000 + (ki * 10 + ci) as u64;
            let layer = random_conv(cin, cout, k, stride, pad, seed);
            run(&mut g, &mut c, &layer, (2, 15, 17), &EPILOGUES, seed * 3);
        }
    }
    for &(k, pad) in &[(3usize, 1usize), (1, 0)] {
        let layer = random_conv(256, 256, k, 1, pad, 2100 + k as u64);
        run(
            &mut g,
            &mut c,
            &layer,
            (2, 14, 14),
            &EPILOGUES[..2],
            2200 + k as u64,
        );
    }
    report("conv_transpose (128x128 tiles)", worst, cases);
}

/// The transposed conv follows the conv tile policy: `Auto` over its stride phases (a tile's
/// fill from one phase's rows, the workgroups of all phases), `Gpu::set_conv_tiles` picks the
/// entry point (named by kernel timing where the adapter has timestamps), and both tiles agree
/// with the CPU and with each other.
#[test]
fn conv_transpose_tile_follows_policy() {
    use wgpu::DeviceType::{Cpu as CpuDevice, DiscreteGpu};
    // ResNet-50 at batch 64, 224x224, phase rows m and cin: layer3's 3x3/2 (rows 64*14*14 by
    // 256 channels: 196 large tiles a phase, 784 in the grid), layer4's (64*7*7 by 512:
    // 100 x 4 = 400), one phase of 64*7*7 by 512 (100 < 264) and at batch 1 (4 x 4 = 16).
    for (m, n, phases, gpu_tile) in [
        (64 * 14 * 14, 256, 4, 128),
        (64 * 7 * 7, 512, 4, 128),
        (64 * 7 * 7, 512, 1, 64),
        (7 * 7, 512, 4, 64),
    ] {
        assert_eq!(
            ConvTiles::Auto.tile_in_phases(DiscreteGpu, m, n, phases),
            gpu_tile,
            "{phases} x {m}x{n}"
        );
        assert_eq!(
            ConvTiles::Auto.tile_in_phases(DiscreteGpu, m, n, 1),
            ConvTiles::Auto.tile(DiscreteGpu, m, n)
        );
    }
    // On a CPU adapter: phases of 33-127 rows take the 64 tile however many there are, of at
    // most 32 rows the 16x64 one (on every adapter).
    assert_eq!(ConvTiles::Auto.tile_in_phases(CpuDevice, 33, 1024, 4), 64);
    assert_eq!(ConvTiles::Auto.tile_in_phases(CpuDevice, 32, 1024, 4), 16);
    assert_eq!(ConvTiles::Auto.tile_in_phases(DiscreteGpu, 4, 512, 4), 16);
    assert_eq!(ConvTiles::Auto.tile_in_phases(CpuDevice, 128, 128, 4), 128);
    assert_eq!(
        ConvTiles::Small.tile_in_phases(CpuDevice, 1024, 1024, 4),
        64
    );
    assert_eq!(ConvTiles::Large.tile_in_phases(DiscreteGpu, 32, 8, 1), 128);

    let (mut g, mut c) = (gpu(), Cpu::new());
    let layer = random_conv(136, 40, 3, 2, 1, 2400);
    let (cg, cc) = (
        g.prepare_conv(&layer).unwrap(),
        c.prepare_conv(&layer).unwrap(),
    );
    let (h, w) = (15, 17);
    let (ho, wo) = layer.out_size(h, w);
    let s = random_tensor(Shape::new(2, ho, wo, 40), -1.0, 1.0, 2401);
    let (sg, sc) = (g.upload(&s).unwrap(), c.upload(&s).unwrap());
    let yc = c.conv_transpose(&sc, &cc, h, w, None, 1.0, None).unwrap();
    let want = c.download(&yc).unwrap();
    let mut got = Vec::new();
    for (t, edge, entry) in [
        (ConvTiles::Small, 64, "conv_transpose[K_VEC4,N_VEC4]"),
        (ConvTiles::Large, 128, "conv_transpose_large[K_VEC4,N_VEC4]"),
    ] {
        g.set_conv_tiles(t);
        assert_eq!(g.conv_transpose_tile(Shape::new(2, h, w, 136), 2), edge);
        let timed = g.start_kernel_timing();
        let y = g.conv_transpose(&sg, &cg, h, w, None, 1.0, None).unwrap();
        let y = g.download(&y).unwrap();
        if timed {
            let times = g.stop_kernel_timing().unwrap().expect("timing was on");
            let names: Vec<&String> = times.kernels.keys().collect();
            assert_eq!(names, [entry], "tiles {t}");
        }
        check_parity(&format!("conv_transpose with tiles {t}"), &y, &want);
        got.push(y);
    }
    check_parity("conv_transpose 64 vs 128 tiles", &got[1], &got[0]);
}

#[test]
fn conv_transpose_rejects_bad_shapes() {
    let mut g = gpu();
    let layer = random_conv(5, 7, 3, 2, 1, 1);
    let cg = g.prepare_conv(&layer).unwrap();
    let (ho, wo) = layer.out_size(13, 9);
    let s = g
        .upload(&random_tensor(Shape::new(2, ho, wo, 7), -1.0, 1.0, 2))
        .unwrap();
    // Relevance from another input size, wrong channel count, mismatched operands.
    assert!(g.conv_transpose(&s, &cg, 20, 20, None, 1.0, None).is_err());
    let bad = g
        .upload(&random_tensor(Shape::new(2, ho, wo, 6), -1.0, 1.0, 3))
        .unwrap();
    assert!(g.conv_transpose(&bad, &cg, 13, 9, None, 1.0, None).is_err());
    let m = g
        .upload(&random_tensor(Shape::new(1, 13, 9, 5), -1.0, 1.0, 4))
        .unwrap();
    assert!(g
        .conv_transpose(&s, &cg, 13, 9, Some(&m), 1.0, None)
        .is_err());
    assert!(g
        .conv_transpose(&s, &cg, 13, 9, None, 1.0, Some(&m))
        .is_err());
    assert!(g.conv_transpose(&s, &cg, 1, 1, None, 1.0, None).is_err());
    // A view reaching past its buffer.
    let past = GpuTensor {
        offset: s.buffer.size() as usize / 4,
        ..s.clone()
    };
    assert!(g
        .conv_transpose(&past, &cg, 13, 9, None, 1.0, None)
        .is_err());
    // And a good call still works afterwards.
    let y = g.conv_transpose(&s, &cg, 13, 9, None, 1.0, None).unwrap();
    assert_eq!(g.download(&y).unwrap().shape, Shape::new(2, 13, 9, 5));
}

/// A denominator with exact zeros (+0 and -0), tiny values of both signs and ordinary values.
fn denominator(shape: Shape, seed: u64) -> HostTensor {
    let mut z = random_tensor(shape, -1.0, 1.0, seed);
    for (i, v) in z.data.iter_mut().enumerate() {
        match i % 7 {
            0 => *v = 0.0,
            1 => *v = -0.0,
            2 => *v *= 1e-7,
            _ => {}
        }
    }
    z
}

#[test]
fn lrp_ratio_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let mut cases = 0;
    for (si, &shape) in [Shape::new(1, 13, 9, 5), Shape::new(3, 7, 5, 64)]
        .iter()
        .enumerate()
    {
        let r = random_tensor(shape, -1.0, 1.0, 10 + si as u64);
        let z = denominator(shape, 20 + si as u64);
        let mut gate = random_tensor(shape, -1.0, 1.0, 30 + si as u64);
        gate.data.iter_mut().step_by(5).for_each(|v| *v = 0.0);
        let (rc, zc, gc) = (
            c.upload(&r).unwrap(),
            c.upload(&z).unwrap(),
            c.upload(&gate).unwrap(),
        );
        for (gi, sign) in [None, Some(GateSign::Positive), Some(GateSign::Negative)]
            .into_iter()
            .enumerate()
        {
            for offs in [[0usize, 0, 0], [3, 1, 5]] {
                cases += 1;
                let rg = gpu_view(&mut g, &r, offs[0]);
                let zg = gpu_view(&mut g, &z, offs[1]);
                let gg = gpu_view(&mut g, &gate, offs[2]);
                let yg = g.lrp_ratio(&rg, &zg, sign.map(|s| (&gg, s))).unwrap();
                let yc = c.lrp_ratio(&rc, &zc, sign.map(|s| (&gc, s))).unwrap();
                let got = g.download(&yg).unwrap();
                let want = c.download(&yc).unwrap();
                let label = format!("lrp_ratio {shape} gate={sign:?} offsets={offs:?}");
                // The ratio at z = 0 is r * 1e6: max_rel_err is dominated by those, so also
                // check every element on its own scale.
                for (j, (&a, &b)) in got.data.iter().zip(&want.data).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{label}: element {j}: {a} vs {b}"
                    );
                }
                if gi > 0 {
                    let zeros = got.data.iter().filter(|&&v| v == 0.0).count();
                    assert!(zeros > 0, "{label}: the gate closed nothing");
                }
                worst = worst.max(check_parity(&label, &got, &want));
            }
        }
    }
    let a = g
        .upload(&HostTensor::zeros(Shape::new(1, 2, 2, 3)))
        .unwrap();
    let b = g
        .upload(&HostTensor::zeros(Shape::new(1, 2, 2, 4)))
        .unwrap();
    assert!(g.lrp_ratio(&a, &b, None).is_err());
    assert!(g.lrp_ratio(&a, &a, Some((&b, GateSign::Positive))).is_err());
    report("lrp_ratio", worst, cases);
}

#[test]
fn residual_split_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let mut cases = 0;
    for (si, &shape) in [Shape::new(1, 13, 9, 5), Shape::new(3, 8, 8, 64)]
        .iter()
        .enumerate()
    {
        let a = random_tensor(shape, -1.0, 1.0, 40 + si as u64);
        let mut b = random_tensor(shape, -1.0, 1.0, 50 + si as u64);
        // a + b exactly 0 in places.
        for (i, v) in b.data.iter_mut().enumerate() {
            if i % 11 == 0 {
                *v = -a.data[i];
            }
        }
        let r = random_tensor(shape, -1.0, 1.0, 60 + si as u64);
        for offs in [[0usize, 0, 0], [1, 4, 3]] {
            cases += 1;
            let (ag, bg, rg) = (
                gpu_view(&mut g, &a, offs[0]),
                gpu_view(&mut g, &b, offs[1]),
                gpu_view(&mut g, &r, offs[2]),
            );
            let (ga, gb) = g.residual_split(&ag, &bg, &rg).unwrap();
            let (ac, bc, rc) = (
                c.upload(&a).unwrap(),
                c.upload(&b).unwrap(),
                c.upload(&r).unwrap(),
            );
            let (ca, cb) = c.residual_split(&ac, &bc, &rc).unwrap();
            for (which, x, y) in [("skip", &ga, &ca), ("branch", &gb, &cb)] {
                let label = format!("residual_split {which} {shape} offsets={offs:?}");
                let err = check_parity(&label, &g.download(x).unwrap(), &c.download(y).unwrap());
                worst = worst.max(err);
            }
        }
    }
    report("residual_split", worst, cases);
}

/// `conv2d_ratio` vs the CPU for every ResNet conv shape, `channels` (cin, cout), images of
/// `n` x `h` x `w` and views at offset 0, aligned and unaligned; returns (worst, cases).
fn conv2d_ratio_cases(
    g: &mut Gpu,
    c: &mut Cpu,
    channels: &[(usize, usize)],
    (h, w): (usize, usize),
    batches: &[usize],
    seed0: u64,
) -> (f64, usize) {
    let mut worst = 0f64;
    let mut cases = 0usize;
    for (ki, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
        for (ci, &(cin, cout)) in channels.iter().enumerate() {
            let layer = random_conv(cin, cout, k, stride, pad, (ki * 10 + ci) as u64 + seed0);
            let cg = g.prepare_conv(&layer).unwrap();
            let cc = c.prepare_conv(&layer).unwrap();
            let (ho, wo) = layer.out_size(h, w);
            for &n in batches {
                let seed = seed0 + 100 + cases as u64 * 3;
                let x = random_tensor(Shape::new(n, h, w, cin), -1.0, 1.0, seed);
                let r = random_tensor(Shape::new(n, ho, wo, cout), -1.0, 1.0, seed + 1);
                let (xc, rc) = (c.upload(&x).unwrap(), c.upload(&r).unwrap());
                let zc = c.conv2d(&xc, &cc, None, false).unwrap();
                let z = c.download(&zc).unwrap();
                let wc = c.conv2d_ratio(&xc, &cc, &rc).unwrap();
                let want = c.download(&wc).unwrap();
                // The CPU's fused op is bit-identical to its composition.
                let composed = c.lrp_ratio(&rc, &zc, None).unwrap();
                assert_eq!(want.data, c.download(&composed).unwrap().data);
                let zmax = z.data.iter().fold(0f32, |m, v| m.max(v.abs()));
                for offs in [[0usize, 0], [4, 8], [1, 3]] {
                    cases += 1;
                    let xg = gpu_view(g, &x, offs[0]);
                    let rg = gpu_view(g, &r, offs[1]);
                    let got = g.conv2d_ratio(&xg, &cg, &rg).unwrap();
                    let got = g.download(&got).unwrap();
                    let label = format!(
                        "conv2d_ratio k{k} s{stride} {cin}->{cout} {n}x{h}x{w} offsets={offs:?} \
                         tiles={}",
                        g.conv_tiles()
                    );
                    assert_eq!(got.shape, want.shape, "{label}: shape");
                    // Where z is near 0 the ratio amplifies the convs' rounding differences:
                    // compare where |z| is a fair fraction of its range.
                    let keep = |v: &[f32]| -> Vec<f32> {
                        v.iter()
                            .zip(&z.data)
                            .filter(|(_, z)| z.abs() >= 0.05 * zmax)
                            .map(|(v, _)| *v)
                            .collect()
                    };
                    let (a, b) = (keep(&got.data), keep(&want.data));
                    let err = max_rel_err(&a, &b);
                    assert!(err <= TOL, "{label}: max rel err {err:e} > {TOL:e}");
                    worst = worst.max(err);
                }
            }
        }
    }
    (worst, cases)
}

#[test]
fn conv2d_ratio_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    // Scalar and vec4 input / output channels, as conv2d's variants; cout <= 4 (conv2d_narrow)
    // includes the Flat rule's one-channel stem conv (3, 1).
    let channels = [
        (3usize, 64usize),
        (64, 37),
        (37, 5),
        (64, 64),
        (5, 3),
        (3, 1),
        (16, 4),
    ];
    let (worst, cases) = conv2d_ratio_cases(&mut g, &mut c, &channels, (13, 9), &[1, 3], 500);
    let cases = cases + conv2d_ratio_at_bias(&mut g, &mut c, &[(64, 8), (5, 3)]);
    report("conv2d_ratio", worst, cases);
}

/// z exactly +0 / -0 / tiny of both signs: a zero input leaves z = bias, so the stabiliser's
/// sign(0) = +1 is checked element by element. Returns the number of cases.
fn conv2d_ratio_at_bias(g: &mut Gpu, c: &mut Cpu, channels: &[(usize, usize)]) -> usize {
    let mut cases = 0;
    for &(cin, cout) in channels {
        let mut layer = random_conv(cin, cout, 3, 1, 1, 700 + cin as u64);
        for (j, b) in layer.bias.iter_mut().enumerate() {
            *b = match j % 4 {
                0 => 0.0,
                1 => -0.0,
                2 => 1e-7 * if j % 8 == 2 { 1.0 } else { -1.0 },
                _ => *b,
            };
        }
        let (cg, cc) = (
            g.prepare_conv(&layer).unwrap(),
            c.prepare_conv(&layer).unwrap(),
        );
        let x = HostTensor::zeros(Shape::new(2, 5, 4, cin));
        let r = random_tensor(Shape::new(2, 5, 4, cout), -1.0, 1.0, 710);
        let (xg, rg) = (g.upload(&x).unwrap(), g.upload(&r).unwrap());
        let (xc, rc) = (c.upload(&x).unwrap(), c.upload(&r).unwrap());
        let yg = g.conv2d_ratio(&xg, &cg, &rg).unwrap();
        let yc = c.conv2d_ratio(&xc, &cc, &rc).unwrap();
        let (got, want) = (g.download(&yg).unwrap(), c.download(&yc).unwrap());
        for (j, (&a, &b)) in got.data.iter().zip(&want.data).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "conv2d_ratio at z = bias {cin}->{cout}: element {j}: {a} vs {b}"
            );
        }
        cases += 1;
    }
    cases
}

/// The ratio epilogue (flag bit 2) of the 128x128-tile conv kernel: odd channel counts over
/// two N tiles (150 scalar, 200 vec4), several M tiles and partial K tiles.
#[test]
fn conv2d_ratio_large_tiles_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    g.set_conv_tiles(ConvTiles::Large);
    let channels = [(37usize, 150usize), (64, 200), (5, 3)];
    let (worst, cases) = conv2d_ratio_cases(&mut g, &mut c, &channels, (17, 23), &[2], 800);
    let cases = cases + conv2d_ratio_at_bias(&mut g, &mut c, &[(64, 136), (5, 3)]);
    report("conv2d_ratio (128x128 tiles)", worst, cases);
}

#[test]
fn residual_split_relu_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let mut cases = 0;
    for (si, &shape) in [Shape::new(1, 13, 9, 5), Shape::new(3, 8, 8, 64)]
        .iter()
        .enumerate()
    {
        let skip = random_tensor(shape, -1.0, 1.0, 80 + si as u64);
        let branch = random_tensor(shape, -1.0, 1.0, 90 + si as u64);
        let mut r = random_tensor(shape, -1.0, 1.0, 100 + si as u64);
        // The block output relu(skip + branch), zero in places; relevance zero there (the
        // caller's guarantee).
        let out: Vec<f32> = skip
            .data
            .iter()
            .zip(&branch.data)
            .map(|(a, b)| (a + b).max(0.0))
            .collect();
        for (v, o) in r.data.iter_mut().zip(&out) {
            if *o == 0.0 {
                *v = 0.0;
            }
        }
        let out = HostTensor::new(shape, out);
        let (sc, oc, rc, bc) = (
            c.upload(&skip).unwrap(),
            c.upload(&out).unwrap(),
            c.upload(&r).unwrap(),
            c.upload(&branch).unwrap(),
        );
        let (ca, cb) = c.residual_split_relu(&sc, &oc, &rc).unwrap();
        let (ca, cb) = (c.download(&ca).unwrap(), c.download(&cb).unwrap());
        // Same as the split of skip + branch.
        let (ea, eb) = c.residual_split(&sc, &bc, &rc).unwrap();
        check_parity(
            "residual_split_relu vs residual_split (skip)",
            &ca,
            &c.download(&ea).unwrap(),
        );
        check_parity(
            "residual_split_relu vs residual_split (branch)",
            &cb,
            &c.download(&eb).unwrap(),
        );
        for offs in [[0usize, 0, 0], [1, 4, 3]] {
            cases += 1;
            let (sg, og, rg) = (
                gpu_view(&mut g, &skip, offs[0]),
                gpu_view(&mut g, &out, offs[1]),
                gpu_view(&mut g, &r, offs[2]),
            );
            let (ga, gb) = g.residual_split_relu(&sg, &og, &rg).unwrap();
            for (which, x, y) in [("skip", &ga, &ca), ("branch", &gb, &cb)] {
                let label = format!("residual_split_relu {which} {shape} offsets={offs:?}");
                worst = worst.max(check_parity(&label, &g.download(x).unwrap(), y));
            }
        }
    }
    report("residual_split_relu", worst, cases);
}

/// A pool input made of 2x2 blocks of equal values (ties inside windows and across the
/// overlap of neighbouring windows), a few of them negative, some channels constant.
fn blocky(shape: Shape, seed: u64) -> HostTensor {
    let levels = random_tensor(shape, -3.0, 3.0, seed);
    let mut data = vec![0f32; shape.len()];
    for n in 0..shape.n {
        for y in 0..shape.h {
            for x in 0..shape.w {
                for ch in 0..shape.c {
                    let i = ((n * shape.h + y) * shape.w + x) * shape.c + ch;
                    let src = ((n * shape.h + y / 2 * 2) * shape.w + x / 2 * 2) * shape.c + ch;
                    data[i] = if ch % 4 == 3 {
                        1.0
                    } else {
                        levels.data[src].round()
                    };
                }
            }
        }
    }
    HostTensor::new(shape, data)
}

#[test]
fn max_pool_backward_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let mut cases = 0;
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
        Pool {
            kernel: 5,
            stride: 2,
            pad: 2,
        },
    ];
    for (pi, &pool) in pools.iter().enumerate() {
        for &(n, h, w, ch) in &[(1usize, 13usize, 9usize, 5usize), (3, 16, 16, 8)] {
            let shape = Shape::new(n, h, w, ch);
            let x = blocky(shape, 70 + pi as u64);
            let (ho, wo) = pool.out_size(h, w);
            let r = random_tensor(Shape::new(n, ho, wo, ch), -1.0, 1.0, 80 + pi as u64);
            for offs in [[0usize, 0], [3, 5]] {
                cases += 1;
                let (xg, rg) = (gpu_view(&mut g, &x, offs[0]), gpu_view(&mut g, &r, offs[1]));
                let yg = g.max_pool_backward(&xg, &rg, pool).unwrap();
                let (xc, rc) = (c.upload(&x).unwrap(), c.upload(&r).unwrap());
                let yc = c.max_pool_backward(&xc, &rc, pool).unwrap();
                let label = format!("max_pool_backward {pool:?} {shape} offsets={offs:?}");
                let got = g.download(&yg).unwrap();
                worst = worst.max(check_parity(&label, &got, &c.download(&yc).unwrap()));
                // Winner-take-all conserves relevance.
                let (sg, sr): (f64, f64) = (
                    got.data.iter().map(|&v| v as f64).sum(),
                    r.data.iter().map(|&v| v as f64).sum(),
                );
                assert!((sg - sr).abs() <= 1e-4 * sr.abs().max(1.0), "{label}: sum");
            }
        }
    }
    // Wrong relevance shape and a bad pool are errors, not panics.
    let x = g
        .upload(&HostTensor::zeros(Shape::new(1, 8, 8, 2)))
        .unwrap();
    let r = g
        .upload(&HostTensor::zeros(Shape::new(1, 3, 3, 2)))
        .unwrap();
    assert!(g.max_pool_backward(&x, &r, Pool::RESNET_STEM).is_err());
    let bad = Pool {
        kernel: 0,
        stride: 1,
        pad: 0,
    };
    assert!(g.max_pool_backward(&x, &r, bad).is_err());
    report("max_pool_backward", worst, cases);
}

#[test]
fn elementwise_ops_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut worst = 0f64;
    let mut cases = 0;
    for (si, &shape) in [Shape::new(1, 13, 9, 5), Shape::new(3, 4, 6, 64)]
        .iter()
        .enumerate()
    {
        let a = random_tensor(shape, -1.0, 1.0, 90 + si as u64);
        let b = random_tensor(shape, -1.0, 1.0, 95 + si as u64);
        let (ac, bc) = (c.upload(&a).unwrap(), c.upload(&b).unwrap());
        for offs in [[0usize, 0], [5, 2]] {
            let (ag, bg) = (gpu_view(&mut g, &a, offs[0]), gpu_view(&mut g, &b, offs[1]));
            let mut pairs = vec![
                (
                    format!("lincomb with b {shape} {offs:?}"),
                    g.lincomb(&ag, 0.75, Some(&bg), -1.5).unwrap(),
                    c.lincomb(&ac, 0.75, Some(&bc), -1.5).unwrap(),
                ),
                (
                    format!("lincomb without b {shape} {offs:?}"),
                    g.lincomb(&ag, -3.0, None, 0.0).unwrap(),
                    c.lincomb(&ac, -3.0, None, 0.0).unwrap(),
                ),
                (
                    format!("add_relu {shape} {offs:?}"),
                    g.add_relu(&ag, &bg).unwrap(),
                    c.add_relu(&ac, &bc).unwrap(),
                ),
            ];
            for (lo, hi) in [(0.0, f32::INFINITY), (f32::NEG_INFINITY, 0.0), (-0.25, 0.5)] {
                pairs.push((
                    format!("clamp [{lo}, {hi}] {shape} {offs:?}"),
                    g.clamp(&ag, lo, hi).unwrap(),
                    c.clamp(&ac, lo, hi).unwrap(),
                ));
            }
            for (label, yg, yc) in pairs {
                cases += 1;
                let err =
                    check_parity(&label, &g.download(&yg).unwrap(), &c.download(&yc).unwrap());
                worst = worst.max(err);
            }
        }
        let values: Vec<f32> = (0..shape.c).map(|i| i as f32 * 0.5 - 1.0).collect();
        let yg = g.fill_channels(shape, &values).unwrap();
        let yc = c.fill_channels(shape, &values).unwrap();
        cases += 1;
        let got = g.download(&yg).unwrap();
        assert_eq!(got, c.download(&yc).unwrap(), "fill_channels {shape}");
    }
    let a = g
        .upload(&HostTensor::zeros(Shape::new(1, 2, 2, 3)))
        .unwrap();
    let b = g
        .upload(&HostTensor::zeros(Shape::new(1, 2, 3, 2)))
        .unwrap();
    assert!(g.lincomb(&a, 1.0, Some(&b), 1.0).is_err());
    assert!(g.add_relu(&a, &b).is_err());
    assert!(g.residual_split(&a, &b, &a).is_err());
    assert!(g.clamp(&a, 1.0, -1.0).is_err());
    assert!(g.clamp(&a, f32::NAN, 1.0).is_err());
    assert!(g
        .fill_channels(Shape::new(1, 2, 2, 3), &[1.0, 2.0])
        .is_err());
    report("lincomb/add_relu/clamp/fill_channels", worst, cases);
}

/// Both backends check shapes through the same rules (`backend::shapes`): every bad input
/// below is an error (never a panic) on the CPU and the GPU, with the same message.
#[test]
fn backends_refuse_the_same_shapes_with_the_same_message() {
    use lafam_gpu::backend::CamBackend;
    let (mut g, mut c) = (gpu(), Cpu::new());
    let layer = random_conv(4, 8, 3, 2, 1, 1);
    let (cg, cc) = (
        g.prepare_conv(&layer).unwrap(),
        c.prepare_conv(&layer).unwrap(),
    );
    let t = |s: Shape| HostTensor::zeros(s);
    let both =
        |g: &mut Gpu,
         c: &mut Cpu,
         what: &str,
         op_g: &dyn Fn(&mut Gpu) -> anyhow::Result<GpuTensor>,
         op_c: &dyn Fn(&mut Cpu) -> anyhow::Result<lafam_gpu::cpu::CpuTensor>| {
            let eg = op_g(g)
                .err()
                .unwrap_or_else(|| panic!("{what}: the GPU accepted it"));
            let ec = op_c(c)
                .err()
                .unwrap_or_else(|| panic!("{what}: the CPU accepted it"));
            assert_eq!(eg.to_string(), ec.to_string(), "{what}");
        };
    let x_bad_c = t(Shape::new(1, 5, 5, 3));
    let (xg, xc) = (g.upload(&x_bad_c).unwrap(), c.upload(&x_bad_c).unwrap());
    both(
        &mut g,
        &mut c,
        "conv channels",
        &|g| g.conv2d(&xg, &cg, None, true),
        &|c| c.conv2d(&xc, &cc, None, true),
    );
    let x = t(Shape::new(1, 5, 5, 4));
    let (xg, xc) = (g.upload(&x).unwrap(), c.upload(&x).unwrap());
    let r_bad = t(Shape::new(1, 3, 2, 8));
    let (rg, rc) = (g.upload(&r_bad).unwrap(), c.upload(&r_bad).unwrap());
    both(
        &mut g,
        &mut c,
        "conv residual",
        &|g| g.conv2d(&xg, &cg, Some(&rg), true),
        &|c| c.conv2d(&xc, &cc, Some(&rc), true),
    );
    let big = random_conv(4, 8, 9, 1, 0, 2);
    let (bg, bc) = (g.prepare_conv(&big).unwrap(), c.prepare_conv(&big).unwrap());
    both(
        &mut g,
        &mut c,
        "conv kernel larger than the input",
        &|g| g.conv2d(&xg, &bg, None, false),
        &|c| c.conv2d(&xc, &bc, None, false),
    );
    // Transposed: relevance of the wrong size, an input too small for the kernel, an operand.
    let s = t(Shape::new(1, 3, 3, 8));
    let (sg, sc) = (g.upload(&s).unwrap(), c.upload(&s).unwrap());
    both(
        &mut g,
        &mut c,
        "conv_transpose relevance",
        &|g| g.conv_transpose(&sg, &cg, 9, 9, None, 1.0, None),
        &|c| c.conv_transpose(&sc, &cc, 9, 9, None, 1.0, None),
    );
    both(
        &mut g,
        &mut c,
        "conv_transpose input below the kernel",
        &|g| g.conv_transpose(&sg, &bg, 3, 3, None, 1.0, None),
        &|c| c.conv_transpose(&sc, &bc, 3, 3, None, 1.0, None),
    );
    let m_bad = t(Shape::new(1, 5, 4, 4));
    let (mg, mc) = (g.upload(&m_bad).unwrap(), c.upload(&m_bad).unwrap());
    both(
        &mut g,
        &mut c,
        "conv_transpose mul operand",
        &|g| g.conv_transpose(&sg, &cg, 5, 5, Some(&mg), 1.0, None),
        &|c| c.conv_transpose(&sc, &cc, 5, 5, Some(&mc), 1.0, None),
    );
    // Max-pool backward: a zero stride (the CPU divided by it before), a wrong relevance.
    let no_stride = Pool {
        kernel: 3,
        stride: 0,
        pad: 1,
    };
    both(
        &mut g,
        &mut c,
        "max-pool stride 0",
        &|g| g.max_pool_backward(&xg, &sg, no_stride),
        &|c| c.max_pool_backward(&xc, &sc, no_stride),
    );
    both(
        &mut g,
        &mut c,
        "max-pool relevance",
        &|g| g.max_pool_backward(&xg, &sg, Pool::RESNET_STEM),
        &|c| c.max_pool_backward(&xc, &sc, Pool::RESNET_STEM),
    );
    // Channel projection with weights for another channel count.
    let w_bad = t(Shape::new(1, 1, 1, 5));
    let (wg, wc) = (g.upload(&w_bad).unwrap(), c.upload(&w_bad).unwrap());
    both(
        &mut g,
        &mut c,
        "channel_projection weights",
        &|g| g.channel_projection(&xg, &wg, None, false),
        &|c| c.channel_projection(&xc, &wc, None, false),
    );
    // RELAX: masks for an image below 4x4, masks of another size than the image.
    both(
        &mut g,
        &mut c,
        "relax_masks size",
        &|g| g.relax_masks(1, 0, 2, 3, 8),
        &|c| c.relax_masks(1, 0, 2, 3, 8),
    );
    let masks = t(Shape::new(2, 4, 5, 1));
    let (mg, mc) = (g.upload(&masks).unwrap(), c.upload(&masks).unwrap());
    both(
        &mut g,
        &mut c,
        "mask_images size",
        &|g| g.mask_images(&xg, &mg),
        &|c| c.mask_images(&xc, &mc),
    );
    // Both backends are still usable.
    let y = g.conv2d(&xg, &cg, None, true).unwrap();
    assert_eq!(g.download(&y).unwrap().shape, Shape::new(1, 3, 3, 8));
}

/// `repeat_images` (the conditions of the batched conditional backward, CRP): the plain
/// repeat and the one-channel-per-output-image restriction, at offset 0 and on an unaligned
/// view, agree exactly with the CPU and with the definition; bad inputs are refused alike.
#[test]
fn repeat_images_matches_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    let mut cases = 0;
    for (si, &(shape, k)) in [
        (Shape::new(1, 3, 5, 7), 3usize),
        (Shape::new(2, 4, 3, 64), 4),
    ]
    .iter()
    .enumerate()
    {
        let a = random_tensor(shape, -1.0, 1.0, 120 + si as u64);
        let ac = c.upload(&a).unwrap();
        let keep: Vec<u32> = (0..shape.n * k)
            .map(|j| ((j * 5 + 2) % shape.c) as u32)
            .collect();
        for off in [0usize, 3] {
            let ag = gpu_view(&mut g, &a, off);
            for keep in [None, Some(keep.as_slice())] {
                let yg = g.repeat_images(&ag, k, keep).unwrap();
                let yc = c.repeat_images(&ac, k, keep).unwrap();
                let got = g.download(&yg).unwrap();
                let want = c.download(&yc).unwrap();
                assert_eq!(
                    got, want,
                    "repeat_images {shape} k={k} keep={keep:?} off={off}"
                );
                assert_eq!(
                    want.shape,
                    Shape::new(shape.n * k, shape.h, shape.w, shape.c)
                );
                let per = shape.image_len();
                for (j, img) in want.data.chunks(per).enumerate() {
                    let src = &a.data[(j / k) * per..(j / k + 1) * per];
                    for (i, (&v, &s)) in img.iter().zip(src).enumerate() {
                        let kept = keep.is_none_or(|kp| i % shape.c == kp[j] as usize);
                        assert_eq!(v, if kept { s } else { 0.0 });
                    }
                }
                cases += 1;
            }
        }
    }
    let a = Shape::new(1, 2, 2, 3);
    let (ag, ac) = (
        g.upload(&HostTensor::zeros(a)).unwrap(),
        c.upload(&HostTensor::zeros(a)).unwrap(),
    );
    for (k, keep) in [
        (0usize, None),
        (2, Some(&[0u32][..])),
        (2, Some(&[0u32, 3][..])),
    ] {
        let eg = g.repeat_images(&ag, k, keep).unwrap_err().to_string();
        let ec = c.repeat_images(&ac, k, keep).unwrap_err().to_string();
        assert_eq!(eg, ec);
    }
    report("repeat_images", 0.0, cases);
}
