//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the same library functions the
//! fuzz targets call (`lafam_gpu::fuzzing`), on the stable toolchain: every file must give a
//! result (accepted or refused), never a panic. The corpus holds the seeds (issue 13's
//! repros, fixtures, hand-written edge cases: `fuzz/make_repros.py`), what the fuzzer kept
//! for coverage, and the minimised inputs of every crash it found (`crash-*`).
//!
//! The repros of issue 13 (`i13-*`) that are hostile inputs must also be refused.

use std::path::PathBuf;

type Target = fn(&[u8]) -> bool;
/// A library call that must refuse a crash input.
type Check = fn(&[u8]) -> anyhow::Result<()>;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    files
}

/// Feeds every file of `target`'s corpus to `f`; a panic names the file. Returns the names of
/// the files `f` accepted.
fn replay(target: &str, f: Target) -> Vec<String> {
    let mut accepted = Vec::new();
    for (name, bytes) in corpus(target) {
        match std::panic::catch_unwind(|| f(&bytes)) {
            Ok(true) => accepted.push(name),
            Ok(false) => {}
            Err(_) => panic!("fuzz/corpus/{target}/{name}: panicked"),
        }
    }
    accepted
}

fn refused(accepted: &[String], prefix: &str) {
    let wrong: Vec<&String> = accepted.iter().filter(|n| n.starts_with(prefix)).collect();
    assert!(wrong.is_empty(), "accepted, should be refused: {wrong:?}");
}

#[test]
fn checkpoint_corpus() {
    let ok = replay("checkpoint", lafam_gpu::fuzzing::checkpoint);
    refused(&ok, "i13-");
    assert!(ok.iter().any(|n| n == "views_zip.pth"), "{ok:?}");
}

#[test]
fn safetensors_corpus() {
    let ok = replay("safetensors", lafam_gpu::fuzzing::safetensors);
    assert!(ok.iter().any(|n| n == "r50_moco.safetensors"), "{ok:?}");
}

#[test]
fn image_corpus() {
    let ok = replay("image", lafam_gpu::fuzzing::image);
    refused(&ok, "i13-6-");
    assert!(ok.iter().any(|n| n == "rocket.jpg"), "{ok:?}");
}

#[test]
fn npy_map_corpus() {
    let ok = replay("npy_map", lafam_gpu::fuzzing::npy_map);
    assert!(ok.iter().any(|n| n == "f4-3x4.npy"), "{ok:?}");
}

#[test]
fn mask_corpus() {
    let ok = replay("mask", lafam_gpu::fuzzing::mask);
    assert!(ok.iter().any(|n| n == "palette8-voc-void255.png"), "{ok:?}");
}

#[test]
fn eval_merge_corpus() {
    let ok = replay("eval_merge", lafam_gpu::fuzzing::eval_merge);
    refused(&ok, "i13-");
    assert!(ok.iter().any(|n| n == "two-shards.json"), "{ok:?}");
}

/// The inputs on which the fuzzer found a crash, hang or blow-up (`crash-*` in the corpus),
/// each refused with its own message. Before the fixes these hung or aborted, so the test would
/// not end.
#[test]
fn crashes_found_by_fuzzing_are_clear_errors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let cases: [(&str, &str, Check); 1] = [(
        // npyz's header parser takes time exponential in the bracket nesting (70 deep in 118
        // bytes never finished).
        "npy_map/crash-npy-header-nested-brackets-timeout",
        "nests brackets",
        |b| lafam_gpu::io::npy::read_map_bytes(b).map(drop),
    )];
    for (file, want, f) in cases {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let err = f(&bytes).expect_err(file);
        assert!(format!("{err:#}").contains(want), "{file}: {err:#}");
    }
}
