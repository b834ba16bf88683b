//! The shape rules are the backends' shared contract (src/ops/shapes.rs, enforced by the
//! provided methods of `Backend`, `LrpBackend` and `CamBackend`): the GPU and the CPU refuse
//! the same bad operands with the same message. Runs on whatever adapter wgpu finds
//! (lavapipe in CI) and FAILS when there is none.

#![allow(dead_code)]

mod common;

use common::{gpu, random_conv, random_tensor};
use lafam_gpu::backend::{CamBackend, GateSign, GramOver, Pool};
use lafam_gpu::cpu::Cpu;
use lafam_gpu::{Shape, Upsample};

/// A named call of a backend op that must fail.
type Call<'a, B> = (&'a str, Box<dyn Fn(&mut B) -> anyhow::Result<()> + 'a>);

/// Runs every bad call on `b` and returns its error messages, in order. Each call must fail.
fn refusals<B: CamBackend>(b: &mut B) -> Vec<String> {
    let up = |b: &mut B, s: Shape, seed| b.upload(&random_tensor(s, -1.0, 1.0, seed)).unwrap();
    let conv = b.prepare_conv(&random_conv(4, 8, 3, 1, 1, 1)).unwrap();
    let x = up(b, Shape::new(2, 6, 5, 4), 2);
    let y = up(b, Shape::new(2, 6, 5, 8), 3);
    let odd = up(b, Shape::new(2, 6, 5, 3), 4);
    let small = up(b, Shape::new(1, 2, 2, 4), 5);
    let vec = up(b, Shape::new(2, 1, 1, 4), 6);
    let masks = up(b, Shape::new(3, 6, 5, 1), 7);
    let one = up(b, Shape::new(1, 6, 5, 4), 8);
    let stem = Pool::RESNET_STEM;
    let calls: Vec<Call<B>> = vec![
        (
            "preprocess bytes",
            Box::new(|b| b.preprocess(&[0; 10], 1, 2, 2).map(drop)),
        ),
        (
            "preprocess empty",
            Box::new(|b| b.preprocess(&[], 0, 2, 2).map(drop)),
        ),
        (
            "conv2d channels",
            Box::new(|b| b.conv2d(&odd, &conv, None, true).map(drop)),
        ),
        (
            "conv2d residual",
            Box::new(|b| b.conv2d(&x, &conv, Some(&x), true).map(drop)),
        ),
        (
            "max_pool window",
            Box::new(|b| {
                let p = Pool {
                    kernel: 3,
                    stride: 1,
                    pad: 0,
                };
                b.max_pool(&small, p).map(drop)
            }),
        ),
        (
            "max_pool padding",
            Box::new(|b| {
                let p = Pool {
                    kernel: 3,
                    stride: 2,
                    pad: 2,
                };
                b.max_pool(&x, p).map(drop)
            }),
        ),
        (
            "resize empty",
            Box::new(|b| b.resize(&x, 0, 5, Upsample::Bilinear).map(drop)),
        ),
        (
            "lrp_ratio",
            Box::new(|b| b.lrp_ratio(&x, &y, None).map(drop)),
        ),
        (
            "lrp_ratio gate",
            Box::new(|b| {
                b.lrp_ratio(&x, &x, Some((&y, GateSign::Negative)))
                    .map(drop)
            }),
        ),
        (
            "conv2d_ratio",
            Box::new(|b| b.conv2d_ratio(&x, &conv, &x).map(drop)),
        ),
        (
            "conv_transpose",
            Box::new(|b| b.conv_transpose(&x, &conv, 6, 5, None, 1.0, None).map(drop)),
        ),
        (
            "conv_transpose acc",
            Box::new(|b| {
                b.conv_transpose(&y, &conv, 6, 5, None, 1.0, Some(&y))
                    .map(drop)
            }),
        ),
        (
            "residual_split",
            Box::new(|b| b.residual_split(&x, &x, &y).map(drop)),
        ),
        (
            "residual_split_relu",
            Box::new(|b| b.residual_split_relu(&x, &y, &x).map(drop)),
        ),
        (
            "max_pool_backward",
            Box::new(|b| b.max_pool_backward(&x, &x, stem).map(drop)),
        ),
        (
            "lincomb",
            Box::new(|b| b.lincomb(&x, 1.0, Some(&y), 1.0).map(drop)),
        ),
        ("add_relu", Box::new(|b| b.add_relu(&x, &y).map(drop))),
        ("clamp order", Box::new(|b| b.clamp(&x, 1.0, 0.0).map(drop))),
        (
            "clamp NaN",
            Box::new(|b| b.clamp(&x, f32::NAN, 0.0).map(drop)),
        ),
        (
            "fill_channels",
            Box::new(|b| b.fill_channels(Shape::new(1, 2, 2, 3), &[1.0]).map(drop)),
        ),
        (
            "broadcast_spatial",
            Box::new(|b| b.broadcast_spatial(&x, 3, 3, 1.0).map(drop)),
        ),
        (
            "relu_backward",
            Box::new(|b| b.relu_backward(&x, &y).map(drop)),
        ),
        (
            "channel_projection",
            Box::new(|b| b.channel_projection(&x, &x, None, false).map(drop)),
        ),
        (
            "channel_projection mean",
            Box::new(|b| b.channel_projection(&x, &vec, Some(&x), false).map(drop)),
        ),
        (
            "centred_gram",
            Box::new(|b| b.centred_gram(&x, &x, GramOver::Channels).map(drop)),
        ),
        (
            "relax_masks size",
            Box::new(|b| b.relax_masks(1, 0, 2, 3, 8).map(drop)),
        ),
        (
            "relax_masks index",
            Box::new(|b| b.relax_masks(1, u32::MAX, 2, 8, 8).map(drop)),
        ),
        (
            "mask_images",
            Box::new(|b| b.mask_images(&x, &masks).map(drop)),
        ),
        (
            "cosine_similarity",
            Box::new(|b| b.cosine_similarity(&vec, &vec).map(drop)),
        ),
        (
            "relax_accumulate",
            Box::new(|b| b.relax_accumulate(None, &masks, &vec, 0.0).map(drop)),
        ),
        (
            "relax_accumulate sums",
            Box::new(|b| {
                let sims = b.upload(&random_tensor(Shape::new(3, 1, 1, 1), 0.0, 1.0, 9))?;
                b.relax_accumulate(Some(&one), &masks, &sims, 0.0).map(drop)
            }),
        ),
    ];
    calls
        .iter()
        .map(|(name, call)| match call(b) {
            Ok(()) => panic!("{name}: {} accepted a bad shape", b.name()),
            Err(e) => format!("{name}: {e:#}"),
        })
        .collect()
}

#[test]
fn both_backends_refuse_bad_shapes_alike() {
    let mut g = gpu();
    let mut c = Cpu::new();
    let (from_gpu, from_cpu) = (refusals(&mut g), refusals(&mut c));
    for (a, b) in from_gpu.iter().zip(&from_cpu) {
        assert_eq!(a, b, "the GPU and the CPU word a refusal differently");
    }
    assert_eq!(from_gpu.len(), from_cpu.len());
    eprintln!(
        "{} refusals, alike:\n  {}",
        from_cpu.len(),
        from_cpu.join("\n  ")
    );
}
