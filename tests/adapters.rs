//! Which device `--backend auto|gpu` takes, and what a headless machine prints while it
//! looks: the binary end to end on a 48x80 fixture image.

use lafam_gpu::gpu::{adapters, GpuOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_lafam-gpu");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/reference")
        .join(name)
}

/// `lafam-gpu run` on one small image with `backend` (None: the default) and `env`, in a
/// fresh output directory; XDG_RUNTIME_DIR, NODEVICE_SELECT and WGPU_ADAPTER_NAME are
/// removed first (a headless machine) unless `env` sets them.
fn run(backend: Option<&str>, env: &[(&str, &str)]) -> Output {
    let out = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN);
    c.args(["run", "--weights"])
        .arg(fixture("r18_swav.safetensors"))
        .args(["--size", "32", "--out"])
        .arg(out.path())
        .arg(fixture("img_48x80.png"));
    if let Some(b) = backend {
        c.args(["--backend", b]);
    }
    for v in ["XDG_RUNTIME_DIR", "NODEVICE_SELECT", "WGPU_ADAPTER_NAME"] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

fn backend_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .find(|l| l.starts_with("backend: "))
        .unwrap_or_else(|| panic!("no backend line in {}", String::from_utf8_lossy(&o.stderr)))
        .to_string()
}

/// The adapters wgpu sees here, as the binary will (its environment: no adapter name).
fn seen() -> Vec<wgpu::AdapterInfo> {
    adapters(&GpuOptions::from_env().unwrap())
}

fn is_hardware(i: &wgpu::AdapterInfo) -> bool {
    i.device_type != wgpu::DeviceType::Cpu && i.backend != wgpu::Backend::Gl
}

#[test]
fn auto_takes_a_hardware_gpu_else_the_cpu_and_says_why() {
    let line = backend_line(&run(None, &[]));
    let all = seen();
    assert!(
        !all.is_empty(),
        "the test machine needs a Vulkan adapter (lavapipe: mesa-vulkan-drivers)"
    );
    match all.iter().find(|i| is_hardware(i)) {
        Some(hw) => {
            assert!(line.starts_with("backend: gpu: "), "{line}");
            assert!(line.contains(&hw.name), "{line}");
            assert!(line.contains("auto: a hardware GPU"), "{line}");
        }
        None => {
            // CI and the development machine: lavapipe only. The CPU, with the reason.
            assert!(line.starts_with("backend: cpu"), "{line}");
            assert!(line.contains("only software ones"), "{line}");
            assert!(line.contains(&all[0].name), "{line}");
            assert!(line.contains("--backend gpu uses one anyway"), "{line}");
        }
    }
    // The explicit choices are unchanged.
    assert!(backend_line(&run(Some("cpu"), &[])).starts_with("backend: cpu"));
}

#[test]
fn auto_takes_a_software_adapter_named_in_wgpu_adapter_name() {
    let all = seen();
    let Some(sw) = all.iter().find(|i| i.device_type == wgpu::DeviceType::Cpu) else {
        // A machine with only hardware adapters: nothing to name.
        assert!(all.iter().any(is_hardware), "no adapter at all: {all:?}");
        return;
    };
    let line = backend_line(&run(None, &[("WGPU_ADAPTER_NAME", sw.name.as_str())]));
    assert!(line.starts_with("backend: gpu: "), "{line}");
    assert!(line.contains(&sw.name), "{line}");
    assert!(line.contains("named by WGPU_ADAPTER_NAME"), "{line}");
}

#[test]
fn gpu_takes_the_best_adapter_even_a_software_one() {
    let all = seen();
    let line = backend_line(&run(Some("gpu"), &[]));
    assert!(line.contains(&all[0].name), "{line} (adapters {all:?})");
}

/// Mesa's device-select layer prints `error: XDG_RUNTIME_DIR is invalid ...` twice when there
/// is no desktop session; the binary turns it off there, on every backend.
#[test]
fn headless_runs_print_no_xdg_runtime_dir_errors() {
    for backend in [None, Some("cpu"), Some("gpu")] {
        let o = run(backend, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("XDG_RUNTIME_DIR"), "{backend:?}: {err}");
        assert!(
            !err.lines().any(|l| l.starts_with("error")),
            "{backend:?}: {err}"
        );
    }
}

#[test]
fn info_lists_every_adapter_and_what_auto_does_with_it() {
    let o = Command::new(BIN)
        .args(["info", "--weights"])
        .arg(fixture("r18_swav.safetensors"))
        .env_remove("WGPU_ADAPTER_NAME")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let all = seen();
    assert!(!all.is_empty());
    for a in &all {
        let line = out
            .lines()
            .find(|l| l.contains(&a.name))
            .unwrap_or_else(|| panic!("{} not listed in\n{out}", a.name));
        let kind = if is_hardware(a) {
            "hardware"
        } else {
            "--backend gpu only"
        };
        if a.backend != wgpu::Backend::Gl {
            assert!(line.contains(kind), "{line}");
        }
    }
    assert!(out.contains("adapters:"), "{out}");
}
