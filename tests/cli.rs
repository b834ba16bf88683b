//! The `lafam-gpu` binary end to end, on the CPU backend (no GPU needed), with the narrow
//! ResNet-18 fixture `tests/fixtures/reference/r18_swav.safetensors`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_lafam-gpu");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn weights() -> PathBuf {
    fixtures().join("r18_swav.safetensors")
}

fn lafam_gpu(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(BIN);
    for a in args {
        c.arg(a);
    }
    c.output().expect("run lafam-gpu")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(String::from)
        .collect()
}

fn read_npy(p: &Path) -> (Vec<u64>, Vec<f32>) {
    let npy =
        npyz::NpyFile::new(fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap();
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// A directory holding the three fixture images (HxW 64x64, 48x80, 96x72).
fn good_images(dir: &Path) -> Vec<PathBuf> {
    ["img_64x64.png", "img_48x80.png", "img_96x72.png"]
        .iter()
        .map(|n| {
            let dst = dir.join(n);
            fs::copy(fixtures().join(n), &dst).unwrap();
            dst
        })
        .collect()
}

fn assert_outputs(out: &Path, stem: &str, h: u32, w: u32) {
    let (shape, data) = read_npy(&out.join(format!("{stem}.lafam.npy")));
    assert_eq!(shape, [h as u64, w as u64], "{stem}.lafam.npy shape");
    assert!(
        data.iter()
            .all(|v| v.is_finite() && (-1e-6..=1.0 + 1e-6).contains(v)),
        "{stem}: map outside [0,1]"
    );
    assert!(
        data.iter().any(|&v| v > 0.5),
        "{stem}: map has no high values"
    );
    for suffix in ["lafam.png", "lafam.overlay.png"] {
        let img = image::open(out.join(format!("{stem}.{suffix}"))).unwrap();
        assert_eq!((img.width(), img.height()), (w, h), "{stem}.{suffix} size");
    }
}

#[test]
fn help_works() {
    let o = lafam_gpu(&[&"--help"]);
    assert!(o.status.success());
    for sub in ["run", "info", "bench"] {
        assert!(stdout(&o).contains(sub), "{sub} missing from --help");
    }
    let o = lafam_gpu(&[&"run", &"--help"]);
    assert!(o.status.success());
    for opt in [
        "--weights",
        "--method",
        "--layer",
        "--upsample",
        "--size",
        "--batch",
        "--backend",
        "--out",
    ] {
        assert!(stdout(&o).contains(opt), "{opt} missing from run --help");
    }
    let o = lafam_gpu(&[&"bench", &"--help"]);
    assert!(o.status.success() && stdout(&o).contains("--json"));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--method",
        &"lafam,nope",
        &"--out",
        &out,
        &"x.png",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("nope") && stderr(&o).contains("lafam"),
        "{}",
        stderr(&o)
    );
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--layer",
        &"layer9",
        &"--out",
        &out,
        &"x.png",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("layer9"));
    let o = lafam_gpu(&[&"run", &"--weights", &weights()]);
    assert_eq!(o.status.code(), Some(2), "no INPUT");
    assert!(!out.exists());
}

#[test]
fn missing_or_broken_weights_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = good_images(dir.path()).remove(0);
    let out = dir.path().join("out");
    let missing = dir.path().join("nope.safetensors");
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &missing,
        &"--backend",
        &"cpu",
        &"--out",
        &out,
        &img,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let errs = error_lines(&o);
    assert_eq!(errs.len(), 1, "{}", stderr(&o));
    assert!(errs[0].contains("nope.safetensors"), "{}", errs[0]);
    assert!(!out.exists(), "nothing written");

    let truncated = dir.path().join("half.safetensors");
    let bytes = fs::read(weights()).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &truncated,
        &"--backend",
        &"cpu",
        &"--out",
        &out,
        &img,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let errs = error_lines(&o);
    assert_eq!(errs.len(), 1, "{}", stderr(&o));
    assert!(errs[0].contains("half.safetensors"), "{}", errs[0]);
    assert!(!out.exists(), "nothing written");

    let o = lafam_gpu(&[&"info", &"--weights", &missing, &"--backend", &"cpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.safetensors"));
}

#[test]
fn run_writes_maps_at_original_resolution_and_reports_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    fs::create_dir(&inputs).unwrap();
    let good = good_images(&inputs);
    let bad = dir.path().join("bad");
    fs::create_dir(&bad).unwrap();
    let text = bad.join("x.jpg");
    fs::write(&text, "not an image at all\n").unwrap();
    let empty = bad.join("empty.png");
    fs::write(&empty, b"").unwrap();
    let trunc = bad.join("trunc.png");
    let png = fs::read(&good[0]).unwrap();
    fs::write(&trunc, &png[..png.len() / 2]).unwrap();
    let out = dir.path().join("out");

    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--backend",
        &"cpu",
        &"--size",
        &"56",
        &"--batch",
        &"2",
        &"--out",
        &out,
        &good[0],
        &text,
        &good[1],
        &empty,
        &trunc,
        &good[2],
    ]);
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    let errs = error_lines(&o);
    assert_eq!(errs.len(), 3, "one line per bad input: {}", stderr(&o));
    for (line, name) in errs.iter().zip(["x.jpg", "empty.png", "trunc.png"]) {
        assert!(line.contains(name), "{line}");
    }
    assert!(
        stderr(&o).lines().any(|l| l.starts_with("backend: cpu")),
        "{}",
        stderr(&o)
    );
    assert!(
        stdout(&o).contains("3 images explained") && stdout(&o).contains("3 failed"),
        "{}",
        stdout(&o)
    );
    assert_outputs(&out, "img_64x64", 64, 64);
    assert_outputs(&out, "img_48x80", 48, 80);
    assert_outputs(&out, "img_96x72", 96, 72);
    // Nothing for the bad inputs, and no temporary files.
    let mut names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 9, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("img_")), "{names:?}");
}

#[test]
fn run_on_a_directory_succeeds_and_matches_pytorch_reference() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    fs::create_dir(&inputs).unwrap();
    good_images(&inputs);
    let out = dir.path().join("out");
    // --size 0: images go in at their own size, so the maps are the reference's.
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--backend",
        &"cpu",
        &"--size",
        &"0",
        &"--layer",
        &"layer3",
        &"--upsample",
        &"bilinear",
        &"--out",
        &out,
        &inputs,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(error_lines(&o).is_empty());
    assert!(
        stdout(&o).contains("3 images explained") && stdout(&o).contains("0 failed"),
        "{}",
        stdout(&o)
    );
    for stem in ["img_64x64", "img_48x80", "img_96x72"] {
        let (shape, got) = read_npy(&out.join(format!("{stem}.lafam.npy")));
        let (rshape, want) =
            read_npy(&fixtures().join(format!("r18_swav__{stem}__layer3__lafam_bilinear.npy")));
        assert_eq!(shape, rshape, "{stem}");
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-4, "{stem}: max abs error {err} vs PyTorch");
    }
}

#[test]
fn same_stem_twice_is_an_error_not_an_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let first = a.join("pic.png");
    let second = b.join("pic.png");
    fs::copy(fixtures().join("img_64x64.png"), &first).unwrap();
    fs::copy(fixtures().join("img_48x80.png"), &second).unwrap();
    let out = dir.path().join("out");
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--backend",
        &"cpu",
        &"--out",
        &out,
        &first,
        &second,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let errs = error_lines(&o);
    assert_eq!(errs.len(), 1, "{}", stderr(&o));
    assert!(
        errs[0].contains(&*second.to_string_lossy()) && errs[0].contains("pic"),
        "{}",
        errs[0]
    );
    // The first one's map is written, at its size.
    assert_outputs(&out, "pic", 64, 64);
}

#[test]
fn shards_agree_on_duplicate_stems_and_neither_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("dupA"), dir.path().join("dupB"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let first = a.join("same.png");
    let second = b.join("same.jpg");
    fs::copy(fixtures().join("img_64x64.png"), &first).unwrap();
    // Recognised by content: a PNG named .jpg.
    fs::copy(fixtures().join("img_48x80.png"), &second).unwrap();
    let out = dir.path().join("out");
    let npy = out.join("same.lafam.npy");
    let mut written = Vec::new();
    for shard in ["0/2", "1/2"] {
        let o = lafam_gpu(&[
            &"run",
            &"--weights",
            &weights(),
            &"--backend",
            &"cpu",
            &"--shard",
            &shard,
            &"--out",
            &out,
            &first,
            &second,
        ]);
        assert_eq!(o.status.code(), Some(1), "{shard}: {}", stderr(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{shard}: {}", stderr(&o));
        assert!(
            errs[0].contains(&*second.to_string_lossy())
                && errs[0].contains(&*first.to_string_lossy()),
            "{shard}: {}",
            errs[0]
        );
        written.push(stdout(&o));
        // dupA/same.png (the first in sorted order) is kept, whichever shard runs last.
        let (shape, _) = read_npy(&npy);
        assert_eq!(shape, [64, 64], "{shard}: same.lafam.npy was overwritten");
    }
    assert!(
        written[0].starts_with("1 images explained"),
        "{}",
        written[0]
    );
    assert!(
        written[1].starts_with("0 images explained"),
        "{}",
        written[1]
    );
}

#[test]
fn class_out_of_range_is_a_usage_error_before_any_image() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = good_images(dir.path());
    let out = dir.path().join("out");
    let r50 = fixtures().join("r50_tv.safetensors"); // a 10-class fc head
    for method in ["gradcam", "lafam,gradcam"] {
        let o = lafam_gpu(&[
            &"run",
            &"--weights",
            &r50,
            &"--backend",
            &"cpu",
            &"--method",
            &method,
            &"--class",
            &"10",
            &"--out",
            &out,
            &imgs[0],
            &imgs[1],
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{}", stderr(&o));
        assert!(
            errs[0].contains("--class 10") && errs[0].contains("10 classes"),
            "{}",
            errs[0]
        );
        assert!(!out.exists(), "nothing may be written");
    }
    // eval --weights: the same refusal, and --save-maps is not created.
    let root = dir.path().join("ds");
    fs::create_dir_all(root.join("images")).unwrap();
    fs::create_dir_all(root.join("masks")).unwrap();
    fs::copy(&imgs[0], root.join("images/a.png")).unwrap();
    let saved = dir.path().join("saved");
    let o = lafam_gpu(&[
        &"eval",
        &"--weights",
        &r50,
        &"--dataset",
        &"folder",
        &"--root",
        &root,
        &"--backend",
        &"cpu",
        &"--method",
        &"gradcam",
        &"--class",
        &"12",
        &"--save-maps",
        &saved,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(error_lines(&o).len(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("--class 12"), "{}", stderr(&o));
    assert!(!saved.exists());
    // Weights without a classifier: Grad-CAM itself is refused, once.
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--backend",
        &"cpu",
        &"--method",
        &"gradcam",
        &"--class",
        &"3",
        &"--out",
        &out,
        &imgs[0],
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(error_lines(&o).len(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("classifier"), "{}", stderr(&o));
    assert!(!out.exists());
    // In range: maps are written.
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &r50,
        &"--backend",
        &"cpu",
        &"--method",
        &"gradcam",
        &"--class",
        &"9",
        &"--out",
        &out,
        &imgs[0],
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.join("img_64x64.gradcam.npy").is_file());
}

#[test]
fn newlines_in_file_names_cannot_forge_error_lines() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    fs::create_dir(&inputs).unwrap();
    // Not an image: one error line for it, with the newline escaped.
    let bad = inputs.join("a\nerror: forged.png");
    fs::write(&bad, b"not an image").unwrap();
    let out = dir.path().join("out");
    for input in [&inputs, &bad] {
        let o = lafam_gpu(&[
            &"run",
            &"--weights",
            &weights(),
            &"--backend",
            &"cpu",
            &"--out",
            &out,
            input,
        ]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{}", stderr(&o));
        assert!(errs[0].contains("a\\nerror: forged.png"), "{}", errs[0]);
        assert!(!stderr(&o).contains("\nerror: forged"), "{}", stderr(&o));
    }
    // A missing input named so: the same.
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--backend",
        &"cpu",
        &"--out",
        &out,
        &dir.path().join("b\r\nerror: x\t.png"),
    ]);
    assert_eq!(error_lines(&o).len(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("b\\r\\nerror: x\\t.png"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn info_describes_the_fixture() {
    let o = lafam_gpu(&[&"info", &"--weights", &weights(), &"--backend", &"cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for want in [
        "ResNet-18",
        "[2, 2, 2, 2]",
        "[8, 16, 32, 64]",
        "projection_head",
        "prototypes",
        "module.",
        "F32",
        "backend:",
    ] {
        assert!(s.contains(want), "'{want}' missing from info:\n{s}");
    }
}

#[test]
fn bench_json_lines_on_random_weights() {
    let o = lafam_gpu(&[
        &"bench",
        &"--arch",
        &"resnet18",
        &"--width",
        &"8",
        &"--backend",
        &"cpu",
        &"--size",
        &"32",
        &"--batch",
        &"1,2",
        &"--iters",
        &"2",
        &"--warmup",
        &"1",
        &"--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect();
    assert_eq!(lines.len(), 2);
    for (v, batch) in lines.iter().zip([1, 2]) {
        for k in [
            "method",
            "backend",
            "adapter",
            "arch",
            "size",
            "batch",
            "iters",
            "median_ms",
            "img_per_s",
            "ms_per_img",
            "gflops",
        ] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert_eq!(v["batch"], batch);
        assert_eq!(v["method"], "lafam");
        assert_eq!(v["backend"], "cpu");
        assert_eq!(v["size"], 32);
        assert!(v["img_per_s"].as_f64().unwrap() > 0.0 && v["gflops"].as_f64().unwrap() > 0.0);
    }
    // Needs one of --weights / --arch.
    let o = lafam_gpu(&[&"bench", &"--backend", &"cpu"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `bench` on the GPU: device time from timestamp queries (where the adapter has them), the
/// kernels' breakdown, and the fraction of the measured GEMM peak.
#[test]
fn bench_gpu_reports_device_time_and_peak_fraction() {
    let info = stdout(&lafam_gpu(&[&"info", &"--backend", &"gpu"]));
    let timestamps = info.contains("timestamp queries: yes");
    let o = lafam_gpu(&[
        &"bench",
        &"--arch",
        &"resnet18",
        &"--width",
        &"8",
        &"--backend",
        &"gpu",
        &"--method",
        &"lrp",
        &"--size",
        &"32",
        &"--batch",
        &"1",
        &"--iters",
        &"2",
        &"--warmup",
        &"1",
        &"--json",
        &"--trace",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("GEMM peak:"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let peak = v["gemm_peak_gflops"].as_f64().unwrap();
    let frac = v["fraction_of_gemm_peak"].as_f64().unwrap();
    assert!(peak > 0.0 && frac > 0.0, "{v}");
    assert!((frac - v["kernel_gflops"].as_f64().unwrap() / peak).abs() < 1e-9);
    let kernels = v["kernels"].as_array().unwrap();
    if timestamps {
        let device = v["device_ms"].as_f64().unwrap();
        // Present and finite; no ratio to the wall time (a loaded machine changes it).
        assert!(device > 0.0 && device.is_finite(), "{v}");
        let names: Vec<&str> = kernels
            .iter()
            .map(|k| k["kernel"].as_str().unwrap())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("conv_transpose")),
            "{names:?}"
        );
        let sum: f64 = kernels.iter().map(|k| k["ms"].as_f64().unwrap()).sum();
        assert!(sum > 0.0 && sum.is_finite(), "kernels {sum} ms");
        // --trace: every pass of one batch in order, as many as the kernels' passes per batch,
        // the forward first (preprocess, then the stem conv).
        let passes = v["passes"].as_array().unwrap();
        let per_batch: f64 = kernels.iter().map(|k| k["passes"].as_f64().unwrap()).sum();
        assert_eq!(passes.len() as f64, per_batch, "{v}");
        assert_eq!(passes[0][0], "preprocess", "{v}");
        assert!(passes[1][0].as_str().unwrap().starts_with("conv2d"), "{v}");
        assert!(passes.iter().all(|p| p[1].as_f64().unwrap() >= 0.0), "{v}");
    } else {
        assert!(v["device_ms"].is_null() && kernels.is_empty(), "{v}");
    }
}

/// The compiled pipelines persist in the cache directory where the adapter has a pipeline
/// cache: the first start writes the file, the second loads it.
#[test]
fn pipeline_cache_is_written_then_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let info = || {
        let o = Command::new(BIN)
            .args(["info", "--backend", "gpu"])
            .env("LAFAM_GPU_CACHE", dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    let first = info();
    let line = |s: &str| {
        s.lines()
            .find(|l| l.contains("pipeline cache:"))
            .unwrap_or_else(|| panic!("no pipeline cache line in {s}"))
            .to_string()
    };
    let l1 = line(&first);
    if l1.contains("none") {
        // An adapter without a pipeline cache (not Vulkan): nothing is written.
        assert!(!dir.path().join("pipelines").exists());
        return;
    }
    assert!(l1.ends_with("(written)"), "{l1}");
    let files: Vec<_> = fs::read_dir(dir.path().join("pipelines"))
        .unwrap()
        .collect();
    assert_eq!(files.len(), 1);
    let l2 = line(&info());
    assert!(l2.ends_with("(loaded)"), "{l2}");
    // A damaged cache file is discarded by the driver, not an error: the kernels compile
    // again and a whole new file replaces it.
    let file = files[0].as_ref().unwrap().path();
    fs::write(&file, b"not a pipeline cache").unwrap();
    let l3 = line(&info());
    assert!(l3.ends_with("(loaded)"), "{l3}");
    assert_ne!(fs::read(&file).unwrap(), b"not a pipeline cache");
}

/// `run --timings` says where a start-up's time went; on the GPU with timestamps it also
/// gives the device time and the time outside it.
#[test]
fn run_timings_break_down_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_images(dir.path());
    let out = dir.path().join("out");
    for backend in ["cpu", "gpu"] {
        let o = lafam_gpu(&[
            &"run",
            &"--weights",
            &weights(),
            &"--backend",
            &backend,
            &"--size",
            &"40",
            &"--method",
            &"lafam,lrp",
            &"--out",
            &out,
            &"--timings",
            &good[0],
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        let line = err
            .lines()
            .find(|l| l.starts_with("timings: "))
            .unwrap_or_else(|| panic!("no timings line: {err}"));
        for part in ["weights ", "backend ", "prepare ", "explain ", "total "] {
            assert!(line.contains(part), "{part} missing: {line}");
        }
        assert_eq!(
            line.contains("outside device work"),
            backend == "gpu" && line.contains("(device "),
            "{line}"
        );
        if backend == "cpu" {
            assert!(!line.contains("device"), "{line}");
        }
    }
}

/// `info` names the limits mode; `LAFAM_GPU_LIMITS=webgpu` opens the device with WebGPU's
/// defaults, and a value other than `adapter` or `webgpu` is a usage error naming both.
#[test]
fn info_reports_the_limits_mode() {
    let info = |value: &str| {
        Command::new(BIN)
            .args(["info", "--backend", "gpu"])
            .env("LAFAM_GPU_LIMITS", value)
            .output()
            .unwrap()
    };
    let o = info("webgpu");
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for want in [
        "limits (LAFAM_GPU_LIMITS): webgpu",
        "max_compute_workgroup_storage_size: 16 KiB",
        "max_compute_invocations_per_workgroup: 256",
        "max_storage_buffers_per_shader_stage: 8",
    ] {
        assert!(s.contains(want), "'{want}' missing from info:\n{s}");
    }
    let o = info("adapter");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("limits (LAFAM_GPU_LIMITS): adapter"));
    let o = info("tiny");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("LAFAM_GPU_LIMITS=\"tiny\" is not a limits mode (accepted: adapter, webgpu)"),
        "{}",
        stderr(&o)
    );
}

/// `--weights` naming a FIFO with no writer or `/dev/zero` is one error line and exit 2, at
/// once (reading either would block or never end).
#[cfg(unix)]
#[test]
fn weights_that_are_not_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("w.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for w in [fifo.as_path(), Path::new("/dev/zero")] {
        let img = fixtures().join("img_64x64.png");
        let out = dir.path().join("out");
        let runs: [Vec<&dyn AsRef<std::ffi::OsStr>>; 2] = [
            vec![&"info", &"--weights", &w, &"--backend", &"cpu"],
            vec![
                &"run",
                &"--weights",
                &w,
                &"--backend",
                &"cpu",
                &"--out",
                &out,
                &img,
            ],
        ];
        for args in runs {
            let cmd = "info/run";
            let o = lafam_gpu(&args);
            assert_eq!(
                o.status.code(),
                Some(2),
                "{cmd} {}: {}",
                w.display(),
                stderr(&o)
            );
            let errs = error_lines(&o);
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].contains("not a regular file"), "{errs:?}");
        }
    }
}

/// `--method concepts` and `--channel`: per image the conditional maps of the listed channels
/// at the original resolution and `<stem>.concepts.json` (highest relevance first, shares of
/// the total, each entry's peak inside the image); a concept layer above `--layer` or a
/// channel out of range is refused before any image.
#[test]
fn concepts_write_maps_per_channel_and_a_ranking() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = good_images(dir.path());
    let out = dir.path().join("out");
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--backend",
        &"cpu",
        &"--method",
        &"concepts",
        &"--layer",
        &"layer4",
        &"--concept-layer",
        &"layer3",
        &"--top-concepts",
        &"3",
        &"--size",
        &"0",
        &"--out",
        &out,
        &imgs[0],
        &imgs[1],
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (stem, h, w) in [("img_64x64", 64u64, 64u64), ("img_48x80", 48, 80)] {
        let j: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(out.join(format!("{stem}.concepts.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(j["layer"], "layer4");
        assert_eq!(j["concept_layer"], "layer3");
        assert_eq!(j["rule"], "epsilon-plus-flat");
        let list = j["concepts"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        let total = j["total_relevance"].as_f64().unwrap();
        let mut last = f64::INFINITY;
        for c in list {
            let r = c["relevance"].as_f64().unwrap();
            assert!(r <= last, "{stem}: not sorted by relevance");
            last = r;
            assert!((c["share"].as_f64().unwrap() - r / total).abs() < 1e-9);
            let (y, x) = (
                c["peak"][0].as_u64().unwrap(),
                c["peak"][1].as_u64().unwrap(),
            );
            assert!(y < h && x < w, "{stem}: peak outside the image");
            let name = format!("{stem}.concept-{}", c["channel"]);
            let (shape, data) = read_npy(&out.join(format!("{name}.npy")));
            assert_eq!(shape, [h, w]);
            assert!(data.iter().all(|v| v.is_finite()));
            for suffix in ["png", "overlay.png"] {
                assert!(
                    out.join(format!("{name}.{suffix}")).is_file(),
                    "{name}.{suffix}"
                );
            }
        }
    }
    // --channel: exactly these channels, for every image, without --method concepts.
    let out2 = dir.path().join("out2");
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--backend",
        &"cpu",
        &"--channel",
        &"5,2",
        &"--size",
        &"0",
        &"--out",
        &out2,
        &imgs[0],
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for c in [2, 5] {
        assert!(out2.join(format!("img_64x64.concept-{c}.npy")).is_file());
    }
    assert!(
        out2.join("img_64x64.lafam.npy").is_file(),
        "the default method still runs"
    );
    let j: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out2.join("img_64x64.concepts.json")).unwrap())
            .unwrap();
    let mut listed: Vec<u64> = j["concepts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_u64().unwrap())
        .collect();
    listed.sort();
    assert_eq!(listed, [2, 5]);
    // Refused before any image.
    for bad in [
        vec![
            "--method",
            "concepts",
            "--layer",
            "layer2",
            "--concept-layer",
            "layer3",
        ],
        vec!["--channel", "100000"],
    ] {
        let out3 = dir.path().join("out3");
        let w = weights();
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"run",
            &"--weights",
            &w,
            &"--backend",
            &"cpu",
            &"--out",
            &out3,
        ];
        for a in &bad {
            args.push(a);
        }
        args.push(&imgs[0]);
        let o = lafam_gpu(&args);
        assert!(!o.status.success(), "{bad:?} accepted");
        assert!(!out3.join("img_64x64.lafam.npy").exists());
        assert!(stderr(&o).contains("layer"), "{bad:?}: {}", stderr(&o));
    }
}
