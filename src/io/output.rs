//! Atomic file outputs: `.npy` maps and PNG images. Each is written to a temporary file in
//! the destination's directory and renamed over the destination only once complete, so a
//! reader never sees a partial file and nothing is left behind on error.

use crate::io::Shown;
use anyhow::{ensure, Context, Result};
use image::RgbImage;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `path` atomically: `write` fills a temporary file in the same directory, which is
/// then renamed to `path` (replacing any existing file). On any error the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // Outputs are ordinary files (0644 less the umask), not tempfile's private 0600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    let tmp = builder.tempfile_in(dir).with_context(|| {
        format!(
            "{}: cannot create a temporary file in {}",
            path.shown(),
            dir.shown()
        )
    })?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        write(&mut w).with_context(|| format!("{}: write failed", path.shown()))?;
        w.flush()
            .with_context(|| format!("{}: write failed", path.shown()))?;
    }
    // On disk before the rename: a crash then leaves the old file or the new one, never a
    // renamed file whose data was not written yet.
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("{}: write failed", path.shown()))?;
    tmp.persist(path).map_err(|e| {
        anyhow::Error::new(e.error).context(format!("{}: cannot rename into place", path.shown()))
    })?;
    Ok(())
}

/// Writes a float32 `.npy` array of shape `[h, w]`, C order, atomically.
pub fn write_npy_f32(path: &Path, h: usize, w: usize, data: &[f32]) -> Result<()> {
    ensure!(
        data.len() == h * w,
        "{}: {} values for a {h}x{w} map",
        path.shown(),
        data.len()
    );
    write_atomic(path, |out| {
        use npyz::WriterBuilder;
        let mut npy = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[h as u64, w as u64])
            .writer(out)
            .begin_nd()?;
        npy.extend(data.iter().copied())?;
        npy.finish()?;
        Ok(())
    })
}

/// Writes an RGB8 PNG atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_atomic(path, |out| {
        let enc = image::codecs::png::PngEncoder::new(out);
        img.write_with_encoder(enc)?;
        Ok(())
    })
}
