//! `lafam-gpu bench`: end-to-end throughput of a method (upload -> map download) on random
//! images. [`run_bench`] is the timing harness, shared with `benches/throughput.rs`.

use super::{resolve_weights, EXIT_OK};
use crate::backend::{Backend, CamBackend, KernelTimes};
use crate::device::{open_backend, BackendChoice};
use crate::explain::engine::LrpState;
use crate::explain::method::Needs;
use crate::explain::relax::RelaxConfig;
use crate::explain::{Engine, ImageBatch, Method, Request};
use crate::model::random::{random_resnet, RandomSpec};
use crate::model::{ConvLayer, Stage};
use crate::tensor::{HostTensor, Shape};
use crate::Upsample;
use anyhow::{ensure, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

/// Standard torchvision depths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
}

impl Arch {
    pub fn depth(self) -> usize {
        match self {
            Arch::Resnet18 => 18,
            Arch::Resnet34 => 34,
            Arch::Resnet50 => 50,
            Arch::Resnet101 => 101,
            Arch::Resnet152 => 152,
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("model").required(true).args(["weights", "arch"]))]
pub struct BenchArgs {
    /// Benchmark these weights (safetensors).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Benchmark a randomly initialised network of this architecture instead of weights.
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,

    /// Stem width of the random network (64 = standard; SwAV's RN50-w2 is 128).
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub width: u32,

    /// Method to time.
    #[arg(long, value_enum, default_value = "lafam")]
    pub method: Method,

    /// LRP rule set for `--method lrp` (see `run --help`).
    #[arg(long, default_value = "epsilon-plus-flat", value_name = "RULE")]
    pub rule: crate::explain::Composite,

    /// Compute backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,

    /// Side of the square random input images, in pixels.
    #[arg(long, default_value_t = 224, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub size: u32,

    /// Batch sizes to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8", value_name = "N,...", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: Vec<u32>,

    /// Timed iterations per batch size (the median is reported).
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,

    /// Untimed warm-up iterations per batch size (pipeline compilation, buffer pools).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub warmup: u32,

    /// Residual stage explained: layer1..layer4.
    #[arg(long, default_value = "layer4", value_name = "LAYER")]
    pub layer: Stage,

    /// Upsampling of the map to the image.
    #[arg(long, default_value = "nearest", value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(Upsample::NAMES), |s| s.parse::<Upsample>().unwrap()))]
    pub upsample: Upsample,

    /// RELAX: masks per image (`--method relax`; img/s then counts explained images).
    #[arg(long, default_value_t = 3000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub masks: u32,

    /// RELAX: masks per forward pass.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub mask_batch: u32,

    /// Seed of the random weights and images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// One JSON line per batch size instead of text.
    #[arg(long)]
    pub json: bool,

    /// Also report the slowest kernels (device time per batch from GPU timestamp queries).
    #[arg(long)]
    pub profile: bool,

    /// Also list every pass of one timed batch in recording order with its device time, to see
    /// which layer's kernel is slow (e.g. a transposed conv against its layer's forward).
    #[arg(long)]
    pub trace: bool,

    /// Skip measuring the backend's GEMM peak (used for the fraction-of-peak column).
    #[arg(long)]
    pub no_peak: bool,
}

/// What one timing run measures.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub method: Method,
    pub size: usize,
    pub batches: Vec<usize>,
    pub iters: usize,
    pub warmup: usize,
    pub stage: Stage,
    pub upsample: Upsample,
    pub seed: u64,
    /// Masks and mask batch for `--method relax` (its seed is `seed`).
    pub relax: RelaxConfig,
    /// The backend's measured GEMM throughput, for the fraction-of-peak figure.
    pub gemm_peak: Option<GemmPeak>,
}

/// The backend's GEMM throughput measured with this crate's own conv kernel as a plain
/// n x n x n GEMM (a 1x1 conv): the practical peak the network's convs are compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmPeak {
    pub n: usize,
    pub gflops: f64,
    /// Whether the time is device time (GPU timestamps) rather than wall clock.
    pub device_timed: bool,
}

/// Times a square GEMM (a 1x1 conv over an n x 1 "image" of n channels into n channels),
/// doubling n from 256 until one run takes 50 ms or n reaches 4096; the median of 5 runs at
/// that size. Device time where the backend has timestamps, else wall clock with the
/// (small next to the GEMM) download.
pub fn measure_gemm_peak<B: Backend>(b: &mut B) -> Result<GemmPeak> {
    let mut n = 256usize;
    loop {
        let layer = ConvLayer {
            name: format!("gemm {n}"),
            cin: n,
            cout: n,
            kh: 1,
            kw: 1,
            stride: 1,
            pad: 0,
            weight: (0..n * n)
                .map(|i| ((i * 7919) % 61) as f32 * 1e-3 - 0.03)
                .collect(),
            bias: vec![0.0; n],
        };
        let conv = b.prepare_conv(&layer)?;
        let x = HostTensor::new(
            Shape::new(1, n, 1, n),
            (0..n * n)
                .map(|i| ((i * 104729) % 53) as f32 * 1e-2 - 0.26)
                .collect(),
        );
        let x = b.upload(&x)?;
        let once = |b: &mut B| -> Result<(f64, bool)> {
            let timed = b.start_kernel_timing();
            let t = Instant::now();
            let y = b.conv2d(&x, &conv, None, false)?;
            std::hint::black_box(b.download(&y)?);
            let wall = t.elapsed().as_secs_f64();
            Ok(match b.stop_kernel_timing()? {
                Some(k) if timed && k.total_ns() > 0.0 => (k.total_ns() * 1e-9, true),
                _ => (wall, false),
            })
        };
        once(b)?; // warm-up
        let (first, _) = once(b)?;
        if first < 0.05 && n < 4096 {
            n *= 2;
            continue;
        }
        let runs: Vec<(f64, bool)> = (0..5).map(|_| once(b)).collect::<Result<_>>()?;
        let mut times: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let t = median(&mut times);
        return Ok(GemmPeak {
            n,
            gflops: 2.0 * (n * n * n) as f64 / t / 1e9,
            device_timed: runs.iter().all(|r| r.1),
        });
    }
}

/// One batch size's result.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub method: Method,
    /// "gpu" or "cpu".
    pub backend: String,
    /// The backend's own description (adapter name).
    pub adapter: String,
    pub arch: String,
    pub layer: Stage,
    pub size: usize,
    pub batch: usize,
    pub iters: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub img_per_s: f64,
    pub ms_per_img: f64,
    /// Achieved forward-pass GFLOP/s: 2 * MACs per image * batch / median time.
    pub gflops: f64,
    /// Peak device memory of tensors per image (MiB), where the backend tracks it.
    pub peak_mib_per_img: Option<f64>,
    /// Device memory of the prepared weights (MiB), where tracked.
    pub weights_mib: Option<f64>,
    /// Median device time per batch (sum of the kernels' GPU timestamps), where available.
    pub device_ms: Option<f64>,
    /// GFLOP/s over device time where measured, else over wall time.
    pub kernel_gflops: f64,
    /// The backend's GEMM peak and `kernel_gflops` as a fraction of it.
    pub gemm_peak: Option<GemmPeak>,
    /// Device time per batch by kernel: (kernel, passes per batch, ms per batch), slowest
    /// first, where timestamps are available.
    pub kernels: Vec<(String, f64, f64)>,
    /// Every pass of the first timed batch in order: (kernel, ms), where timestamps are
    /// available.
    pub passes: Vec<(String, f64)>,
}

impl BenchResult {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "method": self.method.to_string(),
            "backend": self.backend,
            "adapter": self.adapter,
            "arch": self.arch,
            "layer": self.layer.to_string(),
            "size": self.size,
            "batch": self.batch,
            "iters": self.iters,
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "img_per_s": self.img_per_s,
            "ms_per_img": self.ms_per_img,
            "gflops": self.gflops,
            "peak_mib_per_img": self.peak_mib_per_img,
            "weights_mib": self.weights_mib,
            "device_ms": self.device_ms,
            "kernel_gflops": self.kernel_gflops,
            "gemm_peak_gflops": self.gemm_peak.map(|p| p.gflops),
            "gemm_peak_n": self.gemm_peak.map(|p| p.n),
            "fraction_of_gemm_peak": self.fraction_of_peak(),
            "kernels": self.kernels.iter().map(|(k, n, ms)| serde_json::json!({
                "kernel": k, "passes": n, "ms": ms,
            })).collect::<Vec<_>>(),
        })
    }

    /// `kernel_gflops` over the measured GEMM peak.
    pub fn fraction_of_peak(&self) -> Option<f64> {
        self.gemm_peak.map(|p| self.kernel_gflops / p.gflops)
    }
    pub fn to_text(&self) -> String {
        format!(
            "{} {} [{}] {} {}x{} {} batch {:>3}: median {:.2} ms/batch (min {:.2}), {:.1} img/s, {:.3} ms/img, {:.1} GFLOP/s ({} iters)",
            self.method, self.backend, self.adapter, self.arch, self.size, self.size, self.layer, self.batch,
            self.median_ms, self.min_ms, self.img_per_s, self.ms_per_img, self.gflops, self.iters
        ) + &match (self.peak_mib_per_img, self.weights_mib) {
            (Some(p), Some(w)) => format!(", peak {p:.1} MiB/img + {w:.1} MiB weights"),
            _ => String::new(),
        } + &match self.device_ms {
            Some(d) => format!(", device {d:.2} ms/batch ({:.1} GFLOP/s)", self.kernel_gflops),
            None => String::new(),
        } + &match (self.gemm_peak, self.fraction_of_peak()) {
            (Some(p), Some(f)) => format!(
                ", {:.0}% of the {:.1} GFLOP/s GEMM peak",
                100.0 * f,
                p.gflops
            ),
            _ => String::new(),
        }
    }

    /// Every pass of one timed batch, one line each: index, device time, kernel.
    pub fn passes_text(&self) -> String {
        self.passes
            .iter()
            .enumerate()
            .map(|(i, (k, ms))| format!("  pass {i:4} {ms:9.3} ms  {k}\n"))
            .collect()
    }

    /// The slowest `n` kernels, one line each.
    pub fn kernels_text(&self, n: usize) -> String {
        let total: f64 = self.kernels.iter().map(|k| k.2).sum();
        self.kernels
            .iter()
            .take(n)
            .map(|(k, passes, ms)| {
                format!(
                    "  {ms:9.3} ms/batch {:5.1}% {passes:7.1} passes  {k}\n",
                    100.0 * ms / total.max(f64::MIN_POSITIVE)
                )
            })
            .collect()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Times `explainer`'s method end to end (upload of RGB8 images to the maps downloaded at
/// image size) on random `size`x`size` images: `warmup` untimed then `iters` timed calls per
/// batch size. `backend_kind` is "gpu" or "cpu" for the report.
pub fn run_bench<B: CamBackend, L: LrpState<B::Conv>>(
    explainer: &mut Engine<B, L>,
    backend_kind: &str,
    cfg: &BenchConfig,
    mut on_result: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>> {
    ensure!(cfg.iters > 0, "--iters must be at least 1");
    ensure!(cfg.size > 0 && !cfg.batches.is_empty(), "nothing to time");
    let max_batch = *cfg.batches.iter().max().expect("non-empty");
    let per = cfg.size * cfg.size * 3;
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x5eed_1a6e);
    let rgb: Vec<u8> = (0..per * max_batch).map(|_| rng.random()).collect();
    // Forward-pass MACs per explained image: Grad-CAM runs to layer4, RELAX runs one forward
    // pass per mask plus the unmasked one.
    let spec = &explainer.spec;
    let macs = match cfg.method.info().needs {
        Needs::GradientTape => spec.macs_per_image(cfg.size, cfg.size, Stage::Layer4),
        Needs::OwnPasses => {
            (cfg.relax.masks + 1) * spec.macs_per_image(cfg.size, cfg.size, Stage::Layer4)
        }
        // Concepts (8 by default, concept layer = stage): one forward and the denominators
        // once, the transposed convs (about half the backward) once per condition.
        Needs::LrpTape if cfg.method == Method::Concepts => {
            let fwd = spec.macs_per_image(cfg.size, cfg.size, cfg.stage);
            let lrp = spec.lrp_macs_per_image(cfg.size, cfg.size, cfg.stage);
            let k = crate::explain::ConceptConfig::default().top;
            lrp + (k - 1) * (lrp - fwd) / 2
        }
        Needs::LrpTape => spec.lrp_macs_per_image(cfg.size, cfg.size, cfg.stage),
        Needs::Activations => spec.macs_per_image(cfg.size, cfg.size, cfg.stage),
    } as f64;
    let request = Request {
        methods: vec![cfg.method],
        stage: cfg.stage,
        upsample: cfg.upsample,
        class: None,
        relax: cfg.relax,
        concepts: Default::default(),
    };
    let adapter = explainer.backend.name();
    let arch = explainer.spec.arch_name();
    let mut results = Vec::new();
    for &batch in &cfg.batches {
        let images = ImageBatch::new(&rgb[..per * batch], batch, cfg.size, cfg.size)?;
        let out_sizes = vec![(cfg.size, cfg.size); batch];
        // (wall seconds, device time by kernel when `timed` and the backend has timestamps)
        let once = |ex: &mut Engine<B, L>, timed: bool| -> Result<(f64, Option<KernelTimes>)> {
            let timed = timed && ex.backend.start_kernel_timing();
            let t = Instant::now();
            let mut out = ex.explain(images, &request, &out_sizes)?;
            let maps = std::mem::take(&mut out[0].maps);
            let dt = t.elapsed().as_secs_f64();
            ensure!(
                maps.len() == batch,
                "{} maps for a batch of {batch}",
                maps.len()
            );
            std::hint::black_box(&maps);
            let kernels = ex.backend.stop_kernel_timing()?.filter(|_| timed);
            Ok((dt, kernels))
        };
        for _ in 0..cfg.warmup {
            once(explainer, false)?;
        }
        explainer.backend.reset_peak_memory();
        // Wall time untimed (timestamps split the recording into one pass per dispatch),
        // then up to 3 runs with timestamps for the device time and the kernels.
        let runs: Vec<(f64, Option<KernelTimes>)> = (0..cfg.iters)
            .map(|_| once(explainer, false))
            .collect::<Result<_>>()?;
        let mut times: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let profiled: Vec<(f64, Option<KernelTimes>)> = (0..cfg.iters.min(3))
            .map(|_| once(explainer, true))
            .collect::<Result<_>>()?;
        let device: Option<Vec<&KernelTimes>> = profiled.iter().map(|r| r.1.as_ref()).collect();
        let passes = device.as_ref().map_or(Vec::new(), |k| {
            k[0].sequence
                .iter()
                .map(|(name, ns)| (name.clone(), ns * 1e-6))
                .collect()
        });
        let (device_ms, kernels) = match device {
            Some(k) => {
                let mut totals: Vec<f64> = k.iter().map(|k| k.total_ns() * 1e-6).collect();
                let mut sum = KernelTimes::default();
                for t in &k {
                    sum.merge(t);
                }
                let per = k.len() as f64;
                let kernels = sum
                    .by_time()
                    .into_iter()
                    .map(|(name, n, ns)| (name.to_string(), n as f64 / per, ns * 1e-6 / per))
                    .collect();
                (Some(median(&mut totals)), kernels)
            }
            None => (None, Vec::new()),
        };
        let memory = explainer.backend.memory();
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let med = median(&mut times);
        let flop = 2.0 * macs * batch as f64;
        let kernel_s = device_ms.map_or(med, |d| d * 1e-3);
        let r = BenchResult {
            method: cfg.method,
            backend: backend_kind.to_string(),
            adapter: adapter.clone(),
            arch: arch.clone(),
            layer: cfg.stage,
            size: cfg.size,
            batch,
            iters: cfg.iters,
            median_ms: med * 1e3,
            min_ms: min * 1e3,
            img_per_s: batch as f64 / med,
            ms_per_img: med * 1e3 / batch as f64,
            gflops: flop / med / 1e9,
            kernel_gflops: flop / kernel_s / 1e9,
            device_ms,
            gemm_peak: cfg.gemm_peak,
            kernels,
            passes,
            peak_mib_per_img: memory.map(|m| mib(m.peak_tensors) / batch as f64),
            weights_mib: memory.map(|m| mib(m.weights)),
        };
        on_result(&r);
        results.push(r);
    }
    Ok(results)
}

/// The `bench` command: builds the network (weights or random), opens the backend, times.
pub fn bench(args: &BenchArgs) -> Result<u8> {
    bench_results(args).map(|_| EXIT_OK)
}

/// [`bench`] returning the results (printed as they come, text or JSON lines on stdout).
pub fn bench_results(args: &BenchArgs) -> Result<Vec<BenchResult>> {
    // A usage error before anything is loaded or allocated.
    if let Err(e) = crate::io::check_net_input(args.size, args.size) {
        anyhow::bail!(
            "--size {}: {e}; use --size {} or smaller",
            args.size,
            crate::io::max_net_size(args.size, args.size).unwrap_or(1)
        );
    }
    let net = match (&args.weights, args.arch) {
        (Some(w), _) => resolve_weights(w)?.net,
        (None, Some(a)) => {
            let spec = RandomSpec::resnet(a.depth(), args.width as usize, args.seed)?;
            // Grad-CAM needs a classifier: the random network gets a 1000-class fc.
            let spec = if args.method == Method::Gradcam {
                spec.with_classes(1000)
            } else {
                spec
            };
            random_resnet(&spec)
        }
        (None, None) => anyhow::bail!("give --weights FILE or --arch NAME"),
    };
    let (backend, note) = open_backend(args.backend)?;
    match &note {
        Some(n) => eprintln!("backend: {} ({n})", backend.describe()),
        None => eprintln!("backend: {}", backend.describe()),
    }
    let cfg = BenchConfig {
        method: args.method,
        size: args.size as usize,
        batches: args.batch.iter().map(|&b| b as usize).collect(),
        iters: args.iters as usize,
        warmup: args.warmup as usize,
        stage: args.layer,
        upsample: args.upsample,
        seed: args.seed,
        relax: RelaxConfig {
            masks: args.masks as usize,
            batch: args.mask_batch as usize,
            seed: args.seed,
        },
        gemm_peak: None,
    };
    let kind = backend.kind();
    let json = args.json;
    let profile = args.profile;
    let trace = args.trace;
    let print = |r: &BenchResult| {
        if json {
            let mut line = r.to_json();
            if trace {
                line["passes"] = serde_json::json!(r.passes);
            }
            println!("{line}");
        } else {
            println!("{}", r.to_text());
            if profile && !r.kernels.is_empty() {
                print!("{}", r.kernels_text(12));
            }
            if trace && !r.passes.is_empty() {
                print!("{}", r.passes_text());
            }
        }
    };
    crate::with_backend!(backend, b => {
        let mut b = b;
        let mut cfg = cfg;
        if !args.no_peak {
            let p = measure_gemm_peak(&mut b)?;
            eprintln!(
                "GEMM peak: {:.1} GFLOP/s ({n}x{n}x{n} through the conv kernel, {})",
                p.gflops,
                if p.device_timed { "device time" } else { "wall clock" },
                n = p.n
            );
            cfg.gemm_peak = Some(p);
        }
        let ex = Engine::new(b, &net)?;
        if args.method.info().needs == Needs::LrpTape {
            run_bench(&mut ex.with_lrp(args.rule)?, kind, &cfg, print)
        } else {
            let mut ex = ex;
            run_bench(&mut ex, kind, &cfg, print)
        }
    })
}
