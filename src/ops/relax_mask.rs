//! The RELAX occlusion masks, shared by both backends (`relax_masks`) and the tests: a 7x7
//! grid of Bernoulli(0.5) cells, bilinearly upsampled to the image (torch `interpolate`,
//! `align_corners=False`), reflect-padded by 3 pixels and cropped back at a random shift of
//! 0..=6 pixels per axis, from a counter-based generator so that mask `i` of seed `S` is the
//! same on every backend and in any batch split. `pcg(v)` is the PCG-RXS-M-XS 32-bit hash
//! (Jarzynski & Olano 2020), `key = pcg(seed_lo ^ pcg(seed_hi))`, `k_i = pcg(key ^ pcg(i))`,
//! `r_i(j) = pcg(k_i ^ pcg(j ^ 0x9E3779B9))`; cell `j = 7 gy + gx` is 1 when the top bit of
//! `r_i(j)` is set; the shifts are `r_i(49) mod 7` (rows) and `r_i(50) mod 7` (columns).
//! The WGSL twin is `relax_masks` in `shaders/cam.wgsl`; `tests/fixtures/gen_baselines.py`
//! reimplements the generator in numpy.

use crate::tensor::{HostTensor, Shape};

/// Grid cells per side.
pub const CELLS: usize = 7;
/// Reflect padding of the upsampled grid (`CELLS / 2`); shifts are `0..=2 * PAD`.
pub const PAD: usize = CELLS / 2;

/// PCG-RXS-M-XS 32-bit hash.
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// The per-seed constants of the mask generator for `h`x`w` images.
#[derive(Clone, Copy, Debug)]
pub struct MaskStream {
    pub key: u32,
    pub h: usize,
    pub w: usize,
}

impl MaskStream {
    pub fn new(seed: u64, h: usize, w: usize) -> Self {
        MaskStream {
            key: seed_key(seed),
            h,
            w,
        }
    }
}

pub fn seed_key(seed: u64) -> u32 {
    pcg(seed as u32 ^ pcg((seed >> 32) as u32))
}

/// `r_i(j)`: random word `j` of mask `i`.
pub fn mask_word(key: u32, i: u32, j: u32) -> u32 {
    pcg(pcg(key ^ pcg(i)) ^ pcg(j ^ 0x9E37_79B9))
}

/// Source index pair and weight of torch's bilinear upsampling (`align_corners=False`) from
/// `CELLS` to `size` at output coordinate `q`.
fn tap(q: usize, size: usize) -> (usize, usize, f32) {
    let scale = CELLS as f32 / size as f32;
    let src = ((q as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(CELLS - 1);
    let i1 = (i0 + 1).min(CELLS - 1);
    (i0, i1, src - i0 as f32)
}

/// torch's `reflect` padding: padded coordinate `p` (0..size + 2 PAD) to a source coordinate.
fn reflect(p: usize, size: usize) -> usize {
    let q = p as isize - PAD as isize;
    let q = if q < 0 { -q } else { q };
    let last = size as isize - 1;
    (if q > last { 2 * last - q } else { q }) as usize
}

/// Mask `i` at pixel (`y`, `x`). The WGSL twin is `relax_masks` in `shaders/cam.wgsl`.
pub fn mask_value(s: &MaskStream, i: u32, y: usize, x: usize) -> f32 {
    let sy = (mask_word(s.key, i, 49) % CELLS as u32) as usize;
    let sx = (mask_word(s.key, i, 50) % CELLS as u32) as usize;
    let (y0, y1, ty) = tap(reflect(y + sy, s.h), s.h);
    let (x0, x1, tx) = tap(reflect(x + sx, s.w), s.w);
    let cell = |gy: usize, gx: usize| (mask_word(s.key, i, (gy * CELLS + gx) as u32) >> 31) as f32;
    let top = cell(y0, x0) * (1.0 - tx) + cell(y0, x1) * tx;
    let bottom = cell(y1, x0) * (1.0 - tx) + cell(y1, x1) * tx;
    top * (1.0 - ty) + bottom * ty
}

/// The backend-independent part of a RELAX run, for tests: the masks `start..start+count`.
pub fn host_masks(seed: u64, start: u32, count: usize, h: usize, w: usize) -> HostTensor {
    let s = MaskStream::new(seed, h, w);
    let mut data = Vec::with_capacity(count * h * w);
    for b in 0..count {
        for y in 0..h {
            for x in 0..w {
                data.push(mask_value(&s, start + b as u32, y, x));
            }
        }
    }
    HostTensor::new(Shape::new(count, h, w, 1), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_half_on_and_in_range() {
        let m = host_masks(7, 0, 200, 32, 32);
        let mean = m.data.iter().map(|&v| v as f64).sum::<f64>() / m.data.len() as f64;
        assert!((mean - 0.5).abs() < 0.03, "mean mask value {mean}");
        assert!(m.data.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }

    #[test]
    fn reflect_matches_torch() {
        // torch reflect pad 3 of [0..5]: 3 2 1 | 0 1 2 3 4 | 3 2 1
        let got: Vec<usize> = (0..11).map(|p| reflect(p, 5)).collect();
        assert_eq!(got, [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]);
    }
}
