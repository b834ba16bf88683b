//! `lafam-gpu run`: attribution maps for a set of images.
//!
//! Pipeline: inputs are decoded (in parallel, a chunk at a time), resized so the shorter side
//! is `--size`, grouped by network input size into batches of `--batch`, explained, and the
//! maps are upsampled to each image's original resolution and written (in parallel). Memory
//! stays bounded: at most a few batches' worth of decoded images are held at once.

use super::backends::{open_backend, BackendChoice};
use super::{resolve_weights, Method, EXIT_FAILED, EXIT_OK};
use crate::backend::Backend as _;
use crate::backend::CamBackend;
use crate::explain::gradcam::{CamRequest, NEEDS_CLASSIFIER};
use crate::explain::lafam::{Explainer, ImageBatch};
use crate::explain::relax::RelaxConfig;
use crate::io::output::{npy_f32, png, remove_stale_temps, write_all_or_nothing, WriteFn};
use crate::io::Shown;
use crate::io::{
    collect_inputs, heatmap, heatmap_diverging, load_image, overlay, overlay_relevance,
    resize_shorter_side, shorter_side_dims,
};
use crate::model::Stage;
use crate::tensor::HostTensor;
use crate::Upsample;
use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Blend factor of the heatmap over the image in `*.overlay.png`.
pub const OVERLAY_ALPHA: f32 = 0.5;

/// How maps are computed: the options `run` and `eval --weights` share.
#[derive(clap::Args, Debug, Clone)]
pub struct MapArgs {
    /// Attribution method(s), comma-separated: lafam (mean of the layer's activation maps over
    /// channels, min-max normalised: where the layer looks, at its coarse resolution) and lrp
    /// (LaFAM-LRP: relevance propagated from those activations back to the pixels: which
    /// pixels caused them). `lafam,lrp` computes both from one forward pass.
    /// Baselines: gradcam (needs a linear classifier head `fc`), eigencam (first principal
    /// component of the layer's activations), relax (occlusion with --masks random masks;
    /// also writes <stem>.relax-uncertainty.*). lafam, gradcam and eigencam share one
    /// forward pass; see docs/baselines.md.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "lafam",
        value_name = "METHODS"
    )]
    pub method: Vec<Method>,

    /// Residual stage whose activations are explained: layer1, layer2, layer3 or layer4
    /// (deeper = coarser, more semantic).
    #[arg(long, default_value = "layer4", value_name = "LAYER")]
    pub layer: Stage,

    /// LRP rule set (zennit composite) for `--method lrp`:
    /// epsilon-plus-flat (default; ZPlus on every conv, Flat on the first: positive, smooth,
    /// robust), epsilon-gamma-box (Gamma 0.25, ZBox on the first: sharper, input-aware, some
    /// negative evidence), epsilon-plus (ZPlus everywhere incl. the first conv: follows the
    /// pixel values), epsilon-alpha2-beta1-flat (alpha2-beta1: shows negative evidence
    /// explicitly, noisier).
    #[arg(long, default_value = "epsilon-plus-flat", value_name = "RULE")]
    pub rule: crate::explain::Composite,

    /// How the layer-resolution map is upsampled to the image: nearest (as in the LaFAM
    /// paper: blocky) or bilinear (smooth).
    #[arg(long, value_enum, default_value = "nearest")]
    pub upsample: Upsample,

    /// Resize every image so its shorter side is N pixels (aspect ratio kept) before the
    /// network; 0 feeds images at their own size. Maps are always written at the ORIGINAL
    /// image resolution.
    #[arg(long, default_value_t = 224, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=16384))]
    pub size: u32,

    /// Images per forward pass (images of identical network size are batched together;
    /// larger batches are split further if they would exceed the device's buffer limits).
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,

    /// Grad-CAM target class (index into the classifier's logits); default: the argmax logit
    /// of each image.
    #[arg(long, value_name = "N")]
    pub class: Option<usize>,

    /// RELAX: masks per forward pass (split further to fit the device's buffer limits).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub mask_batch: u32,

    /// RELAX: seed of the mask generator (results are deterministic per seed and backend).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,

    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
}

impl MapArgs {
    /// The settings [`stream_maps`] needs, with RELAX's mask count (named differently by the
    /// two commands).
    pub(crate) fn settings<'a>(&self, methods: &'a [Method], relax_masks: u32) -> MapSettings<'a> {
        MapSettings {
            layer: self.layer,
            upsample: self.upsample,
            size: self.size,
            batch: self.batch as usize,
            methods,
            class: self.class,
            relax: RelaxConfig {
                masks: relax_masks as usize,
                batch: self.mask_batch as usize,
                seed: self.seed,
            },
        }
    }

    /// Refuses, before any work, a method the weights cannot serve (Grad-CAM needs `fc`) and
    /// a `--class` outside the classifier's classes (a usage error, not one per image).
    pub(crate) fn check_weights(
        &self,
        weights: &crate::model::LoadedWeights,
        path: &Path,
    ) -> Result<()> {
        if self.method.contains(&Method::Gradcam) && weights.net.heads.fc.is_none() {
            bail!("{}: {NEEDS_CLASSIFIER}", path.shown());
        }
        if let (Some(c), Some((_, _, classes))) = (self.class, &weights.net.heads.fc) {
            if c >= *classes {
                bail!(
                    "--class {c} is out of range: the classifier of {} has {classes} classes (0..{})",
                    path.shown(),
                    classes.saturating_sub(1)
                );
            }
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Backbone weights: a safetensors file of a torchvision-layout ResNet (SwAV, SimCLR,
    /// MoCo, torchvision; F32/F16/BF16; `module.`, `encoder_q.`... prefixes are stripped).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,

    /// How maps are computed (shared with `eval --weights`).
    #[command(flatten)]
    pub map: MapArgs,

    /// RELAX: number of random occlusion masks per image.
    #[arg(long, default_value_t = 3000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub masks: u32,

    /// Output directory (created if missing). Per image and method: <stem>.<method>.npy
    /// (float32 HxW at the original resolution), <stem>.<method>.png (heatmap) and
    /// <stem>.<method>.overlay.png (heatmap blended over the image).
    #[arg(long, default_value = "lafam-out", value_name = "DIR")]
    pub out: PathBuf,

    /// Process only shard I of N (0-based): the inputs are sorted and input j goes to shard
    /// j mod N, so N jobs (Slurm array, Kubernetes indexed job) split a set deterministically.
    /// Duplicate output names are checked over all inputs first: every shard reports them.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::eval::Shard>,

    /// Print where the time went (stderr): loading the weights, opening the GPU (pipeline
    /// compilation or cache), preparing the network, explaining (and its device time, from
    /// GPU timestamps where the adapter has them).
    #[arg(long)]
    pub timings: bool,

    /// Image files (JPEG, PNG, WebP, BMP, TIFF; recognised by content) or directories (their
    /// image files, by extension, not recursive).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

/// An input waiting for the network.
pub(crate) struct Prepared {
    pub(crate) path: PathBuf,
    pub(crate) stem: String,
    pub(crate) original: RgbImage,
    /// The network's input when it differs from `original` (resized).
    pub(crate) resized: Option<RgbImage>,
}

impl Prepared {
    pub(crate) fn net_image(&self) -> &RgbImage {
        self.resized.as_ref().unwrap_or(&self.original)
    }
}

/// Error lines and the progress bar share stderr.
pub(crate) struct Reporter {
    pub(crate) bar: ProgressBar,
}

impl Reporter {
    pub(crate) fn new(total: usize) -> Self {
        let show = std::io::stderr().is_terminal() && total > 3;
        let bar = if show {
            let b = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} images  [{elapsed}, eta {eta}]")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        Reporter { bar }
    }
    pub(crate) fn error(&self, msg: impl std::fmt::Display) {
        // One line per error, whatever the message holds (file names may hold newlines).
        let line = msg.to_string();
        self.bar
            .suspend(|| eprintln!("error: {}", crate::io::escape_controls(&line)));
    }
    pub(crate) fn done(&self, n: usize) {
        self.bar.inc(n as u64);
    }
}

pub fn run(args: &RunArgs) -> Result<u8> {
    let start = Instant::now();
    let weights = resolve_weights(&args.weights)?;
    args.map.check_weights(&weights, &args.weights)?;
    let loaded = Instant::now();
    let (backend, note) = open_backend(args.map.backend)?;
    let opened = Instant::now();
    match &note {
        Some(n) => eprintln!("backend: {} ({n})", backend.describe()),
        None => eprintln!("backend: {}", backend.describe()),
    }
    crate::with_backend!(backend, b => {
        let mut explainer = Explainer::new(b, &weights.net).context("cannot prepare the network on the backend")?;
        if args.map.method.contains(&Method::Lrp) {
            explainer.enable_lrp(args.map.rule).context("cannot prepare the LRP rules on the backend")?;
        }
        let prepared = Instant::now();
        let timed = args.timings && explainer.backend.start_kernel_timing();
        let code = run_with(&mut explainer, args)?;
        let device = if timed { explainer.backend.stop_kernel_timing()? } else { None };
        if args.timings {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
            let done = Instant::now();
            let device_ms = device.map(|d| d.total_ns() * 1e-6);
            eprintln!(
                "timings: weights {:.0} ms, backend {:.0} ms, prepare {:.0} ms, explain {:.0} ms{}; \
                 total {:.0} ms{}",
                ms(start, loaded),
                ms(loaded, opened),
                ms(opened, prepared),
                ms(prepared, done),
                device_ms.map_or(String::new(), |d| format!(" (device {d:.0} ms)")),
                ms(start, done),
                device_ms.map_or(String::new(), |d| format!(
                    ", {:.0} ms outside device work",
                    ms(start, done) - d
                )),
            );
        }
        Ok(code)
    })
}

/// The `run` command over an already prepared explainer (the weights are loaded and the
/// backend opened): outputs go to `args.out`. Returns the exit code.
pub fn run_with<B: CamBackend>(explainer: &mut Explainer<B>, args: &RunArgs) -> Result<u8> {
    let mut methods = args.map.method.clone();
    methods.dedup();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output directory", args.out.shown()))?;
    // Temporary files of an earlier run killed between a write and its rename.
    remove_stale_temps(&args.out);

    let (mut files, errors) = collect_inputs(&args.inputs);
    if args.shard.is_some() {
        // Every shard sees the same sorted list, so that the checks below give every shard
        // the same answer.
        files.sort();
    }
    let mut failed = errors.len();
    for e in &errors {
        eprintln!("error: {}", crate::io::escape_controls(e));
    }

    // Output names come from the file stems: a second input with a stem already taken is an
    // error rather than a silent overwrite (compared case-insensitively, for file systems
    // that are). Checked over all inputs before sharding: every shard reports the same
    // duplicates (and none writes them), whichever shard the first of them falls in.
    let mut jobs = Vec::with_capacity(files.len());
    let mut taken: HashMap<String, PathBuf> = HashMap::new();
    // Input j of the (sorted) list belongs to shard j mod N.
    let mine = |j: usize| args.shard.is_none_or(|s| j % s.count == s.index);
    for (j, path) in files.into_iter().enumerate() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if stem.is_empty() {
            eprintln!(
                "error: {}: cannot derive an output name from this path",
                path.shown()
            );
            failed += 1;
            continue;
        }
        match taken.get(&stem.to_lowercase()) {
            Some(first) => {
                eprintln!(
                    "error: {}: output name '{}' is already used by {} (rename one of them)",
                    path.shown(),
                    crate::io::escape_controls(&stem),
                    first.shown()
                );
                failed += 1;
            }
            None => {
                taken.insert(stem.to_lowercase(), path.clone());
                if mine(j) {
                    jobs.push((path, stem));
                }
            }
        }
    }

    let rep = Reporter::new(jobs.len());
    let settings = args.map.settings(&methods, args.masks);
    let mut sink = WriteSink {
        args,
        rep: &rep,
        written: 0,
        failed: 0,
    };
    stream_maps(explainer, &jobs, &settings, &rep, &mut sink);
    let written = sink.written;
    failed += sink.failed;
    rep.bar.finish_and_clear();

    println!(
        "{written} images explained, outputs in {}; {failed} failed",
        args.out.shown()
    );
    Ok(if failed > 0 { EXIT_FAILED } else { EXIT_OK })
}

pub(crate) fn prepare(path: &Path, stem: &str, size: u32) -> Result<Prepared> {
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

/// What [`stream_maps`] computes.
pub(crate) struct MapSettings<'a> {
    pub(crate) layer: Stage,
    pub(crate) upsample: Upsample,
    /// Shorter side fed to the network (0 = as is).
    pub(crate) size: u32,
    pub(crate) batch: usize,
    pub(crate) methods: &'a [Method],
    /// Grad-CAM's target class (None: each image's argmax logit).
    pub(crate) class: Option<usize>,
    pub(crate) relax: RelaxConfig,
}

/// Receives [`stream_maps`]'s results.
pub(crate) trait MapSink {
    /// An input that produced no maps (decode or compute error), with the error's message.
    fn failed(&mut self, path: &Path, stem: &str, msg: String);
    /// One batch's images and, per method, one map per image at its original resolution
    /// (`[1, h, w, 1]`; the count is checked), with the suffix of its output name ("" or
    /// "-uncertainty" for RELAX's second map).
    fn maps(&mut self, group: &[Prepared], maps: Vec<(Method, &'static str, Vec<HostTensor>)>);
}

/// Decodes `jobs` (path, stem) in parallel a chunk at a time, groups them by network input
/// size into batches of `settings.batch`, computes every method's maps and hands each batch
/// to `sink`, advancing `rep` by every input. Memory stays bounded (a few batches' worth).
pub(crate) fn stream_maps<B: CamBackend>(
    explainer: &mut Explainer<B>,
    jobs: &[(PathBuf, String)],
    settings: &MapSettings,
    rep: &Reporter,
    sink: &mut dyn MapSink,
) {
    let batch = settings.batch.max(1);
    // Decoded images waiting for a full batch, by network size (w, h).
    let mut pending: BTreeMap<(u32, u32), Vec<Prepared>> = BTreeMap::new();
    let cap = (batch * 4).max(64);
    let chunk = batch.max(rayon::current_num_threads() * 2);
    for part in jobs.chunks(chunk) {
        let decoded: Vec<Result<Prepared>> = part
            .par_iter()
            .map(|(p, s)| prepare(p, s, settings.size))
            .collect();
        for (d, (path, stem)) in decoded.into_iter().zip(part) {
            match d {
                Err(e) => {
                    sink.failed(path, stem, format!("{e:#}"));
                    rep.done(1);
                }
                Ok(p) => {
                    let key = p.net_image().dimensions();
                    let group = pending.entry(key).or_default();
                    group.push(p);
                    if group.len() >= batch {
                        let g = pending.remove(&key).unwrap_or_default();
                        explain_group(explainer, settings, g, rep, sink);
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
            explain_group(explainer, settings, g, rep, sink);
        }
    }
    for (_, g) in std::mem::take(&mut pending) {
        explain_group(explainer, settings, g, rep, sink);
    }
}

/// Every requested method's maps for one batch, with the suffix of their output names
/// ("" or "-uncertainty"). LaFAM and LRP share LRP's taped forward pass; LaFAM (without
/// LRP), Grad-CAM and EigenCAM share one forward pass; RELAX runs its own.
fn compute<B: CamBackend>(
    explainer: &mut Explainer<B>,
    settings: &MapSettings,
    batch: ImageBatch,
    out_sizes: &[(usize, usize)],
) -> Result<Vec<(Method, &'static str, Vec<HostTensor>)>> {
    let (layer, upsample) = (settings.layer, settings.upsample);
    let wants = |m| settings.methods.contains(&m);
    let mut out = Vec::new();
    if wants(Method::Lrp) {
        let both = explainer.lrp(batch, layer, upsample, out_sizes, wants(Method::Lafam))?;
        if wants(Method::Lafam) {
            out.push((
                Method::Lafam,
                "",
                both.iter().filter_map(|(_, l)| l.clone()).collect(),
            ));
        }
        out.push((Method::Lrp, "", both.into_iter().map(|(r, _)| r).collect()));
    }
    let req = CamRequest {
        lafam: wants(Method::Lafam) && !wants(Method::Lrp),
        gradcam: wants(Method::Gradcam),
        class: settings.class,
        eigencam: wants(Method::Eigencam),
    };
    if req.lafam || req.gradcam || req.eigencam {
        let cams = explainer.cams(batch, layer, upsample, req, out_sizes)?;
        for (on, m, maps) in [
            (req.lafam, Method::Lafam, cams.lafam),
            (req.gradcam, Method::Gradcam, cams.gradcam),
            (req.eigencam, Method::Eigencam, cams.eigencam),
        ] {
            if on {
                out.push((m, "", maps));
            }
        }
    }
    if wants(Method::Relax) {
        let maps = explainer.relax(batch, &settings.relax, out_sizes)?;
        let (imp, unc): (Vec<_>, Vec<_>) = maps.into_iter().unzip();
        out.push((Method::Relax, "", imp));
        out.push((Method::Relax, "-uncertainty", unc));
    }
    Ok(out)
}

fn explain_group<B: CamBackend>(
    explainer: &mut Explainer<B>,
    settings: &MapSettings,
    group: Vec<Prepared>,
    rep: &Reporter,
    sink: &mut dyn MapSink,
) {
    if group.is_empty() {
        return;
    }
    let (w, h) = group[0].net_image().dimensions();
    let mut rgb = Vec::with_capacity(group.len() * (w * h * 3) as usize);
    for p in &group {
        rgb.extend_from_slice(p.net_image().as_raw());
    }
    let out_sizes: Vec<(usize, usize)> = group
        .iter()
        .map(|p| (p.original.height() as usize, p.original.width() as usize))
        .collect();
    let computed = ImageBatch::new(&rgb, group.len(), h as usize, w as usize)
        .and_then(|batch| compute(explainer, settings, batch, &out_sizes))
        .and_then(|c| {
            for (method, _, maps) in &c {
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
    rep.done(count);
}

/// Per method, the output-name suffix and one map per image.
type MethodMaps = Vec<(Method, &'static str, Vec<HostTensor>)>;

/// Reports every image with a non-finite map (NaN or infinite: the network's activations
/// overflowed f32, typically from BatchNorm statistics such as a tiny running_var) as a
/// failed input, one line naming the methods and the stage, and returns the other images
/// with their maps: nothing is written for a failed image.
fn drop_non_finite(
    settings: &MapSettings,
    group: Vec<Prepared>,
    computed: MethodMaps,
    sink: &mut dyn MapSink,
) -> (Vec<Prepared>, MethodMaps) {
    let layer = settings.layer;
    let mut bad: Vec<Vec<Method>> = vec![Vec::new(); group.len()];
    for (method, _, maps) in &computed {
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
        .map(|(m, suffix, maps)| {
            let maps = maps
                .into_iter()
                .zip(&keep)
                .filter_map(|(t, &k)| k.then_some(t))
                .collect();
            (m, suffix, maps)
        })
        .collect();
    (group, computed)
}

/// `run`'s sink: writes each map's outputs.
struct WriteSink<'a> {
    args: &'a RunArgs,
    rep: &'a Reporter,
    written: usize,
    failed: usize,
}

impl MapSink for WriteSink<'_> {
    fn failed(&mut self, _path: &Path, _stem: &str, msg: String) {
        self.rep.error(msg);
        self.failed += 1;
    }

    fn maps(&mut self, group: &[Prepared], maps: Vec<(Method, &'static str, Vec<HostTensor>)>) {
        // All the outputs of one image (every method's) are written all or nothing.
        let results: Vec<Result<()>> = group
            .par_iter()
            .enumerate()
            .map(|(i, p)| {
                let files = maps
                    .iter()
                    .filter_map(|(method, suffix, maps)| {
                        let map = maps.get(i)?;
                        let out = &self.args.out;
                        Some(output_files(
                            out,
                            &p.stem,
                            *method,
                            suffix,
                            &map.data,
                            &p.original,
                        ))
                    })
                    .flatten()
                    .collect();
                write_all_or_nothing(files)
                    .with_context(|| format!("{}: cannot write outputs", p.path.shown()))
            })
            .collect();
        for r in results {
            match r {
                Ok(()) => self.written += 1,
                Err(e) => {
                    self.rep.error(format_args!("{e:#}"));
                    self.failed += 1;
                }
            }
        }
    }
}

/// Writes `<stem>.<method>.npy`, `<stem>.<method>.png` and `<stem>.<method>.overlay.png`.
pub fn write_outputs(
    dir: &Path,
    stem: &str,
    method: Method,
    map: &[f32],
    original: &RgbImage,
) -> Result<()> {
    write_named_outputs(dir, stem, method, "", map, original)
}

/// [`write_outputs`] with `suffix` appended to the method in the names
/// (`<stem>.relax-uncertainty.npy`).
pub fn write_named_outputs(
    dir: &Path,
    stem: &str,
    method: Method,
    suffix: &str,
    map: &[f32],
    original: &RgbImage,
) -> Result<()> {
    write_all_or_nothing(output_files(dir, stem, method, suffix, map, original))
}

/// The three outputs of one map, named as [`write_named_outputs`] names them, for
/// [`write_all_or_nothing`].
pub fn output_files<'a>(
    dir: &Path,
    stem: &str,
    method: Method,
    suffix: &str,
    map: &'a [f32],
    original: &RgbImage,
) -> Vec<(PathBuf, WriteFn<'a>)> {
    let (w, h) = (original.width() as usize, original.height() as usize);
    let base = format!("{stem}.{method}{suffix}");
    // Relevance is signed: a diverging colormap centred on zero. LaFAM and the CAMs are in
    // [0, 1]; RELAX's maps (raw similarities, variances) are min-max scaled for display only.
    let (heat, blended) = match method {
        Method::Lafam | Method::Gradcam | Method::Eigencam => {
            let heat = heatmap(map, h, w);
            let blended = overlay(original, &heat, OVERLAY_ALPHA);
            (heat, blended)
        }
        Method::Relax => {
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
            let blended = overlay(original, &heat, OVERLAY_ALPHA);
            (heat, blended)
        }
        Method::Lrp => {
            let heat = heatmap_diverging(map, h, w);
            let blended = overlay_relevance(original, map, &heat);
            (heat, blended)
        }
    };
    vec![
        (dir.join(format!("{base}.npy")), npy_f32(h, w, map)),
        (dir.join(format!("{base}.png")), png(heat)),
        (dir.join(format!("{base}.overlay.png")), png(blended)),
    ]
}
