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

use super::method::{Display, MethodInfo, Needs, Pass, Produced, Resample};
use super::tape::Tape;
use crate::backend::CamBackend;
use crate::model::{ConvLayer, ResNet};
use crate::tensor::{HostTensor, Shape};
use anyhow::{bail, ensure, Context, Result};

/// The error for weights without a linear classifier.
pub const NEEDS_CLASSIFIER: &str = "Grad-CAM needs a classifier head (a linear `fc.weight` / \
`fc.bias`, e.g. torchvision or linear-eval checkpoints) and these weights have none; methods \
that work without one: lafam, lafam-max, lrp, eigencam, relax";

pub const INFO: MethodInfo = MethodInfo {
    name: "gradcam",
    about: "Grad-CAM (needs a linear classifier `fc`): gradient-weighted channel sum of the \
            layer's activations for the target class (--class, default the argmax logit), \
            as pytorch-grad-cam",
    needs: Needs::GradientTape,
    outputs: &[""],
    resample: Resample::BilinearRenormalised,
    display: Display::Unit,
    needs_classifier: true,
};

pub fn run<B: CamBackend>(pass: &mut Pass<'_, B>) -> Result<Produced<B::Tensor>> {
    let tape = pass.tape.as_ref().context("Grad-CAM needs a taped forward pass")?;
    let (small, targets) = gradcam_small(pass.b, pass.net, pass.spec, tape, pass.request.class)?;
    Ok(Produced {
        targets,
        ..Produced::one(small)
    })
}

/// The logits `fc(gap(layer4))` of a tape run to layer4, `[n][classes]`, in f64 on the
/// host (a few hundred values: one small download decides the target classes).
pub fn logits<B: CamBackend>(
    b: &mut B,
    spec: &ResNet<ConvLayer>,
    tape: &Tape<B::Tensor>,
) -> Result<Vec<Vec<f64>>> {
    let Some((w, bias, classes)) = &spec.heads.fc else {
        bail!("{NEEDS_CLASSIFIER}");
    };
    ensure!(
        tape.outputs.len() == 4,
        "logits need a forward pass to layer4"
    );
    let pooled = b.spatial_mean(&tape.outputs[3])?;
    let pooled = b.download(&pooled)?;
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
            (0..*classes)
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
pub fn gradcam_small<B: CamBackend>(
    b: &mut B,
    net: &ResNet<B::Conv>,
    spec: &ResNet<ConvLayer>,
    tape: &Tape<B::Tensor>,
    class: Option<usize>,
) -> Result<(B::Tensor, Vec<usize>)> {
    let logits = logits(b, spec, tape)?;
    let (w, _, classes) = spec.heads.fc.as_ref().context("checked by logits")?;
    let classes = *classes;
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
    let s4 = b.shape(last);
    let c4 = s4.c;
    let rows: Vec<f32> = targets
        .iter()
        .flat_map(|&t| w[t * c4..(t + 1) * c4].iter().copied())
        .collect();
    let v = b.upload(&HostTensor::new(Shape::new(s4.n, 1, 1, c4), rows))?;
    // d y_c / d layer4 = W_c / (h w) at every pixel (the gradient of the average pool).
    let mut g = b.broadcast_spatial(&v, s4.h, s4.w, 1.0 / (s4.h * s4.w) as f32)?;
    let stage = tape.spec.stage;
    let fwd_blocks: Vec<_> = net.stages[stage.index() + 1..]
        .iter()
        .flatten()
        .collect();
    ensure!(
        fwd_blocks.len() == tape.blocks.len(),
        "tape does not match the network"
    );
    for (block, tb) in fwd_blocks.iter().zip(&tape.blocks).rev() {
        let g_sum = b.relu_backward(&g, &tb.out)?;
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
    let a = tape.activations();
    let alpha = b.spatial_mean(&g)?;
    let cam = b.channel_projection(a, &alpha, None, true)?;
    Ok((b.minmax_normalise(&cam)?, targets))
}

