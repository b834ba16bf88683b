//! LaFAM (Karjauv & Albayrak 2024): mean of a stage's activation maps over channels,
//! min-max normalised per image, upsampled to the image.

use crate::backend::{Backend, Upsample};
use crate::model::{forward, ConvLayer, ResNet, Stage};
use crate::tensor::HostTensor;
use anyhow::{ensure, Result};

/// A backend with a network prepared on it: the object every method runs through.
pub struct Explainer<B: Backend> {
    pub backend: B,
    pub net: ResNet<B::Conv>,
    /// The host description, for sizes and batch planning.
    pub spec: ResNet<ConvLayer>,
    /// Rule-modified weights, once LRP is enabled.
    pub lrp: Option<super::lrp::LrpWeights<B::Conv>>,
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
    pub(crate) fn slice(&self, start: usize, count: usize) -> ImageBatch<'a> {
        let per = self.h * self.w * 3;
        ImageBatch {
            rgb: &self.rgb[start * per..(start + count) * per],
            n: count,
            ..*self
        }
    }
}

impl<B: Backend> Explainer<B> {
    /// Prepares the network's weights on the backend once.
    pub fn new(mut backend: B, spec: &ResNet<ConvLayer>) -> Result<Self> {
        let net = spec.try_map(|c| backend.prepare_conv(c))?;
        Ok(Explainer {
            backend,
            net,
            spec: spec.clone(),
            lrp: None,
        })
    }

    /// How many `h`x`w` images one forward pass up to `stage` can take without any
    /// activation exceeding the backend's tensor limit.
    pub fn max_batch(&self, h: usize, w: usize, stage: Stage) -> usize {
        let per_image =
            (self.spec.max_activation_per_image(h, w, stage) * 4).max(h * w * 3 * 4) as u64;
        (self.backend.max_tensor_bytes() / per_image).max(1) as usize
    }

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
            let outs = forward(&mut self.backend, &self.net, &x, upto)?;
            for (dst, t) in per_stage.iter_mut().zip(&outs) {
                dst.push(self.backend.download(t)?);
            }
        }
        Ok(per_stage
            .iter()
            .map(|parts| HostTensor::stack(parts))
            .collect())
    }

    /// LaFAM maps for every image of the batch, image `i` resampled to `out_sizes[i]`
    /// (its original resolution). Each result is `[1, h, w, 1]`.
    pub fn lafam(
        &mut self,
        images: ImageBatch,
        stage: Stage,
        upsample: Upsample,
        out_sizes: &[(usize, usize)],
    ) -> Result<Vec<HostTensor>> {
        ensure!(
            out_sizes.len() == images.n,
            "{} output sizes for {} images",
            out_sizes.len(),
            images.n
        );
        let mut maps = Vec::with_capacity(images.n);
        let mut start = 0;
        for chunk in self.chunks(images, stage) {
            let x = self
                .backend
                .preprocess(chunk.rgb, chunk.n, chunk.h, chunk.w)?;
            let outs = forward(&mut self.backend, &self.net, &x, stage)?;
            let small = self.lafam_tail(&outs[stage.index()])?;
            let probe = self.finite_probe(&outs[..=stage.index()])?;
            // Record every image's upsample before the first download, so the whole chunk
            // is one submission.
            let mut pending = Vec::with_capacity(chunk.n);
            for i in 0..chunk.n {
                pending.push(image_at(
                    &mut self.backend,
                    &small,
                    i,
                    out_sizes[start + i],
                    upsample,
                )?);
            }
            for t in &pending {
                maps.push(self.backend.download(t)?);
            }
            poison_non_finite(&mut maps[start..], &self.finite_images(&probe)?);
            start += chunk.n;
        }
        Ok(maps)
    }

    /// Channel mean + per-image min-max at the stage's resolution: [n,h,w,C] -> [n,h,w,1].
    pub fn lafam_tail(&mut self, activations: &B::Tensor) -> Result<B::Tensor> {
        let mean = self.backend.channel_mean(activations)?;
        self.backend.minmax_normalise(&mean)
    }

    /// Records the per-image channel means of stage outputs `outs` (`[n, h, w, 1]` each):
    /// small probes, downloaded with the maps by [`Self::finite_images`], of whether the
    /// activations are finite (an infinite or NaN activation makes its pixel's mean so).
    /// Every stage up to the explained one is probed: a ReLU turns -inf into 0, so an
    /// overflow in an early stage can leave the explained stage finite but meaningless.
    pub(crate) fn finite_probe(&mut self, outs: &[B::Tensor]) -> Result<Vec<B::Tensor>> {
        outs.iter().map(|a| self.backend.channel_mean(a)).collect()
    }

    /// Per image of the probes, whether its activations were all finite.
    pub(crate) fn finite_images(&mut self, probes: &[B::Tensor]) -> Result<Vec<bool>> {
        let mut finite: Vec<bool> = Vec::new();
        for probe in probes {
            let p = self.backend.download(probe)?;
            let per = p.shape.image_len().max(1);
            finite.resize(p.shape.n, true);
            for (ok, c) in finite.iter_mut().zip(p.data.chunks(per)) {
                *ok &= c.iter().all(|v| v.is_finite());
            }
        }
        Ok(finite)
    }

    pub(crate) fn chunks<'a>(&self, images: ImageBatch<'a>, stage: Stage) -> Vec<ImageBatch<'a>> {
        let max = self.max_batch(images.h, images.w, stage);
        (0..images.n)
            .step_by(max)
            .map(|s| images.slice(s, max.min(images.n - s)))
            .collect()
    }
}

/// Fills with NaN the map of every image whose stage activations were not finite
/// (`finite[i]` false): min-max normalisation and ReLUs can turn them into finite but
/// meaningless values (all zeros), and a NaN map is what callers check for.
pub(crate) fn poison_non_finite(maps: &mut [HostTensor], finite: &[bool]) {
    for (m, &ok) in maps.iter_mut().zip(finite) {
        if !ok {
            m.data.fill(f32::NAN);
        }
    }
}

/// Image `i` of a batch resampled to `(h, w)`; the view itself when it already has that size
/// (resampling to the same size is the identity in both modes).
pub(crate) fn image_at<B: Backend>(
    b: &mut B,
    t: &B::Tensor,
    i: usize,
    (h, w): (usize, usize),
    mode: Upsample,
) -> Result<B::Tensor> {
    let one = b.image(t, i);
    let s = b.shape(&one);
    if (s.h, s.w) == (h, w) {
        Ok(one)
    } else {
        b.resize(&one, h, w, mode)
    }
}
