//! The ResNet forward pass, written once over [`Backend`].

use super::{ResNet, Stage};
use crate::backend::{Backend, Pool};
use anyhow::Result;

/// Runs `x` (preprocessed NHWC) through the stem and the stages up to `upto`, returning the
/// output of every stage from layer1 to `upto` (index 0 = layer1).
pub fn forward<B: Backend>(
    b: &mut B,
    net: &ResNet<B::Conv>,
    x: &B::Tensor,
    upto: Stage,
) -> Result<Vec<B::Tensor>> {
    let mut h = b.conv2d(x, &net.stem, None, true)?;
    h = b.max_pool(&h, Pool::RESNET_STEM)?;
    let mut outputs = Vec::with_capacity(upto.index() + 1);
    for blocks in &net.stages[..=upto.index()] {
        for block in blocks {
            let skip = match &block.downsample {
                Some(ds) => b.conv2d(&h, ds, None, false)?,
                None => h.clone(),
            };
            let (last, inner) = block.convs.split_last().expect("a block has convs");
            let mut y = h;
            for conv in inner {
                y = b.conv2d(&y, conv, None, true)?;
            }
            h = b.conv2d(&y, last, Some(&skip), true)?;
        }
        outputs.push(h.clone());
    }
    Ok(outputs)
}
