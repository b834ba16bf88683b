//! Reading attribution maps from `.npy` files (`eval --maps`).

use crate::io::Shown;
use anyhow::{bail, ensure, Context, Result};
use std::io::Read;
use std::path::Path;

/// An H×W map: (height, width, values in row-major order).
pub type Map = (usize, usize, Vec<f32>);

/// Reads an H×W map (also [1,H,W], [H,W,1], [1,H,W,1]) of float32 or float64 from a regular
/// file. The error reads `path: cannot read map: problem`.
pub fn read_map(path: &Path) -> Result<Map> {
    let inner = || -> Result<Map> {
        crate::io::files::check_regular(path)?;
        let f = std::fs::File::open(path).context("cannot open")?;
        read_map_from(std::io::BufReader::new(f))
    };
    inner().with_context(|| format!("{}: cannot read map", path.shown()))
}

/// [`read_map`] over bytes already in memory (no file name in the error).
pub fn read_map_bytes(bytes: &[u8]) -> Result<Map> {
    read_map_from(bytes)
}

fn read_map_from<R: Read>(source: R) -> Result<Map> {
    let npy = npyz::NpyFile::new(source).context("not a .npy file")?;
    ensure!(
        npy.order() == npyz::Order::C,
        "Fortran-order arrays are not supported"
    );
    let dims: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| d as usize)
        .filter(|&d| d != 1)
        .collect();
    let shape = npy.shape().to_vec();
    let (h, w) = match (dims.as_slice(), shape.len()) {
        ([h, w], _) => (*h, *w),
        ([n], 2..=4) if shape[shape.len() - 1] == 1 => (*n, 1),
        ([n], 2..=4) => (1, *n),
        ([], 2..=4) => (1, 1),
        _ => bail!("shape {shape:?} is not a 2-D map"),
    };
    let descr = npy.dtype().descr();
    let data: Vec<f32> = if descr.contains("f4") {
        npy.into_vec::<f32>()?
    } else if descr.contains("f8") {
        npy.into_vec::<f64>()?
            .into_iter()
            .map(|x| x as f32)
            .collect()
    } else {
        bail!("dtype {descr} is not float32 or float64")
    };
    Ok((h, w, data))
}
