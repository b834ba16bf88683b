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

/// Longest `.npy` header accepted, in bytes: numpy's own default limit (`max_header_size`).
pub const MAX_HEADER_LEN: usize = 10_000;

/// Deepest nesting of brackets accepted in a `.npy` header. A map's header nests two deep
/// (`{'shape': (h, w)}`), a structured dtype four; npyz's header parser takes time
/// exponential in the depth (a 118-byte header nesting 70 deep never finished).
pub const MAX_HEADER_DEPTH: usize = 8;

/// Reads the magic string, version and header of a `.npy` file and checks the header against
/// [`MAX_HEADER_LEN`] and [`MAX_HEADER_DEPTH`] before npyz parses it. Returns the bytes read.
fn checked_preamble<R: Read>(source: &mut R) -> Result<Vec<u8>> {
    let mut pre = vec![0u8; 8];
    source
        .read_exact(&mut pre)
        .context("not a .npy file: shorter than its magic string")?;
    ensure!(
        pre.starts_with(b"\x93NUMPY"),
        "not a .npy file: no \\x93NUMPY magic string"
    );
    let len_bytes = if pre[6] == 1 { 2 } else { 4 };
    let mut len = vec![0u8; len_bytes];
    source
        .read_exact(&mut len)
        .context("not a .npy file: ends in its header")?;
    let header_len = len
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | b as usize);
    ensure!(
        header_len <= MAX_HEADER_LEN,
        "header of {header_len} bytes, over the limit of {MAX_HEADER_LEN}"
    );
    let mut header = vec![0u8; header_len];
    source
        .read_exact(&mut header)
        .context("not a .npy file: ends in its header")?;
    // Brackets inside strings count too: a map's header has none there, and the count
    // cannot then be fooled by quotes and escapes.
    let (mut depth, mut deepest) = (0usize, 0usize);
    for &b in &header {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    ensure!(
        deepest <= MAX_HEADER_DEPTH,
        "header nests brackets {deepest} deep, over the limit of {MAX_HEADER_DEPTH}"
    );
    pre.extend(len);
    pre.extend(header);
    Ok(pre)
}

fn read_map_from<R: Read>(mut source: R) -> Result<Map> {
    let preamble = checked_preamble(&mut source)?;
    let npy = npyz::NpyFile::new(std::io::Cursor::new(preamble).chain(source))
        .context("not a .npy file")?;
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
    // The element count as the shape says, without overflow (npyz's own product wraps).
    ensure!(
        h.checked_mul(w) == Some(data.len()),
        "shape {shape:?} does not match its {} values",
        data.len()
    );
    Ok((h, w, data))
}
