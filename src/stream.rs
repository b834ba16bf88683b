//! Streams image files through an [`Engine`]: inputs are decoded (in parallel, a chunk at a
//! time), resized so the shorter side is `size`, grouped by network input size into batches,
//! explained, and handed with their maps (at each image's original resolution) to a
//! [`MapSink`]. Memory stays bounded: at most a few batches' worth of decoded images are held
//! at once. `run` and `eval --dataset` are two sinks over this one stream.

use crate::backend::CamBackend;
use crate::explain::engine::LrpState;
use crate::explain::{Engine, ImageBatch, Method, MethodMaps, Request};
use crate::io::{load_image, resize_shorter_side, shorter_side_dims, Shown};
use anyhow::{bail, ensure, Result};
use image::RgbImage;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An input waiting for the network.
pub struct Prepared {
    pub path: PathBuf,
    pub stem: String,
    pub original: RgbImage,
    /// The network's input when it differs from `original` (resized).
    pub resized: Option<RgbImage>,
}

impl Prepared {
    pub fn net_image(&self) -> &RgbImage {
        self.resized.as_ref().unwrap_or(&self.original)
    }
}

/// The network inputs of a group (all of one size, as [`stream_groups`] hands them over)
/// packed into one RGB buffer, with their height and width: the bytes of an [`ImageBatch`].
pub fn pack_group(group: &[Prepared]) -> (Vec<u8>, usize, usize) {
    let (w, h) = group.first().map_or((0, 0), |p| p.net_image().dimensions());
    let mut rgb = Vec::with_capacity(group.len() * (w * h * 3) as usize);
    for p in group {
        rgb.extend_from_slice(p.net_image().as_raw());
    }
    (rgb, h as usize, w as usize)
}

/// What [`stream_maps`] computes.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub request: Request,
    /// Shorter side fed to the network (0 = as is).
    pub size: u32,
    /// Images per forward pass (split further to fit the device).
    pub batch: usize,
}

/// Receives [`stream_maps`]'s results.
pub trait MapSink {
    /// An input that produced no maps (decode or compute error), with the error's message.
    fn failed(&mut self, path: &Path, stem: &str, msg: String);
    /// One batch's images and every method output's maps, one per image at its original
    /// resolution (`[1, h, w, 1]`; counts and shapes are checked).
    fn maps(&mut self, group: &[Prepared], maps: Vec<MethodMaps>);
    /// `n` more inputs are done (for progress bars).
    fn done(&mut self, _n: usize) {}
}

/// Decodes `path` and resizes it for the network (shorter side `size`; 0 keeps its size),
/// checking the network input's limits before resizing.
pub fn prepare(path: &Path, stem: &str, size: u32) -> Result<Prepared> {
    let original = load_image(path)?;
    let (w, h) = original.dimensions();
    let (nw, nh) = if size == 0 {
        (w, h)
    } else {
        shorter_side_dims(w, h, size)
    };
    // Before resizing (and before the backend allocates anything for it).
    if let Err(e) = crate::io::check_net_input(nw, nh) {
        let given = if size == 0 {
            "--size 0 (the image's own size)".to_string()
        } else {
            format!("--size {size}")
        };
        let fix = match crate::io::max_net_size(w, h) {
            Some(n) => format!("use --size {n} or smaller"),
            None => "its aspect ratio cannot fit at any --size: crop it".to_string(),
        };
        bail!("{}: {e} ({given} on a {w}x{h} image); {fix}", path.shown());
    }
    let resized = (size != 0 && w.min(h) != size).then(|| resize_shorter_side(&original, size));
    Ok(Prepared {
        path: path.to_path_buf(),
        stem: stem.to_string(),
        original,
        resized,
    })
}

/// Receives [`stream_groups`]'s decoded inputs.
pub trait GroupSink {
    /// An input that could not be decoded or prepared, with the error's message.
    fn failed(&mut self, path: &Path, stem: &str, msg: String);
    /// A batch of decoded inputs of one network size (at most `batch`).
    fn group(&mut self, group: Vec<Prepared>);
}

/// Decodes `jobs` (path, stem) in parallel a chunk at a time, groups them by network input
/// size (shorter side `size`, 0 = as is) into batches of at most `batch` and hands each to
/// `sink`. Memory stays bounded (a few batches' worth of decoded images).
pub fn stream_groups(
    jobs: &[(PathBuf, String)],
    size: u32,
    batch: usize,
    sink: &mut dyn GroupSink,
) {
    let batch = batch.max(1);
    // Decoded images waiting for a full batch, by network size (w, h).
    let mut pending: BTreeMap<(u32, u32), Vec<Prepared>> = BTreeMap::new();
    let cap = (batch * 4).max(64);
    let chunk = batch.max(rayon::current_num_threads() * 2);
    for part in jobs.chunks(chunk) {
        let decoded: Vec<Result<Prepared>> =
            part.par_iter().map(|(p, s)| prepare(p, s, size)).collect();
        for (d, (path, stem)) in decoded.into_iter().zip(part) {
            match d {
                Err(e) => sink.failed(path, stem, format!("{e:#}")),
                Ok(p) => {
                    let key = p.net_image().dimensions();
                    let group = pending.entry(key).or_default();
                    group.push(p);
                    if group.len() >= batch {
                        let g = pending.remove(&key).unwrap_or_default();
                        sink.group(g);
                    }
                }
            }
        }
        // Bound memory when many different sizes are waiting: flush the largest group.
        while pending.values().map(Vec::len).sum::<usize>() > cap {
            let key = *pending
                .iter()
                .max_by_key(|(_, v)| v.len())
                .map(|(k, _)| k)
                .expect("non-empty");
            let g = pending.remove(&key).unwrap_or_default();
            sink.group(g);
        }
    }
    for (_, g) in std::mem::take(&mut pending) {
        if !g.is_empty() {
            sink.group(g);
        }
    }
}

/// Decodes `jobs` (path, stem) in parallel a chunk at a time, groups them by network input
/// size into batches of `settings.batch`, computes every method's maps and hands each batch
/// to `sink`, telling it of every input done. Memory stays bounded (a few batches' worth).
pub fn stream_maps<B: CamBackend, L: LrpState<B::Conv>>(
    engine: &mut Engine<B, L>,
    jobs: &[(PathBuf, String)],
    settings: &StreamSettings,
    sink: &mut dyn MapSink,
) {
    struct Explain<'a, B: CamBackend, L: LrpState<B::Conv>> {
        engine: &'a mut Engine<B, L>,
        settings: &'a StreamSettings,
        sink: &'a mut dyn MapSink,
    }
    impl<B: CamBackend, L: LrpState<B::Conv>> GroupSink for Explain<'_, B, L> {
        fn failed(&mut self, path: &Path, stem: &str, msg: String) {
            self.sink.failed(path, stem, msg);
            self.sink.done(1);
        }
        fn group(&mut self, group: Vec<Prepared>) {
            explain_group(self.engine, self.settings, group, self.sink);
        }
    }
    stream_groups(
        jobs,
        settings.size,
        settings.batch,
        &mut Explain {
            engine,
            settings,
            sink,
        },
    );
}

fn explain_group<B: CamBackend, L: LrpState<B::Conv>>(
    engine: &mut Engine<B, L>,
    settings: &StreamSettings,
    group: Vec<Prepared>,
    sink: &mut dyn MapSink,
) {
    if group.is_empty() {
        return;
    }
    let (rgb, h, w) = pack_group(&group);
    let out_sizes: Vec<(usize, usize)> = group
        .iter()
        .map(|p| (p.original.height() as usize, p.original.width() as usize))
        .collect();
    let computed = ImageBatch::new(&rgb, group.len(), h, w)
        .and_then(|batch| engine.explain(batch, &settings.request, &out_sizes))
        .and_then(|c| {
            for MethodMaps { method, maps, .. } in &c {
                ensure!(
                    maps.len() == group.len(),
                    "{method}: {} maps for {} images",
                    maps.len(),
                    group.len()
                );
                for (p, map) in group.iter().zip(maps) {
                    let (oh, ow) = (p.original.height() as usize, p.original.width() as usize);
                    ensure!(
                        (map.shape.n, map.shape.h, map.shape.w, map.shape.c) == (1, oh, ow, 1),
                        "{}: {method} map has shape {}, expected [1, {oh}, {ow}, 1]",
                        p.path.shown(),
                        map.shape
                    );
                }
            }
            Ok(c)
        });
    let count = group.len();
    match computed {
        Ok(c) => {
            let (group, c) = drop_non_finite(settings, group, c, sink);
            if !group.is_empty() {
                sink.maps(&group, c);
            }
        }
        Err(e) => {
            for p in &group {
                sink.failed(
                    &p.path,
                    &p.stem,
                    format!("{}: failed: {e:#}", p.path.shown()),
                );
            }
        }
    }
    sink.done(count);
}

/// Reports every image with a non-finite map (NaN or infinite: the network's activations
/// overflowed f32, typically from BatchNorm statistics such as a tiny running_var) as a
/// failed input, one line naming the methods and the stage, and returns the other images
/// with their maps: nothing is written for a failed image.
fn drop_non_finite(
    settings: &StreamSettings,
    group: Vec<Prepared>,
    computed: Vec<MethodMaps>,
    sink: &mut dyn MapSink,
) -> (Vec<Prepared>, Vec<MethodMaps>) {
    let layer = settings.request.stage;
    let mut bad: Vec<Vec<Method>> = vec![Vec::new(); group.len()];
    for MethodMaps { method, maps, .. } in &computed {
        for (i, map) in maps.iter().enumerate() {
            if map.data.iter().any(|v| !v.is_finite()) && !bad[i].contains(method) {
                bad[i].push(*method);
            }
        }
    }
    if bad.iter().all(Vec::is_empty) {
        return (group, computed);
    }
    for (p, methods) in group.iter().zip(&bad) {
        if methods.is_empty() {
            continue;
        }
        let names: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
        let noun = if names.len() == 1 {
            "map is"
        } else {
            "maps are"
        };
        sink.failed(
            &p.path,
            &p.stem,
            format!(
                "{}: {} {noun} not finite (the activations up to {layer} overflow f32: check \
                 the weights' BatchNorm statistics, e.g. a tiny running_var); nothing written",
                p.path.shown(),
                names.join(", ")
            ),
        );
    }
    let keep: Vec<bool> = bad.iter().map(Vec::is_empty).collect();
    let group = group
        .into_iter()
        .zip(&keep)
        .filter_map(|(p, &k)| k.then_some(p))
        .collect();
    let computed = computed
        .into_iter()
        .map(|mut m| {
            m.maps = std::mem::take(&mut m.maps)
                .into_iter()
                .zip(&keep)
                .filter_map(|(t, &k)| k.then_some(t))
                .collect();
            m.names = std::mem::take(&mut m.names)
                .into_iter()
                .zip(&keep)
                .filter_map(|(t, &k)| k.then_some(t))
                .collect();
            m.json = std::mem::take(&mut m.json)
                .into_iter()
                .zip(&keep)
                .filter_map(|(t, &k)| k.then_some(t))
                .collect();
            m
        })
        .collect();
    (group, computed)
}
