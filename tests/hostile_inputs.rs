//! Hostile inputs end to end through the binary: extreme network input sizes (a per-image
//! error, never an allocation abort) and weights whose activations overflow (a per-image
//! error, never a silently written NaN map). CPU and GPU backends.

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
