//! `eval --method concepts --save-maps`: the conditional maps of a dataset are saved exactly
//! as `run --method concepts` writes them (not scored), the other methods are scored as
//! without them; without --save-maps, concepts are refused.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lafam-gpu");

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn lafam(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("NODEVICE_SELECT", "1")
        .output()
        .unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn eval_saves_concept_maps_as_run_writes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("masks")).unwrap();
    let mut inputs = Vec::new();
    for i in 0..3 {
        let name = format!("img{i:02}.png");
        let dst = root.join("images").join(&name);
        std::fs::copy(fixtures().join("atlas/images").join(&name), &dst).unwrap();
        inputs.push(dst);
        // An object in the top-left quarter.
        let mask =
            image::GrayImage::from_fn(64, 64, |x, y| image::Luma([(x < 32 && y < 32) as u8]));
        mask.save(root.join("masks").join(&name)).unwrap();
    }
    let w = fixtures().join("reference/r50_tv.safetensors");
    let common = [
        "--weights",
        w.to_str().unwrap(),
        "--backend",
        "cpu",
        "--size",
        "0",
        "--layer",
        "layer4",
        "--concept-layer",
        "layer3",
        "--top-concepts",
        "2",
    ];
    let saved = tmp.path().join("saved");
    let json = tmp.path().join("scores.json");
    let mut args = vec![
        "eval",
        "--dataset",
        "folder",
        "--root",
        root.to_str().unwrap(),
    ];
    args.extend(common);
    args.extend([
        "--method",
        "lrp,concepts",
        "--save-maps",
        saved.to_str().unwrap(),
    ]);
    args.extend(["--json", json.to_str().unwrap()]);
    let out = lafam(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only lrp is scored, for every image.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let text = report.to_string();
    assert!(
        text.contains("\"lrp\"") && !text.contains("\"concepts\""),
        "{text}"
    );
    // The same maps and rankings as run writes.
    let ran = tmp.path().join("ran");
    let mut args = vec![
        "run",
        "--out",
        ran.to_str().unwrap(),
        "--method",
        "concepts",
    ];
    args.extend(common);
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    let out = lafam(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let concept_files: Vec<String> = names(&saved)
        .into_iter()
        .filter(|n| n.contains(".concept"))
        .collect();
    assert_eq!(concept_files.len(), 3 * 3, "{concept_files:?}"); // 2 maps + json per image
    for n in &concept_files {
        assert_eq!(
            std::fs::read(saved.join(n)).unwrap(),
            std::fs::read(ran.join(n)).unwrap(),
            "{n}"
        );
    }
    assert_eq!(names(&saved).len(), 3 * 4, "lrp maps too"); // + <stem>.lrp.npy
                                                            // Without --save-maps: refused before any work.
    let mut args = vec![
        "eval",
        "--dataset",
        "folder",
        "--root",
        root.to_str().unwrap(),
    ];
    args.extend(common);
    args.extend(["--method", "concepts"]);
    let out = lafam(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--save-maps"));
}
