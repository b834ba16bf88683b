//! The ResNet forward pass, written once over [`Backend`]: it runs the stem and the stages up
//! to a given one and keeps, per block, what the backward passes need (LRP for the blocks up
//! to the explained stage, the Grad-CAM gradient for the blocks after it). A plain pass keeps
//! nothing but the stage outputs.

use super::lrp::ForwardTap;
use crate::backend::{LrpBackend, Pool};
use crate::model::{ResNet, Stage};
use anyhow::Result;

/// What a forward pass keeps besides the stage outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapeSpec {
    /// The explained stage.
    pub stage: Stage,
    /// The last stage run (`>= stage`).
    pub upto: Stage,
    /// Keep what the LRP backward needs for the blocks up to `stage`: the stem output, each
    /// conv's input, each block's skip operand and output.
    pub lrp: bool,
    /// With `lrp`: run each block's last conv without the residual and keep its output (the
    /// branch) for the residual split; otherwise the add and ReLU are fused into the conv.
    pub keep_branch: bool,
    /// Keep what the gradient needs for the blocks after `stage`: each conv's input and each
    /// block's output.
    pub gradient: bool,
}

impl TapeSpec {
    /// Stage outputs only, up to `stage`.
    pub fn plain(stage: Stage) -> Self {
        TapeSpec {
            stage,
            upto: stage,
            lrp: false,
            keep_branch: false,
            gradient: false,
        }
    }
}

/// What one block kept.
#[derive(Clone)]
pub struct BlockTape<T> {
    /// Stage index of the block (0 = layer1).
    pub stage: usize,
    /// Input of each conv of the branch (the first is the block input).
    pub conv_inputs: Vec<T>,
    /// The skip operand (LRP only): the block input or the downsample's output.
    pub skip: Option<T>,
    /// The branch before the residual add (LRP with `keep_branch` only).
    pub branch: Option<T>,
    pub out: T,
}

/// A forward pass and what it kept.
#[derive(Clone)]
pub struct Tape<T> {
    pub spec: TapeSpec,
    /// The preprocessed input.
    pub input: T,
    /// The stem conv's output before the max-pool (LRP only).
    pub stem_out: Option<T>,
    /// Output of every stage run (index 0 = layer1).
    pub outputs: Vec<T>,
    /// The kept blocks, in forward order.
    pub blocks: Vec<BlockTape<T>>,
}

impl<T> Tape<T> {
    /// The explained stage's output.
    pub fn activations(&self) -> &T {
        &self.outputs[self.spec.stage.index()]
    }
}

/// Runs `x` (preprocessed NHWC) through the network as `spec` says. `tap` records the forward
/// tensors, or replays another engine's in their place (see [`super::ties`]).
pub fn forward<B: LrpBackend>(
    b: &mut B,
    net: &ResNet<B::Conv>,
    x: B::Tensor,
    spec: TapeSpec,
    mut tap: Option<&mut ForwardTap>,
) -> Result<Tape<B::Tensor>> {
    let mut tap = |b: &mut B, t: B::Tensor| match tap.as_deref_mut() {
        Some(tap) => tap.tap(b, t),
        None => Ok(t),
    };
    let stem_out = b.conv2d(&x, &net.stem, None, true)?;
    let stem_out = tap(b, stem_out)?;
    let mut h = b.max_pool(&stem_out, Pool::RESNET_STEM)?;
    h = tap(b, h)?;
    let mut outputs = Vec::with_capacity(spec.upto.index() + 1);
    let mut blocks = Vec::new();
    for (s, stage_blocks) in net.stages[..=spec.upto.index()].iter().enumerate() {
        let for_lrp = spec.lrp && s <= spec.stage.index();
        let for_gradient = spec.gradient && s > spec.stage.index();
        for block in stage_blocks {
            let skip = match &block.downsample {
                Some(ds) => {
                    let skip = b.conv2d(&h, ds, None, false)?;
                    tap(b, skip)?
                }
                None => h.clone(),
            };
            let (last, inner) = block.convs.split_last().expect("a block has convs");
            let mut conv_inputs = vec![h.clone()];
            let mut y = h;
            for conv in inner {
                y = b.conv2d(&y, conv, None, true)?;
                y = tap(b, y)?;
                conv_inputs.push(y.clone());
            }
            let branch = if for_lrp && spec.keep_branch {
                let branch = b.conv2d(&y, last, None, false)?;
                let branch = tap(b, branch)?;
                h = b.add_relu(&branch, &skip)?;
                Some(branch)
            } else {
                // The residual add and ReLU fused into the conv's epilogue.
                h = b.conv2d(&y, last, Some(&skip), true)?;
                None
            };
            h = tap(b, h)?;
            if for_lrp || for_gradient {
                blocks.push(BlockTape {
                    stage: s,
                    conv_inputs,
                    skip: for_lrp.then_some(skip),
                    branch,
                    out: h.clone(),
                });
            }
        }
        outputs.push(h.clone());
    }
    Ok(Tape {
        spec,
        input: x,
        stem_out: spec.lrp.then_some(stem_out),
        outputs,
        blocks,
    })
}
