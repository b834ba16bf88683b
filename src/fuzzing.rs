//! One function per fuzz target (`fuzz/fuzz_targets/<name>.rs`), each feeding arbitrary bytes
//! to the library entry point the CLI uses for that kind of input. The same functions replay
//! the committed corpus in `tests/fuzz_corpus.rs` on the stable toolchain.
//!
//! Each returns whether the input was accepted (`Ok`); what matters to the fuzzer is that it
//! returns at all: no panic, no abort, no hang and no allocation out of proportion to the
//! input.

use std::path::Path;

/// A PyTorch checkpoint (zip or legacy pickle) converted to safetensors, as `convert` and
/// `--weights x.pth` do.
pub fn checkpoint(data: &[u8]) -> bool {
    crate::checkpoint::convert_bytes(data, "fuzz.pth").is_ok()
}

/// A safetensors weights file loaded into a network, as `--weights x.safetensors` does.
pub fn safetensors(data: &[u8]) -> bool {
    crate::model::load::load_weights_from_bytes(data, Path::new("fuzz.safetensors")).is_ok()
}

/// An input image decoded and checked, as `run` does for each input.
pub fn image(data: &[u8]) -> bool {
    crate::io::image::decode_image(data).is_ok()
}

/// An attribution map read from `.npy`, as `eval --maps` does.
pub fn npy_map(data: &[u8]) -> bool {
    crate::io::npy::read_map_bytes(data).is_ok()
}

/// A segmentation mask read from a label PNG, then turned into object masks, as
/// `eval --masks` does.
pub fn mask(data: &[u8]) -> bool {
    use crate::eval::masks::{labels_from_bytes, object_mask, VoidMode};
    match labels_from_bytes(data) {
        Ok(labels) => {
            for mode in [VoidMode::Ignore, VoidMode::Background, VoidMode::Object] {
                let _ = object_mask(&labels, 255, mode);
            }
            true
        }
        Err(_) => false,
    }
}

/// `eval --merge`: the input is up to 8 report parts separated by NUL bytes (JSON text holds
/// none); each is parsed as a part file, then all are merged and the merged reports rendered
/// as the CLI does (JSON, CSV, table).
pub fn eval_merge(data: &[u8]) -> bool {
    use crate::eval::report;
    let mut parts = Vec::new();
    for (i, text) in data.split(|&b| b == 0).take(8).enumerate() {
        match report::parse_part(text) {
            Ok(r) => parts.push((format!("part{i}.json"), r)),
            Err(_) => return false,
        }
    }
    match report::merge(parts) {
        Ok(reports) => {
            let _ = report::reports_to_json(&reports).to_string();
            let _ = report::table(&reports);
            let _ = report::csv_text(&reports);
            true
        }
        Err(_) => false,
    }
}
