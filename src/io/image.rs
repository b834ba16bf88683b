//! Image decoding (content-sniffed, size-limited, panic-guarded), resizing and input
//! collection.

use super::files::io_reason;
use crate::io::Shown;
use anyhow::{anyhow, bail, Result};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, ErrorKind, Seek};
use std::path::{Path, PathBuf};

/// Largest width or height accepted (pixels).
pub const MAX_SIDE: u32 = 16384;
/// Largest decoded image accepted (bytes, as the decoder stores it).
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// File extensions (lower case) taken from a directory. Explicitly named files are always
/// tried, whatever their name: the format is sniffed from the content.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "jpe", "png", "webp", "bmp", "tif", "tiff"];

fn limits() -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(MAX_SIDE);
    l.max_image_height = Some(MAX_SIDE);
    l.max_alloc = Some(MAX_DECODED_BYTES);
    l
}

/// Decodes an image file to RGB8.
///
/// - The format is recognised from the content (magic bytes), never from the extension.
///   JPEG, PNG, WebP, BMP and TIFF are the supported formats (the other formats the `image`
///   crate sniffs, e.g. GIF or PNM, also work).
/// - Grey images are replicated to RGB, alpha is dropped (as PIL's `convert("RGB")`), 16-bit
///   and float samples are scaled to 8 bits. EXIF orientation is applied, so the image is
///   seen the way image viewers show it.
/// - Images claiming more than [`MAX_SIDE`] pixels a side or more than [`MAX_DECODED_BYTES`]
///   decoded are rejected from the header, before any pixel buffer is allocated.
/// - Empty, truncated and non-image files are errors that say what is wrong. The error's
///   outermost context is the path, so `format!("{e:#}")` reads `path: problem`.
/// - Never panics: decoding runs under `catch_unwind` as a last guard against decoder bugs.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    guarded(|| load_image_inner(path)).map_err(|e| e.context(path.shown().to_string()))
}

/// Decodes image bytes already in memory to RGB8: [`load_image`] without the file (same
/// sniffing, limits, checks and messages; the caller adds what the bytes are called).
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage> {
    guarded(|| decode_image_inner(bytes))
}

/// Runs a decode under `catch_unwind`, a panic becoming an error.
fn guarded(decode: impl FnOnce() -> Result<RgbImage> + std::panic::UnwindSafe) -> Result<RgbImage> {
    match std::panic::catch_unwind(decode) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow!(
                "the image decoder crashed ({msg}); the file is probably corrupt"
            ))
        }
    }
}

/// Whether a JPEG's last scan is followed by its end-of-image marker (`FF D9`). Inside
/// entropy-coded data a `FF` byte is always followed by `00` or a restart marker, so the last
/// start-of-scan (`FF DA`) in the file is the main image's last scan (embedded thumbnails
/// come before it), and a cut file has no `FF D9` after it.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let Some(last_scan) = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[last_scan + 2..].windows(2).any(|w| w == [0xFF, 0xD9])
}

/// An image reader over `source` with the format sniffed from the content.
fn sniffed<R: BufRead + Seek>(source: R) -> Result<ImageReader<R>> {
    // No path given to the reader: the format comes from the content only.
    let mut reader = ImageReader::new(source)
        .with_guessed_format()
        .map_err(|e| anyhow!("cannot read: {}", io_reason(&e)))?;
    if reader.format().is_none() {
        bail!("not a recognised image (expected JPEG, PNG, WebP, BMP or TIFF content)");
    }
    reader.limits(limits());
    Ok(reader)
}

fn open_reader(path: &Path) -> Result<ImageReader<BufReader<File>>> {
    // Before opening: a FIFO would block here forever.
    if super::files::check_regular(path)? == 0 {
        bail!("empty file (0 bytes)");
    }
    let file = File::open(path).map_err(|e| anyhow!("cannot open: {}", io_reason(&e)))?;
    sniffed(BufReader::new(file))
}

fn load_image_inner(path: &Path) -> Result<RgbImage> {
    decode_from(
        || open_reader(path),
        || {
            std::fs::read(path)
                .map(Cow::Owned)
                .map_err(|e| anyhow!("cannot read: {}", io_reason(&e)))
        },
    )
}

fn decode_image_inner(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.is_empty() {
        bail!("empty file (0 bytes)");
    }
    decode_from(|| sniffed(Cursor::new(bytes)), || Ok(Cow::Borrowed(bytes)))
}

/// The decode itself, over a source opened twice by `open` (the header pass, then the
/// pixels); `all_bytes` gives the whole content, for the JPEG completeness check only.
fn decode_from<'a, R: BufRead + Seek>(
    open: impl Fn() -> Result<ImageReader<R>>,
    all_bytes: impl FnOnce() -> Result<Cow<'a, [u8]>>,
) -> Result<RgbImage> {
    // Pass 1: the header only, to reject absurd dimensions with a precise message before the
    // decoder allocates anything for the pixels.
    let reader = open()?;
    let format = reader.format().expect("checked in sniffed");
    let fmt = format_name(format);
    let mut header_reader = open()?;
    header_reader.limits({
        let mut l = Limits::default();
        l.max_alloc = Some(MAX_DECODED_BYTES);
        l
    });
    let (w, h) = header_reader
        .into_dimensions()
        .map_err(|e| decode_problem(fmt, e))?;
    if w == 0 || h == 0 {
        bail!("{fmt} header claims an empty image ({w}x{h})");
    }
    if w > MAX_SIDE || h > MAX_SIDE {
        bail!("{fmt} header claims {w}x{h} pixels, over the limit of {MAX_SIDE} pixels a side");
    }

    // JPEG decoders fill a truncated scan with grey and report success; PIL refuses such
    // files, and so do we.
    if format == ImageFormat::Jpeg {
        let bytes = all_bytes()?;
        if !jpeg_is_complete(&bytes) {
            bail!("JPEG file ends early (truncated): no end-of-image marker after its last scan");
        }
    }
    // Pass 2: decode under the same limits (enforced by the decoders themselves too).
    let mut decoder = reader.into_decoder().map_err(|e| decode_problem(fmt, e))?;
    let total = decoder.total_bytes();
    if total > MAX_DECODED_BYTES {
        bail!(
            "{fmt} image {w}x{h} would need {} MiB decoded, over the limit of {} MiB",
            total >> 20,
            MAX_DECODED_BYTES >> 20
        );
    }
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| decode_problem(fmt, e))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Gif => "GIF",
        other => other.extensions_str().first().copied().unwrap_or("image"),
    }
}

fn decode_problem(fmt: &str, e: ImageError) -> anyhow::Error {
    match e {
        ImageError::Limits(l) => anyhow!(
            "{fmt} image exceeds the decoding limits ({MAX_SIDE} px a side, {} MiB): {l}",
            MAX_DECODED_BYTES >> 20
        ),
        ImageError::IoError(io) if io.kind() == ErrorKind::UnexpectedEof => {
            anyhow!("truncated {fmt} file (data ends early)")
        }
        ImageError::IoError(io) => anyhow!("cannot read {fmt} data: {}", io_reason(&io)),
        ImageError::Decoding(d) => {
            let msg = d.to_string();
            let lower = msg.to_lowercase();
            if lower.contains("eof")
                || lower.contains("end of")
                || lower.contains("truncat")
                || lower.contains("unexpected end")
            {
                anyhow!("truncated {fmt} file: {msg}")
            } else {
                anyhow!("corrupt {fmt} data: {msg}")
            }
        }
        ImageError::Unsupported(u) => anyhow!("unsupported {fmt} variant: {u}"),
        other => anyhow!("cannot decode {fmt}: {other}"),
    }
}

/// Longest side, in pixels, of an image fed to the network (after the `--size` resize).
///
/// Together with [`MAX_NET_PIXELS`] this bounds the memory one image needs before anything is
/// allocated: a 1x4000 image with `--size 224` would otherwise become 224x896000 and ask for
/// tens of GB. 8192 is twice the longest side of any usual photo at full resolution and leaves
/// room for panoramas (8192x512 is within the pixel limit).
pub const MAX_NET_SIDE: u32 = 8192;

/// Most pixels (width x height) of an image fed to the network: 2^22 = 4,194,304, i.e.
/// 2048x2048.
///
/// The largest per-image buffers of ResNet-50 are those of the stem: its 7x7/2 conv's output
/// has 64 channels at half the resolution (16 floats = 64 bytes per input pixel; layer1's
/// 256-channel output at a quarter of the resolution is as big) and its im2col matrix has
/// 7*7*3 = 147 values per output pixel (~147 bytes per input pixel). At 2^22 pixels that is
/// 256 MiB and 588 MiB: under the CPU backend's 1 GiB tensor limit with a batch of one, a
/// peak of well under 2 GB for a forward pass (LRP keeps a few more activations), and within
/// what the batch planner can split by on a GPU.
pub const MAX_NET_PIXELS: u64 = 1 << 22;

/// Checks a network input size against [`MAX_NET_SIDE`] and [`MAX_NET_PIXELS`]. The error
/// names the size and the limit; the caller adds how to fix it.
pub fn check_net_input(w: u32, h: u32) -> Result<()> {
    let pixels = w as u64 * h as u64;
    if w.max(h) > MAX_NET_SIDE {
        bail!("network input {w}x{h} px is over the limit of {MAX_NET_SIDE} px on the long side");
    }
    if pixels > MAX_NET_PIXELS {
        bail!(
            "network input {w}x{h} px ({pixels} px) is over the limit of {MAX_NET_PIXELS} px \
             (2048x2048) in total"
        );
    }
    Ok(())
}

/// The largest `--size` (shorter side) at which a `w`x`h` image fits the network input limits
/// ([`check_net_input`]); None when even a shorter side of 1 does not (an extreme aspect
/// ratio).
pub fn max_net_size(w: u32, h: u32) -> Option<u32> {
    let (short, long) = (w.min(h).max(1) as f64, w.max(h) as f64);
    // From the limits: n * long / short <= MAX_NET_SIDE and n^2 * long / short <= pixels.
    let by_side = MAX_NET_SIDE as f64 * short / long;
    let by_pixels = (MAX_NET_PIXELS as f64 * short / long).sqrt();
    let mut n = by_side.min(by_pixels).floor().min(MAX_NET_SIDE as f64) as u32 + 1;
    // Rounding of the long side: step down to the first size that really fits.
    while n > 0 {
        let (nw, nh) = shorter_side_dims(w, h, n);
        if check_net_input(nw, nh).is_ok() {
            return Some(n);
        }
        n -= 1;
    }
    None
}

/// Resizes so that the shorter side becomes `n`, keeping the aspect ratio (the longer side is
/// rounded to the nearest pixel, at least 1). An image whose shorter side already is `n` is
/// returned unchanged (not resampled); `n == 0` also returns it unchanged. The filter is a
/// triangle (bilinear) whose support widens with the scale factor when shrinking, so
/// downscaling is antialiased (like PIL's `BILINEAR` resize used by torchvision).
pub fn resize_shorter_side(img: &RgbImage, n: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h);
    if n == 0 || short == n || short == 0 {
        return img.clone();
    }
    let (nw, nh) = shorter_side_dims(w, h, n);
    image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle)
}

/// The `(width, height)` that [`resize_shorter_side`] produces for a `w`x`h` image.
pub fn shorter_side_dims(w: u32, h: u32, n: u32) -> (u32, u32) {
    let short = w.min(h);
    if n == 0 || short == n || short == 0 {
        return (w, h);
    }
    let scale =
        |long: u32| -> u32 { ((long as f64 * n as f64 / short as f64).round() as u32).max(1) };
    if w <= h {
        (n, scale(h))
    } else {
        (scale(w), n)
    }
}

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Expands the command line's inputs into image files.
///
/// - A file is always taken (its content decides whether it is an image).
/// - A directory contributes its image files (by extension, see [`IMAGE_EXTENSIONS`],
///   case-insensitive), sorted by name, NOT recursing into subdirectories and skipping
///   hidden files (names starting with `.`). A directory without any is an error.
/// - A path that does not exist, or cannot be listed, is an error.
/// - The same path given twice is kept once.
///
/// Returns the files in command-line order and one `path: problem` string per error.
/// Whether `name` is one of the files `run` writes (`<stem>.<method>.png`,
/// `<stem>.<method>.overlay.png`): skipped when a directory is listed, so that `--out` equal
/// to an input directory does not explain the last run's maps.
pub fn is_map_output(name: &str) -> bool {
    const METHODS: [&str; 6] = [
        "lafam",
        "lrp",
        "gradcam",
        "eigencam",
        "relax",
        "relax-uncertainty",
    ];
    let lower = name.to_ascii_lowercase();
    let Some(stem) = lower.strip_suffix(".png") else {
        return false;
    };
    let stem = stem.strip_suffix(".overlay").unwrap_or(stem);
    METHODS.iter().any(|m| {
        stem.strip_suffix(m)
            .is_some_and(|s| s.ends_with('.') && s.len() > 1)
    })
}

pub fn collect_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<String>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |p: PathBuf, files: &mut Vec<PathBuf>| {
        if seen.insert(p.clone()) {
            files.push(p);
        }
    };
    for input in inputs {
        let meta = match std::fs::metadata(input) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("{}: {}", input.shown(), io_reason(&e)));
                continue;
            }
        };
        if !meta.is_dir() {
            push(input.clone(), &mut files);
            continue;
        }
        let entries = match std::fs::read_dir(input) {
            Ok(rd) => rd,
            Err(e) => {
                errors.push(format!(
                    "{}: cannot list directory: {}",
                    input.shown(),
                    io_reason(&e)
                ));
                continue;
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !name.starts_with('.') && !is_map_output(&name)
            })
            .map(|e| e.path())
            .filter(|p| has_image_extension(p) && p.is_file())
            .collect();
        found.sort();
        if found.is_empty() {
            errors.push(format!(
                "{}: directory holds no image files ({}; subdirectories are not searched)",
                input.shown(),
                IMAGE_EXTENSIONS.join(", ")
            ));
        }
        for p in found {
            push(p, &mut files);
        }
    }
    (files, errors)
}
