//! Colormaps for attribution maps and overlays on the input image.

use image::{Rgb, RgbImage};
use std::sync::OnceLock;

fn lut(
    cell: &'static OnceLock<[[u8; 3]; 256]>,
    f: impl Fn(f64) -> colorous::Color,
) -> &'static [[u8; 3]; 256] {
    cell.get_or_init(|| {
        let mut t = [[0u8; 3]; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let c = f(i as f64 / 255.0);
            *e = [c.r, c.g, c.b];
        }
        t
    })
}

fn inferno() -> &'static [[u8; 3]; 256] {
    static L: OnceLock<[[u8; 3]; 256]> = OnceLock::new();
    lut(&L, |t| colorous::INFERNO.eval_continuous(t))
}

/// Reversed RdBu: 0 = blue (negative), 0.5 = white (zero), 1 = red (positive).
fn blue_white_red() -> &'static [[u8; 3]; 256] {
    static L: OnceLock<[[u8; 3]; 256]> = OnceLock::new();
    lut(&L, |t| colorous::RED_BLUE.eval_continuous(1.0 - t))
}

fn index(t: f32) -> usize {
    if t.is_nan() {
        return 0;
    }
    (t.clamp(0.0, 1.0) * 255.0).round() as usize
}

fn paint(
    map: &[f32],
    h: usize,
    w: usize,
    table: &[[u8; 3]; 256],
    to_unit: impl Fn(f32) -> f32,
) -> RgbImage {
    assert_eq!(
        map.len(),
        h * w,
        "map of {} values is not {h}x{w}",
        map.len()
    );
    let mut buf = Vec::with_capacity(h * w * 3);
    for &v in map {
        buf.extend_from_slice(&table[index(to_unit(v))]);
    }
    RgbImage::from_raw(w as u32, h as u32, buf).expect("buffer sized h*w*3")
}

/// A row-major `h`x`w` map in [0, 1] (values outside are clamped, NaN counts as 0) painted
/// with the perceptually uniform, sequential INFERNO colormap (black -> purple -> yellow).
pub fn heatmap(map: &[f32], h: usize, w: usize) -> RgbImage {
    paint(map, h, w, inferno(), |v| v)
}

/// A signed map painted with a diverging colormap centred on zero (reversed RdBu: positive
/// red, negative blue, zero white), scaled by `max |v|` so the sign is never distorted.
pub fn heatmap_diverging(map: &[f32], h: usize, w: usize) -> RgbImage {
    let m = map
        .iter()
        .filter(|v| v.is_finite())
        .fold(0f32, |m, v| m.max(v.abs()));
    let scale = if m > 0.0 { 0.5 / m } else { 0.0 };
    paint(map, h, w, blue_white_red(), |v| {
        if v.is_finite() {
            0.5 + v * scale
        } else {
            0.5
        }
    })
}

/// Blends `heat` over `image` (same size): `(1 - alpha) * image + alpha * heat`, alpha
/// clamped to [0, 1].
pub fn overlay(image: &RgbImage, heat: &RgbImage, alpha: f32) -> RgbImage {
    assert_eq!(
        image.dimensions(),
        heat.dimensions(),
        "overlay of differently sized images"
    );
    let a = alpha.clamp(0.0, 1.0);
    let mut out = RgbImage::new(image.width(), image.height());
    for ((o, i), h) in out.pixels_mut().zip(image.pixels()).zip(heat.pixels()) {
        *o = Rgb([0, 1, 2].map(|c| {
            ((1.0 - a) * i[c] as f32 + a * h[c] as f32)
                .round()
                .clamp(0.0, 255.0) as u8
        }));
    }
    out
}
