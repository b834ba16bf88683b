//! Colormaps for attribution maps and overlays on the input image.

use image::{Rgb, RgbImage};
use std::sync::OnceLock;

/// Blend factor of the heatmap over the image in the CLI's `*.overlay.png` (sequential
/// colormaps).
pub const OVERLAY_ALPHA: f32 = 0.5;

/// How a map is shown as an image (the values themselves are written as they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Display {
    /// Values in [0, 1]: a sequential colormap.
    Unit,
    /// Signed relevance: a diverging colormap centred on zero.
    Signed,
    /// Any range (similarities, variances): min-max scaled for display only.
    Scaled,
}

/// A map drawn as the CLI draws it: the heatmap and the heatmap over `original` (same size
/// as the map, `original.height() * original.width()` values, row-major). `Unit` maps are
/// painted with INFERNO and blended with `alpha` ([`OVERLAY_ALPHA`] in the CLI); `Scaled`
/// maps are min-max scaled (finite values) first; `Signed` maps get the diverging colormap
/// and [`overlay_relevance`], whose opacity follows `|v|` (`alpha` does not apply).
pub fn render_map(
    map: &[f32],
    original: &RgbImage,
    display: Display,
    alpha: f32,
) -> (RgbImage, RgbImage) {
    let (w, h) = (original.width() as usize, original.height() as usize);
    // Relevance is signed: a diverging colormap centred on zero. LaFAM and the CAMs are in
    // [0, 1]; RELAX's maps (raw similarities, variances) are min-max scaled for display only.
    match display {
        Display::Unit => {
            let heat = heatmap(map, h, w);
            let blended = overlay(original, &heat, alpha);
            (heat, blended)
        }
        Display::Scaled => {
            let (lo, hi) = map
                .iter()
                .filter(|v| v.is_finite())
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                    (l.min(v), h.max(v))
                });
            let scaled: Vec<f32> = map
                .iter()
                .map(|&v| (v - lo) / (hi - lo).max(1e-12))
                .collect();
            let heat = heatmap(&scaled, h, w);
            let blended = overlay(original, &heat, alpha);
            (heat, blended)
        }
        Display::Signed => {
            let heat = heatmap_diverging(map, h, w);
            let blended = overlay_relevance(original, map, &heat);
            (heat, blended)
        }
    }
}

/// The colours a map is painted with (`run --colormap`). [`Colormap::Auto`] is what the CLI
/// always did: INFERNO for maps in [0, 1] and min-max scaled maps, the diverging
/// blue-white-red map for signed relevance. A named colormap paints every map: each map is
/// first brought to [0, 1] as its [`Display`] says (unit: as is; scaled: min-max; signed:
/// `0.5 + v / (2 * relevance_scale)`, so zero is the colormap's middle), so a sequential
/// colormap on a signed map shows negative as its dark end, and a diverging one on a unit
/// map puts 0.5 at its white middle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Colormap {
    #[default]
    Auto,
    Inferno,
    Viridis,
    Magma,
    Cividis,
    Turbo,
    Greys,
    /// Diverging: reversed RdBu (blue, white, red).
    BlueWhiteRed,
    /// Diverging: PuOr (orange, white, purple), readable with red-green colour blindness.
    PurpleOrange,
}

impl Colormap {
    /// Every colormap, in `--help` order.
    pub const ALL: [Colormap; 9] = [
        Colormap::Auto,
        Colormap::Inferno,
        Colormap::Viridis,
        Colormap::Magma,
        Colormap::Cividis,
        Colormap::Turbo,
        Colormap::Greys,
        Colormap::BlueWhiteRed,
        Colormap::PurpleOrange,
    ];

    /// The name on the command line and in PNG text chunks.
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Auto => "auto",
            Colormap::Inferno => "inferno",
            Colormap::Viridis => "viridis",
            Colormap::Magma => "magma",
            Colormap::Cividis => "cividis",
            Colormap::Turbo => "turbo",
            Colormap::Greys => "greys",
            Colormap::BlueWhiteRed => "blue-white-red",
            Colormap::PurpleOrange => "purple-orange",
        }
    }

    /// One line for `--help`.
    pub fn about(self) -> &'static str {
        match self {
            Colormap::Auto => "inferno for maps in [0, 1] and scaled maps, blue-white-red for signed relevance (LRP, concepts)",
            Colormap::Inferno => "sequential, perceptually uniform: black, purple, yellow",
            Colormap::Viridis => "sequential, perceptually uniform: purple, green, yellow",
            Colormap::Magma => "sequential, perceptually uniform: black, purple, cream",
            Colormap::Cividis => "sequential, uniform for colour-blind readers: blue, yellow",
            Colormap::Turbo => "rainbow-like, high contrast (not perceptually uniform)",
            Colormap::Greys => "sequential: white to black",
            Colormap::BlueWhiteRed => "diverging, reversed RdBu: blue (negative), white (zero), red (positive)",
            Colormap::PurpleOrange => "diverging, PuOr: orange (negative), white, purple (positive); colour-blind safe",
        }
    }

    /// The concrete colormap a map of kind `display` is painted with.
    pub fn resolve(self, display: Display) -> Colormap {
        match (self, display) {
            (Colormap::Auto, Display::Signed) => Colormap::BlueWhiteRed,
            (Colormap::Auto, _) => Colormap::Inferno,
            (c, _) => c,
        }
    }

    /// The colormap's 256 colours, `t = 0` first ([`Colormap::Auto`]: INFERNO's).
    pub fn table(self) -> &'static [[u8; 3]; 256] {
        match self {
            Colormap::Auto | Colormap::Inferno => inferno(),
            Colormap::BlueWhiteRed => blue_white_red(),
            Colormap::Viridis => {
                static L: OnceLock<[[u8; 3]; 256]> = OnceLock::new();
                lut(&L, |t| colorous::VIRIDIS.eval_continuous(t))
            }
            Colormap::Magma => {
                static L: OnceLock<[[u8; 3]; 256]> = OnceLock::new();
                lut(&L, |t| colorous::MAGMA.eval_continuous(t))
            }
            Colormap::Cividis => {
                static L: OnceLock<[[u8; 3]; 256]> = OnceLock::new();
                lut(&L, |t| colorous::CIVIDIS.eval_continuous(t))
            }
            Colormap::Turbo => {
                static L: OnceLock<[[u8; 3]; 256]> = OnceLock::new();
                lut(&L, |t| colorous::TURBO.eval_continuous(t))
            }
            Colormap::Greys => {
                static L: OnceLock<[[u8; 3]; 256]> = OnceLock::new();
                lut(&L, |t| colorous::GREYS.eval_continuous(t))
            }
            Colormap::PurpleOrange => {
                static L: OnceLock<[[u8; 3]; 256]> = OnceLock::new();
                lut(&L, |t| colorous::PURPLE_ORANGE.eval_continuous(t))
            }
        }
    }
}

impl std::fmt::Display for Colormap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Colormap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Colormap::ALL
            .iter()
            .copied()
            .find(|c| c.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Colormap::ALL.iter().map(|c| c.name()).collect();
                format!("unknown colormap '{s}' (known: {})", names.join(", "))
            })
    }
}

/// How maps are drawn: the colormap and the overlay's opacity.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Style {
    pub colormap: Colormap,
    /// Opacity of the heatmap over the image, in [0, 1]. None: the CLI's defaults,
    /// [`OVERLAY_ALPHA`] for unit and scaled maps; for signed maps an opacity that grows with
    /// `|v|` up to [`SIGNED_MAX_ALPHA`]. Given, it is the blend of unit and scaled maps and
    /// the largest opacity of signed ones.
    pub alpha: Option<f32>,
}

/// The largest opacity of a signed map's colour over its image (at `|v| >= relevance_scale`).
pub const SIGNED_MAX_ALPHA: f32 = 0.9;

/// What the colour bar of a map means: its values at the colormap's two ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    /// The value painted with the colormap's first colour.
    pub lo: f32,
    /// The value painted with its last colour.
    pub hi: f32,
}

/// The values at the two ends of the colormap for a map of kind `display` (unit: 0 and 1;
/// scaled: the finite minimum and maximum; signed: `±relevance_scale`).
pub fn display_scale(map: &[f32], display: Display) -> Scale {
    match display {
        Display::Unit => Scale { lo: 0.0, hi: 1.0 },
        Display::Scaled => {
            let (lo, hi) = finite_range(map);
            Scale { lo, hi }
        }
        Display::Signed => {
            let m = relevance_scale(map);
            Scale { lo: -m, hi: m }
        }
    }
}

/// The smallest and largest finite values ((0, 0) when there are none).
pub fn finite_range(map: &[f32]) -> (f32, f32) {
    let (lo, hi) = map
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// A map drawn in `style`: the heatmap and the heatmap over `original` (see [`render_map`],
/// which is this with [`Colormap::Auto`]).
pub fn render_map_styled(
    map: &[f32],
    original: &RgbImage,
    display: Display,
    style: Style,
) -> (RgbImage, RgbImage) {
    let (w, h) = (original.width() as usize, original.height() as usize);
    let table = style.colormap.resolve(display).table();
    let scale = display_scale(map, display);
    // As the CLI always drew them: NaN at the colormap's start (infinities clamped) for unit
    // and scaled maps; non-finite values at the middle of signed ones.
    let heat = paint(map, h, w, table, |v| match display {
        Display::Unit => v,
        Display::Scaled => (v - scale.lo) / (scale.hi - scale.lo).max(1e-12),
        Display::Signed if scale.hi > 0.0 && v.is_finite() => 0.5 + v * 0.5 / scale.hi,
        Display::Signed => 0.5,
    });
    let blended = match display {
        Display::Unit | Display::Scaled => {
            overlay(original, &heat, style.alpha.unwrap_or(OVERLAY_ALPHA))
        }
        Display::Signed => overlay_relevance_max(
            original,
            map,
            &heat,
            style.alpha.unwrap_or(SIGNED_MAX_ALPHA),
        ),
    };
    (heat, blended)
}

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

/// The magnitude that maps to full colour in signed (relevance) maps: the 99.5th percentile
/// of `|v|`. LRP maps are heavy-tailed; scaling by the maximum would leave all but a few
/// pixels white. Larger values saturate; the sign is never distorted.
pub fn relevance_scale(map: &[f32]) -> f32 {
    let mut mags: Vec<f32> = map
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs())
        .collect();
    if mags.is_empty() {
        return 0.0;
    }
    let k = ((mags.len() - 1) as f64 * 0.995).round() as usize;
    let (_, kth, _) = mags.select_nth_unstable_by(k, f32::total_cmp);
    if *kth > 0.0 {
        *kth
    } else {
        mags.iter().fold(0f32, |m, &v| m.max(v))
    }
}

/// A signed map painted with a diverging colormap centred on zero (reversed RdBu: positive
/// red, negative blue, zero white), `±relevance_scale` at the ends.
pub fn heatmap_diverging(map: &[f32], h: usize, w: usize) -> RgbImage {
    let m = relevance_scale(map);
    let scale = if m > 0.0 { 0.5 / m } else { 0.0 };
    paint(map, h, w, blue_white_red(), |v| {
        if v.is_finite() {
            0.5 + v * scale
        } else {
            0.5
        }
    })
}

/// A signed map over its image: the image in dimmed grey, the heat colour blended in with
/// an opacity that grows with `|v| / relevance_scale` (zero relevance shows the image).
pub fn overlay_relevance(image: &RgbImage, map: &[f32], heat: &RgbImage) -> RgbImage {
    overlay_relevance_max(image, map, heat, SIGNED_MAX_ALPHA)
}

/// [`overlay_relevance`] with the largest opacity `max_alpha` (clamped to [0, 1]) instead of
/// [`SIGNED_MAX_ALPHA`].
pub fn overlay_relevance_max(
    image: &RgbImage,
    map: &[f32],
    heat: &RgbImage,
    max_alpha: f32,
) -> RgbImage {
    let max_alpha = if max_alpha.is_nan() {
        0.0
    } else {
        max_alpha.clamp(0.0, 1.0)
    };
    assert_eq!(
        image.dimensions(),
        heat.dimensions(),
        "overlay of differently sized images"
    );
    let m = relevance_scale(map);
    let mut out = RgbImage::new(image.width(), image.height());
    for (((o, i), h), &v) in out
        .pixels_mut()
        .zip(image.pixels())
        .zip(heat.pixels())
        .zip(map)
    {
        let grey = 0.6 * (0.299 * i[0] as f32 + 0.587 * i[1] as f32 + 0.114 * i[2] as f32) + 40.0;
        let a = if m > 0.0 && v.is_finite() {
            (v.abs() / m).min(1.0) * max_alpha
        } else {
            0.0
        };
        *o = Rgb([0, 1, 2].map(|c| {
            ((1.0 - a) * grey + a * h[c] as f32)
                .round()
                .clamp(0.0, 255.0) as u8
        }));
    }
    out
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
