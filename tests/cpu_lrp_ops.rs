//! CPU LRP ops checked by identities that do not depend on another implementation:
//! the transposed conv is the adjoint of the conv, max-pool backward conserves and routes
//! to the window maximum.

mod common;

use common::{random_conv, random_tensor, RESNET_CONVS};
use lafam_gpu::backend::{LrpBackend, Pool};
use lafam_gpu::cpu::Cpu;
use lafam_gpu::{Backend, Shape};

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[test]
fn conv_transpose_is_the_adjoint_of_conv() {
    let mut cpu = Cpu::new();
    for (i, &(k, stride, pad)) in RESNET_CONVS.iter().enumerate() {
        for &(h, w) in &[(13, 9), (16, 16)] {
            let mut conv = random_conv(5, 7, k, stride, pad, i as u64);
            conv.bias.fill(0.0);
            let x = random_tensor(Shape::new(2, h, w, 5), -1.0, 1.0, 10 + i as u64);
            let (ho, wo) = conv.out_size(h, w);
            let s = random_tensor(Shape::new(2, ho, wo, 7), -1.0, 1.0, 20 + i as u64);
            let pc = cpu.prepare_conv(&conv).unwrap();
            let xt = cpu.upload(&x).unwrap();
            let st = cpu.upload(&s).unwrap();
            let y = cpu.conv2d(&xt, &pc, None, false).unwrap();
            let g = cpu.conv_transpose(&st, &pc, h, w, None, 1.0, None).unwrap();
            let lhs = dot(&cpu.download(&y).unwrap().data, &s.data);
            let rhs = dot(&x.data, &cpu.download(&g).unwrap().data);
            assert!((lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0), "{}: <conv x, s> = {lhs}, <x, convT s> = {rhs}", conv.name);
            // The fused epilogue: scale * mul ⊙ convT(s) + acc.
            let mul = random_tensor(x.shape, 0.0, 2.0, 30).data;
            let acc = random_tensor(x.shape, -1.0, 1.0, 31).data;
            let (mt, at) = (
                cpu.upload(&lafam_gpu::HostTensor::new(x.shape, mul.clone())).unwrap(),
                cpu.upload(&lafam_gpu::HostTensor::new(x.shape, acc.clone())).unwrap(),
            );
            let fused = cpu.conv_transpose(&st, &pc, h, w, Some(&mt), -2.0, Some(&at)).unwrap();
            let fused = cpu.download(&fused).unwrap();
            let plain = cpu.download(&g).unwrap();
            for j in 0..fused.data.len() {
                let want = -2.0 * mul[j] * plain.data[j] + acc[j];
                assert!((fused.data[j] - want).abs() <= 1e-5 * (1.0 + want.abs()), "{}: epilogue at {j}", conv.name);
            }
        }
    }
}

#[test]
fn max_pool_backward_routes_to_first_maximum_and_conserves() {
    let mut cpu = Cpu::new();
    let shape = Shape::new(2, 11, 8, 3);
    let mut x = random_tensor(shape, -1.0, 1.0, 1);
    // Ties: a block of equal values, as ReLU zeros produce.
    for v in x.data.iter_mut().take(40) {
        *v = 0.5;
    }
    let pool = Pool::RESNET_STEM;
    let (ho, wo) = pool.out_size(shape.h, shape.w);
    let r = random_tensor(Shape::new(2, ho, wo, 3), 0.0, 1.0, 2);
    let xt = cpu.upload(&x).unwrap();
    let rt = cpu.upload(&r).unwrap();
    let g = cpu.max_pool_backward(&xt, &rt, pool).unwrap();
    let g = cpu.download(&g).unwrap();
    let (sum_r, sum_g): (f64, f64) = (r.data.iter().map(|&v| v as f64).sum(), g.data.iter().map(|&v| v as f64).sum());
    assert!((sum_r - sum_g).abs() < 1e-4 * sum_r, "max-pool backward must conserve: {sum_r} vs {sum_g}");
    // Naive check: every output's relevance lands on the first maximum of its window.
    let mut want = vec![0f32; shape.len()];
    for n in 0..2 {
        for oy in 0..ho {
            for ox in 0..wo {
                for c in 0..3 {
                    let mut best = (f32::NEG_INFINITY, usize::MAX);
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                            if iy < 0 || ix < 0 || iy >= 11 || ix >= 8 {
                                continue;
                            }
                            let i = ((n * 11 + iy as usize) * 8 + ix as usize) * 3 + c;
                            if x.data[i] > best.0 {
                                best = (x.data[i], i);
                            }
                        }
                    }
                    want[best.1] += r.data[((n * ho + oy) * wo + ox) * 3 + c];
                }
            }
        }
    }
    assert_eq!(g.data, want);
}
