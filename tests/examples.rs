//! The examples in `examples/` run and say what they should (cargo builds them with the
//! tests; this runs the binaries).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} was not built (cargo test builds examples)", path.display());
    path
}

fn run(name: &str) -> String {
    let out = Command::new(example(name))
        .env("NODEVICE_SELECT", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn explain_example_runs() {
    let out = run("explain");
    for m in ["lafam ", "lafam-max ", "lrp "] {
        assert!(out.contains(&format!("chelsea.jpg: {m}")), "{m}: {out}");
    }
    // Maps at the image's own resolution (assets/chelsea.jpg is 433x288).
    assert!(out.contains("433x288"), "{out}");
}

#[test]
fn engine_example_runs() {
    let out = run("engine");
    assert!(out.contains("pass LrpTape: lafam, lafam-max, eigencam, lrp"), "{out}");
    assert!(out.contains("pass OwnPasses: relax"), "{out}");
    for m in ["lafam", "lafam-max", "lrp", "eigencam", "relax", "relax-uncertainty"] {
        assert!(out.contains(&format!("{m}: 2 maps of 96x128, finite: true")), "{m}: {out}");
    }
}
