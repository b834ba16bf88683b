//! `--weights` as users give it: a safetensors file, a PyTorch checkpoint (converted in
//! memory) or a known model name (downloaded once into the cache, then read from there).
//! What happens on the way (a download starting, its progress, the converter's notes) is
//! told to a callback, so that the CLI draws a progress bar and Python a tqdm bar.

use super::download::{cache_dir, cached_path, fetch, Fetched};
use super::models::{find_model, model_names, KnownModel};
use super::{load_weights_or_explain, open_weights};
use crate::model::LoadedWeights;
use anyhow::{bail, Result};
use std::path::Path;

/// What [`resolve_weights`] tells its caller.
#[derive(Clone, Copy, Debug)]
pub enum Resolving<'a> {
    /// A known model is about to be downloaded to `to` (it is not in the cache yet).
    Downloading {
        model: &'static KnownModel,
        to: &'a Path,
    },
    /// Bytes received so far, and the total if the server said it.
    Progress { done: u64, total: Option<u64> },
    /// The transfer is over (successfully or not): a progress display can go.
    TransferEnded,
    /// The download completed: `bytes` written to `path`.
    Downloaded { path: &'a Path, bytes: u64 },
    /// A note of the PyTorch converter (dropped entries and such) about `path`.
    Note { path: &'a Path, note: &'a str },
}

/// Resolves a weights argument: an existing file (safetensors, or a PyTorch checkpoint
/// converted in memory), else a known model name (fetched into the cache: `cache`, else
/// `$LAFAM_GPU_CACHE`, else the platform's cache directory; see [`super::download`]), else
/// an error that says which it is not.
pub fn resolve_weights(
    arg: &Path,
    cache: Option<&Path>,
    on_event: &mut dyn FnMut(Resolving<'_>),
) -> Result<LoadedWeights> {
    if arg.is_file() {
        return load_file(arg, on_event);
    }
    let name = arg.to_string_lossy();
    if let Some(model) = find_model(&name) {
        let cache = cache_dir(cache)?;
        let src = model.source();
        let dst = cached_path(&cache, &src);
        if !dst.is_file() {
            on_event(Resolving::Downloading { model, to: &dst });
        }
        let fetched = fetch(&cache, &src, &mut |done, total| {
            on_event(Resolving::Progress { done, total })
        });
        on_event(Resolving::TransferEnded);
        let fetched = fetched?;
        if let Fetched::Downloaded(p, n, _) = &fetched {
            on_event(Resolving::Downloaded { path: p, bytes: *n });
        }
        return load_file(fetched.path(), on_event);
    }
    let looks_like_name = arg.components().count() == 1 && arg.extension().is_none();
    if looks_like_name && !arg.exists() {
        bail!(
            "{}: no such file, and not a known model name (known: {})",
            crate::io::escape_controls(&name),
            model_names()
        );
    }
    load_weights_or_explain(arg)
}

/// A file: safetensors as is, a PyTorch checkpoint converted in memory (its notes told).
fn load_file(path: &Path, on_event: &mut dyn FnMut(Resolving<'_>)) -> Result<LoadedWeights> {
    let (weights, notes) = open_weights(path)?;
    for note in &notes {
        on_event(Resolving::Note { path, note });
    }
    Ok(weights)
}

/// The line that announces a download (the CLI prints it on stderr, Python on `sys.stderr`).
pub fn download_notice(model: &KnownModel, to: &Path) -> String {
    use crate::io::Shown;
    format!(
        "downloading {} ({}, {}; licence {}) from {}\n  to {} (once; later runs reuse it)",
        model.name,
        model.arch,
        model.training,
        model.licence,
        model.url,
        to.shown()
    )
}
