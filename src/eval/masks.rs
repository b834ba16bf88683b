//! Segmentation masks: label PNGs read without colour conversion, and the object mask with
//! the void rule applied.

use crate::io::image::{MAX_DECODED_BYTES, MAX_SIDE};
use crate::io::Shown;
use anyhow::{bail, ensure, Context, Result};
use std::io::{BufRead, BufReader, Seek};
use std::path::Path;

/// What to do with void pixels (VOC's 255 "boundary / difficult", ImageNet-S's 1000 "other").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VoidMode {
    /// Drop void pixels from the image before scoring (neither object nor background).
    Ignore,
    /// Count void pixels as background (default; what a mask read as "nonzero = object" but
    /// without the 255s gives).
    #[default]
    Background,
    /// Count void pixels as object.
    Object,
}

/// A label image: one id per pixel, row-major.
#[derive(Clone, Debug)]
pub struct Labels {
    pub width: usize,
    pub height: usize,
    pub ids: Vec<u16>,
}

/// Reads a label PNG: a palette image gives its indices (VOC), a grey image its values, an
/// RGB(A) image `R + 256·G` (ImageNet-S). 16-bit samples keep their high byte. No colour
/// conversion is ever applied.
pub fn load_labels(path: &Path) -> Result<Labels> {
    let inner = || -> Result<Labels> {
        crate::io::files::check_regular(path)?;
        let file = std::fs::File::open(path).context("cannot open")?;
        labels_from(BufReader::new(file))
    };
    inner().with_context(|| format!("{}: cannot read mask", path.shown()))
}

/// [`load_labels`] over PNG bytes already in memory (no file name in the error).
pub fn labels_from_bytes(bytes: &[u8]) -> Result<Labels> {
    labels_from(std::io::Cursor::new(bytes))
}

fn labels_from<R: BufRead + Seek>(source: R) -> Result<Labels> {
    let mut dec = png::Decoder::new(source);
    dec.set_transformations(png::Transformations::STRIP_16);
    let mut reader = dec.read_info().context("not a readable PNG")?;
    // Before allocating: the same limits as for images.
    let (iw, ih) = (reader.info().width, reader.info().height);
    ensure!(
        iw <= MAX_SIDE && ih <= MAX_SIDE,
        "PNG header claims {iw}x{ih} pixels, over the limit of {MAX_SIDE} pixels a side"
    );
    let size = reader
        .output_buffer_size()
        .context("PNG too large for this machine")?;
    ensure!(
        size as u64 <= MAX_DECODED_BYTES,
        "PNG {iw}x{ih} would need {} MiB decoded, over the limit of {} MiB",
        size >> 20,
        MAX_DECODED_BYTES >> 20
    );
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).context("corrupt PNG")?;
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::Indexed => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
    };
    let bits = info.bit_depth as usize;
    let line = info.line_size;
    let mut ids = Vec::with_capacity(w * h);
    for y in 0..h {
        if bits < 8 {
            // 1, 2, 4-bit grey or palette: unpack MSB first, values kept raw.
            let row = &buf[y * line..(y + 1) * line];
            let mask = (1u16 << bits) - 1;
            ids.extend((0..w).map(|x| {
                let bit = x * bits;
                (row[bit / 8] as u16 >> (8 - bits - bit % 8)) & mask
            }));
            continue;
        }
        if bits != 8 {
            bail!("unexpected bit depth {bits}");
        }
        let row = &buf[y * line..y * line + w * channels];
        match channels {
            1 | 2 => ids.extend(row.chunks_exact(channels).map(|p| p[0] as u16)),
            _ => ids.extend(
                row.chunks_exact(channels)
                    .map(|p| p[0] as u16 + 256 * p[1] as u16),
            ),
        }
    }
    Ok(Labels {
        width: w,
        height: h,
        ids,
    })
}

/// The pixels to score and which of them are object: `ids != 0` is object, `void_id` is
/// treated per `mode`. Returns (keep, object); `keep` is None when every pixel is kept.
pub fn object_mask(
    labels: &Labels,
    void_id: u16,
    mode: VoidMode,
) -> (Option<Vec<bool>>, Vec<bool>) {
    let object: Vec<bool> = labels
        .ids
        .iter()
        .map(|&id| {
            if id == void_id {
                mode == VoidMode::Object
            } else {
                id != 0
            }
        })
        .collect();
    let keep = (mode == VoidMode::Ignore && labels.ids.contains(&void_id))
        .then(|| labels.ids.iter().map(|&id| id != void_id).collect());
    (keep, object)
}
