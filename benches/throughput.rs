//! End-to-end throughput (`cargo bench --bench throughput`): the same harness as
//! `lafam-gpu bench` (`lafam_gpu::cli::bench::run_bench`), configured by environment:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LAFAM_BENCH_METHOD` | `lafam` | lafam, lrp, gradcam, eigencam or relax |
//! | `LAFAM_BENCH_WEIGHTS` | unset | a safetensors file; unset = random weights of `LAFAM_BENCH_ARCH` |
//! | `LAFAM_BENCH_ARCH` | `resnet50` | resnet18/34/50/101/152 |
//! | `LAFAM_BENCH_WIDTH` | `64` | stem width of the random network |
//! | `LAFAM_BENCH_BACKEND` | `gpu` | auto, gpu or cpu |
//! | `LAFAM_BENCH_SIZE` | `224` | square image side |
//! | `LAFAM_BENCH_BATCH` | `1,8` | comma-separated batch sizes |
//! | `LAFAM_BENCH_ITERS` / `LAFAM_BENCH_WARMUP` | `10` / `2` | timed / warm-up iterations |
//! | `LAFAM_BENCH_LAYER` | `layer4` | explained stage |
//! | `LAFAM_BENCH_JSON` | unset | set to 1 for JSON lines |
//! | `LAFAM_BENCH_PROFILE` | unset | set to 1 for the slowest kernels (GPU timestamps) |
//! | `LAFAM_BENCH_TRACE` | unset | set to 1 for every pass of one batch in order (GPU timestamps) |
//! | `LAFAM_BENCH_RULE` | `epsilon-plus-flat` | LRP composite |

use std::process::ExitCode;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() -> ExitCode {
    // cargo passes `--bench` (and filters) to harness=false benches: ignored.
    let mut args: Vec<String> = vec![
        "lafam-gpu".into(),
        "bench".into(),
        "--method".into(),
        env("LAFAM_BENCH_METHOD", "lafam"),
    ];
    match std::env::var("LAFAM_BENCH_WEIGHTS") {
        Ok(w) => args.extend(["--weights".into(), w]),
        Err(_) => args.extend([
            "--arch".into(),
            env("LAFAM_BENCH_ARCH", "resnet50"),
            "--width".into(),
            env("LAFAM_BENCH_WIDTH", "64"),
        ]),
    }
    for (flag, var, default) in [
        ("--backend", "LAFAM_BENCH_BACKEND", "gpu"),
        ("--size", "LAFAM_BENCH_SIZE", "224"),
        ("--batch", "LAFAM_BENCH_BATCH", "1,8"),
        ("--iters", "LAFAM_BENCH_ITERS", "10"),
        ("--warmup", "LAFAM_BENCH_WARMUP", "2"),
        ("--layer", "LAFAM_BENCH_LAYER", "layer4"),
        ("--rule", "LAFAM_BENCH_RULE", "epsilon-plus-flat"),
    ] {
        args.extend([flag.to_string(), env(var, default)]);
    }
    let on = |var: &str| std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0");
    if on("LAFAM_BENCH_JSON") {
        args.push("--json".into());
    }
    if on("LAFAM_BENCH_PROFILE") {
        args.push("--profile".into());
    }
    if on("LAFAM_BENCH_TRACE") {
        args.push("--trace".into());
    }
    lafam_gpu::cli::main_from(args)
}
