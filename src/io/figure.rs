//! Figures that explain themselves: text drawn with a real font (DejaVu Sans through
//! `ab_glyph`), colour bars, and the montage `run --montage` writes (the image, then every
//! map, each with its caption and colour bar).

use super::colormap::{display_scale, render_map_styled, Colormap, Display, Scale, Style};
use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{imageops, Rgb, RgbImage};
use std::sync::OnceLock;

/// DejaVu Sans (Bitstream Vera licence, `src/io/font/LICENSE`).
static FONT_BYTES: &[u8] = include_bytes!("font/DejaVuSans.ttf");

fn font() -> &'static FontRef<'static> {
    static F: OnceLock<FontRef<'static>> = OnceLock::new();
    F.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).expect("the bundled font parses"))
}

/// Caption text size in pixels.
pub const TEXT_PX: f32 = 14.0;
/// Height of one caption line.
pub const LINE: u32 = 18;
/// Panels are scaled to this height.
pub const PANEL_H: u32 = 256;
/// Columns are at least this wide (captions and colour bar labels need room).
pub const MIN_COLUMN_W: u32 = 160;
/// Margin around and between columns.
pub const MARGIN: u32 = 8;
/// Caption lines above each panel.
pub const CAPTION_LINES: u32 = 3;
/// Height of the colour bar under each panel.
pub const BAR_H: u32 = 12;

/// The width of `text` in pixels at `px`.
pub fn text_width(text: &str, px: f32) -> f32 {
    let f = font().as_scaled(PxScale::from(px));
    let mut w = 0.0;
    let mut prev = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            w += f.kern(p, id);
        }
        w += f.h_advance(id);
        prev = Some(id);
    }
    w
}

/// `text` shortened with "…" to fit `max_w` pixels.
pub fn fit_text(text: &str, px: f32, max_w: f32) -> String {
    if text_width(text, px) <= max_w {
        return text.to_string();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let t: String = chars.iter().collect::<String>() + "…";
        if text_width(&t, px) <= max_w {
            return t;
        }
    }
    String::new()
}

/// Draws `text` with its top-left corner at (`x`, `y`), `px` pixels high, in `colour`
/// (antialiased over what is there). Glyphs outside the image are clipped.
pub fn draw_text(img: &mut RgbImage, x: f32, y: f32, px: f32, colour: [u8; 3], text: &str) {
    let f = font().as_scaled(PxScale::from(px));
    let mut caret = ab_glyph::point(x, y + f.ascent());
    let mut prev = None;
    for c in text.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            caret.x += f.kern(p, id);
        }
        let glyph = id.with_scale_and_position(PxScale::from(px), caret);
        caret.x += f.h_advance(id);
        prev = Some(id);
        let Some(outline) = font().outline_glyph(glyph) else {
            continue;
        };
        let b = outline.px_bounds();
        outline.draw(|gx, gy, cov| {
            let (px_x, px_y) = (b.min.x as i64 + gx as i64, b.min.y as i64 + gy as i64);
            if px_x < 0 || px_y < 0 || px_x >= img.width() as i64 || px_y >= img.height() as i64 {
                return;
            }
            let p = img.get_pixel_mut(px_x as u32, px_y as u32);
            let a = cov.clamp(0.0, 1.0);
            for ch in 0..3 {
                p[ch] = ((1.0 - a) * p[ch] as f32 + a * colour[ch] as f32).round() as u8;
            }
        });
    }
}

/// A horizontal colour bar `w`x`h`: the colormap `map` for maps of kind `display`, from its
/// first colour (left) to its last (right).
pub fn colour_bar(w: u32, h: u32, colormap: Colormap, display: Display) -> RgbImage {
    let table = colormap.resolve(display).table();
    RgbImage::from_fn(w, h, |x, _| {
        let t = if w > 1 {
            x as f32 / (w - 1) as f32
        } else {
            0.0
        };
        Rgb(table[(t * 255.0).round() as usize])
    })
}

/// A number for a colour bar label: short, sign kept.
pub fn label(v: f32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e4).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One panel of a montage.
pub struct Panel<'a> {
    /// Up to [`CAPTION_LINES`] lines above the panel.
    pub caption: Vec<String>,
    pub content: PanelContent<'a>,
}

/// What a panel shows.
pub enum PanelContent<'a> {
    /// The image itself (no colour bar).
    Image,
    /// A map (row-major, the image's size) drawn over the image in `style`, with its colour
    /// bar.
    Map {
        map: &'a [f32],
        display: Display,
        style: Style,
    },
}

/// A montage's size and each column's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MontageLayout {
    pub width: u32,
    pub height: u32,
    /// The scaled panel's size (every panel shows the same image).
    pub panel: (u32, u32),
    /// Per column, the panel's left edge.
    pub panel_x: Vec<u32>,
    /// The panels' top edge.
    pub panel_y: u32,
    /// Each column's width.
    pub column_w: u32,
}

/// The layout of a montage of `n` panels of an `image_w`x`image_h` image: panels scaled to
/// [`PANEL_H`] pixels high (aspect kept), in columns at least [`MIN_COLUMN_W`] wide with
/// [`MARGIN`] around them; above each, [`CAPTION_LINES`] caption lines; below, a colour bar
/// and its labels.
pub fn montage_layout(image_w: u32, image_h: u32, n: usize) -> MontageLayout {
    let pw = ((image_w as f64 * PANEL_H as f64 / image_h.max(1) as f64).round() as u32).max(1);
    let column_w = pw.max(MIN_COLUMN_W);
    let n = n as u32;
    let width = MARGIN + n * (column_w + MARGIN);
    let panel_y = MARGIN + CAPTION_LINES * LINE + 4;
    let height = panel_y + PANEL_H + 4 + BAR_H + 2 + LINE + MARGIN;
    let panel_x = (0..n)
        .map(|i| MARGIN + i * (column_w + MARGIN) + (column_w - pw) / 2)
        .collect();
    MontageLayout {
        width,
        height,
        panel: (pw, PANEL_H),
        panel_x,
        panel_y,
        column_w,
    }
}

/// The montage of `image` and `panels`, on a white background (see [`montage_layout`]).
/// Each map is drawn over the image in its style, its colour bar below it labelled with the
/// values at its two ends (and 0 in the middle of a signed map's).
pub fn montage(image: &RgbImage, panels: &[Panel<'_>]) -> RgbImage {
    let layout = montage_layout(image.width(), image.height(), panels.len());
    let mut out = RgbImage::from_pixel(layout.width, layout.height, Rgb([255, 255, 255]));
    let (pw, ph) = layout.panel;
    let filter = if pw >= image.width() {
        imageops::FilterType::Nearest
    } else {
        imageops::FilterType::Triangle
    };
    let black = [20, 20, 20];
    let grey = [90, 90, 90];
    for (i, p) in panels.iter().enumerate() {
        let col_x = MARGIN + i as u32 * (layout.column_w + MARGIN);
        for (l, line) in p.caption.iter().take(CAPTION_LINES as usize).enumerate() {
            let t = fit_text(line, TEXT_PX, layout.column_w as f32);
            let colour = if l == 0 { black } else { grey };
            draw_text(
                &mut out,
                col_x as f32,
                (MARGIN + l as u32 * LINE) as f32,
                TEXT_PX,
                colour,
                &t,
            );
        }
        let x = layout.panel_x[i];
        let y = layout.panel_y;
        let shown = match &p.content {
            PanelContent::Image => image.clone(),
            PanelContent::Map {
                map,
                display,
                style,
            } => render_map_styled(map, image, *display, *style).1,
        };
        let scaled = imageops::resize(&shown, pw, ph, filter);
        imageops::replace(&mut out, &scaled, x as i64, y as i64);
        if let PanelContent::Map {
            map,
            display,
            style,
        } = &p.content
        {
            let bar_y = y + ph + 4;
            let bar = colour_bar(layout.column_w, BAR_H, style.colormap, *display);
            imageops::replace(&mut out, &bar, col_x as i64, bar_y as i64);
            let Scale { lo, hi } = display_scale(map, *display);
            let ly = (bar_y + BAR_H + 2) as f32;
            let right = label(hi);
            draw_text(&mut out, col_x as f32, ly, TEXT_PX, grey, &label(lo));
            let rw = text_width(&right, TEXT_PX);
            draw_text(
                &mut out,
                col_x as f32 + layout.column_w as f32 - rw,
                ly,
                TEXT_PX,
                grey,
                &right,
            );
            if *display == Display::Signed {
                let zw = text_width("0", TEXT_PX);
                draw_text(
                    &mut out,
                    col_x as f32 + (layout.column_w as f32 - zw) / 2.0,
                    ly,
                    TEXT_PX,
                    grey,
                    "0",
                );
            }
        }
    }
    out
}
