//! LaFAM (Karjauv & Albayrak 2024): the mean of a stage's activation maps over channels,
//! min-max normalised per image, upsampled to the image.

use super::method::{Display, MethodInfo, Needs, Pass, Produced, Resample};
use crate::backend::CamBackend;
use anyhow::{Context, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "lafam",
    about: "LaFAM: channel mean of the layer's activations, min-max normalised, upsampled \
            (--upsample): where the layer looks, at its coarse resolution",
    needs: Needs::Activations,
    outputs: &[""],
    resample: Resample::AsRequested,
    display: Display::Unit,
    needs_classifier: false,
};

pub fn run<B: CamBackend>(pass: &mut Pass<'_, B>) -> Result<Produced<B::Tensor>> {
    let a = pass.tape.as_ref().context("LaFAM needs a forward pass")?.activations();
    let mean = pass.b.channel_mean(a)?;
    Ok(Produced::one(pass.b.minmax_normalise(&mean)?))
}
