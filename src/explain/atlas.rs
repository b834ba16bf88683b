//! The concept atlas's two passes over an engine (CRP's reference sampling, Achtibat et al.
//! 2023, as zennit-crp's `FeatureVisualization` does it; the bookkeeping is
//! [`crate::atlas`]):
//!
//! - [`Engine::concept_activity`]: a batch's activations and LaFAM-LRP relevance at the
//!   output of the concept layer (the backward seeded at the explained stage with its
//!   activations, stopped at the concept layer);
//! - [`Engine::neuron_maps`]: for one image, the input relevance of single neurons (channel,
//!   position) of the concept layer: the backward started at the concept layer with its
//!   activation restricted to that neuron (zennit-crp's `get_max_reference(rf=True)`:
//!   `start_layer` = the concept layer, `init_rel` = its activation, `ChannelConcept.mask_rf`).

use super::lrp::{conditional_relevance, LrpWeights};
use super::tape::{forward, TapeSpec};
use super::{Engine, ImageBatch};
use crate::backend::LrpBackend;
use crate::model::Stage;
use crate::tensor::{HostTensor, Shape};
use anyhow::{ensure, Context, Result};

impl<B: LrpBackend> Engine<B, LrpWeights<B::Conv>> {
    /// Activations and relevance at the output of `concept` (`[n, h, w, c]` each, on the
    /// host) of the LaFAM-LRP pass seeded at `stage` with its activations (R = A). The
    /// backward stops at the concept layer.
    pub fn concept_activity(
        &mut self,
        images: ImageBatch,
        stage: Stage,
        concept: Stage,
    ) -> Result<(HostTensor, HostTensor)> {
        ensure!(
            concept <= stage,
            "the concept layer {concept} is above the explained layer {stage}"
        );
        let mut acts = Vec::new();
        let mut rels = Vec::new();
        for chunk in self.chunks(images, stage) {
            let x = self
                .backend
                .preprocess(chunk.rgb, chunk.n, chunk.h, chunk.w)?;
            let spec = TapeSpec {
                lrp: true,
                keep_branch: self.lrp.needs_branch(),
                ..TapeSpec::plain(stage)
            };
            let tape = forward(&mut self.backend, &self.net, x, spec, None)?;
            acts.push(self.backend.download(&tape.outputs[concept.index()])?);
            let mut got: Option<HostTensor> = None;
            let mut grab = |b: &mut B, r: &B::Tensor| -> Result<(B::Tensor, usize)> {
                got = Some(b.download(r)?);
                Ok((r.clone(), 0))
            };
            conditional_relevance(
                &mut self.backend,
                &self.net,
                &self.lrp,
                tape,
                None,
                Some((concept, &mut grab)),
            )?;
            rels.push(got.context("the backward did not reach the concept layer")?);
        }
        Ok((HostTensor::stack(&acts), HostTensor::stack(&rels)))
    }

    /// For the one image of `image`, per neuron `(channel, [y, x])` of `concept`'s output
    /// (at the concept layer's resolution): the input relevance summed
    /// over RGB, `[k, h, w, 1]` at the network input's size, of the LaFAM-LRP backward
    /// started at the concept layer with its activation kept at that neuron only.
    pub fn neuron_maps(
        &mut self,
        image: ImageBatch,
        concept: Stage,
        neurons: &[(usize, [usize; 2])],
    ) -> Result<HostTensor> {
        ensure!(image.n == 1, "neuron maps take one image at a time");
        ensure!(!neurons.is_empty(), "no neurons");
        let x = self
            .backend
            .preprocess(image.rgb, image.n, image.h, image.w)?;
        let spec = TapeSpec {
            lrp: true,
            keep_branch: self.lrp.needs_branch(),
            ..TapeSpec::plain(concept)
        };
        let tape = forward(&mut self.backend, &self.net, x, spec, None)?;
        // The backward of k conditions holds about k images' worth of tensors.
        let per = self.max_batch(image.h, image.w, concept).clamp(1, 32);
        let mut parts = Vec::new();
        for part in neurons.chunks(per) {
            let mut mask = |b: &mut B, r: &B::Tensor| -> Result<(B::Tensor, usize)> {
                // At the seed the relevance is the activation.
                let a = b.download(r)?;
                let s = a.shape;
                let len = s.image_len();
                let mut data = vec![0.0f32; part.len() * len];
                for (j, &(c, [y, x])) in part.iter().enumerate() {
                    ensure!(
                        c < s.c && y < s.h && x < s.w,
                        "neuron (channel {c}, [{y}, {x}]) outside {concept}'s output {s}"
                    );
                    let i = (y * s.w + x) * s.c + c;
                    data[j * len + i] = a.data[i];
                }
                let t = b.upload(&HostTensor::new(Shape { n: part.len(), ..s }, data))?;
                Ok((t, part.len()))
            };
            let r_in = conditional_relevance(
                &mut self.backend,
                &self.net,
                &self.lrp,
                tape.clone(),
                None,
                Some((concept, &mut mask)),
            )?;
            let mean = self.backend.channel_mean(&r_in)?;
            drop(r_in);
            let sum = self.backend.lincomb(&mean, 3.0, None, 0.0)?;
            parts.push(self.backend.download(&sum)?);
        }
        Ok(HostTensor::stack(&parts))
    }
}
