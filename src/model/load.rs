//! safetensors -> ResNet<ConvLayer>: key normalisation, architecture detection, BN folding.
//! (stub: being written)

use super::{ConvLayer, ResNet};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// A loaded backbone and what the loader learnt about the file.
#[derive(Clone, Debug)]
pub struct LoadedWeights {
    pub net: ResNet<ConvLayer>,
    /// The file the weights came from (or a description for in-memory weights).
    pub source: PathBuf,
    /// Key prefixes that were stripped (e.g. ["module.", "encoder_q."]).
    pub prefixes: Vec<String>,
    /// Storage dtypes seen ("F32", "F16", "BF16").
    pub dtypes: Vec<String>,
    /// BatchNorm epsilon used for folding.
    pub bn_eps: f32,
}

/// Loads a safetensors file. Errors name the file and, where relevant, the tensor with the
/// expected and found shapes.
pub fn load_weights(path: &Path) -> Result<LoadedWeights> {
    let _ = path;
    todo!()
}

/// Loads safetensors bytes already in memory; `source` names them in messages.
pub fn load_weights_from_bytes(bytes: &[u8], source: &Path) -> Result<LoadedWeights> {
    let _ = (bytes, source);
    todo!()
}
