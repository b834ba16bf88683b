//! `lafam-gpu run`: attribution maps for a set of images, written as `.npy` arrays, heatmaps
//! and overlays. The library streams the images ([`crate::stream`]); this file parses the
//! arguments, names the outputs and writes them.

use super::{resolve_weights, EXIT_FAILED, EXIT_OK};
use crate::device::BackendChoice;
use crate::explain::relax::RelaxConfig;
use crate::explain::{Method, MethodMaps};
use crate::explainer::{Explainer, Options};
use crate::io::figure::{montage, Panel, PanelContent};
use crate::io::output::{
    npy_f32, png_with_text, remove_stale_temps, write_all_or_nothing, WriteFn,
};
use crate::io::Shown;
use crate::io::{collect_inputs, render_map_styled, Colormap, Style};
use crate::model::Stage;
use crate::stream::{MapSink, Prepared};
use crate::Upsample;
use anyhow::{Context, Result};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How maps are computed: the options `run` and `eval --weights` share.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct MapArgs {
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
    #[arg(long, default_value = "nearest", value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(Upsample::NAMES), |s| s.parse::<Upsample>().unwrap()))]
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

    /// RELAX: seed of the mask generator (results are deterministic per seed and backend);
    /// eval --faithfulness: seed of the random subsets, baselines, noise and MPRT's
    /// re-initialised weights.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,

    /// Concepts (--method concepts): the stage whose channels are ranked and conditioned on
    /// (default: --layer; a lower stage decomposes the relevance of --layer hierarchically,
    /// as CRP does).
    #[arg(long, value_name = "LAYER")]
    pub concept_layer: Option<Stage>,

    /// Concepts: how many channels, highest relevance first (<stem>.concept-<c>.* each, and
    /// <stem>.concepts.json).
    #[arg(long, default_value_t = 8, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub top_concepts: u32,

    /// The conditional map of these channels of --concept-layer for every image (implies
    /// --method concepts; replaces the top-K ranking).
    #[arg(long, value_delimiter = ',', value_name = "C")]
    pub channel: Vec<usize>,

    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
}

impl MapArgs {
    /// The library options these arguments stand for, with RELAX's mask count (named
    /// differently by the two commands).
    pub(crate) fn options(&self, relax_masks: u32) -> Options {
        Options {
            backend: self.backend,
            stage: self.layer,
            upsample: self.upsample,
            rule: self.rule,
            size: self.size,
            batch: self.batch as usize,
            class: self.class,
            relax: RelaxConfig {
                masks: relax_masks as usize,
                batch: self.mask_batch as usize,
                seed: self.seed,
            },
            concepts: crate::explain::ConceptConfig {
                layer: self.concept_layer,
                top: self.top_concepts as usize,
                channels: self.channel.clone(),
            },
        }
    }

    /// The requested methods, each once.
    pub(crate) fn methods(&self) -> Vec<Method> {
        let mut methods = self.method.clone();
        if !self.channel.is_empty() {
            methods.push(Method::Concepts);
        }
        methods.sort();
        methods.dedup();
        methods
    }

    /// Opens the explainer and refuses, before any work, a method the weights cannot serve
    /// (Grad-CAM needs `fc`) and a `--class` outside the classifier's classes (a usage
    /// error, not one per image). Prints the `backend:` line.
    pub(crate) fn open(
        &self,
        weights: &crate::model::LoadedWeights,
        path: &Path,
        relax_masks: u32,
    ) -> Result<Explainer> {
        if self.method.contains(&Method::Gradcam) && weights.net.heads.fc.is_none() {
            anyhow::bail!(
                "{}: {}",
                path.shown(),
                crate::explain::gradcam::NEEDS_CLASSIFIER
            );
        }
        if let (Some(c), Some((_, _, classes))) = (self.class, &weights.net.heads.fc) {
            if c >= *classes {
                anyhow::bail!(
                    "--class {c} is out of range: the classifier of {} has {classes} classes (0..{})",
                    path.shown(),
                    classes.saturating_sub(1)
                );
            }
        }
        let mut explainer = Explainer::from_weights(weights, self.options(relax_masks))?;
        match explainer.backend_note() {
            Some(n) => eprintln!("backend: {} ({n})", explainer.backend()),
            None => eprintln!("backend: {}", explainer.backend()),
        }
        explainer.check(&self.methods())?;
        Ok(explainer)
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
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

    /// How heatmaps, overlays and montages are coloured: auto (inferno for maps in [0, 1],
    /// blue-white-red centred on zero for signed relevance), or one colormap for every map
    /// (sequential: inferno, viridis, magma, cividis, turbo, greys; diverging:
    /// blue-white-red, purple-orange). Signed maps keep zero at the colormap's middle.
    #[arg(long, default_value = "auto", value_name = "NAME", value_parser = parse_colormap)]
    pub colormap: Colormap,

    /// Opacity of the heatmap over the image in *.overlay.png and the montage, 0 to 1
    /// (default: 0.5 for maps in [0, 1]; signed maps' opacity grows with |value| up to 0.9,
    /// and --alpha sets that largest opacity instead).
    #[arg(long, value_name = "A", value_parser = parse_alpha)]
    pub alpha: Option<f32>,

    /// Write only the .npy maps (and JSON side outputs): no heatmap or overlay PNGs. For
    /// dataset-scale runs. --montage still writes the montage.
    #[arg(long)]
    pub no_png: bool,

    /// Also write <stem>.montage.png per image: the image, then every map over it, each with
    /// a caption (method, layer, rule, weights) and a colour bar labelled with its range.
    #[arg(long)]
    pub montage: bool,

    /// Image files (JPEG, PNG, WebP, BMP, TIFF; recognised by content) or directories (their
    /// image files, by extension, not recursive).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

fn parse_colormap(s: &str) -> Result<Colormap, String> {
    s.parse()
}

/// `--alpha`: a number in [0, 1].
pub(crate) fn parse_alpha(s: &str) -> Result<f32, String> {
    let a: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number (the opacity is 0 to 1)"))?;
    if !(0.0..=1.0).contains(&a) {
        return Err(format!("{s} is outside 0 to 1 (the opacity)"));
    }
    Ok(a)
}

/// What every figure of a run says about how its maps were made (PNG text chunks and
/// montage captions).
pub struct FigureInfo {
    /// The weights' file name or known model name.
    pub weights: String,
    pub layer: Stage,
    pub concept_layer: Option<Stage>,
    pub rule: crate::explain::Composite,
    pub upsample: Upsample,
    pub size: u32,
    pub style: Style,
    /// Write heatmap and overlay PNGs.
    pub pngs: bool,
    pub montage: bool,
}

impl FigureInfo {
    pub fn from_args(args: &RunArgs) -> Self {
        let weights = args
            .weights
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| args.weights.to_string_lossy().into_owned());
        FigureInfo {
            weights,
            layer: args.map.layer,
            concept_layer: args.map.concept_layer,
            rule: args.map.rule,
            upsample: args.map.upsample,
            size: args.map.size,
            style: Style {
                colormap: args.colormap,
                alpha: args.alpha,
            },
            pngs: !args.no_png,
            montage: args.montage,
        }
    }

    /// The LRP rule as figures name it: the composite for methods that use one, "none"
    /// otherwise.
    pub fn rule_for(&self, method: Method) -> String {
        if uses_rule(method) {
            self.rule.name().to_string()
        } else {
            "none (not an LRP method)".to_string()
        }
    }

    /// The layer as figures name it ("layer4", or "layer4 -> layer3" for concepts of a
    /// lower concept layer).
    pub fn layer_for(&self, method: Method) -> String {
        match (method, self.concept_layer) {
            (Method::Concepts, Some(c)) if c != self.layer => format!("{} -> {c}", self.layer),
            _ => self.layer.to_string(),
        }
    }

    /// How `method`'s maps were brought to the image's resolution.
    pub fn upsample_for(&self, method: Method) -> String {
        use crate::explain::method::Resample;
        match method.info().resample {
            Resample::AsRequested => self.upsample.to_string(),
            Resample::Bilinear | Resample::BilinearRenormalised => "bilinear".to_string(),
        }
    }

    /// The PNG text chunks of map `name` of `method` drawn as `kind`.
    pub fn text(
        &self,
        method: Method,
        name: &str,
        kind: &str,
        display: crate::io::Display,
    ) -> Vec<(String, String)> {
        let colormap = self.style.colormap.resolve(display);
        vec![
            (
                "Software".into(),
                format!("lafam-gpu {}", env!("CARGO_PKG_VERSION")),
            ),
            ("method".into(), method.to_string()),
            ("map".into(), name.to_string()),
            ("layer".into(), self.layer_for(method)),
            ("rule".into(), self.rule_for(method)),
            ("weights".into(), self.weights.clone()),
            ("upsample".into(), self.upsample_for(method)),
            ("size".into(), self.size.to_string()),
            ("colormap".into(), colormap.to_string()),
            ("kind".into(), kind.to_string()),
        ]
    }

    /// A map panel's caption: the map's name, layer and rule (or upsampling), weights.
    pub fn caption(&self, method: Method, name: &str) -> Vec<String> {
        let how = if uses_rule(method) {
            self.rule.name().to_string()
        } else {
            format!("{} upsampling", self.upsample_for(method))
        };
        vec![
            name.to_string(),
            format!("{} · {how}", self.layer_for(method)),
            self.weights.clone(),
        ]
    }
}

/// Whether `method`'s maps depend on the LRP rule.
fn uses_rule(method: Method) -> bool {
    method.info().needs == crate::explain::method::Needs::LrpTape
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

pub(crate) fn run(args: &RunArgs) -> Result<u8> {
    let start = Instant::now();
    let weights = resolve_weights(&args.weights)?;
    let loaded = Instant::now();
    let mut explainer = args.map.open(&weights, &args.weights, args.masks)?;
    drop(weights);
    let prepared = Instant::now();
    let timed = args.timings && explainer.start_kernel_timing();
    let code = run_with(&mut explainer, args)?;
    let device = if timed {
        explainer.stop_kernel_timing()?
    } else {
        None
    };
    if args.timings {
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let done = Instant::now();
        let device_ms = device.map(|d| d.total_ns() * 1e-6);
        eprintln!(
            "timings: weights {:.0} ms, backend and prepare {:.0} ms, explain {:.0} ms{}; \
             total {:.0} ms{}",
            ms(start, loaded),
            ms(loaded, prepared),
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
}

/// The `run` command over an opened explainer: outputs go to `args.out`. Returns the exit
/// code.
fn run_with(explainer: &mut Explainer, args: &RunArgs) -> Result<u8> {
    let methods = args.map.methods();
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
    let figure = FigureInfo::from_args(args);
    let mut sink = WriteSink {
        args,
        figure: &figure,
        rep: &rep,
        written: 0,
        failed: 0,
    };
    explainer.stream(&jobs, &methods, &mut sink)?;
    let written = sink.written;
    failed += sink.failed;
    rep.bar.finish_and_clear();

    println!(
        "{written} images explained, outputs in {}; {failed} failed",
        args.out.shown()
    );
    Ok(if failed > 0 { EXIT_FAILED } else { EXIT_OK })
}

/// `run`'s sink: writes each map's outputs.
struct WriteSink<'a> {
    args: &'a RunArgs,
    figure: &'a FigureInfo,
    rep: &'a Reporter,
    written: usize,
    failed: usize,
}

impl MapSink for WriteSink<'_> {
    fn failed(&mut self, _path: &Path, _stem: &str, msg: String) {
        self.rep.error(msg);
        self.failed += 1;
    }

    fn done(&mut self, n: usize) {
        self.rep.done(n);
    }

    fn maps(&mut self, group: &[Prepared], maps: Vec<MethodMaps>) {
        // All the outputs of one image (every method's maps, and side outputs such as
        // concepts' JSON) are written all or nothing.
        let results: Vec<Result<()>> = group
            .par_iter()
            .enumerate()
            .map(|(i, p)| {
                let out = &self.args.out;
                let mut files = Vec::new();
                let mut peaks: HashMap<String, [usize; 2]> = HashMap::new();
                let mut panels = vec![Panel {
                    caption: vec![
                        "image".to_string(),
                        p.path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        format!("{}x{} px", p.original.width(), p.original.height()),
                    ],
                    content: PanelContent::Image,
                }];
                for m in &maps {
                    let Some(map) = m.maps.get(i) else { continue };
                    let name = match m.names.get(i) {
                        Some(n) => n.clone(),
                        None => format!("{}{}", m.method, m.output),
                    };
                    peaks.insert(name.clone(), peak(&map.data, map.shape.w));
                    let display = m.method.info().display;
                    files.extend(output_files(
                        out,
                        &p.stem,
                        &name,
                        m.method,
                        &map.data,
                        &p.original,
                        self.figure,
                    ));
                    if self.figure.montage {
                        panels.push(Panel {
                            caption: self.figure.caption(m.method, &name),
                            content: PanelContent::Map {
                                map: &map.data,
                                display,
                                style: self.figure.style,
                            },
                        });
                    }
                }
                if self.figure.montage {
                    let img = montage(&p.original, &panels);
                    let mut text = vec![
                        (
                            "Software".to_string(),
                            format!("lafam-gpu {}", env!("CARGO_PKG_VERSION")),
                        ),
                        ("kind".to_string(), "montage".to_string()),
                        ("weights".to_string(), self.figure.weights.clone()),
                        ("layer".to_string(), self.figure.layer.to_string()),
                        ("rule".to_string(), self.figure.rule.name().to_string()),
                    ];
                    let names: Vec<String> = panels
                        .iter()
                        .skip(1)
                        .map(|q| q.caption[0].clone())
                        .collect();
                    text.push(("maps".to_string(), names.join(",")));
                    let methods: Vec<String> = maps.iter().map(|m| m.method.to_string()).collect();
                    let mut methods_unique = methods.clone();
                    methods_unique.dedup();
                    text.push(("method".to_string(), methods_unique.join(",")));
                    files.push((
                        out.join(format!("{}.montage.png", p.stem)),
                        png_with_text(img, text),
                    ));
                }
                for m in &maps {
                    let Some(json) = m.json.get(i) else { continue };
                    let text = side_json(json.clone(), &peaks);
                    let path = out.join(format!("{}.{}.json", p.stem, m.method));
                    let write: WriteFn = Box::new(move |w| Ok(w.write_all(text.as_bytes())?));
                    files.push((path, write));
                }
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

/// A method's per-image JSON (concepts'), with each listed concept's peak (`[y, x]` at the
/// original resolution) read off its conditional map.
pub(crate) fn side_json(mut j: serde_json::Value, peaks: &HashMap<String, [usize; 2]>) -> String {
    if let Some(list) = j.get_mut("concepts").and_then(|c| c.as_array_mut()) {
        for c in list {
            let name = format!("concept-{}", c["channel"]);
            if let Some(&[y, x]) = peaks.get(&name) {
                c["peak"] = serde_json::json!([y, x]);
            }
        }
    }
    serde_json::to_string_pretty(&j).expect("JSON of numbers and strings") + "\n"
}

/// The position `[y, x]` of a map's maximum (the first, in row-major order).
pub(crate) fn peak(map: &[f32], w: usize) -> [usize; 2] {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in map.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    [best.0 / w.max(1), best.0 % w.max(1)]
}

/// The outputs of one map, `<stem>.<name>.npy`, `.png` and `.overlay.png` (the name is the
/// method with its output suffix, e.g. "relax-uncertainty", or a per-image name such as
/// "concept-17"; the PNGs only without `--no-png`, drawn in the run's style and carrying its
/// text chunks), for [`write_all_or_nothing`].
pub fn output_files<'a>(
    dir: &Path,
    stem: &str,
    name: &str,
    method: Method,
    map: &'a [f32],
    original: &RgbImage,
    figure: &FigureInfo,
) -> Vec<(PathBuf, WriteFn<'a>)> {
    let (w, h) = (original.width() as usize, original.height() as usize);
    let base = format!("{stem}.{name}");
    let mut files = vec![(dir.join(format!("{base}.npy")), npy_f32(h, w, map))];
    if figure.pngs {
        let display = method.info().display;
        let (heat, blended) = render_map_styled(map, original, display, figure.style);
        files.push((
            dir.join(format!("{base}.png")),
            png_with_text(heat, figure.text(method, name, "heatmap", display)),
        ));
        files.push((
            dir.join(format!("{base}.overlay.png")),
            png_with_text(blended, figure.text(method, name, "overlay", display)),
        ));
    }
    files
}
