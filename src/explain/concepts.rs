//! Concepts (CRP, Achtibat et al. 2023, "From 'where' to 'what'"): the channels of a concept
//! layer ranked by the LaFAM-LRP relevance they carry, and for each of the top `k` its
//! conditional relevance map: the LaFAM-LRP backward with the relevance at the concept
//! layer's output restricted to that one channel, traced on to the pixels.
//!
//! The `k` conditions of every image run as one batch through one backward pass that shares
//! the forward pass: the tape of the blocks below the concept layer is repeated `k` times per
//! image ([`LrpBackend::repeat_images`](crate::backend::LrpBackend::repeat_images)), not
//! recomputed. The map of a condition sums to the channel's relevance (up to the rules'
//! stabilisers and the first rule's conservation), so the maps of all channels sum to the
//! LaFAM-LRP map.

use super::lrp::conditional_relevance;
use super::method::{Display, MethodInfo, Needs, Pass, Produced, Resample};
use crate::backend::CamBackend;
use crate::model::Stage;
use anyhow::{ensure, Context, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "concepts",
    about: "Concepts (CRP): the channels of --concept-layer ranked by their LaFAM-LRP \
            relevance, and for the top --top-concepts (or the --channel list) their \
            conditional relevance maps (<stem>.concept-<c>.*) and <stem>.concepts.json",
    needs: Needs::LrpTape,
    // As many outputs as conditions, named per image ("concept-<c>").
    outputs: &[],
    resample: Resample::Bilinear,
    display: Display::Signed,
    needs_classifier: false,
};

/// Which channels the concepts method explains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConceptConfig {
    /// The stage whose channels are the concepts (None: the explained stage).
    pub layer: Option<Stage>,
    /// How many channels, highest relevance first.
    pub top: usize,
    /// These channels instead of the top ones (`--channel`), in this order.
    pub channels: Vec<usize>,
}

impl Default for ConceptConfig {
    fn default() -> Self {
        ConceptConfig {
            layer: None,
            top: 8,
            channels: Vec::new(),
        }
    }
}

/// One image's concept ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranking {
    /// Every channel's relevance at the concept layer (sum over its positions).
    pub relevance: Vec<f32>,
    /// The explained channels, in output order.
    pub chosen: Vec<u32>,
}

impl Ranking {
    /// `k` channels by relevance, highest first (ties: lower channel first).
    pub fn top(relevance: Vec<f32>, k: usize) -> Self {
        let mut order: Vec<u32> = (0..relevance.len() as u32).collect();
        order.sort_by(|&a, &b| {
            relevance[b as usize]
                .total_cmp(&relevance[a as usize])
                .then(a.cmp(&b))
        });
        order.truncate(k);
        Ranking {
            relevance,
            chosen: order,
        }
    }
}

/// The concept layer and the number of conditions per image for `cfg` on a network whose
/// stages have `channels` channels; checks the request.
pub fn conditions(
    cfg: &ConceptConfig,
    stage: Stage,
    channels: [usize; 4],
) -> Result<(Stage, usize)> {
    let layer = cfg.layer.unwrap_or(stage);
    ensure!(
        layer <= stage,
        "--concept-layer {layer} is above --layer {stage}: concepts are read out on the way \
         back from the explained layer"
    );
    let c = channels[layer.index()];
    if let Some(&bad) = cfg.channels.iter().find(|&&ch| ch >= c) {
        anyhow::bail!(
            "--channel {bad} is out of range: {layer} has {c} channels (0..{})",
            c - 1
        );
    }
    let k = if cfg.channels.is_empty() {
        cfg.top.min(c)
    } else {
        cfg.channels.len()
    };
    ensure!(k > 0, "--top-concepts must be at least 1");
    Ok((layer, k))
}

pub fn run<B: CamBackend>(pass: &mut Pass<'_, B>) -> Result<Produced<B::Tensor>> {
    let weights = pass.lrp.context("LRP rules are not prepared")?;
    // LaFAM-LRP may share the pass and consume the tape first: it leaves a copy (a
    // reference-counted handle per tensor) when concepts are requested too.
    let tape = pass
        .tape
        .take()
        .context("concepts need a taped forward pass")?;
    let cfg = &pass.request.concepts;
    let (layer, k) = conditions(cfg, pass.request.stage, pass.spec.stage_channels())?;
    let n = pass.images.n;
    let mut rankings: Vec<Ranking> = Vec::with_capacity(n);
    let mut condition = |b: &mut B, r: &B::Tensor| -> Result<(B::Tensor, usize)> {
        let s = b.shape(r);
        let mean = b.spatial_mean(r)?;
        let host = b.download(&mean)?;
        let hw = (s.h * s.w) as f32;
        let mut keep = Vec::with_capacity(s.n * k);
        for per in host.data.chunks(s.c) {
            let relevance: Vec<f32> = per.iter().map(|v| v * hw).collect();
            let ranking = if cfg.channels.is_empty() {
                Ranking::top(relevance, k)
            } else {
                Ranking {
                    relevance,
                    chosen: cfg.channels.iter().map(|&c| c as u32).collect(),
                }
            };
            keep.extend_from_slice(&ranking.chosen);
            rankings.push(ranking);
        }
        Ok((b.repeat_images(r, k, Some(&keep))?, k))
    };
    let r_in = conditional_relevance(
        pass.b,
        pass.net,
        weights,
        tape,
        None,
        Some((layer, &mut condition)),
    )?;
    ensure!(
        rankings.len() == n,
        "{} rankings for {n} images",
        rankings.len()
    );
    // Summed over RGB as LaFAM-LRP: [n*k, h, w, 1], image i's condition j at i*k + j.
    let mean = pass.b.channel_mean(&r_in)?;
    drop(r_in);
    let maps = pass.b.lincomb(&mean, 3.0, None, 0.0)?;
    let rule = weights
        .composite
        .map_or_else(|| weights.rule.name.to_string(), |c| c.to_string());
    let mut json = Vec::with_capacity(n);
    for ranking in &rankings {
        let total: f64 = ranking.relevance.iter().map(|&v| v as f64).sum();
        let mut listed: Vec<u32> = ranking.chosen.clone();
        listed.sort_by(|&a, &b| {
            ranking.relevance[b as usize]
                .total_cmp(&ranking.relevance[a as usize])
                .then(a.cmp(&b))
        });
        let concepts: Vec<serde_json::Value> = listed
            .iter()
            .map(|&c| {
                let r = ranking.relevance[c as usize] as f64;
                serde_json::json!({
                    "channel": c,
                    "relevance": r,
                    "share": if total != 0.0 { r / total } else { 0.0 },
                })
            })
            .collect();
        json.push(serde_json::json!({
            "layer": pass.request.stage.to_string(),
            "concept_layer": layer.to_string(),
            "rule": rule,
            "total_relevance": total,
            "concepts": concepts,
        }));
    }
    Ok(Produced {
        maps: vec![maps; k],
        non_finite: Vec::new(),
        targets: Vec::new(),
        index: (0..k)
            .map(|j| (0..n).map(|i| i * k + j).collect())
            .collect(),
        names: (0..k)
            .map(|j| {
                rankings
                    .iter()
                    .map(|r| format!("concept-{}", r.chosen[j]))
                    .collect()
            })
            .collect(),
        json,
    })
}
