//! `lafam-gpu atlas`: what every channel of a concept layer responds to, over a dataset.
//!
//! One streaming pass keeps, per channel, the top `--per-concept` samples by activation
//! (ActMax) and by LaFAM-LRP relevance (RelMax) ([`crate::atlas`], zennit-crp's reference
//! sampling); a second pass over the selected images only computes each sample's
//! receptive-field map and crop. Writes `crops/`, `atlas.json` and a static `index.html`.
//! `--shard I/N` splits the dataset; `--merge` recombines shard atlases (no weights needed:
//! the global top samples are among the shards' own, whose crops are copied).

use super::{resolve_weights, EXIT_FAILED, EXIT_FATAL, EXIT_OK};
use crate::atlas::{crop_box, Atlas, Sample};
use crate::device::BackendChoice;
use crate::eval::datasets::{self, DatasetKind, Shard};
use crate::explain::{Composite, ImageBatch};
use crate::explainer::{Explainer, Options};
use crate::io::{heatmap_diverging, write_atomic, write_png, Shown};
use crate::model::Stage;
use crate::stream::{pack_group, prepare, stream_groups, GroupSink, Prepared};
use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub(crate) struct AtlasArgs {
    /// Backbone weights (safetensors, PyTorch or a known model name).
    #[arg(long, value_name = "FILE", required_unless_present = "merge", requires_all = ["dataset", "root"])]
    pub weights: Option<PathBuf>,

    /// The explained stage: LaFAM-LRP's relevance is seeded here with its activations.
    #[arg(long, default_value = "layer4", value_name = "LAYER")]
    pub layer: Stage,

    /// The stage whose channels are the concepts (default: --layer; at or below it).
    #[arg(long, value_name = "LAYER")]
    pub concept_layer: Option<Stage>,

    /// LRP rule set (zennit composite), as `run --rule`.
    #[arg(long, default_value = "epsilon-plus-flat", value_name = "RULE")]
    pub rule: Composite,

    /// Resize every image so its shorter side is N pixels before the network (0: as is).
    /// Crops are cut from the network input.
    #[arg(long, default_value_t = 224, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=16384))]
    pub size: u32,

    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,

    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,

    /// Dataset layout (as `eval`): voc, imagenet-s or folder (<root>/images/; masks are not
    /// needed).
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

    /// Samples kept per channel, by activation (ActMax) and by relevance (RelMax) each.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub per_concept: u32,

    /// Process only shard I of N (0-based) of the sorted images; combine with `--merge`.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    pub shard: Option<Shard>,

    /// Merge these shard atlases (their directories, or their atlas.json files) into --out.
    #[arg(long, num_args = 1.., value_name = "DIR", conflicts_with = "weights")]
    pub merge: Vec<PathBuf>,

    /// Rank only: skip the second pass (no receptive-field maps, no crops).
    #[arg(long, conflicts_with = "merge")]
    pub no_crops: bool,

    /// Output directory: atlas.json, index.html and crops/.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

const FORMAT: &str = "lafam-gpu atlas 1";

pub(crate) fn atlas(args: &AtlasArgs) -> Result<u8> {
    if !args.merge.is_empty() {
        return merge(args);
    }
    let (Some(weights_path), Some(kind), Some(root)) = (&args.weights, args.dataset, &args.root)
    else {
        eprintln!("error: give --weights with --dataset and --root, or --merge");
        return Ok(EXIT_FATAL);
    };
    let concept = args.concept_layer.unwrap_or(args.layer);
    ensure!(
        concept <= args.layer,
        "--concept-layer {concept} is above --layer {}: concepts are read out on the way back \
         from the explained layer",
        args.layer
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
    let total = entries.len();
    // (dataset index, entry): the index orders equal values the same in every shard.
    let mut indexed: Vec<(usize, datasets::Entry)> = entries.into_iter().enumerate().collect();
    if let Some(s) = args.shard {
        indexed = s.select(indexed);
    }
    let weights = resolve_weights(weights_path)?;
    let options = Options {
        backend: args.backend,
        stage: args.layer,
        rule: args.rule,
        size: args.size,
        batch: args.batch as usize,
        ..Options::default()
    };
    let mut explainer = Explainer::from_weights(&weights, options)?;
    match explainer.backend_note() {
        Some(n) => eprintln!("backend: {} ({n})", explainer.backend()),
        None => eprintln!("backend: {}", explainer.backend()),
    }
    let channels = weights.net.stage_channels()[concept.index()];
    let settings = json!({
        "dataset": format!("{kind:?}").to_lowercase(),
        "split": args.split,
        "limit": args.limit,
        "weights": {
            "size": std::fs::metadata(&weights.source).map(|m| m.len()).ok(),
            "sha256": crate::checkpoint::download::sha256_file(&weights.source).ok(),
        },
        "arch": weights.net.arch_name(),
        "layer": args.layer.to_string(),
        "concept_layer": concept.to_string(),
        "rule": args.rule.to_string(),
        "size": args.size,
        "per_concept": args.per_concept,
        "crops": !args.no_crops,
        "max_target": "sum",
        "abs_norm": true,
        "version": env!("CARGO_PKG_VERSION"),
    });
    drop(weights);
    let crops = args.out.join("crops");
    std::fs::create_dir_all(&crops)
        .with_context(|| format!("{}: cannot create the output directory", crops.shown()))?;

    // Pass 1: the top samples per channel.
    let started = Instant::now();
    let jobs: Vec<(PathBuf, String)> = indexed
        .iter()
        .map(|(_, e)| (e.image.clone(), e.stem.clone()))
        .collect();
    let index_of: HashMap<String, usize> =
        indexed.iter().map(|(i, e)| (e.stem.clone(), *i)).collect();
    let mut sink = TopSink {
        explainer: &mut explainer,
        concept,
        atlas: Atlas::new(channels, args.per_concept as usize),
        index_of: &index_of,
        errors: 0,
    };
    stream_groups(&jobs, args.size, args.batch as usize, &mut sink);
    let (mut atlas, mut errors) = (sink.atlas, sink.errors);
    let pass1 = started.elapsed().as_secs_f64();

    // Pass 2: the receptive-field maps and crops of the kept samples, image by image.
    let started = Instant::now();
    let path_of: HashMap<usize, &Path> = indexed
        .iter()
        .map(|(i, e)| (*i, e.image.as_path()))
        .collect();
    let needed = if args.no_crops {
        BTreeMap::new()
    } else {
        atlas.neurons()
    };
    let mut maps = 0usize;
    for (index, neurons) in &needed {
        let Some(stem) = atlas_stem(&atlas, *index) else {
            continue;
        };
        match crops_of(
            &mut explainer,
            path_of[index],
            &stem,
            args.size,
            concept,
            neurons,
            &crops,
        ) {
            Ok(done) => {
                maps += neurons.len();
                fill(&mut atlas, *index, &done);
            }
            Err(e) => {
                errors += 1;
                eprintln!(
                    "error: {}",
                    crate::io::escape_controls(&format!("{e:#} (crops of {stem})"))
                );
            }
        }
    }
    let pass2 = started.elapsed().as_secs_f64();
    eprintln!(
        "atlas: {} images, {channels} channels of {concept}: top samples in {pass1:.2} s \
         ({:.2} img/s); {maps} receptive-field maps of {} images in {pass2:.2} s",
        atlas.images,
        atlas.images as f64 / pass1.max(1e-9),
        needed.len()
    );
    let doc = json!({
        "format": FORMAT,
        "settings": settings,
        "shard": args.shard.map(|s| json!({"index": s.index, "count": s.count})),
        "dataset_images": total,
        "timing_s": {"top_samples": pass1, "crops": pass2},
        "atlas": atlas,
    });
    write_outputs(&args.out, doc, &atlas)?;
    Ok(if errors > 0 { EXIT_FAILED } else { EXIT_OK })
}

fn atlas_stem(atlas: &Atlas, index: usize) -> Option<String> {
    atlas.channels.iter().find_map(|c| {
        c.actmax
            .samples
            .iter()
            .chain(&c.relmax.samples)
            .find(|s| s.index == index)
            .map(|s| s.stem.clone())
    })
}

/// Streams the dataset into the atlas.
struct TopSink<'a> {
    explainer: &'a mut Explainer,
    concept: Stage,
    atlas: Atlas,
    index_of: &'a HashMap<String, usize>,
    errors: usize,
}

impl GroupSink for TopSink<'_> {
    fn failed(&mut self, _path: &Path, _stem: &str, msg: String) {
        self.errors += 1;
        eprintln!("error: {}", crate::io::escape_controls(&msg));
    }

    fn group(&mut self, group: Vec<Prepared>) {
        let (rgb, h, w) = pack_group(&group);
        let got = ImageBatch::new(&rgb, group.len(), h, w)
            .and_then(|b| self.explainer.concept_activity(b, self.concept));
        let (act, rel) = match got {
            Ok(x) => x,
            Err(e) => {
                for p in &group {
                    self.failed(
                        &p.path,
                        &p.stem,
                        format!("{}: failed: {e:#}", p.path.shown()),
                    );
                }
                return;
            }
        };
        let len = act.shape.image_len();
        for (i, p) in group.iter().enumerate() {
            let finite = |t: &crate::HostTensor| {
                t.data[i * len..(i + 1) * len].iter().all(|v| v.is_finite())
            };
            if !finite(&act) || !finite(&rel) {
                self.failed(
                    &p.path,
                    &p.stem,
                    format!(
                        "{}: the activations or relevance at {} are not finite (check the \
                         weights' BatchNorm statistics); left out of the atlas",
                        p.path.shown(),
                        self.concept
                    ),
                );
                continue;
            }
            let index = self.index_of[&p.stem];
            if let Err(e) = self.atlas.add(&act, &rel, i, index, &p.stem) {
                self.failed(&p.path, &p.stem, format!("{}: {e:#}", p.path.shown()));
            }
        }
    }
}

/// One written crop: (channel, neuron) -> (crop file, heatmap file, box), relative names.
type Done = Vec<((usize, [usize; 2]), (String, String, [usize; 4]))>;

/// Computes image `path`'s receptive-field maps for `neurons` and writes their crops.
fn crops_of(
    explainer: &mut Explainer,
    path: &Path,
    stem: &str,
    size: u32,
    concept: Stage,
    neurons: &[(usize, [usize; 2])],
    crops: &Path,
) -> Result<Done> {
    let p = prepare(path, stem, size)?;
    let img = p.net_image();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let batch = ImageBatch::new(img.as_raw(), 1, h, w)?;
    let maps = explainer.neuron_maps(batch, concept, neurons)?;
    let mut done = Vec::with_capacity(neurons.len());
    for (j, &(c, [y, x])) in neurons.iter().enumerate() {
        let map = &maps.data[j * h * w..(j + 1) * h * w];
        ensure!(
            map.iter().all(|v| v.is_finite()),
            "{}: the receptive-field map of channel {c} is not finite",
            path.shown()
        );
        let b = crop_box(map, h, w);
        let (ch, cw) = (b[1] - b[0], b[3] - b[2]);
        let crop = image::imageops::crop_imm(img, b[2] as u32, b[0] as u32, cw as u32, ch as u32)
            .to_image();
        let sub: Vec<f32> = (b[0]..b[1])
            .flat_map(|yy| map[yy * w + b[2]..yy * w + b[3]].iter().copied())
            .collect();
        let heat: RgbImage = heatmap_diverging(&sub, ch, cw);
        let name = format!("{stem}.c{c}.y{y}x{x}");
        let (crop_name, heat_name) = (
            format!("crops/{name}.png"),
            format!("crops/{name}.heat.png"),
        );
        write_png(&crops.join(format!("{name}.png")), &crop)?;
        write_png(&crops.join(format!("{name}.heat.png")), &heat)?;
        done.push(((c, [y, x]), (crop_name, heat_name, b)));
    }
    Ok(done)
}

/// Records the written crops in every sample of dataset image `index` they belong to.
fn fill(atlas: &mut Atlas, index: usize, done: &Done) {
    for ch in &mut atlas.channels {
        let c = ch.channel;
        for s in ch
            .actmax
            .samples
            .iter_mut()
            .chain(ch.relmax.samples.iter_mut())
        {
            if s.index != index {
                continue;
            }
            if let Some((_, (crop, heat, b))) = done.iter().find(|(k, _)| *k == (c, s.neuron)) {
                s.crop = Some(crop.clone());
                s.heatmap = Some(heat.clone());
                s.crop_box = Some(*b);
            }
        }
    }
}

/// Writes atlas.json (with each channel's dataset means) and index.html.
fn write_outputs(out: &Path, mut doc: serde_json::Value, atlas: &Atlas) -> Result<()> {
    let n = atlas.images.max(1) as f64;
    if let Some(chs) = doc["atlas"]["channels"].as_array_mut() {
        for (v, c) in chs.iter_mut().zip(&atlas.channels) {
            v["mean_relevance"] = json!(c.relevance_sum / n);
            v["mean_activation"] = json!(c.activation_sum / n);
        }
    }
    let text = serde_json::to_string_pretty(&doc)?;
    write_atomic(&out.join("atlas.json"), |f| {
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        Ok(())
    })?;
    let html = super::atlas_page::page(&doc);
    write_atomic(&out.join("index.html"), |f| {
        Ok(f.write_all(html.as_bytes())?)
    })?;
    Ok(())
}

/// `atlas --merge`: shard atlases into one.
fn merge(args: &AtlasArgs) -> Result<u8> {
    let mut parts = Vec::new();
    for p in &args.merge {
        let file = if p.is_dir() {
            p.join("atlas.json")
        } else {
            p.clone()
        };
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let bytes = crate::io::files::read_regular(&file)
            .with_context(|| format!("{}: cannot read", file.shown()))?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not JSON", file.shown()))?;
        ensure!(
            doc["format"] == FORMAT,
            "{}: not a lafam-gpu atlas (format {})",
            file.shown(),
            doc["format"]
        );
        let atlas: Atlas = serde_json::from_value(doc["atlas"].clone())
            .with_context(|| format!("{}: malformed atlas", file.shown()))?;
        parts.push((file, dir, doc, atlas));
    }
    let (first_file, _, first, _) = &parts[0];
    let settings = first["settings"].clone();
    let total = first["dataset_images"].clone();
    let count = first["shard"]["count"].as_u64();
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    for (file, _, doc, _) in &parts {
        if doc["settings"] != settings {
            bail!(
                "{} and {}: the atlases were made with different settings",
                first_file.shown(),
                file.shown()
            );
        }
        ensure!(
            doc["dataset_images"] == total,
            "{} and {}: different datasets ({} and {} images)",
            first_file.shown(),
            file.shown(),
            total,
            doc["dataset_images"]
        );
        let (Some(i), Some(n)) = (
            doc["shard"]["index"].as_u64(),
            doc["shard"]["count"].as_u64(),
        ) else {
            bail!("{}: not a shard (made without --shard)", file.shown());
        };
        ensure!(
            Some(n) == count,
            "{}: shard {i}/{n}, but {} is of {}",
            file.shown(),
            first_file.shown(),
            count.unwrap_or(0)
        );
        if let Some(other) = seen.insert(i, file.shown().to_string()) {
            bail!("shard {i}/{n} given twice: {other} and {}", file.shown());
        }
    }
    let n = count.unwrap_or(0);
    let missing: Vec<String> = (0..n)
        .filter(|i| !seen.contains_key(i))
        .map(|i| format!("{i}/{n}"))
        .collect();
    ensure!(missing.is_empty(), "missing shards: {}", missing.join(", "));
    // Where each part's crops are.
    let mut from: HashMap<String, PathBuf> = HashMap::new();
    for (file, dir, _, a) in &parts {
        for c in &a.channels {
            for s in c.actmax.samples.iter().chain(&c.relmax.samples) {
                for f in [&s.crop, &s.heatmap].into_iter().flatten() {
                    // Only crops/<file name>: a part cannot make --merge read or write
                    // anywhere else.
                    let parts: Vec<_> = Path::new(f).components().collect();
                    ensure!(
                        matches!(
                            parts.as_slice(),
                            [std::path::Component::Normal(d), std::path::Component::Normal(_)]
                                if *d == "crops"
                        ),
                        "{}: crop path {} is not crops/<file>",
                        file.shown(),
                        crate::io::escape_controls(f)
                    );
                    from.insert(f.clone(), dir.join(f));
                }
            }
        }
    }
    let atlas = Atlas::merge(parts.into_iter().map(|(_, _, _, a)| a).collect())?;
    let crops = args.out.join("crops");
    std::fs::create_dir_all(&crops)
        .with_context(|| format!("{}: cannot create the output directory", crops.shown()))?;
    let mut missing_crops = 0usize;
    let copy = |s: &Sample, missing: &mut usize| -> Result<()> {
        for f in [&s.crop, &s.heatmap].into_iter().flatten() {
            let (src, dst) = (&from[f], args.out.join(f));
            if src == &dst {
                continue;
            }
            match std::fs::read(src) {
                Ok(bytes) => write_atomic(&dst, |w| Ok(w.write_all(&bytes)?))?,
                Err(e) => {
                    *missing += 1;
                    eprintln!("error: {}: cannot read the crop: {e}", src.shown());
                }
            }
        }
        Ok(())
    };
    for c in &atlas.channels {
        for s in c.actmax.samples.iter().chain(&c.relmax.samples) {
            copy(s, &mut missing_crops)?;
        }
    }
    let doc = json!({
        "format": FORMAT,
        "settings": settings,
        "shard": null,
        "merged_from": n,
        "dataset_images": total,
        "atlas": atlas,
    });
    write_outputs(&args.out, doc, &atlas)?;
    eprintln!(
        "atlas: merged {n} shards, {} images, {} channels",
        atlas.images,
        atlas.channels.len()
    );
    Ok(if missing_crops > 0 {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}
