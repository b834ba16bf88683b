//! [`Engine`]: a backend with a network prepared on it, the object every method runs
//! through. LRP's rule-modified weights are a typestate: [`Engine::with_lrp`] turns an
//! `Engine<B>` into an `Engine<B, LrpWeights<_>>`, on which the LRP-only calls exist.

use super::lrp::{prepare_lrp, LrpWeights};
use super::rules::{Composite, Rule};
use super::tape::{forward, TapeSpec};
use crate::backend::{Backend, LrpBackend};
use crate::model::{ConvLayer, ResNet, Stage};
use crate::tensor::HostTensor;
use anyhow::{ensure, Result};

/// The LRP state of an [`Engine`]: [`NoLrp`] or prepared [`LrpWeights`].
pub trait LrpState<C> {
    fn weights(&self) -> Option<&LrpWeights<C>>;
}

/// An engine without LRP rules (LRP methods are refused before any work).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoLrp;

impl<C> LrpState<C> for NoLrp {
    fn weights(&self) -> Option<&LrpWeights<C>> {
        None
    }
}

impl<C> LrpState<C> for LrpWeights<C> {
    fn weights(&self) -> Option<&LrpWeights<C>> {
        Some(self)
    }
}

/// A backend with a network prepared on it.
pub struct Engine<B: Backend, L = NoLrp> {
    pub backend: B,
    pub net: ResNet<B::Conv>,
    /// The host description, for sizes and batch planning.
    pub spec: ResNet<ConvLayer>,
    /// [`NoLrp`], or the rule-modified weights.
    pub lrp: L,
}

/// A batch of RGB8 images of one size, as the network sees them.
#[derive(Clone, Copy, Debug)]
pub struct ImageBatch<'a> {
    /// `n*h*w*3` bytes, interleaved RGB, row-major.
    pub rgb: &'a [u8],
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

impl<'a> ImageBatch<'a> {
    pub fn new(rgb: &'a [u8], n: usize, h: usize, w: usize) -> Result<Self> {
        ensure!(n > 0 && h > 0 && w > 0, "empty image batch {n}x{h}x{w}");
        ensure!(
            rgb.len() == n * h * w * 3,
            "image batch holds {} bytes, expected {n}x{h}x{w}x3",
            rgb.len()
        );
        Ok(ImageBatch { rgb, n, h, w })
    }
    pub fn slice(&self, start: usize, count: usize) -> ImageBatch<'a> {
        let per = self.h * self.w * 3;
        ImageBatch {
            rgb: &self.rgb[start * per..(start + count) * per],
            n: count,
            ..*self
        }
    }
}

impl<B: Backend> Engine<B> {
    /// Prepares the network's weights on the backend once.
    pub fn new(mut backend: B, spec: &ResNet<ConvLayer>) -> Result<Self> {
        let net = spec.try_map(|c| backend.prepare_conv(c))?;
        Ok(Engine {
            backend,
            net,
            spec: spec.clone(),
            lrp: NoLrp,
        })
    }
}

impl<B: Backend, L> Engine<B, L> {
    /// The engine with LRP weights for `composite` (replacing any it had).
    pub fn with_lrp(self, composite: Composite) -> Result<Engine<B, LrpWeights<B::Conv>>> {
        let mut e = self.with_lrp_rules(composite.first_rule(), composite.rule())?;
        e.lrp.composite = Some(composite);
        Ok(e)
    }

    /// The engine with LRP weights for any pair of rules (first conv, every other conv).
    pub fn with_lrp_rules(
        mut self,
        first: Rule,
        rule: Rule,
    ) -> Result<Engine<B, LrpWeights<B::Conv>>> {
        let weights = prepare_lrp(&mut self.backend, &self.spec, first, rule)?;
        Ok(Engine {
            backend: self.backend,
            net: self.net,
            spec: self.spec,
            lrp: weights,
        })
    }

    /// How many `h`x`w` images one forward pass up to `stage` can take without any
    /// activation exceeding the backend's tensor limit.
    pub fn max_batch(&self, h: usize, w: usize, stage: Stage) -> usize {
        max_batch(&self.backend, &self.spec, h, w, stage)
    }

    /// The batch in chunks that one forward pass up to `stage` can take.
    pub(crate) fn chunks<'a>(&self, images: ImageBatch<'a>, stage: Stage) -> Vec<ImageBatch<'a>> {
        let max = self.max_batch(images.h, images.w, stage);
        (0..images.n)
            .step_by(max)
            .map(|s| images.slice(s, max.min(images.n - s)))
            .collect()
    }
}

impl<B: LrpBackend, L> Engine<B, L> {
    /// Stage outputs layer1..=`upto` for every image, downloaded (mostly for tests).
    pub fn stage_activations(
        &mut self,
        images: ImageBatch,
        upto: Stage,
    ) -> Result<Vec<HostTensor>> {
        let mut per_stage: Vec<Vec<HostTensor>> = vec![Vec::new(); upto.index() + 1];
        for chunk in self.chunks(images, upto) {
            let x = self
                .backend
                .preprocess(chunk.rgb, chunk.n, chunk.h, chunk.w)?;
            let tape = forward(&mut self.backend, &self.net, x, TapeSpec::plain(upto), None)?;
            for (dst, t) in per_stage.iter_mut().zip(&tape.outputs) {
                dst.push(self.backend.download(t)?);
            }
        }
        Ok(per_stage
            .iter()
            .map(|parts| HostTensor::stack(parts))
            .collect())
    }
}

/// How many `h`x`w` images one forward pass up to `stage` can take on `b`.
pub(crate) fn max_batch<B: Backend>(
    b: &B,
    spec: &ResNet<ConvLayer>,
    h: usize,
    w: usize,
    stage: Stage,
) -> usize {
    let per_image = (spec.max_activation_per_image(h, w, stage) * 4).max(h * w * 3 * 4) as u64;
    (b.max_tensor_bytes() / per_image).max(1) as usize
}

/// Records the per-image channel means of stage outputs `outs` (`[n, h, w, 1]` each):
/// small probes, downloaded with the maps by [`finite_images`], of whether the activations
/// are finite (an infinite or NaN activation makes its pixel's mean so). Every stage up to
/// the explained one is probed: a ReLU turns -inf into 0, so an overflow in an early stage
/// can leave the explained stage finite but meaningless.
pub(crate) fn finite_probe<B: Backend>(b: &mut B, outs: &[B::Tensor]) -> Result<Vec<B::Tensor>> {
    outs.iter().map(|a| b.channel_mean(a)).collect()
}

/// Per image of the probes, whether its activations were all finite.
pub(crate) fn finite_images<B: Backend>(b: &mut B, probes: &[B::Tensor]) -> Result<Vec<bool>> {
    let mut finite: Vec<bool> = Vec::new();
    for probe in probes {
        let p = b.download(probe)?;
        let per = p.shape.image_len().max(1);
        finite.resize(p.shape.n, true);
        for (ok, c) in finite.iter_mut().zip(p.data.chunks(per)) {
            *ok &= c.iter().all(|v| v.is_finite());
        }
    }
    Ok(finite)
}
