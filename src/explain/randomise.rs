//! Cascading parameter randomisation for the Model Parameter Randomisation Test (MPRT,
//! Adebayo et al. 2018, as Quantus 0.6.0's `MPRT` with `layer_order="top_down"`): the
//! network's convs are re-initialised one after the other, from the explained stage's last
//! conv down to the stem (layers above the stage cannot change LaFAM's maps), each step
//! keeping the earlier ones randomised.
//!
//! Order: Quantus walks `named_modules()` backwards; per torchvision block that is the
//! downsample, then the last conv to the first. lafam-gpu folds each BatchNorm into its conv,
//! so one step re-initialises a conv and its BatchNorm together (Quantus takes them as two
//! steps): PyTorch's default init of both, folded: weights `U(-1/√fan_in, 1/√fan_in)`
//! (`kaiming_uniform_(a=√5)`) divided by `√(1 + 1e-5)` (a reset BatchNorm: γ = 1, β = 0,
//! running mean 0, variance 1), bias 0. The random numbers are seeded by the seed and the
//! conv's name, so every step is reproducible whatever ran before.

use super::engine::{Engine, NoLrp};
use super::lrp::{prepare_lrp, LrpWeights};
use crate::backend::Backend;
use crate::model::{ConvLayer, ResNet, Stage};
use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Where a conv sits in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    Stem,
    /// `conv` = None: the block's downsample.
    Block {
        stage: usize,
        block: usize,
        conv: Option<usize>,
    },
}

/// The convs of the cascade, top-down from `stage`'s last conv to the stem.
pub fn cascade(spec: &ResNet<ConvLayer>, stage: Stage) -> Vec<ConvPath> {
    let mut out = Vec::new();
    for s in (0..=stage.index()).rev() {
        for (b, block) in spec.stages[s].iter().enumerate().rev() {
            if block.downsample.is_some() {
                out.push(ConvPath::Block {
                    stage: s,
                    block: b,
                    conv: None,
                });
            }
            for c in (0..block.convs.len()).rev() {
                out.push(ConvPath::Block {
                    stage: s,
                    block: b,
                    conv: Some(c),
                });
            }
        }
    }
    out.push(ConvPath::Stem);
    out
}

/// The conv at `p`.
pub fn conv_mut(spec: &mut ResNet<ConvLayer>, p: ConvPath) -> &mut ConvLayer {
    match p {
        ConvPath::Stem => &mut spec.stem,
        ConvPath::Block {
            stage,
            block,
            conv: None,
        } => spec.stages[stage][block]
            .downsample
            .as_mut()
            .expect("the cascade lists only existing downsamples"),
        ConvPath::Block {
            stage,
            block,
            conv: Some(c),
        } => &mut spec.stages[stage][block].convs[c],
    }
}

/// Re-initialises a folded conv + BatchNorm as PyTorch's defaults would, seeded by `seed`
/// and the conv's name.
pub fn randomise_conv(c: &mut ConvLayer, seed: u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in c.name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut rng = StdRng::seed_from_u64(h);
    let fan_in = (c.cin * c.kh * c.kw).max(1) as f64;
    let bound = 1.0 / fan_in.sqrt();
    let bn = 1.0 / (1.0f64 + 1e-5).sqrt();
    for w in c.weight.iter_mut() {
        *w = (rng.random_range(-bound..bound) * bn) as f32;
    }
    c.bias.iter_mut().for_each(|b| *b = 0.0);
}

/// Swapping an engine's network for another of the same architecture (re-preparing its
/// weights, and LRP's rule-modified weights where it has them).
pub trait SetNetwork {
    fn set_network(&mut self, spec: &ResNet<ConvLayer>) -> Result<()>;
}

impl<B: Backend> SetNetwork for Engine<B, NoLrp> {
    fn set_network(&mut self, spec: &ResNet<ConvLayer>) -> Result<()> {
        self.net = spec.try_map(|c| self.backend.prepare_conv(c))?;
        self.spec = spec.clone();
        Ok(())
    }
}

impl<B: Backend> SetNetwork for Engine<B, LrpWeights<B::Conv>> {
    fn set_network(&mut self, spec: &ResNet<ConvLayer>) -> Result<()> {
        self.net = spec.try_map(|c| self.backend.prepare_conv(c))?;
        self.spec = spec.clone();
        let composite = self.lrp.composite;
        let (first, rule) = (self.lrp.first.clone(), self.lrp.rule.clone());
        self.lrp = prepare_lrp(&mut self.backend, spec, first, rule)?;
        self.lrp.composite = composite;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::random::{random_resnet, RandomSpec};

    #[test]
    fn cascade_is_top_down_to_the_stem() {
        let spec = random_resnet(&RandomSpec::resnet(18, 8, 1).unwrap());
        let c = cascade(&spec, Stage::Layer2);
        // layer2: block 1 (conv 1, 0), block 0 (downsample, conv 1, 0); layer1 likewise
        // without downsample; stem.
        assert_eq!(c.len(), 2 + 3 + 2 + 2 + 1);
        assert_eq!(
            c[0],
            ConvPath::Block {
                stage: 1,
                block: 1,
                conv: Some(1)
            }
        );
        assert_eq!(
            c[2],
            ConvPath::Block {
                stage: 1,
                block: 0,
                conv: None
            }
        );
        assert_eq!(*c.last().unwrap(), ConvPath::Stem);
    }

    #[test]
    fn randomised_conv_is_seeded_and_within_torch_bounds() {
        let spec = random_resnet(&RandomSpec::resnet(18, 8, 1).unwrap());
        let mut a = spec.stages[0][0].convs[0].clone();
        let mut b = a.clone();
        randomise_conv(&mut a, 3);
        randomise_conv(&mut b, 3);
        assert_eq!(a.weight, b.weight);
        let bound = 1.0 / ((a.cin * a.kh * a.kw) as f64).sqrt();
        assert!(a.weight.iter().all(|&w| (w as f64).abs() <= bound));
        assert!(a.weight.iter().any(|&w| (w as f64).abs() > bound * 0.9));
        assert!(a.bias.iter().all(|&v| v == 0.0));
        randomise_conv(&mut b, 4);
        assert_ne!(a.weight, b.weight);
    }
}
