//! Hostile inputs end to end through the binary: extreme network input sizes (a per-image
//! error, never an allocation abort) and weights whose activations overflow (a per-image
//! error, never a silently written NaN map), CPU and GPU backends; a failed write (all or
//! nothing per image) and temporary files left by a killed run.

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
    c.env("NODEVICE_SELECT", "1");
    for a in args {
        c.arg(a);
    }
    c.output().expect("run lafam-gpu")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(String::from)
        .collect()
}

/// Exit 1 or 2, never an abort (134) or a signal, and no allocator message.
fn assert_no_abort(o: &Output) {
    assert!(
        matches!(o.status.code(), Some(1) | Some(2)),
        "status {:?}, stderr: {}",
        o.status,
        stderr(o)
    );
    let err = stderr(o);
    assert!(
        !err.contains("memory allocation") && !err.contains("panicked"),
        "{err}"
    );
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A 1x4000 image (resized to 224x896000 by `--size 224`) next to a normal one.
#[test]
fn extreme_aspect_ratio_is_a_per_image_error_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let thin = dir.path().join("thin.png");
    image::RgbImage::from_fn(4000, 1, |x, _| image::Rgb([(x % 256) as u8, 7, 9]))
        .save(&thin)
        .unwrap();
    let good = dir.path().join("good.png");
    fs::copy(fixtures().join("img_64x64.png"), &good).unwrap();
    for backend in ["cpu", "gpu"] {
        let out = dir.path().join(format!("out-{backend}"));
        let o = lafam_gpu(&[
            &"run",
            &"--weights",
            &weights(),
            &"--backend",
            &backend,
            &"--out",
            &out,
            &thin,
            &good,
        ]);
        assert_no_abort(&o);
        assert_eq!(o.status.code(), Some(1), "{backend}: {}", stderr(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{backend}: {}", stderr(&o));
        let e = &errs[0];
        assert!(e.contains("thin.png"), "{e}");
        assert!(e.contains("896000") && e.contains("8192"), "{e}");
        assert!(e.contains("--size"), "{e}");
        assert_eq!(
            names(&out),
            ["good.lafam.npy", "good.lafam.overlay.png", "good.lafam.png"],
            "{backend}"
        );
    }
}

/// `--size 16384` on a 64 px image: a per-image error naming the limit, no abort.
#[test]
fn huge_size_is_a_per_image_error() {
    let dir = tempfile::tempdir().unwrap();
    for backend in ["cpu", "gpu"] {
        let out = dir.path().join(format!("out-{backend}"));
        let o = lafam_gpu(&[
            &"run",
            &"--weights",
            &weights(),
            &"--backend",
            &backend,
            &"--size",
            &"16384",
            &"--method",
            &"lafam,lrp",
            &"--out",
            &out,
            &fixtures().join("img_64x64.png"),
        ]);
        assert_no_abort(&o);
        assert_eq!(o.status.code(), Some(1), "{backend}: {}", stderr(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 1, "{backend}: {}", stderr(&o));
        assert!(
            errs[0].contains("img_64x64.png")
                && errs[0].contains("16384x16384")
                && errs[0].contains("use --size 2048 or smaller"),
            "{}",
            errs[0]
        );
        assert!(names(&out).is_empty(), "{:?}", names(&out));
    }
}

/// `bench --size` over the limit: a one-line usage error before anything is allocated.
#[test]
fn bench_huge_size_is_a_usage_error() {
    let o = lafam_gpu(&[
        &"bench",
        &"--arch",
        &"resnet50",
        &"--backend",
        &"cpu",
        &"--size",
        &"16384",
    ]);
    assert_no_abort(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let errs = error_lines(&o);
    assert_eq!(errs.len(), 1, "{}", stderr(&o));
    assert!(
        errs[0].contains("--size 16384") && errs[0].contains("2048"),
        "{}",
        errs[0]
    );
}

/// The fixture with every BatchNorm running_var set to 1e-12 (all values finite: each BN
/// scales by ~1/sqrt(eps) = 316, and over the network's depth the activations overflow f32)
/// and a small classifier head `fc` for Grad-CAM.
fn overflowing_weights(dir: &Path) -> PathBuf {
    let src = fs::read(weights()).unwrap();
    let sf = safetensors::SafeTensors::deserialize(&src).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut fc_in = 0;
    for (k, v) in sf.tensors() {
        let data = if k.ends_with("running_var") {
            assert_eq!(v.dtype(), safetensors::Dtype::F32);
            v.data()
                .chunks_exact(4)
                .flat_map(|_| 1e-12f32.to_le_bytes())
                .collect()
        } else {
            v.data().to_vec()
        };
        if k.ends_with("layer4.1.conv2.weight") {
            fc_in = v.shape()[0];
        }
        owned.push((k, v.dtype(), v.shape().to_vec(), data));
    }
    assert!(fc_in > 0);
    let classes = 5;
    let fc_w: Vec<u8> = (0..classes * fc_in)
        .flat_map(|i| (((i * 37) % 11) as f32 * 0.01 - 0.05).to_le_bytes())
        .collect();
    owned.push((
        "module.fc.weight".into(),
        safetensors::Dtype::F32,
        vec![classes, fc_in],
        fc_w,
    ));
    owned.push((
        "module.fc.bias".into(),
        safetensors::Dtype::F32,
        vec![classes],
        vec![0u8; classes * 4],
    ));
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(k, dt, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*dt, s.clone(), d).unwrap(),
            )
        })
        .collect();
    let path = dir.join("tiny_var.safetensors");
    fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    path
}

/// Finite weights whose activations overflow: every method's map would be NaN (EigenCAM's
/// all zeros). Each image is a per-image error naming the methods and the stage; nothing is
/// written; exit 1.
#[test]
fn overflowing_activations_are_a_per_image_error_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let w = overflowing_weights(dir.path());
    for backend in ["cpu", "gpu"] {
        let out = dir.path().join(format!("out-{backend}"));
        let o = lafam_gpu(&[
            &"run",
            &"--weights",
            &w,
            &"--backend",
            &backend,
            &"--size",
            &"64",
            &"--method",
            &"lafam,lafam-max,lrp,gradcam,eigencam,relax",
            &"--masks",
            &"4",
            &"--out",
            &out,
            &fixtures().join("img_64x64.png"),
            &fixtures().join("img_48x80.png"),
        ]);
        assert_no_abort(&o);
        assert_eq!(o.status.code(), Some(1), "{backend}: {}", stderr(&o));
        let errs = error_lines(&o);
        assert_eq!(errs.len(), 2, "{backend}: {}", stderr(&o));
        for (e, name) in errs.iter().zip(["img_64x64.png", "img_48x80.png"]) {
            assert!(e.contains(name), "{e}");
            assert!(e.contains("not finite") && e.contains("layer4"), "{e}");
            for m in ["lafam", "lafam-max", "lrp", "gradcam", "eigencam", "relax"] {
                assert!(e.contains(m), "{backend}: {m} not named: {e}");
            }
        }
        assert!(names(&out).is_empty(), "{backend}: {:?}", names(&out));
    }
}

/// The CPU backend checks what it allocates against its tensor limit: an error naming the
/// limit (and, for one image, that it is too large on its own), never an abort.
#[test]
fn cpu_backend_refuses_a_tensor_over_its_limit() {
    use lafam_gpu::{Backend, HostTensor, Shape, Upsample};
    let mut cpu = lafam_gpu::cpu::Cpu::new();
    let t = cpu
        .upload(&HostTensor::new(Shape::new(1, 2, 2, 1), vec![0.0; 4]))
        .unwrap();
    // 20000x20000 floats = 1.6 GB, over the 1 GiB limit.
    let e = format!(
        "{:#}",
        cpu.resize(&t, 20000, 20000, Upsample::Nearest).unwrap_err()
    );
    assert!(
        e.contains(&cpu.max_tensor_bytes().to_string()) && e.contains("single image"),
        "{e}"
    );
}

/// The largest `--size` suggested in the errors does fit, and one more does not.
#[test]
fn max_net_size_is_the_largest_size_that_fits() {
    use lafam_gpu::io::{check_net_input, max_net_size, shorter_side_dims};
    for (w, h) in [
        (64, 64),
        (4000, 1),
        (1, 4000),
        (640, 480),
        (100, 7000),
        (5000, 3),
    ] {
        let n = max_net_size(w, h).unwrap();
        let (nw, nh) = shorter_side_dims(w, h, n);
        assert!(check_net_input(nw, nh).is_ok(), "{w}x{h}: {n}");
        let (nw, nh) = shorter_side_dims(w, h, n + 1);
        assert!(check_net_input(nw, nh).is_err(), "{w}x{h}: {}", n + 1);
    }
    assert_eq!(max_net_size(64, 64), Some(2048));
    // Over 8192:1 no size fits.
    assert_eq!(max_net_size(1, 9000), None);
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// A failed write leaves none of that image's outputs (for every method), while the other
/// images' are all written: all or nothing per image. The failure is simulated by a
/// directory where the last output (the second method's overlay) goes, so every other file of
/// the image is written and renamed first, then removed. A temporary file of a killed run is
/// cleaned up at the start.
#[test]
fn failed_write_leaves_none_of_that_images_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    let bad = dir.path().join("bad.png");
    fs::copy(fixtures().join("img_64x64.png"), &good).unwrap();
    fs::copy(fixtures().join("img_64x64.png"), &bad).unwrap();
    let out = dir.path().join("out");
    fs::create_dir_all(out.join("bad.eigencam.overlay.png")).unwrap();
    // An old output of `bad` from an earlier run: not kept next to a failed set either.
    fs::write(out.join("bad.lafam.npy"), b"old").unwrap();
    let stale = format!(".good.lafam.npy.lafam-{}-Ab12Cd.tmp", dead_pid());
    fs::write(out.join(&stale), b"partial").unwrap();
    let o = lafam_gpu(&[
        &"run",
        &"--weights",
        &weights(),
        &"--backend",
        &"cpu",
        &"--method",
        &"lafam,eigencam",
        &"--out",
        &out,
        &good,
        &bad,
    ]);
    assert_no_abort(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let errs = error_lines(&o);
    assert_eq!(errs.len(), 1, "{}", stderr(&o));
    let e = &errs[0];
    assert!(
        e.contains("bad.png") && e.contains("bad.eigencam.overlay.png"),
        "{e}"
    );
    assert_eq!(
        names(&out),
        [
            "bad.eigencam.overlay.png", // the directory
            "good.eigencam.npy",
            "good.eigencam.overlay.png",
            "good.eigencam.png",
            "good.lafam.npy",
            "good.lafam.overlay.png",
            "good.lafam.png",
        ]
    );
    assert!(out.join("bad.eigencam.overlay.png").is_dir());
}

/// Temporary files are removed when their process is gone or they are over a day old; a live
/// process's (a concurrent shard) and files not named like ours are kept.
#[test]
fn stale_temporary_files_are_removed_live_ones_kept() {
    use lafam_gpu::io::output::{remove_stale_temps, temp_owner};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut live = Command::new("sleep").arg("60").spawn().unwrap();
    let (dead, live_pid, me) = (dead_pid(), live.id(), std::process::id());
    let dead_name = format!(".a.lafam.npy.lafam-{dead}-x1Y2z3.tmp");
    let live_name = format!(".b.lafam.png.lafam-{live_pid}-x1Y2z3.tmp");
    let mine = format!(".c.lafam.npy.lafam-{me}-QWERTY.tmp");
    let old_live = format!(".d.lafam.npy.lafam-{live_pid}-abcdef.tmp");
    let others = [
        ".e.lafam.npy.x1Y2z3.tmp".to_string(), // an older version's name: no pid
        format!("f.lafam-{dead}-x1Y2z3.tmp"),  // not hidden
        format!(".g.lafam-{dead}-.tmp"),       // no random part
        format!(".h.lafam-{dead}x-abc.tmp"),   // not a pid
        "notes.tmp".to_string(),
    ];
    for n in [&dead_name, &live_name, &mine, &old_live]
        .into_iter()
        .chain(&others)
    {
        fs::write(d.join(n), b"x").unwrap();
    }
    fs::create_dir(d.join(format!(".dir.lafam-{dead}-abc.tmp"))).unwrap();
    let two_days = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86400);
    fs::File::options()
        .write(true)
        .open(d.join(&old_live))
        .unwrap()
        .set_modified(two_days)
        .unwrap();
    assert_eq!(temp_owner(&dead_name), Some(dead));
    assert_eq!(temp_owner(&others[0]), None);

    let removed = remove_stale_temps(d);
    live.kill().unwrap();
    live.wait().unwrap();
    let mut want = vec![dead_name.clone(), old_live.clone()];
    want.sort();
    assert_eq!(removed, want);
    let left = names(d);
    for n in [&live_name, &mine].into_iter().chain(&others) {
        assert!(left.contains(n), "{n} removed: {left:?}");
    }
    assert!(
        !left.contains(&dead_name) && !left.contains(&old_live),
        "{left:?}"
    );
}
