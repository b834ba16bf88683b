//! LaFAM-max: LaFAM with the channel **max** in place of the mean. A location is as bright as
//! its most active channel, so a small object that one channel detects strongly is not
//! averaged away by the channels that ignore it. Min-max normalised and upsampled as LaFAM.

use super::method::{Display, MethodInfo, Needs, Pass, Produced, Resample};
use crate::backend::CamBackend;
use anyhow::{Context, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "lafam-max",
    about: "LaFAM with the channel max instead of the mean (the strongest channel per \
            location), min-max normalised and upsampled like lafam",
    needs: Needs::Activations,
    outputs: &[""],
    resample: Resample::AsRequested,
    display: Display::Unit,
    needs_classifier: false,
};

pub fn run<B: CamBackend>(pass: &mut Pass<'_, B>) -> Result<Produced<B::Tensor>> {
    let a = pass.tape.as_ref().context("LaFAM-max needs a forward pass")?.activations();
    let max = pass.b.channel_max(a)?;
    Ok(Produced::one(pass.b.minmax_normalise(&max)?))
}
