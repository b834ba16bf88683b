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
    normalised_over_channels(pass, B::channel_mean)
}

/// The stage's activations reduced over channels by `reduce` (`[n,h,w,C] -> [n,h,w,1]`),
/// min-max normalised per image.
pub(crate) fn normalised_over_channels<B: CamBackend>(
    pass: &mut Pass<'_, B>,
    reduce: fn(&mut B, &B::Tensor) -> Result<B::Tensor>,
) -> Result<Produced<B::Tensor>> {
    let a = pass.tape.as_ref().context("needs a forward pass")?.activations();
    let reduced = reduce(pass.b, a)?;
    Ok(Produced::one(pass.b.minmax_normalise(&reduced)?))
}
