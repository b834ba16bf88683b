//! `eval --faithfulness`: the faithfulness metrics ([`crate::eval::faithfulness`]) on the maps
//! of every method, computed in the same run at the network's input resolution, with a
//! label-free score ([`crate::explain::score`]) whose perturbed images go through the
//! explainer's backend in batches. Results are added to the methods' reports (one
//! [`crate::eval::Faith`] per image), so JSON/CSV, `--shard` and `--merge` carry them.

use super::run::Reporter;
use crate::eval::faithfulness::{
    self as fm, Baseline, FaithfulnessCorrelation, Order, PixelFlipping, RegionPerturbation, Road,
    Scorer, SeededDraws,
};
use crate::eval::faithfulness::{spearman, ssim, Draws};
use crate::eval::report::{ImageScore, Report, Skipped};
use crate::explain::randomise::{cascade, conv_mut, randomise_conv};
use crate::explain::score::ScoreKind;
use crate::explain::Method;
use crate::explainer::Explainer;
use crate::io::Shown;
use crate::ops::{IMAGENET_MEAN, IMAGENET_STD};
use crate::stream::{prepare, Prepared};
use anyhow::{ensure, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The faithfulness metrics `eval` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum FaithMetric {
    /// Pixel-Flipping: score after cumulatively replacing the most relevant input elements
    /// (curve and its AUC; lower = more faithful).
    PixelFlipping,
    /// Region Perturbation: score drop after replacing the most relevant patches (curve and
    /// AOPC; higher = more faithful).
    RegionPerturbation,
    /// Faithfulness Correlation: Pearson r between random subsets' attribution and the
    /// score drop when they are replaced (higher = more faithful).
    FaithfulnessCorrelation,
    /// ROAD: score after noisy linear imputation of the top (MoRF) and bottom (LeRF) pixels
    /// (curves and means; LeRF above MoRF = faithful).
    Road,
    /// Model Parameter Randomisation Test: Spearman and SSIM between the map and the map of
    /// the network with its convs re-initialised top-down from the explained stage to the
    /// stem, per step (curves; low = the map depends on the parameters).
    Mprt,
    /// Random Logit: SSIM between the class-dependent map (Grad-CAM) for the target class
    /// and for a random other class (low = the map depends on the class; needs `fc`).
    RandomLogit,
}

impl FaithMetric {
    fn name(self) -> &'static str {
        match self {
            FaithMetric::PixelFlipping => "pixel-flipping",
            FaithMetric::RegionPerturbation => "region-perturbation",
            FaithMetric::FaithfulnessCorrelation => "faithfulness-correlation",
            FaithMetric::Road => "road",
            FaithMetric::Mprt => "mprt",
            FaithMetric::RandomLogit => "random-logit",
        }
    }
}

#[derive(clap::Args, Debug)]
pub(crate) struct FaithArgs {
    /// Faithfulness metrics to compute on the maps of the same run (comma-separated;
    /// with --weights): pixel-flipping, region-perturbation, faithfulness-correlation, road,
    /// mprt, random-logit. Quantus 0.6.0 semantics; images need no mask.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1.., value_name = "LIST")]
    pub faithfulness: Vec<FaithMetric>,

    /// With --faithfulness: skip the localisation metrics (no masks read).
    #[arg(long, requires = "faithfulness")]
    pub no_localisation: bool,

    /// The label-free score the faithfulness metrics perturb: embedding (cosine similarity
    /// of the pooled layer4 output with the original image's, as RELAX), stage (sum of the
    /// explained stage's activations), logit (target-class logit: --class or the argmax;
    /// needs a linear classifier `fc`).
    #[arg(long, value_enum, default_value = "embedding")]
    pub score: ScoreKind,

    /// Value perturbed inputs are replaced with, per image in the normalised input space:
    /// black (its minimum), mean, uniform (a U(0, 1) draw per perturbation), as Quantus.
    #[arg(long, value_enum, default_value = "black")]
    pub baseline: Baseline,

    /// Pixel-Flipping: input elements (of 3·h·w) replaced per step. Default: 3·ceil(h·w/100),
    /// about 100 steps of whole pixels (Quantus' default 1 costs 3·h·w forward passes).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pf_step: Option<u64>,

    /// Region Perturbation: patch side in pixels (Quantus' default 8).
    #[arg(long, default_value_t = 8, value_name = "PX", value_parser = clap::value_parser!(u64).range(1..))]
    pub rp_patch: u64,

    /// Region Perturbation: patches perturbed (Quantus' default 100).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rp_regions: u64,

    /// Region Perturbation: most (morf, Quantus' default) or least (lerf) relevant first.
    #[arg(long, value_enum, default_value = "morf")]
    pub rp_order: Order,

    /// Faithfulness Correlation: random subsets per image (Quantus' default 100).
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u64).range(2..))]
    pub fc_runs: u64,

    /// Faithfulness Correlation: input elements per subset (Quantus' default 224).
    #[arg(long, default_value_t = 224, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub fc_subset: u64,

    /// ROAD: standard deviation of the imputation noise (Quantus' default 0.01).
    #[arg(long, default_value_t = 0.01, value_name = "SD")]
    pub road_noise: f64,

    /// Perturbed images per forward pass (split further to fit the device).
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub perturb_batch: u64,

    /// With --faithfulness: write the mean curves per method as PNG plots into DIR.
    #[arg(long, value_name = "DIR", requires = "faithfulness")]
    pub plot: Option<PathBuf>,
}

impl FaithArgs {
    pub(crate) fn enabled(&self) -> bool {
        !self.faithfulness.is_empty()
    }

    fn metrics(&self) -> Vec<FaithMetric> {
        let mut m = self.faithfulness.clone();
        m.sort();
        m.dedup();
        m
    }

    /// The settings the faithfulness numbers depend on (compared by `--merge`).
    pub(crate) fn settings(&self, seed: u64) -> serde_json::Value {
        let m = self.metrics();
        json!({
            "metrics": m.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "score": self.score.name(),
            "baseline": self.baseline.name(),
            "pf_step": m.contains(&FaithMetric::PixelFlipping).then_some(self.pf_step),
            "rp": m.contains(&FaithMetric::RegionPerturbation).then(|| json!({
                "patch": self.rp_patch, "regions": self.rp_regions,
                "order": format!("{:?}", self.rp_order).to_lowercase(),
            })),
            "fc": m.contains(&FaithMetric::FaithfulnessCorrelation).then(|| json!({
                "runs": self.fc_runs, "subset": self.fc_subset,
            })),
            "road": m.contains(&FaithMetric::Road).then(|| json!({
                "noise": self.road_noise, "percentages": Road::default().percentages,
            })),
            "mprt": m.contains(&FaithMetric::Mprt).then(|| json!({
                "order": "top_down", "similarity": ["spearman", "ssim"], "abs": true,
            })),
            "random_logit": m.contains(&FaithMetric::RandomLogit).then(|| json!({
                "similarity": "ssim", "normalise": "max",
            })),
            "seed": seed,
        })
    }
}

/// `[3, h, w]` f64 in the normalised input space, as the backends preprocess (f32).
pub(crate) fn normalise(img: &RgbImage) -> Vec<f64> {
    let (w, h) = img.dimensions();
    let hw = (w * h) as usize;
    let raw = img.as_raw();
    let mut x = vec![0f64; 3 * hw];
    for p in 0..hw {
        for c in 0..3 {
            let v = raw[p * 3 + c] as f32 / 255.0;
            x[c * hw + p] = ((v - IMAGENET_MEAN[c]) / IMAGENET_STD[c]) as f64;
        }
    }
    x
}

/// A per (seed, image, metric) seed: the same subsets and noise for every method of an
/// image, and the same numbers whichever shard the image is in.
fn draw_seed(seed: u64, stem: &str, metric: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in stem.bytes().chain([0]).chain(metric.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What the faithfulness pass did, for the summary line.
pub(crate) struct Throughput {
    pub passes: usize,
    pub seconds: f64,
}

/// Computes the faithfulness metrics of every method for `jobs` and adds them to `reports`
/// (matched by method name; an image without a localisation entry gets one with no
/// localisation scores). Failed images are listed in `skipped`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    explainer: &mut Explainer,
    args: &FaithArgs,
    seed: u64,
    size: u32,
    batch: usize,
    methods: &[Method],
    jobs: &[(PathBuf, String)],
    reports: &mut [Report],
) -> Result<Throughput> {
    ensure!(
        args.road_noise.is_finite() && args.road_noise >= 0.0,
        "--road-noise must be a finite number >= 0, got {}",
        args.road_noise
    );
    if args.faithfulness.contains(&FaithMetric::RandomLogit) {
        ensure!(
            explainer.network()?.heads.fc.is_some(),
            "random-logit needs a classifier head (a linear `fc.weight` / `fc.bias`) and \
             these weights have none"
        );
    }
    if args.score == ScoreKind::Logit {
        ensure!(
            explainer.network()?.heads.fc.is_some(),
            "--score logit needs a classifier head (a linear `fc.weight` / `fc.bias`) and these \
             weights have none: use --score embedding or stage"
        );
    }
    let metrics = args.metrics();
    let rep = Reporter::new(jobs.len());
    let start = Instant::now();
    let mut passes = 0usize;
    let mprt = metrics.contains(&FaithMetric::Mprt);
    for part in jobs.chunks(batch.max(1)) {
        let decoded: Vec<Result<Prepared>> =
            part.par_iter().map(|(p, s)| prepare(p, s, size)).collect();
        let mut outcomes: Vec<(String, Option<Prepared>, Outcome)> = Vec::new();
        for (d, (_, stem)) in decoded.into_iter().zip(part) {
            match d {
                Err(e) => outcomes.push((stem.clone(), None, Err(format!("{e:#}")))),
                Ok(p) => {
                    let o = one_image(explainer, args, seed, &metrics, methods, &p, &mut passes)
                        .map_err(|e| format!("{}: faithfulness: {e:#}", p.path.shown()));
                    outcomes.push((stem.clone(), Some(p), o));
                }
            }
        }
        if mprt {
            mprt_chunk(explainer, seed, methods, &mut outcomes)?;
        }
        for (stem, _, outcome) in outcomes {
            add_outcome(reports, &rep, &stem, outcome);
            rep.done(1);
        }
    }
    rep.bar.finish_and_clear();
    reports.iter_mut().for_each(Report::sort);
    Ok(Throughput {
        passes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Per method, an image's faithfulness results, or why there are none.
type Outcome = std::result::Result<Vec<(Method, crate::eval::Faith)>, String>;

/// Adds one image's outcome to the reports.
fn add_outcome(reports: &mut [Report], rep: &Reporter, stem: &String, outcome: Outcome) {
    match outcome {
        Ok(per_method) => {
            for (m, faith) in per_method {
                let name = m.to_string();
                let Some(r) = reports
                    .iter_mut()
                    .find(|r| r.method.as_deref() == Some(&name))
                else {
                    continue;
                };
                if r.skipped.iter().any(|s| &s.stem == stem) {
                    continue;
                }
                match r.images.iter_mut().find(|i| &i.stem == stem) {
                    Some(i) => i.faith = faith,
                    None => {
                        let mut i = ImageScore::new(stem.clone(), [None; 6]);
                        i.faith = faith;
                        r.images.push(i);
                    }
                }
            }
        }
        Err(reason) => {
            rep.bar
                .suspend(|| eprintln!("skipped: {}", crate::io::escape_controls(&reason)));
            for r in reports.iter_mut() {
                if r.skipped.iter().any(|s| &s.stem == stem) {
                    continue;
                }
                r.images.retain(|i| &i.stem != stem);
                r.skipped.push(Skipped {
                    stem: stem.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }
}

/// MPRT for the images of a chunk whose other metrics succeeded: the original maps, then,
/// per randomisation step, the maps of the randomised network, compared (absolute values, as
/// Quantus' default `abs=True`) by Spearman and SSIM. The network is restored afterwards;
/// an error here is fatal (the network could not be swapped).
fn mprt_chunk(
    explainer: &mut Explainer,
    seed: u64,
    methods: &[Method],
    outcomes: &mut [(String, Option<Prepared>, Outcome)],
) -> Result<()> {
    let idx: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].1.is_some() && outcomes[i].2.is_ok())
        .collect();
    if idx.is_empty() {
        return Ok(());
    }
    let nets: Vec<RgbImage> = idx
        .iter()
        .map(|&i| {
            outcomes[i]
                .1
                .as_ref()
                .expect("filtered")
                .net_image()
                .clone()
        })
        .collect();
    let abs_maps = |maps: Vec<crate::explain::MethodMaps>| -> Vec<(Method, Vec<Vec<f64>>)> {
        maps.into_iter()
            .filter(|m| m.output.is_empty())
            .map(|m| {
                let per: Vec<Vec<f64>> = m
                    .maps
                    .iter()
                    .map(|t| t.data.iter().map(|&v| (v as f64).abs()).collect())
                    .collect();
                (m.method, per)
            })
            .collect()
    };
    let original = abs_maps(explainer.explain(&nets, methods)?);
    let spec0 = explainer.network()?;
    let stage = explainer.options().stage;
    let mut spec = spec0.clone();
    // Per method, per image: (spearman curve, ssim curve).
    let mut curves: Vec<Vec<(Vec<f64>, Vec<f64>)>> =
        vec![vec![(Vec::new(), Vec::new()); nets.len()]; original.len()];
    let result = (|| -> Result<()> {
        for p in cascade(&spec0, stage) {
            randomise_conv(conv_mut(&mut spec, p), seed);
            explainer.set_network(&spec)?;
            let randomised = abs_maps(explainer.explain(&nets, methods)?);
            for ((orig, rand), per) in original.iter().zip(&randomised).zip(curves.iter_mut()) {
                for ((a, b), c) in orig.1.iter().zip(&rand.1).zip(per.iter_mut()) {
                    // A constant map (no ranking) counts as uncorrelated.
                    c.0.push(spearman(a, b).unwrap_or(0.0));
                    c.1.push(ssim(a, b).unwrap_or(0.0));
                }
            }
        }
        Ok(())
    })();
    explainer.set_network(&spec0)?;
    result?;
    for (j, &i) in idx.iter().enumerate() {
        let Ok(per_method) = &mut outcomes[i].2 else {
            continue;
        };
        for ((m, per), (method, faith)) in original.iter().zip(&curves).zip(per_method.iter_mut()) {
            debug_assert_eq!(m.0, *method);
            let (sp, ss) = per[j].clone();
            for (k, v) in [
                ("mprt_spearman_last", sp.last()),
                ("mprt_ssim_last", ss.last()),
            ] {
                if let Some(&v) = v.filter(|v| v.is_finite()) {
                    faith.values.insert(k.into(), v);
                }
            }
            faith.curves.insert("mprt_spearman".into(), sp);
            faith.curves.insert("mprt_ssim".into(), ss);
        }
    }
    Ok(())
}

/// Random Logit (Quantus' `RandomLogit`: `ssim` of the max-normalised maps, no abs) for the
/// class-dependent methods (Grad-CAM): the map for the image's target class against the map
/// for a class drawn uniformly from the others (seeded by `--seed` and the image's name).
fn random_logit(
    explainer: &mut Explainer,
    seed: u64,
    stem: &str,
    net: &RgbImage,
    maps: &[crate::explain::MethodMaps],
) -> Result<Vec<(Method, f64)>> {
    let Some(gc) = maps
        .iter()
        .find(|m| m.method == Method::Gradcam && m.output.is_empty())
    else {
        return Ok(Vec::new());
    };
    let classes = explainer
        .network()?
        .heads
        .fc
        .as_ref()
        .map_or(0, |(_, _, n)| *n);
    let target = gc.targets.first().copied().unwrap_or(0);
    ensure!(classes >= 2, "random-logit needs at least two classes");
    let mut draws = SeededDraws::new(draw_seed(seed, stem, "random-logit"));
    let mut other = draws.choice(classes - 1, 1)[0];
    if other >= target {
        other += 1;
    }
    let saved = explainer.options().class;
    explainer.set_class(Some(other));
    let off = explainer.explain(std::slice::from_ref(net), &[Method::Gradcam]);
    explainer.set_class(saved);
    let off = off?;
    let norm = |t: &crate::HostTensor| {
        let max = t.data.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        let s = if max > 0.0 { 1.0 / max } else { 1.0 };
        t.data.iter().map(|&v| v as f64 * s).collect::<Vec<f64>>()
    };
    let a = norm(&gc.maps[0]);
    let b = norm(&off[0].maps[0]);
    Ok(ssim(&a, &b)
        .map(|v| (Method::Gradcam, v))
        .into_iter()
        .collect())
}

/// Every method's faithfulness results for one decoded image.
fn one_image(
    explainer: &mut Explainer,
    args: &FaithArgs,
    seed: u64,
    metrics: &[FaithMetric],
    methods: &[Method],
    p: &Prepared,
    passes: &mut usize,
) -> Result<Vec<(Method, crate::eval::Faith)>> {
    let net = p.net_image();
    let (w, h) = net.dimensions();
    let hw = (h as usize, w as usize);
    // The net image is already at the network's size: the maps come at that resolution.
    let maps = explainer.explain(std::slice::from_ref(net), methods)?;
    let random_logit = if metrics.contains(&FaithMetric::RandomLogit) {
        random_logit(explainer, seed, &p.stem, net, &maps)?
    } else {
        Vec::new()
    };
    let x = normalise(net);
    let score = explainer.score_for(args.score, &x, hw)?;
    let mut out = Vec::new();
    for mm in maps.into_iter().filter(|m| m.output.is_empty()) {
        let map: Vec<f64> = mm.maps[0].data.iter().map(|&v| v as f64).collect();
        ensure!(
            map.iter().all(|v| v.is_finite()),
            "the {} map is not finite",
            mm.method
        );
        let mut faith = crate::eval::Faith::default();
        let mut scorer = Scorer::new(args.perturb_batch as usize, |imgs: &[Vec<f64>]| {
            explainer.score_images(imgs, hw, &score)
        });
        for &metric in metrics {
            let mut draws = SeededDraws::new(draw_seed(seed, &p.stem, metric.name()));
            match metric {
                FaithMetric::PixelFlipping => {
                    let step = match args.pf_step {
                        Some(s) => s as usize,
                        None => 3 * (hw.0 * hw.1).div_ceil(100),
                    };
                    let opts = PixelFlipping {
                        features_in_step: step,
                        baseline: args.baseline,
                    };
                    let c = fm::pixel_flipping(&x, &map, hw, &opts, &mut draws, &mut scorer)?;
                    faith.values.insert("pixel_flipping_auc".into(), c.auc);
                    faith.curves.insert("pixel_flipping".into(), c.points);
                }
                FaithMetric::RegionPerturbation => {
                    let opts = RegionPerturbation {
                        patch_size: args.rp_patch as usize,
                        regions: args.rp_regions as usize,
                        order: args.rp_order,
                        baseline: args.baseline,
                    };
                    let c = fm::region_perturbation(&x, &map, hw, &opts, &mut draws, &mut scorer)?;
                    faith
                        .values
                        .insert("region_perturbation_aopc".into(), c.aopc);
                    faith.curves.insert("region_perturbation".into(), c.points);
                }
                FaithMetric::FaithfulnessCorrelation => {
                    let opts = FaithfulnessCorrelation {
                        runs: args.fc_runs as usize,
                        subset_size: args.fc_subset as usize,
                        baseline: args.baseline,
                    };
                    let c =
                        fm::faithfulness_correlation(&x, &map, hw, &opts, &mut draws, &mut scorer)?;
                    if let Some(r) = c.r {
                        faith.values.insert("faithfulness_correlation".into(), r);
                    }
                }
                FaithMetric::Mprt | FaithMetric::RandomLogit => {} // done apart
                FaithMetric::Road => {
                    let opts = Road {
                        noise: args.road_noise,
                        ..Road::default()
                    };
                    let c = fm::road(&x, &map, hw, &opts, &mut draws, &mut scorer)?;
                    faith.values.insert("road_morf".into(), c.morf_mean);
                    faith.values.insert("road_lerf".into(), c.lerf_mean);
                    faith.curves.insert("road_morf".into(), c.morf);
                    faith.curves.insert("road_lerf".into(), c.lerf);
                }
            }
        }
        *passes += scorer.passes;
        if let Some((_, v)) = random_logit.iter().find(|(m, _)| *m == mm.method) {
            faith.values.insert("random_logit_ssim".into(), *v);
        }
        // An undefined value (e.g. SSIM of two constant maps) is left out, as an undefined
        // correlation is.
        faith.values.retain(|_, v| v.is_finite());
        out.push((mm.method, faith));
    }
    Ok(out)
}
