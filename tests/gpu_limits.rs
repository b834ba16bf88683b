//! The GPU backend within WebGPU's default limits (`wgpu::Limits::default()`: 16 KiB of
//! workgroup memory, 256 invocations per workgroup, 8 storage buffers per stage, 128 MiB per
//! storage binding), the floor Apple, Intel and mobile adapters meet: the device opened with
//! `GpuOptions::limits = WebGpu` (as `LAFAM_GPU_LIMITS=webgpu` does) has those limits, every
//! conv tile the policy can choose there matches the CPU, whole LaFAM and LaFAM-LRP runs match
//! the CPU, and a batch the 128 MiB binding limit splits still matches.

mod common;

use common::{check_lrp_parity, check_parity, random_conv, random_tensor, RESNET_CONVS};
use lafam_gpu::backend::{CamBackend, LrpBackend};
use lafam_gpu::cpu::Cpu;
use lafam_gpu::explain::ties::{compare_lrp, NEAR_TIE_BUDGET};
use lafam_gpu::explain::{Composite, Engine, ImageBatch, LrpWeights, Method, Request};
use lafam_gpu::gpu::{ConvTiles, Gpu, GpuLimits, GpuOptions};
use lafam_gpu::model::{load_weights, Stage};
use lafam_gpu::{Backend, HostTensor, Shape, Upsample};

/// The GPU opened with WebGPU's default limits (the adapter's where lower).
fn webgpu() -> Gpu {
    Gpu::new(&GpuOptions {
        limits: Some(GpuLimits::WebGpu),
        ..GpuOptions::default()
    })
    .expect("no GPU adapter: install mesa-vulkan-drivers + libvulkan1 (lavapipe)")
}

const STAGES: [Stage; 4] = [Stage::Layer1, Stage::Layer2, Stage::Layer3, Stage::Layer4];

#[test]
fn device_has_the_webgpu_default_limits() {
    let g = webgpu();
    assert_eq!(g.limits_mode(), GpuLimits::WebGpu);
    let l = g.device_limits();
    let a = g.adapter_limits();
    assert_eq!(*l, wgpu::Limits::default().or_worse_values_from(a));
    // lavapipe (and every desktop adapter) has more than WebGPU's defaults in all of these.
    let d = wgpu::Limits::default();
    if a.max_compute_workgroup_storage_size >= d.max_compute_workgroup_storage_size
        && a.max_storage_buffer_binding_size >= d.max_storage_buffer_binding_size
    {
        assert_eq!(l.max_compute_workgroup_storage_size, 16 << 10);
        assert_eq!(l.max_compute_invocations_per_workgroup, 256);
        assert_eq!(l.max_storage_buffers_per_shader_stage, 8);
        assert_eq!(l.max_storage_buffer_binding_size, 128 << 20);
        assert_eq!(g.max_tensor_bytes(), 128 << 20);
        // 16 KiB is exactly what the 128x128 tile needs.
        assert_eq!(g.largest_conv_tile(), 128);
    }
    let summary = g.limits_summary();
    assert!(
        summary
            .iter()
            .any(|(k, v)| k == "limits (LAFAM_GPU_LIMITS)" && v.starts_with("webgpu")),
        "{summary:?}"
    );
    eprintln!(
        "{}: webgpu limits: {} B workgroup memory, {} invocations, {} storage buffers, \
         {} MiB per binding; adapter's: {} B, {}, {}, {} MiB",
        g.adapter_summary(),
        l.max_compute_workgroup_storage_size,
        l.max_compute_invocations_per_workgroup,
        l.max_storage_buffers_per_shader_stage,
        l.max_storage_buffer_binding_size >> 20,
        a.max_compute_workgroup_storage_size,
        a.max_compute_invocations_per_workgroup,
        a.max_storage_buffers_per_shader_stage,
        a.max_storage_buffer_binding_size >> 20,
    );
}

/// `common::gpu()`, which every GPU test opens, follows `LAFAM_GPU_LIMITS`, so CI can run the
/// whole GPU suite with `LAFAM_GPU_LIMITS=webgpu`.
#[test]
fn the_tests_gpu_follows_the_environment() {
    let g = common::gpu();
    let mode = GpuLimits::from_env().unwrap();
    assert_eq!(g.limits_mode(), mode);
    if mode == GpuLimits::WebGpu {
        let want = wgpu::Limits::default().or_worse_values_from(g.adapter_limits());
        assert_eq!(*g.device_limits(), want);
    }
}

/// Every tile the policy can choose under WebGPU's limits (16x64 under `Auto` for small GEMMs,
/// 64x64 and 128x128 forced), forward conv and transposed conv, every ResNet conv shape.
#[test]
fn conv_tiles_match_cpu_within_webgpu_limits() {
    let mut g = webgpu();
    let mut c = Cpu::new();
    let largest = g.largest_conv_tile();
    let mut tiles = vec![(ConvTiles::Auto, 16), (ConvTiles::Small, 64)];
    if largest == 128 {
        tiles.push((ConvTiles::Large, 128));
    }
    let mut cases = 0;
    let mut worst = 0f64;
    for (policy, edge) in tiles {
        g.set_conv_tiles(policy);
        // 16x64: 1 image of 5x5 (at most 25 rows, forward and transposed). Square tiles:
        // 2 images of 17x23 (M up to 782). Channels over two N tiles, partial K tiles.
        for (i, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
            let (n, h, w, cin, cout) = match edge {
                16 => (1, 5, 5, 12, 70),
                _ => (2, 17, 23, 37, 136),
            };
            let layer = random_conv(cin, cout, k, stride, pad, 100 + i as u64);
            let (ho, wo) = layer.out_size(h, w);
            let m = n * ho * wo;
            assert_eq!(g.conv_tile(m, cout), edge, "{policy}: {m}x{cout}");
            let x = random_tensor(Shape::new(n, h, w, cin), -1.0, 1.0, 7 + i as u64);
            let res = random_tensor(Shape::new(n, ho, wo, cout), -1.0, 1.0, 8 + i as u64);
            let (cg, cc) = (
                g.prepare_conv(&layer).unwrap(),
                c.prepare_conv(&layer).unwrap(),
            );
            let (xg, rg) = (g.upload(&x).unwrap(), g.upload(&res).unwrap());
            let (xc, rc) = (c.upload(&x).unwrap(), c.upload(&res).unwrap());
            let yg = g.conv2d(&xg, &cg, Some(&rg), true).unwrap();
            let yc = c.conv2d(&xc, &cc, Some(&rc), true).unwrap();
            let label = format!("webgpu limits, tile {edge}: {}", layer.name);
            let got = g.download(&yg).unwrap();
            worst = worst.max(check_parity(&label, &got, &c.download(&yc).unwrap()));
            // The transposed conv back to the input's shape, with every epilogue operand.
            let in_shape = Shape::new(n, h, w, cin);
            assert_eq!(
                g.conv_transpose_tile(in_shape, stride),
                edge,
                "{policy}: transposed {in_shape} /{stride}"
            );
            let s = random_tensor(Shape::new(n, ho, wo, cout), -1.0, 1.0, 9 + i as u64);
            let mul = random_tensor(in_shape, -1.0, 2.0, 10 + i as u64);
            let acc = random_tensor(in_shape, -1.0, 1.0, 11 + i as u64);
            let (sg, mg, ag) = (
                g.upload(&s).unwrap(),
                g.upload(&mul).unwrap(),
                g.upload(&acc).unwrap(),
            );
            let (sc, mc, ac) = (
                c.upload(&s).unwrap(),
                c.upload(&mul).unwrap(),
                c.upload(&acc).unwrap(),
            );
            let tg = g
                .conv_transpose(&sg, &cg, h, w, Some(&mg), 0.5, Some(&ag))
                .unwrap();
            let tc = c
                .conv_transpose(&sc, &cc, h, w, Some(&mc), 0.5, Some(&ac))
                .unwrap();
            let got = g.download(&tg).unwrap();
            worst = worst.max(check_parity(
                &format!("{label} transposed"),
                &got,
                &c.download(&tc).unwrap(),
            ));
            cases += 2;
        }
    }
    eprintln!("webgpu limits: {cases} conv / transposed-conv cases, worst max rel err {worst:e}");
}

/// Smooth RGB test images (`n` of `h`x`w`), no two alike.
fn smooth_images(n: usize, h: usize, w: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(n * h * w * 3);
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                for ch in 0..3 {
                    let (fy, fx) = (y as f32 / h as f32, x as f32 / w as f32);
                    let v = (6.0 * fy + (3.0 + ch as f32) * fx + i as f32).sin()
                        * (4.0 * fx - 2.0 * fy + ch as f32).cos();
                    rgb.push((127.5 + 120.0 * v) as u8);
                }
            }
        }
    }
    rgb
}

/// LaFAM and LaFAM-LRP maps of `images` at every stage on `ex`, in order.
fn all_maps<B: CamBackend>(
    mut ex: LrpEngine<B>,
    images: ImageBatch,
    composites: &[Composite],
) -> (LrpEngine<B>, Vec<(String, HostTensor)>) {
    let sizes = vec![(images.h, images.w); images.n];
    let mut maps = Vec::new();
    for stage in STAGES {
        for mode in [Upsample::Nearest, Upsample::Bilinear] {
            for (i, m) in ex
                .explain_method(images, Method::Lafam, stage, mode, &sizes)
                .unwrap()
                .into_iter()
                .enumerate()
            {
                maps.push((format!("lafam {stage} {mode:?} image {i}"), m));
            }
        }
        for &composite in composites {
            ex = ex.with_lrp(composite).unwrap();
            let req = Request {
                methods: vec![Method::Lafam, Method::Lrp],
                stage,
                upsample: Upsample::Bilinear,
                ..Request::default()
            };
            let out = ex.explain(images, &req, &sizes).unwrap();
            // The LRP maps themselves are compared by `lrp_matches`; LaFAM from LRP's pass.
            let lafam = out.into_iter().find(|m| m.method == Method::Lafam).unwrap();
            for (i, lafam) in lafam.maps.into_iter().enumerate() {
                maps.push((format!("lrp's lafam {composite} {stage} image {i}"), lafam));
            }
        }
    }
    (ex, maps)
}

type LrpEngine<B> = Engine<B, LrpWeights<<B as Backend>::Conv>>;

/// Whole LaFAM and LaFAM-LRP runs (every stage, both upsamplings, every LRP composite) on the
/// width-8 ResNet-50 fixture within WebGPU's limits match the CPU: the fixture images one by
/// one, and a batch of two 128x128 images (layer2/3's GEMMs there take the 128x128 tile).
#[test]
fn lafam_and_lrp_runs_match_cpu_within_webgpu_limits() {
    let file = common::fixtures().join("r50_tv.safetensors");
    let net = load_weights(&file).unwrap().net;
    let lrp = Composite::EpsilonPlusFlat;
    let mut eg = Engine::new(webgpu(), &net).unwrap().with_lrp(lrp).unwrap();
    let mut ec = Engine::new(Cpu::new(), &net).unwrap().with_lrp(lrp).unwrap();
    let m = common::manifest();
    let mut inputs: Vec<(String, Vec<u8>, usize, usize, usize)> = m["images"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, image)| {
            let (rgb, h, w) = common::read_rgb(image["file"].as_str().unwrap());
            (name.clone(), rgb, 1, h, w)
        })
        .collect();
    inputs.push((
        "2 x 128x128".into(),
        smooth_images(2, 128, 128),
        2,
        128,
        128,
    ));
    let (mut count, mut worst) = (0, (0f64, String::new()));
    for (name, rgb, n, h, w) in &inputs {
        let batch = ImageBatch::new(rgb, *n, *h, *w).unwrap();
        // Every composite on one image, the default one elsewhere (the kernels are the same).
        let composites: &[Composite] = if count == 0 {
            &Composite::ALL
        } else {
            &[Composite::EpsilonPlusFlat]
        };
        // LaFAM-LRP, taken apart (common::check_lrp_parity): its maps can differ where the
        // forward's rounding decides an ill-conditioned place (lafam_gpu::explain::ties).
        for stage in STAGES {
            for &composite in composites {
                eg = eg.with_lrp(composite).unwrap();
                ec = ec.with_lrp(composite).unwrap();
                let cmp = compare_lrp(&mut ec, &mut eg, batch, stage, NEAR_TIE_BUDGET).unwrap();
                let label = format!("{name}: lrp {composite} {stage}");
                let err = check_lrp_parity(&label, &cmp);
                if err >= worst.0 {
                    worst = (err, label);
                }
                count += 1;
            }
        }
        let got;
        let want;
        (eg, got) = all_maps(eg, batch, composites);
        (ec, want) = all_maps(ec, batch, composites);
        assert_eq!(got.len(), want.len());
        for ((label, g), (_, c)) in got.iter().zip(&want) {
            let label = format!("{name}: {label}");
            let err = check_parity(&label, g, c);
            if err >= worst.0 {
                worst = (err, label);
            }
            count += 1;
        }
    }
    eprintln!(
        "webgpu limits: {count} LaFAM / LaFAM-LRP maps, worst max rel err {:e} ({})",
        worst.0, worst.1
    );
}

/// Two 2368x2368 images: the preprocessed batch (2 x 64.2 MiB) is over the 128 MiB binding
/// limit, so the GPU runs them one at a time; the maps match the CPU's, which runs the batch
/// whole. A width-1 random ResNet-18 up to layer1 keeps it to seconds.
#[test]
fn batch_split_by_the_binding_limit_matches_cpu() {
    let spec = lafam_gpu::model::random::RandomSpec::resnet(18, 1, 5).unwrap();
    let net = lafam_gpu::model::random::random_resnet(&spec);
    let (n, h, w, stage) = (2, 2368, 2368, Stage::Layer1);
    let g = webgpu();
    assert_eq!(
        g.max_tensor_bytes(),
        128 << 20,
        "WebGPU's 128 MiB binding limit"
    );
    let mut eg = Engine::new(g, &net).unwrap();
    assert!(
        (n * h * w * 3 * 4) as u64 > 128 << 20,
        "the batch's input is over the limit"
    );
    assert_eq!(eg.max_batch(h, w, stage), 1, "the batch is split");
    let mut ec = Engine::new(Cpu::new(), &net).unwrap();
    assert!(ec.max_batch(h, w, stage) >= n, "the CPU runs it whole");
    let rgb = smooth_images(n, h, w);
    let batch = ImageBatch::new(&rgb, n, h, w).unwrap();
    let sizes = vec![(h, w); n];
    let start = std::time::Instant::now();
    let got = eg
        .explain_method(batch, Method::Lafam, stage, Upsample::Bilinear, &sizes)
        .unwrap();
    let gpu_s = start.elapsed().as_secs_f64();
    let want = ec
        .explain_method(batch, Method::Lafam, stage, Upsample::Bilinear, &sizes)
        .unwrap();
    let mut worst = 0f64;
    for (i, (g, c)) in got.iter().zip(&want).enumerate() {
        worst = worst.max(check_parity(&format!("split batch, image {i}"), g, c));
    }
    eprintln!(
        "split batch of {n} x {h}x{w} (chunks of 1): GPU {gpu_s:.2} s, worst max rel err {worst:e}"
    );
}
