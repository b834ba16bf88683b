//! GPU-vs-CPU parity of the baseline ops (`CamBackend`), op by op, with odd sizes, batches
//! and views at unaligned element offsets. Runs on whatever adapter wgpu finds (lavapipe in
//! CI) and FAILS when there is none.

mod common;

use common::{check_parity, gpu, gpu_view, random_tensor};
use lafam_gpu::backend::{CamBackend, GramOver};
use lafam_gpu::cpu::Cpu;
use lafam_gpu::gpu::{Gpu, GpuTensor};
use lafam_gpu::{Backend, Shape};

#[test]
fn cam_ops_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    for (n, h, w, ch) in [
        (1usize, 7usize, 7usize, 37usize),
        (3, 5, 9, 8),
        (2, 13, 11, 3),
    ] {
        for off in [0usize, 3] {
            let tag = format!("[{n},{h},{w},{ch}] off {off}");
            let x = random_tensor(Shape::new(n, h, w, ch), -1.0, 2.0, (n * 100 + ch) as u64);
            let (xg, xc) = (gpu_view(&mut g, &x, off), c.upload(&x).unwrap());
            let dl = |g: &mut Gpu, t: &GpuTensor| g.download(t).unwrap();

            let mg = g.spatial_mean(&xg).unwrap();
            let mc = c.spatial_mean(&xc).unwrap();
            check_parity(
                &format!("spatial_mean {tag}"),
                &dl(&mut g, &mg),
                &c.download(&mc).unwrap(),
            );

            let v = random_tensor(Shape::new(n, 1, 1, ch), -1.0, 1.0, 5);
            let (vg, vc) = (gpu_view(&mut g, &v, off), c.upload(&v).unwrap());
            let bg = g.broadcast_spatial(&vg, h, w, 0.3).unwrap();
            let bc = c.broadcast_spatial(&vc, h, w, 0.3).unwrap();
            check_parity(
                &format!("broadcast_spatial {tag}"),
                &dl(&mut g, &bg),
                &c.download(&bc).unwrap(),
            );

            let gr = random_tensor(x.shape, -1.0, 1.0, 9);
            let (grg, grc) = (gpu_view(&mut g, &gr, off + 1), c.upload(&gr).unwrap());
            let rg = g.relu_backward(&grg, &xg).unwrap();
            let rc = c.relu_backward(&grc, &xc).unwrap();
            check_parity(
                &format!("relu_backward {tag}"),
                &dl(&mut g, &rg),
                &c.download(&rc).unwrap(),
            );

            for (mean, relu) in [(false, true), (true, false)] {
                let pg = g
                    .channel_projection(&xg, &vg, mean.then_some(&mg), relu)
                    .unwrap();
                let pc = c
                    .channel_projection(&xc, &vc, mean.then_some(&mc), relu)
                    .unwrap();
                check_parity(
                    &format!("channel_projection mean {mean} relu {relu} {tag}"),
                    &dl(&mut g, &pg),
                    &c.download(&pc).unwrap(),
                );
            }
            for over in [GramOver::Pixels, GramOver::Channels] {
                let kg = g.centred_gram(&xg, &mg, over).unwrap();
                let kc = c.centred_gram(&xc, &mc, over).unwrap();
                check_parity(
                    &format!("centred_gram {over:?} {tag}"),
                    &dl(&mut g, &kg),
                    &c.download(&kc).unwrap(),
                );
            }
        }
    }
}

#[test]
fn relax_ops_match_cpu() {
    let (mut g, mut c) = (gpu(), Cpu::new());
    for (h, w, count, start, seed) in [
        (4usize, 4usize, 3usize, 0u32, 0u64),
        (37, 23, 5, 1000, 1 << 40 | 3),
        (64, 64, 7, 7, 5),
    ] {
        let tag = format!("{h}x{w} masks {start}..+{count} seed {seed}");
        let mg = g.relax_masks(seed, start, count, h, w).unwrap();
        let mc = c.relax_masks(seed, start, count, h, w).unwrap();
        let mgh = g.download(&mg).unwrap();
        check_parity(
            &format!("relax_masks {tag}"),
            &mgh,
            &c.download(&mc).unwrap(),
        );
        let host = lafam_gpu::explain::relax::host_masks(seed, start, count, h, w);
        check_parity(&format!("relax_masks vs host {tag}"), &mgh, &host);

        let x = random_tensor(Shape::new(1, h, w, 3), -2.0, 2.0, 3);
        let (xg, xc) = (gpu_view(&mut g, &x, 1), c.upload(&x).unwrap());
        let ig = g.mask_images(&xg, &mg).unwrap();
        let ic = c.mask_images(&xc, &mc).unwrap();
        check_parity(
            &format!("mask_images {tag}"),
            &g.download(&ig).unwrap(),
            &c.download(&ic).unwrap(),
        );

        let e = random_tensor(Shape::new(count, 1, 1, 19), -1.0, 1.0, 4);
        let r = random_tensor(Shape::new(1, 1, 1, 19), -1.0, 1.0, 6);
        let (eg, ec) = (gpu_view(&mut g, &e, 2), c.upload(&e).unwrap());
        let (rg, rc) = (gpu_view(&mut g, &r, 5), c.upload(&r).unwrap());
        let sg = g.cosine_similarity(&eg, &rg).unwrap();
        let sc = c.cosine_similarity(&ec, &rc).unwrap();
        check_parity(
            &format!("cosine_similarity {tag}"),
            &g.download(&sg).unwrap(),
            &c.download(&sc).unwrap(),
        );

        let a1g = g.relax_accumulate(None, &mg, &sg, 0.25).unwrap();
        let a1c = c.relax_accumulate(None, &mc, &sc, 0.25).unwrap();
        let a2g = g.relax_accumulate(Some(&a1g), &mg, &sg, 0.25).unwrap();
        let a2c = c.relax_accumulate(Some(&a1c), &mc, &sc, 0.25).unwrap();
        check_parity(
            &format!("relax_accumulate {tag}"),
            &g.download(&a1g).unwrap(),
            &c.download(&a1c).unwrap(),
        );
        check_parity(
            &format!("relax_accumulate with sums {tag}"),
            &g.download(&a2g).unwrap(),
            &c.download(&a2c).unwrap(),
        );
    }
}
