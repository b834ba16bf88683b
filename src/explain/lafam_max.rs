//! LaFAM-max: LaFAM with the channel **max** in place of the mean. A location is as bright as
//! its most active channel, so a small object that one channel detects strongly is not
//! averaged away by the channels that ignore it. Min-max normalised and upsampled as LaFAM.

use super::method::{MethodInfo, Pass, Produced};
use crate::backend::CamBackend;
use anyhow::Result;

pub const INFO: MethodInfo = MethodInfo {
    name: "lafam-max",
    about: "LaFAM with the channel max instead of the mean (the strongest channel per \
            location), min-max normalised and upsampled like lafam",
    ..super::lafam::INFO
};

pub fn run<B: CamBackend>(pass: &mut Pass<'_, B>) -> Result<Produced<B::Tensor>> {
    super::lafam::normalised_over_channels(pass, B::channel_max)
}
