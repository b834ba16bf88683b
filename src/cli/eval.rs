//! `lafam-gpu eval`: localisation metrics of attribution maps against segmentation masks.
//!
//! Three modes:
//! - `--maps DIR --masks DIR`: score existing maps (`<stem>[.<method>].npy`, H×W float) against
//!   `<stem>.png` masks.
//! - `--weights W --dataset voc|imagenet-s|folder --root DIR`: compute the maps (batched by
//!   network size, exactly as `run` does: [`super::run::stream_maps`]) and score each at the
//!   image's original resolution in one streaming pass; maps are kept only with `--save-maps`.
//! - `--merge a.json b.json ...`: recombine shard reports.
//!
//! Outputs: a table of means ± std on stdout, `--json` (per image, mean, std, count, skipped)
//! and `--csv` (per image), written atomically. Exit code 1 when some images were skipped.

use super::faith::FaithArgs;
use super::run::{MapArgs, Reporter};
use super::{resolve_weights, EXIT_FAILED, EXIT_FATAL, EXIT_OK};
use crate::eval::datasets::{self, stem_of, DatasetKind, Shard};
use crate::eval::report::{self, ImageScore, Report, Skipped};
use crate::eval::{load_labels, score_labels, MetricOptions, Ties, VoidMode};
use crate::explain::{Method, MethodMaps};
use crate::explainer::Explainer;
use crate::io::write_npy_f32;
use crate::io::Shown;
use crate::stream::{MapSink, Prepared};
use crate::tensor::HostTensor;
use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub(crate) struct EvalArgs {
    /// Directory of maps to score: `<stem>.npy` or `<stem>.<method>.npy` (H×W float32/64,
    /// as `run` writes them), matched to masks by stem (file name up to the first dot).
    #[arg(long, value_name = "DIR", requires = "masks", conflicts_with_all = ["weights", "merge"])]
    pub maps: Option<PathBuf>,

    /// Directory of masks for `--maps`: `<stem>.png`, 8-bit grey or palette (nonzero =
    /// object, 255 = void) or RGB (class id R + 256·G).
    #[arg(long, value_name = "DIR", requires = "maps")]
    pub masks: Option<PathBuf>,

    /// Backbone weights (safetensors): compute the maps of a dataset and score them.
    #[arg(long, value_name = "FILE", requires_all = ["dataset", "root"], conflicts_with = "merge")]
    pub weights: Option<PathBuf>,

    /// Dataset layout: voc (VOC 2012: JPEGImages, SegmentationObject or SegmentationClass,
    /// ImageSets/Segmentation/<split>.txt), imagenet-s (validation/<wnid>/*.JPEG,
    /// validation-segmentation/<wnid>/*.png, id = R + 256·G, 1000 = void), folder
    /// (images/<stem>.<ext>, masks/<stem>.png).
    #[arg(long, value_enum, requires = "weights")]
    pub dataset: Option<DatasetKind>,

    /// Dataset root directory.
    #[arg(long, value_name = "DIR", requires = "weights")]
    pub root: Option<PathBuf>,

    /// Dataset split (VOC: the ImageSets/Segmentation list; ImageNet-S: val = validation).
    #[arg(long, default_value = "val")]
    pub split: String,

    /// Only the first N images of the (sorted) dataset; applied before `--shard`.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,

    /// Also write each computed map as <DIR>/<stem>.<method>.npy. With --method concepts (or
    /// --channel): the conditional maps <DIR>/<stem>.concept-<c>.npy and
    /// <DIR>/<stem>.concepts.json, as `run` names them (saved, not scored).
    #[arg(long, value_name = "DIR", requires = "weights")]
    pub save_maps: Option<PathBuf>,

    /// How maps are computed (as `run`).
    #[command(flatten)]
    pub map: MapArgs,

    /// RELAX: random occlusion masks per image (`run --masks`; renamed here, where --masks is
    /// the segmentation masks' directory).
    #[arg(long, default_value_t = 3000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub relax_masks: u32,

    /// k of top-k intersection, in pixels (Quantus' default 1000). Images with fewer pixels
    /// get no top-k score.
    #[arg(long, default_value_t = 1000, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: u64,

    /// Equal values at the top-k / |S| cut: expected (count them in proportion to the free
    /// slots: the mean over all tie orders) or index (lower row-major index first, as
    /// Quantus with a stable argsort). Quantus' own order is numpy's unstable argsort.
    #[arg(long, value_enum, default_value = "expected")]
    pub ties: Ties,

    /// Void pixels (VOC 255, ImageNet-S 1000): background (default), object, or ignore (left
    /// out of the image).
    #[arg(long, value_enum, default_value = "background")]
    pub void: VoidMode,

    /// Score only shard I of N (0-based) of the sorted images; combine with `--merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// Merge these JSON reports (from `--shard` runs) into one (`--json`, table).
    #[arg(long, num_args = 1.., value_name = "JSON")]
    pub merge: Vec<PathBuf>,

    /// Write the per-image results, means, std and skipped images as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write the per-image results as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,

    /// Faithfulness metrics (computed on the maps of this run).
    #[command(flatten)]
    pub faith: FaithArgs,
}

impl EvalArgs {
    fn options(&self) -> MetricOptions {
        MetricOptions {
            top_k: self.top_k as usize,
            ties: self.ties,
        }
    }
    /// The settings every mode's scores depend on; [`annotate`] adds the mode's own.
    fn settings(&self) -> serde_json::Value {
        json!({
            "top_k": self.top_k,
            "ties": format!("{:?}", self.ties).to_lowercase(),
            "void": format!("{:?}", self.void).to_lowercase(),
            "limit": self.limit,
            "version": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// Adds a mode's settings (compared by `--merge`), its provenance (recorded only) and the
/// shard to every report.
fn annotate(
    args: &EvalArgs,
    reports: &mut [Report],
    settings: serde_json::Value,
    provenance: serde_json::Value,
) {
    for r in reports {
        if let (Some(s), serde_json::Value::Object(extra)) = (r.settings.as_object_mut(), &settings)
        {
            s.extend(extra.clone());
        }
        r.provenance = provenance.clone();
        r.shard = args.shard;
    }
}

pub(crate) fn eval(args: &EvalArgs) -> Result<u8> {
    if args.faith.enabled() && args.weights.is_none() {
        eprintln!(
            "error: --faithfulness needs --weights with --dataset and --root (the metrics run \
             the network on perturbed images)"
        );
        return Ok(EXIT_FATAL);
    }
    let reports = if !args.merge.is_empty() {
        let parts = args
            .merge
            .iter()
            .map(|p| {
                let text = crate::io::files::read_regular(p)
                    .with_context(|| format!("{}: cannot read", p.shown()))?;
                let r = report::parse_part(&text).with_context(|| p.shown().to_string())?;
                Ok((p.shown().to_string(), r))
            })
            .collect::<Result<Vec<_>>>()?;
        report::merge(parts)?
    } else if let (Some(maps), Some(masks)) = (&args.maps, &args.masks) {
        let mut reports = eval_maps(args, maps, masks)?;
        annotate(
            args,
            &mut reports,
            json!({ "mode": "maps" }),
            json!({
                "maps": maps.to_string_lossy(),
                "masks": masks.to_string_lossy(),
            }),
        );
        reports
    } else if let Some(w) = &args.weights {
        eval_dataset(args, w)?
    } else {
        eprintln!(
            "error: give --maps and --masks, or --weights with --dataset and --root, or --merge"
        );
        return Ok(EXIT_FATAL);
    };
    finish(args, &reports)
}

fn finish(args: &EvalArgs, reports: &[Report]) -> Result<u8> {
    if let Some(p) = &args.json {
        report::write_json(p, reports)?;
    }
    if let Some(p) = &args.csv {
        report::write_csv(p, reports)?;
    }
    print!("{}", report::table(reports));
    let skipped = reports.iter().any(|r| !r.skipped.is_empty());
    Ok(if skipped { EXIT_FAILED } else { EXIT_OK })
}

/// Reads an H×W map: see [`crate::io::npy::read_map`].
pub fn read_map(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    crate::io::npy::read_map(path)
}

fn npy_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.shown()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// `x.npy` -> None, `x.lafam.npy` -> "lafam", `x.a.b.npy` -> "a.b".
fn method_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
    stem.split_once('.').map(|(_, m)| m.to_string())
}

fn eval_maps(args: &EvalArgs, maps_dir: &Path, masks_dir: &Path) -> Result<Vec<Report>> {
    let opts = args.options();
    // stem -> (method -> map path)
    let mut maps: BTreeMap<String, BTreeMap<Option<String>, PathBuf>> = BTreeMap::new();
    for p in npy_files(maps_dir, "npy")? {
        maps.entry(stem_of(&p))
            .or_default()
            .insert(method_of(&p), p);
    }
    let masks: BTreeMap<String, PathBuf> = npy_files(masks_dir, "png")?
        .into_iter()
        .map(|p| (stem_of(&p), p))
        .collect();
    ensure!(!maps.is_empty(), "{}: no .npy maps found", maps_dir.shown());
    let methods: Vec<Option<String>> = {
        let mut m: Vec<_> = maps.values().flat_map(|v| v.keys().cloned()).collect();
        m.sort();
        m.dedup();
        m
    };
    let mut stems: Vec<String> = maps.keys().chain(masks.keys()).cloned().collect();
    stems.sort();
    stems.dedup();
    if let Some(l) = args.limit {
        stems.truncate(l);
    }
    if let Some(s) = args.shard {
        stems = s.select(stems);
    }
    let rep = Reporter::new(stems.len());
    let void_id = DatasetKind::Folder.void_id();
    // Per stem: per method, Ok(score) or Err(reason).
    type Outcome = Vec<(Option<String>, Result<crate::eval::Scores, String>)>;
    let outcomes: Vec<(String, Outcome)> = stems
        .par_iter()
        .map(|stem| {
            let mine = maps.get(stem);
            let labels = masks
                .get(stem)
                .map(|p| load_labels(p).map_err(|e| format!("{e:#}")));
            let out: Outcome = methods
                .iter()
                .map(|m| {
                    let r = match (mine.and_then(|v| v.get(m)), &labels) {
                        (None, _) => Err("missing map".to_string()),
                        (Some(_), None) => Err(format!(
                            "missing mask ({})",
                            masks_dir.join(format!("{stem}.png")).shown()
                        )),
                        (Some(_), Some(Err(e))) => Err(e.clone()),
                        (Some(p), Some(Ok(l))) => read_map(p)
                            .map_err(|e| format!("{e:#}"))
                            .and_then(|(h, w, a)| {
                                score_labels(&a, (h, w), l, void_id, args.void, &opts)
                            }),
                    };
                    (m.clone(), r)
                })
                .collect();
            rep.done(1);
            (stem.clone(), out)
        })
        .collect();
    rep.bar.finish_and_clear();
    let mut reports: Vec<Report> = methods
        .iter()
        .map(|m| Report::new(m.clone(), args.settings()))
        .collect();
    for (stem, out) in outcomes {
        for (r, (_, res)) in reports.iter_mut().zip(out) {
            match res {
                Ok(scores) => r.images.push(ImageScore::new(stem.clone(), scores)),
                Err(reason) => {
                    report_skip(&rep, &stem, r.method.as_deref(), &reason);
                    r.skipped.push(Skipped {
                        stem: stem.clone(),
                        reason,
                    })
                }
            }
        }
    }
    reports.iter_mut().for_each(Report::sort);
    Ok(reports)
}

fn report_skip(rep: &Reporter, stem: &str, method: Option<&str>, reason: &str) {
    let m = method.map(|m| format!(" ({m})")).unwrap_or_default();
    rep.bar.suspend(|| {
        let line = format!("{stem}{m}: {reason}");
        eprintln!("skipped: {}", crate::io::escape_controls(&line));
    });
}

fn eval_dataset(args: &EvalArgs, weights_path: &Path) -> Result<Vec<Report>> {
    let (kind, root) = match (args.dataset, &args.root) {
        (Some(k), Some(r)) => (k, r),
        _ => bail!("--weights needs --dataset and --root"),
    };
    ensure!(
        !args.map.methods().contains(&Method::Concepts) || args.save_maps.is_some(),
        "eval does not score --method concepts or --channel (one map per channel, not one \
         per image): give --save-maps DIR to keep their maps (not scored), or use `run`"
    );
    let mut entries = datasets::entries(kind, root, &args.split)?;
    ensure!(
        !entries.is_empty(),
        "{}: the dataset has no images",
        root.shown()
    );
    if let Some(l) = args.limit {
        entries.truncate(l);
    }
    if let Some(s) = args.shard {
        entries = s.select(entries);
    }
    let weights = resolve_weights(weights_path)?;
    let mut explainer = args.map.open(&weights, weights_path, args.relax_masks)?;
    // What the weights are, by content (the path may differ between the machines of shards).
    let size = std::fs::metadata(&weights.source).map(|m| m.len()).ok();
    let sha256 = crate::checkpoint::download::sha256_file(&weights.source).ok();
    if let Some(d) = &args.save_maps {
        std::fs::create_dir_all(d)
            .with_context(|| format!("{}: cannot create the maps directory", d.shown()))?;
    }
    let m = &args.map;
    let settings = json!({
        "mode": "dataset",
        "dataset": format!("{kind:?}").to_lowercase(),
        "split": args.split,
        "weights": { "size": size, "sha256": sha256 },
        "arch": weights.net.arch_name(),
        "layer": m.layer.to_string(),
        "rule": m.method.contains(&Method::Lrp).then(|| m.rule.to_string()),
        "size": m.size,
        "upsample": format!("{:?}", m.upsample).to_lowercase(),
        "class": m.class,
        "relax_masks": m.method.contains(&Method::Relax).then_some(args.relax_masks),
        "seed": m.method.contains(&Method::Relax).then_some(m.seed),
        "backend": explainer.backend_kind(),
        "localisation": !args.faith.no_localisation,
        "faithfulness": args.faith.enabled().then(|| args.faith.settings(m.seed)),
    });
    let provenance = json!({
        "weights": weights.source.to_string_lossy(),
        "adapter": explainer.backend(),
        "root": root.to_string_lossy(),
    });
    drop(weights);
    let jobs: Vec<(PathBuf, String)> = entries
        .iter()
        .map(|e| (e.image.clone(), e.stem.clone()))
        .collect();
    let mut reports = if args.faith.no_localisation {
        args.map
            .methods()
            .iter()
            .map(|m| Report::new(Some(m.to_string()), args.settings()))
            .collect()
    } else {
        eval_with(&mut explainer, args, kind, entries)?
    };
    if args.faith.enabled() {
        let t = super::faith::run(
            &mut explainer,
            &args.faith,
            m.seed,
            m.size,
            m.batch as usize,
            &args.map.methods(),
            &jobs,
            &mut reports,
        )?;
        if t.passes > 0 {
            eprintln!(
                "faithfulness: {} perturbed forward passes in {:.1} s ({:.1}/s, {})",
                t.passes,
                t.seconds,
                t.passes as f64 / t.seconds.max(1e-9),
                explainer.backend()
            );
        }
        if let Some(dir) = &args.faith.plot {
            super::plot::write_plots(dir, &reports, args.faith.score.name())?;
        }
    }
    annotate(args, &mut reports, settings, provenance);
    Ok(reports)
}

/// `eval --dataset` over an opened explainer.
fn eval_with(
    explainer: &mut Explainer,
    args: &EvalArgs,
    kind: DatasetKind,
    entries: Vec<datasets::Entry>,
) -> Result<Vec<Report>> {
    let methods = args.map.methods();
    let mut sink = ScoreSink {
        args,
        opts: args.options(),
        void_id: kind.void_id(),
        masks: HashMap::new(),
        // Concepts' maps are saved (--save-maps), not scored.
        reports: methods
            .iter()
            .filter(|m| **m != Method::Concepts)
            .map(|m| (*m, Report::new(Some(m.to_string()), args.settings())))
            .collect(),
        rep: Reporter::new(entries.len()),
        unsaved: 0,
    };
    let mut jobs = Vec::with_capacity(entries.len());
    for e in entries {
        match e.mask {
            Some(m) => {
                sink.masks.insert(e.stem.clone(), m);
                jobs.push((e.image, e.stem));
            }
            // With --faithfulness, an image without a mask has no localisation scores but
            // is not skipped.
            None if args.faith.enabled() => sink.rep.done(1),
            None => {
                sink.skip_all(&e.stem, format!("missing mask for {}", e.image.shown()));
                sink.rep.done(1);
            }
        }
    }
    let bar = sink.rep.bar.clone();
    explainer.stream(&jobs, &methods, &mut sink)?;
    bar.finish_and_clear();
    if sink.reports.is_empty() {
        ensure!(
            sink.unsaved == 0,
            "the concept maps of {} images could not be computed or written",
            sink.unsaved
        );
    }
    let mut reports: Vec<Report> = sink.reports.into_iter().map(|(_, r)| r).collect();
    reports.iter_mut().for_each(Report::sort);
    Ok(reports)
}

struct ScoreSink<'a> {
    args: &'a EvalArgs,
    opts: MetricOptions,
    void_id: u16,
    masks: HashMap<String, PathBuf>,
    reports: Vec<(Method, Report)>,
    rep: Reporter,
    /// Images whose concept maps were not saved.
    unsaved: usize,
}

impl ScoreSink<'_> {
    fn skip_all(&mut self, stem: &str, reason: String) {
        self.unsaved += 1;
        report_skip(&self.rep, stem, None, &reason);
        for (_, r) in self.reports.iter_mut() {
            r.skipped.push(Skipped {
                stem: stem.to_string(),
                reason: reason.clone(),
            });
        }
    }
}

impl MapSink for ScoreSink<'_> {
    fn failed(&mut self, _path: &Path, stem: &str, msg: String) {
        self.skip_all(stem, msg);
    }

    fn done(&mut self, n: usize) {
        self.rep.done(n);
    }

    fn maps(&mut self, group: &[Prepared], maps: Vec<MethodMaps>) {
        // Concepts: one map per channel, saved as `run` names them (and the ranking as
        // <stem>.concepts.json), all of an image's or none; not scored.
        let (concepts, maps): (Vec<MethodMaps>, Vec<MethodMaps>) =
            maps.into_iter().partition(|m| m.method == Method::Concepts);
        let mut failed: Vec<String> = vec![String::new(); group.len()];
        if let (false, Some(dir)) = (concepts.is_empty(), &self.args.save_maps) {
            let saved: Vec<Result<()>> = group
                .par_iter()
                .enumerate()
                .map(|(i, p)| save_concepts(dir, p, i, &concepts))
                .collect();
            for (f, r) in failed.iter_mut().zip(saved) {
                if let Err(e) = r {
                    *f = format!("{e:#}");
                }
            }
        }
        // Only attribution maps are scored (not RELAX's uncertainty).
        let maps: Vec<(Method, Vec<HostTensor>)> = maps
            .into_iter()
            .filter(|m| m.output.is_empty())
            .map(|m| (m.method, m.maps))
            .collect();
        // Per image (in parallel): its mask once, then every method's map.
        type Out = Result<Vec<(Method, Result<crate::eval::Scores, String>)>, String>;
        let results: Vec<Out> = group
            .par_iter()
            .enumerate()
            .map(|(i, p)| {
                let mask = &self.masks[&p.stem];
                let labels = load_labels(mask).map_err(|e| format!("{e:#}"))?;
                let (h, w) = (p.original.height() as usize, p.original.width() as usize);
                Ok(maps
                    .iter()
                    .map(|(m, list)| {
                        let map = &list[i].data;
                        if let Some(d) = &self.args.save_maps {
                            if let Err(e) =
                                write_npy_f32(&d.join(format!("{}.{m}.npy", p.stem)), h, w, map)
                            {
                                return (*m, Err(format!("{e:#}")));
                            }
                        }
                        let r = score_labels(
                            map,
                            (h, w),
                            &labels,
                            self.void_id,
                            self.args.void,
                            &self.opts,
                        )
                        .map_err(|e| format!("{e} (image {})", p.path.shown()));
                        (*m, r)
                    })
                    .collect())
            })
            .collect();
        for ((p, r), f) in group.iter().zip(results).zip(failed) {
            if !f.is_empty() {
                self.skip_all(&p.stem, f);
                continue;
            }
            match r {
                Err(e) => self.skip_all(&p.stem, e),
                Ok(list) => {
                    for (m, r) in list {
                        let Some(j) = self.reports.iter().position(|(k, _)| *k == m) else {
                            continue;
                        };
                        match r {
                            Ok(scores) => self.reports[j]
                                .1
                                .images
                                .push(ImageScore::new(p.stem.clone(), scores)),
                            Err(reason) => {
                                report_skip(&self.rep, &p.stem, Some(&m.to_string()), &reason);
                                self.reports[j].1.skipped.push(Skipped {
                                    stem: p.stem.clone(),
                                    reason,
                                });
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Writes image `i` of `p`'s concept maps (`<stem>.concept-<c>.npy`) and ranking
/// (`<stem>.concepts.json`, with each concept's peak) into `dir`, all or nothing.
fn save_concepts(dir: &Path, p: &Prepared, i: usize, concepts: &[MethodMaps]) -> Result<()> {
    let (h, w) = (p.original.height() as usize, p.original.width() as usize);
    let mut files: Vec<(PathBuf, crate::io::output::WriteFn<'_>)> = Vec::new();
    let mut peaks: HashMap<String, [usize; 2]> = HashMap::new();
    for m in concepts {
        let (Some(map), Some(name)) = (m.maps.get(i), m.names.get(i)) else {
            continue;
        };
        peaks.insert(name.clone(), super::run::peak(&map.data, map.shape.w));
        files.push((
            dir.join(format!("{}.{name}.npy", p.stem)),
            crate::io::output::npy_f32(h, w, &map.data),
        ));
    }
    for m in concepts {
        let Some(json) = m.json.get(i) else { continue };
        let text = super::run::side_json(json.clone(), &peaks);
        files.push((
            dir.join(format!("{}.{}.json", p.stem, m.method)),
            Box::new(move |f| Ok(f.write_all(text.as_bytes())?)),
        ));
    }
    crate::io::output::write_all_or_nothing(files)
        .with_context(|| format!("{}: cannot write the concept maps", p.path.shown()))
}
