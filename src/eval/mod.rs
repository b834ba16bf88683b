//! Evaluation of attribution maps against segmentation masks: the six localisation metrics
//! of the LaFAM paper as Quantus 0.6.0 computes them ([`metrics`]), mask reading
//! ([`masks`]), dataset layouts and sharding ([`datasets`]), reports ([`report`]).

pub mod datasets;
pub mod faithfulness;
pub mod masks;
pub mod metrics;
pub mod report;

pub use datasets::{DatasetKind, Entry, Shard};
pub use masks::{load_labels, object_mask, Labels, VoidMode};
pub use metrics::{score, MetricOptions, Scores, Skip, Ties, METRICS};
pub use report::{Faith, ImageScore, Report, Skipped};

/// Scores a row-major map against a label image (sizes must agree) with the void rule.
pub fn score_labels(
    map: &[f32],
    map_hw: (usize, usize),
    labels: &Labels,
    void_id: u16,
    void: VoidMode,
    opts: &MetricOptions,
) -> Result<Scores, String> {
    if map_hw != (labels.height, labels.width) {
        return Err(format!(
            "size mismatch: map is {}x{} (HxW) but the mask {}x{}",
            map_hw.0, map_hw.1, labels.height, labels.width
        ));
    }
    let (keep, object) = object_mask(labels, void_id, void);
    let r = match keep {
        None => score(map, &object, opts),
        Some(keep) => {
            let m: Vec<f32> = map
                .iter()
                .zip(&keep)
                .filter_map(|(&a, &k)| k.then_some(a))
                .collect();
            let o: Vec<bool> = object
                .iter()
                .zip(&keep)
                .filter_map(|(&a, &k)| k.then_some(a))
                .collect();
            score(&m, &o, opts)
        }
    };
    r.map_err(|e| e.to_string())
}
