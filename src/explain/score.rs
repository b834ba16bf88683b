//! Label-free scores of (perturbed) images for the faithfulness metrics
//! ([`crate::eval::faithfulness`]): one scalar per image, computed for a batch of images in the
//! network's normalised input space with one forward pass on the engine's backend.
//!
//! - `embedding` (default): cosine similarity between the globally averaged layer4 output of
//!   the image and that of the original (unperturbed) image: RELAX's similarity
//!   ([`super::relax::embed`]), in f64 on the host.
//! - `stage`: the sum of the explained stage's activations (what LaFAM's map decomposes).
//! - `logit`: the logit of a target class (`fc(gap(layer4))`; needs a linear classifier), the
//!   original image's argmax unless a class is given.

use super::engine::{max_batch, Engine};
use super::relax::embed;
use super::tape::{forward, TapeSpec};
use crate::backend::CamBackend;
use crate::model::Stage;
use crate::tensor::{HostTensor, Shape};
use anyhow::{bail, ensure, Result};

/// Which score the faithfulness metrics perturb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScoreKind {
    /// Cosine similarity of pooled layer4 embeddings with the original image's (RELAX's).
    Embedding,
    /// Sum of the explained stage's activations.
    Stage,
    /// Logit of the target class (needs a linear classifier `fc`).
    Logit,
}

impl ScoreKind {
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Embedding => "embedding",
            ScoreKind::Stage => "stage",
            ScoreKind::Logit => "logit",
        }
    }
}

/// A score fixed for one original image (its reference embedding or target class).
#[derive(Clone, Debug, PartialEq)]
pub enum Score {
    Embedding { reference: Vec<f64> },
    Stage { stage: Stage },
    Logit { class: usize },
}

/// `[3, h, w]` f64 images (channel-first, as the metrics hold them) to one NHWC f32 batch.
pub fn to_nhwc(images: &[Vec<f64>], h: usize, w: usize) -> Result<HostTensor> {
    let hw = h * w;
    let mut data = Vec::with_capacity(images.len() * hw * 3);
    for img in images {
        ensure!(
            img.len() == 3 * hw,
            "image holds {} values, expected 3x{h}x{w}",
            img.len()
        );
        for p in 0..hw {
            for c in 0..3 {
                data.push(img[c * hw + p] as f32);
            }
        }
    }
    Ok(HostTensor::new(Shape::new(images.len(), h, w, 3), data))
}

/// Per image, `[n][c]` in f64, from a `[n, 1, 1, c]` download.
fn rows(t: &HostTensor) -> Vec<Vec<f64>> {
    let c = t.shape.c.max(1);
    t.data
        .chunks(c)
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    // torch.nn.functional.cosine_similarity's eps = 1e-8 on each norm.
    dot / (na.max(1e-8) * nb.max(1e-8))
}

impl<B: CamBackend, L> Engine<B, L> {
    /// The score for the original image `x` (`[3, h, w]`, normalised input space): its
    /// reference embedding, the stage, or the target class (`class`, else the argmax logit).
    pub fn score_for(
        &mut self,
        kind: ScoreKind,
        x: &[f64],
        (h, w): (usize, usize),
        stage: Stage,
        class: Option<usize>,
    ) -> Result<Score> {
        let t = to_nhwc(&[x.to_vec()], h, w)?;
        Ok(match kind {
            ScoreKind::Embedding => Score::Embedding {
                reference: self.pooled(&t)?.remove(0),
            },
            ScoreKind::Stage => Score::Stage { stage },
            ScoreKind::Logit => {
                let logits = self.logits(&t)?.remove(0);
                let class = match class {
                    Some(c) => {
                        ensure!(
                            c < logits.len(),
                            "class {c} out of range: the classifier has {} classes",
                            logits.len()
                        );
                        c
                    }
                    None => (0..logits.len())
                        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                        .unwrap_or(0),
                };
                Score::Logit { class }
            }
        })
    }

    /// The score of every image of the batch (`[3, h, w]` each), in forward passes that fit
    /// the device.
    pub fn score_images(
        &mut self,
        images: &[Vec<f64>],
        (h, w): (usize, usize),
        score: &Score,
    ) -> Result<Vec<f64>> {
        let upto = match score {
            Score::Stage { stage } => *stage,
            _ => Stage::Layer4,
        };
        let per = max_batch(&self.backend, &self.spec, h, w, upto);
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(per.max(1)) {
            let t = to_nhwc(chunk, h, w)?;
            match score {
                Score::Embedding { reference } => {
                    for e in self.pooled(&t)? {
                        out.push(cosine(&e, reference));
                    }
                }
                Score::Stage { stage } => out.extend(self.stage_sums(&t, *stage)?),
                Score::Logit { class } => {
                    for l in self.logits(&t)? {
                        out.push(l[*class]);
                    }
                }
            }
        }
        Ok(out)
    }

    /// RELAX's embedding (globally averaged layer4 output) of a preprocessed NHWC batch,
    /// `[n][c]`.
    fn pooled(&mut self, x: &HostTensor) -> Result<Vec<Vec<f64>>> {
        let xd = self.backend.upload(x)?;
        let e = embed(&mut self.backend, &self.net, &xd)?;
        Ok(rows(&self.backend.download(&e)?))
    }

    /// The sum of `stage`'s output per image of a preprocessed NHWC batch.
    fn stage_sums(&mut self, x: &HostTensor, stage: Stage) -> Result<Vec<f64>> {
        let b = &mut self.backend;
        let xd = b.upload(x)?;
        let tape = forward(b, &self.net, xd, TapeSpec::plain(stage), None)?;
        let s = b.shape(tape.activations());
        let pooled = b.spatial_mean(tape.activations())?;
        let area = (s.h * s.w) as f64;
        // Sum over pixels and channels = pixels · Σ_c mean_c.
        Ok(rows(&b.download(&pooled)?)
            .iter()
            .map(|r| r.iter().sum::<f64>() * area)
            .collect())
    }

    /// `fc(gap(layer4))` of a preprocessed NHWC batch, `[n][classes]` in f64.
    fn logits(&mut self, x: &HostTensor) -> Result<Vec<Vec<f64>>> {
        if self.spec.heads.fc.is_none() {
            bail!(
                "{}",
                super::gradcam::NEEDS_CLASSIFIER.replace("Grad-CAM", "--score logit")
            );
        }
        let pooled = self.pooled(x)?;
        // Borrowed, not cloned: this runs once per batch of perturbed images.
        let (wt, bias, classes) = self.spec.heads.fc.as_ref().expect("checked above");
        let classes = *classes;
        let mut out = Vec::with_capacity(pooled.len());
        for f in pooled {
            let c = f.len();
            ensure!(
                wt.len() == classes * c,
                "fc.weight holds {} values for {classes} classes over {c} features",
                wt.len()
            );
            out.push(
                (0..classes)
                    .map(|k| {
                        bias[k] as f64
                            + wt[k * c..(k + 1) * c]
                                .iter()
                                .zip(&f)
                                .map(|(&a, b)| a as f64 * b)
                                .sum::<f64>()
                    })
                    .collect(),
            );
        }
        Ok(out)
    }
}
