//! Input files (regular files only), image decoding and resizing, .npy maps in and out, colormaps and overlays, atomic writes.

pub mod colormap;
pub mod figure;
pub mod files;
pub mod image;
pub mod npy;
pub mod output;

pub use self::image::{
    check_net_input, collect_inputs, load_image, max_net_size, resize_shorter_side,
    shorter_side_dims, IMAGE_EXTENSIONS, MAX_NET_PIXELS, MAX_NET_SIDE,
};
pub use ::image::RgbImage;
pub use colormap::{
    heatmap, heatmap_diverging, overlay, overlay_relevance, relevance_scale, render_map,
    render_map_styled, Colormap, Display, Style, OVERLAY_ALPHA,
};
pub use output::{write_atomic, write_npy_f32, write_png};

/// Escapes what would let a name break out of its line or reorder it on a terminal: `\n`,
/// `\r`, `\t` and other control characters as `\n`, `\r`, `\t`, `\u{..}`, and the Unicode
/// bidirectional overrides and isolates as `\u{..}`. Everything else is kept as is, so a
/// message with a user's file name stays one line.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.contains(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A path for messages: as [`Path::display`], with control characters escaped
/// ([`escape_controls`]).
pub struct ShownPath<'a>(&'a std::path::Path);

impl std::fmt::Display for ShownPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&escape_controls(&self.0.to_string_lossy()))
    }
}

/// `.shown()`: how every message prints a path (see [`ShownPath`]).
pub trait Shown {
    fn shown(&self) -> ShownPath<'_>;
}

impl<P: AsRef<std::path::Path> + ?Sized> Shown for P {
    fn shown(&self) -> ShownPath<'_> {
        ShownPath(self.as_ref())
    }
}
