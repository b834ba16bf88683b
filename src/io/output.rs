//! Atomic file outputs: `.npy` maps and PNG images. Each is written to a temporary file in
//! the destination's directory and renamed over the destination only once complete and on
//! disk, so a reader never sees a partial file and nothing is left behind on error. The files
//! of one image are written as a set, all or nothing ([`write_all_or_nothing`]).
//!
//! Temporary files are named `.<name>.lafam-<pid>-<random>.tmp`: hidden, recognisably ours,
//! and carrying the writer's process id, so that [`remove_stale_temps`] can remove those a
//! killed run left behind without touching a live concurrent run's.

use crate::io::Shown;
use anyhow::{ensure, Context, Result};
use image::RgbImage;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Fills one output file.
pub type WriteFn<'a> = Box<dyn FnOnce(&mut dyn Write) -> Result<()> + 'a>;

/// The directory `path` is in (`.` for a bare name).
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `path`'s content into a new temporary file next to it, flushed and on disk
/// (fsync). The temporary file is removed when the returned handle is dropped unless it is
/// persisted.
fn write_temp(path: &Path, write: WriteFn<'_>) -> Result<tempfile::NamedTempFile> {
    let dir = dir_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.lafam-{}-", std::process::id());
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
    Ok(tmp)
}

/// Writes `path` atomically: `write` fills a temporary file in the same directory, which is
/// then renamed to `path` (replacing any existing file). On any error the temporary file is
/// removed and `path` is untouched.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    write_all_or_nothing(vec![(path.to_path_buf(), Box::new(write))])
}

/// Writes a set of files (one image's outputs) all or nothing: every file is first written
/// to its temporary file and put on disk, and only when all of them are complete are they
/// renamed into place. On any error no file of the set is left from this attempt: the
/// temporary files are removed (an error while writing them leaves the destinations as they
/// were), and if a rename fails, the files already renamed are removed, and so are the set's
/// other destinations from an earlier run (a mix of old and new files of one image would be
/// worse than none). The error names the file that failed.
pub fn write_all_or_nothing(files: Vec<(PathBuf, WriteFn<'_>)>) -> Result<()> {
    // Pass 1: every temporary file, complete and on disk (dropping them on error deletes them).
    let mut temps = Vec::with_capacity(files.len());
    for (path, write) in files {
        let tmp = write_temp(&path, write)?;
        temps.push((path, tmp));
    }
    // Pass 2: the renames.
    let all: Vec<PathBuf> = temps.iter().map(|(p, _)| p.clone()).collect();
    let mut renamed: Vec<PathBuf> = Vec::with_capacity(temps.len());
    for (path, tmp) in temps {
        if let Err(e) = tmp.persist(&path) {
            // The temporary files are removed as they drop (the failed one's with `e.file`).
            // (A set of one is left as it was: write_atomic's promise.)
            for p in all.iter().filter(|_| all.len() > 1) {
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()) {
                    let _ = std::fs::remove_file(p);
                }
            }
            return Err(anyhow::Error::new(e.error)
                .context(format!("{}: cannot rename into place", path.shown())));
        }
        renamed.push(path);
    }
    // The renames themselves on disk (best effort: not every file system syncs directories).
    #[cfg(unix)]
    {
        let mut dirs: Vec<&Path> = renamed.iter().map(|p| dir_of(p)).collect();
        dirs.dedup();
        for d in dirs {
            if let Ok(f) = std::fs::File::open(d) {
                let _ = f.sync_all();
            }
        }
    }
    Ok(())
}

/// A float32 `.npy` array of shape `[h, w]`, C order, for [`write_all_or_nothing`].
pub fn npy_f32(h: usize, w: usize, data: &[f32]) -> WriteFn<'_> {
    Box::new(move |out| {
        ensure!(
            data.len() == h * w,
            "{} values for a {h}x{w} map",
            data.len()
        );
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

/// An RGB8 PNG, for [`write_all_or_nothing`].
pub fn png(img: RgbImage) -> WriteFn<'static> {
    Box::new(move |out| {
        let enc = image::codecs::png::PngEncoder::new(out);
        img.write_with_encoder(enc)?;
        Ok(())
    })
}

/// An RGB8 PNG with text chunks (`keyword`, `text`), for [`write_all_or_nothing`]. Texts
/// that Latin-1 can hold are `tEXt` chunks (what most viewers and `exiftool` show); others
/// (a weights file named in another script) are UTF-8 `iTXt` chunks. Keywords must be 1-79
/// Latin-1 characters (PNG's rule).
pub fn png_with_text(img: RgbImage, text: Vec<(String, String)>) -> WriteFn<'static> {
    Box::new(move |out| {
        out.write_all(&encode_png_with_text(&img, &text)?)?;
        Ok(())
    })
}

/// The bytes of [`png_with_text`]'s PNG.
pub fn encode_png_with_text(img: &RgbImage, text: &[(String, String)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            let latin1 = v
                .chars()
                .all(|c| (c as u32) < 256 && (c == '\n' || !c.is_control()));
            if latin1 {
                enc.add_text_chunk(k.clone(), v.clone())?;
            } else {
                enc.add_itxt_chunk(k.clone(), v.clone())?;
            }
        }
        let mut w = enc.write_header()?;
        w.write_image_data(img.as_raw())?;
        w.finish()?;
    }
    Ok(bytes)
}

/// A float32 `.npy` array of shape `[h, w]`, C order, in memory.
pub fn encode_npy_f32(h: usize, w: usize, data: &[f32]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    npy_f32(h, w, data)(&mut bytes)?;
    Ok(bytes)
}

/// Writes a float32 `.npy` array of shape `[h, w]`, C order, atomically.
pub fn write_npy_f32(path: &Path, h: usize, w: usize, data: &[f32]) -> Result<()> {
    ensure!(
        data.len() == h * w,
        "{}: {} values for a {h}x{w} map",
        path.shown(),
        data.len()
    );
    write_atomic(path, npy_f32(h, w, data))
}

/// Writes an RGB8 PNG atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_atomic(path, |out| {
        let enc = image::codecs::png::PngEncoder::new(out);
        img.write_with_encoder(enc)?;
        Ok(())
    })
}

/// The process id in one of our temporary file names (`.<name>.lafam-<pid>-<random>.tmp`),
/// or None for any other name.
pub fn temp_owner(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (_, tail) = rest.rsplit_once(".lafam-")?;
    let (pid, random) = tail.split_once('-')?;
    if random.is_empty() || !random.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    if pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` may still be running. On Linux, whether `/proc/<pid>` exists (a pid
/// reused by another process counts as alive: its temporary files are kept); elsewhere
/// there is no cheap portable check, and every process counts as alive.
fn may_be_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Temporary files older than this are stale whatever their process id says.
pub const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes the temporary files that an interrupted run (killed between a write and its
/// rename) left in `dir`: those named by [`write_all_or_nothing`] whose process is no longer
/// running (Linux) or that are older than [`STALE_TEMP_AGE`]. A live concurrent run's
/// temporary files (another `--shard` writing to the same directory) are kept, and so is
/// every file not named like ours. Returns the names removed; errors (an unreadable
/// directory, a file removed meanwhile) are ignored.
pub fn remove_stale_temps(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_owner(&name) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let old = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if (old || !may_be_alive(pid)) && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}
