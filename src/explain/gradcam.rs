//! Grad-CAM (Selvaraju et al. 2017) with the semantics of pytorch-grad-cam 1.5:
//! `logits = fc(global-avg-pool(layer4))`, target `c` = argmax logit unless a class is given,
//! `α_k = mean_hw ∂y_c/∂A_k` for the chosen stage's activations `A`,
//! `cam = ReLU(Σ_k α_k A_k)`, min-max normalised (`(cam - min) / (max - min + ε)`),
//! bilinearly upsampled to the image and normalised again (pytorch-grad-cam's
//! `scale_cam_image` before and after its `cv2.resize`).
//!
//! The gradient is backpropagated on the device through the blocks after the stage: the
//! pooled-logit gradient `W_c / (h w)` broadcast over layer4, then per block the ReLU mask of
//! its output, a transposed conv ([`crate::backend::LrpBackend::conv_transpose`], the same kernel as LRP) per
//! conv with ReLU masks in between, and the residual add's gradient joining the first conv's
//! (or the downsample's) result in the transposed conv's fused epilogue.
//!
//! This file also holds [`Explainer::cams`], which computes LaFAM, Grad-CAM and EigenCAM from
//! one shared forward pass.

use super::lafam::{image_at, Explainer, ImageBatch};
use crate::backend::{CamBackend, Pool, Upsample};
use crate::model::Stage;
use crate::tensor::{HostTensor, Shape};
use anyhow::{bail, ensure, Result};

/// The error for weights without a linear classifier.
pub const NEEDS_CLASSIFIER: &str = "Grad-CAM needs a classifier head (a linear `fc.weight` / \
`fc.bias`, e.g. torchvision or linear-eval checkpoints) and these weights have none; methods \
that work without one: lafam, lrp, eigencam, relax";

/// What the Grad-CAM backward needs of one block after the explained stage.
struct TapeBlock<T> {
    /// Input of each conv of the branch (the first is the block input).
    conv_inputs: Vec<T>,
    output: T,
}

/// A forward pass to layer4 that keeps the stage's activations and, for every later block,
/// what its backward needs.
pub struct CamTape<T> {
    pub stage: Stage,
    /// Output of every stage up to the last one run (index 0 = layer1).
    pub outputs: Vec<T>,
    blocks: Vec<TapeBlock<T>>,
}

/// Which maps [`Explainer::cams`] computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CamRequest {
    pub lafam: bool,
    pub gradcam: bool,
    /// Grad-CAM target class (default: argmax logit).
    pub class: Option<usize>,
    pub eigencam: bool,
}

/// Maps per image, each `[1, h, w, 1]` at the requested output size (empty when not asked).
#[derive(Clone, Debug, Default)]
pub struct CamMaps {
    pub lafam: Vec<HostTensor>,
    pub gradcam: Vec<HostTensor>,
    /// Grad-CAM's target class per image.
    pub classes: Vec<usize>,
    pub eigencam: Vec<HostTensor>,
}

impl<B: CamBackend> Explainer<B> {
    /// Runs the stem and the stages up to `upto`, taping the blocks after `stage`.
    pub fn forward_cam_tape(
        &mut self,
        x: &B::Tensor,
        stage: Stage,
        upto: Stage,
    ) -> Result<CamTape<B::Tensor>> {
        let b = &mut self.backend;
        let mut h = b.conv2d(x, &self.net.stem, None, true)?;
        h = b.max_pool(&h, Pool::RESNET_STEM)?;
        let mut outputs = Vec::new();
        let mut blocks = Vec::new();
        for (s, stage_blocks) in self.net.stages[..=upto.index()].iter().enumerate() {
            for block in stage_blocks {
                let skip = match &block.downsample {
                    Some(ds) => b.conv2d(&h, ds, None, false)?,
                    None => h.clone(),
                };
                let (last, inner) = block.convs.split_last().expect("a block has convs");
                let mut conv_inputs = vec![h.clone()];
                let mut y = h;
                for conv in inner {
                    y = b.conv2d(&y, conv, None, true)?;
                    conv_inputs.push(y.clone());
                }
                h = b.conv2d(&y, last, Some(&skip), true)?;
                if s > stage.index() {
                    blocks.push(TapeBlock {
                        conv_inputs,
                        output: h.clone(),
                    });
                }
            }
            outputs.push(h.clone());
        }
        Ok(CamTape {
            stage,
            outputs,
            blocks,
        })
    }

    /// The logits `fc(gap(layer4))` of a tape run to layer4, `[n][classes]`, in f64 on the
    /// host (a few hundred values: one small download decides the target classes).
    pub fn logits(&mut self, tape: &CamTape<B::Tensor>) -> Result<Vec<Vec<f64>>> {
        let Some((w, bias, classes)) = self.spec.heads.fc.clone() else {
            bail!("{NEEDS_CLASSIFIER}");
        };
        ensure!(
            tape.outputs.len() == 4,
            "logits need a forward pass to layer4"
        );
        let pooled = self.backend.spatial_mean(&tape.outputs[3])?;
        let pooled = self.backend.download(&pooled)?;
        let c = pooled.shape.c;
        ensure!(
            w.len() == classes * c,
            "fc.weight holds {} values for {classes} classes over {c} features",
            w.len()
        );
        Ok(pooled
            .data
            .chunks(c)
            .map(|f| {
                (0..classes)
                    .map(|k| {
                        bias[k] as f64
                            + w[k * c..(k + 1) * c]
                                .iter()
                                .zip(f)
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>()
                    })
                    .collect()
            })
            .collect())
    }

    /// Grad-CAM at the stage's resolution, min-max normalised, `[n, h, w, 1]`, and the target
    /// class of every image.
    pub fn gradcam_small(
        &mut self,
        tape: &CamTape<B::Tensor>,
        class: Option<usize>,
    ) -> Result<(B::Tensor, Vec<usize>)> {
        let logits = self.logits(tape)?;
        let (w, _, classes) = self.spec.heads.fc.clone().expect("checked by logits");
        let targets: Vec<usize> = logits
            .iter()
            .map(|l| match class {
                Some(c) => Ok(c),
                None => Ok(l
                    .iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 {
                            (i, v)
                        } else {
                            best
                        }
                    })
                    .0),
            })
            .collect::<Result<_>>()?;
        if let Some(c) = class {
            ensure!(
                c < classes,
                "--class {c} is out of range: the classifier has {classes} classes (0..{})",
                classes - 1
            );
        }
        let last = &tape.outputs[3];
        let s4 = self.backend.shape(last);
        let c4 = s4.c;
        let rows: Vec<f32> = targets
            .iter()
            .flat_map(|&t| w[t * c4..(t + 1) * c4].iter().copied())
            .collect();
        let b = &mut self.backend;
        let v = b.upload(&HostTensor::new(Shape::new(s4.n, 1, 1, c4), rows))?;
        // d y_c / d layer4 = W_c / (h w) at every pixel (the gradient of the average pool).
        let mut g = b.broadcast_spatial(&v, s4.h, s4.w, 1.0 / (s4.h * s4.w) as f32)?;
        let fwd_blocks: Vec<_> = self.net.stages[tape.stage.index() + 1..]
            .iter()
            .flatten()
            .collect();
        ensure!(
            fwd_blocks.len() == tape.blocks.len(),
            "tape does not match the network"
        );
        for (block, tb) in fwd_blocks.iter().zip(&tape.blocks).rev() {
            let g_sum = b.relu_backward(&g, &tb.output)?;
            let mut gb = g_sum.clone();
            for (i, (conv, x)) in block.convs.iter().zip(&tb.conv_inputs).enumerate().rev() {
                let xs = b.shape(x);
                let acc = (i == 0 && block.downsample.is_none()).then_some(&g_sum);
                gb = b.conv_transpose(&gb, conv, xs.h, xs.w, None, 1.0, acc)?;
                if i > 0 {
                    gb = b.relu_backward(&gb, x)?;
                }
            }
            g = match &block.downsample {
                Some(ds) => {
                    let xs = b.shape(&tb.conv_inputs[0]);
                    b.conv_transpose(&g_sum, ds, xs.h, xs.w, None, 1.0, Some(&gb))?
                }
                None => gb,
            };
        }
        let a = &tape.outputs[tape.stage.index()];
        let alpha = b.spatial_mean(&g)?;
        let cam = b.channel_projection(a, &alpha, None, true)?;
        Ok((b.minmax_normalise(&cam)?, targets))
    }

    /// LaFAM, Grad-CAM and EigenCAM maps (as `req` asks) from one forward pass per chunk,
    /// image `i` resampled to `out_sizes[i]`. LaFAM uses `upsample`; the CAMs follow
    /// pytorch-grad-cam: bilinear, then min-max normalised again.
    pub fn cams(
        &mut self,
        images: ImageBatch,
        stage: Stage,
        upsample: Upsample,
        req: CamRequest,
        out_sizes: &[(usize, usize)],
    ) -> Result<CamMaps> {
        ensure!(
            out_sizes.len() == images.n,
            "{} output sizes for {} images",
            out_sizes.len(),
            images.n
        );
        if req.gradcam && self.spec.heads.fc.is_none() {
            bail!("{NEEDS_CLASSIFIER}");
        }
        let upto = if req.gradcam { Stage::Layer4 } else { stage };
        let mut out = CamMaps::default();
        let mut start = 0;
        for chunk in self.chunks(images, upto) {
            let x = self
                .backend
                .preprocess(chunk.rgb, chunk.n, chunk.h, chunk.w)?;
            let tape = self.forward_cam_tape(&x, stage, upto)?;
            let a = tape.outputs[stage.index()].clone();
            let probe = self.finite_probe(&tape.outputs[..=stage.index()])?;
            let lafam = if req.lafam {
                Some(self.lafam_tail(&a)?)
            } else {
                None
            };
            let gradcam = if req.gradcam {
                let (small, classes) = self.gradcam_small(&tape, req.class)?;
                out.classes.extend(classes);
                Some(small)
            } else {
                None
            };
            drop(tape);
            let (eigencam, eigen_bad) = if req.eigencam {
                let (t, bad) = self.eigencam_small(&a)?;
                (Some(t), bad)
            } else {
                (None, Vec::new())
            };
            let mut pending = Vec::new();
            for i in 0..chunk.n {
                let (h, w) = out_sizes[start + i];
                let b = &mut self.backend;
                let mut row = [None, None, None];
                if let Some(s) = &lafam {
                    row[0] = Some(image_at(b, s, i, (h, w), upsample)?);
                }
                for (slot, small) in [(1, &gradcam), (2, &eigencam)] {
                    if let Some(s) = small {
                        let big = image_at(b, s, i, (h, w), Upsample::Bilinear)?;
                        row[slot] = Some(b.minmax_normalise(&big)?);
                    }
                }
                pending.push(row);
            }
            for (i, row) in pending.iter().enumerate() {
                let dst = [&mut out.lafam, &mut out.gradcam, &mut out.eigencam];
                for (slot, (t, dst)) in row.iter().zip(dst).enumerate() {
                    if let Some(t) = t {
                        let mut map = self.backend.download(t)?;
                        // Non-finite activations: EigenCAM's ReLU and min-max would hide
                        // them (all zeros), so its map says so with NaNs, as the others do.
                        if slot == 2 && eigen_bad.get(i).copied().unwrap_or(false) {
                            map.data.fill(f32::NAN);
                        }
                        dst.push(map);
                    }
                }
            }
            let finite = self.finite_images(&probe)?;
            for maps in [&mut out.lafam, &mut out.gradcam, &mut out.eigencam] {
                if !maps.is_empty() {
                    super::lafam::poison_non_finite(&mut maps[start..], &finite);
                }
            }
            start += chunk.n;
        }
        Ok(out)
    }
}
