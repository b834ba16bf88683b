//! Command-line interface: `run`, `info`, `bench`, `eval`, `atlas`, `convert`, `serve` (clap derive). `main.rs` only calls
//! [`main`].
//!
//! Exit codes: 0 success; 1 some inputs failed (the others were processed); 2 usage error or
//! a fatal error (weights, backend, output directory), in which case nothing is written.

mod atlas;
mod atlas_page;
mod bench;
mod convert;
mod eval;
mod faith;
mod info;
mod plot;
mod run;
mod serve;

use crate::checkpoint::Resolving;
use crate::device::BackendChoice;
use crate::explain::Method;
use crate::io::Shown;
use crate::model::LoadedWeights;
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

pub const EXIT_OK: u8 = 0;
/// Some inputs failed; the others were processed.
pub const EXIT_FAILED: u8 = 1;
/// Usage error or fatal error.
pub const EXIT_FATAL: u8 = 2;

// The registry's methods and the backend choice as clap values (their names and help come
// from the library).
impl clap::ValueEnum for Method {
    fn value_variants<'a>() -> &'a [Self] {
        Method::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let info = self.info();
        Some(clap::builder::PossibleValue::new(info.name).help(info.about))
    }
}

impl clap::ValueEnum for BackendChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &BackendChoice::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            BackendChoice::Auto => {
                "a hardware GPU if wgpu finds one, otherwise the CPU (the choice and why are \
                 printed); software GPUs are only used when named through WGPU_ADAPTER_NAME"
            }
            BackendChoice::Gpu => {
                "the GPU through wgpu (Vulkan, Metal, DX12), software adapters included; an \
                 error if there is no adapter"
            }
            BackendChoice::Cpu => "the CPU backend (multi-threaded; the reference implementation)",
        };
        Some(clap::builder::PossibleValue::new(self.name()).help(help))
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "lafam-gpu",
    version,
    about = "Label-free feature attribution maps (LaFAM) for ResNet backbones, on any GPU via wgpu",
    long_about = "Label-free feature attribution maps (LaFAM) for ResNet backbones (SwAV, SimCLR, MoCo, \
torchvision; safetensors or PyTorch weights, or a known model name such as `swav`, downloaded once), computed on any GPU that wgpu drives (Vulkan, Metal, DX12) or on the CPU.\n\n\
Exit codes: 0 success, 1 some inputs failed (the others were processed), 2 usage or fatal error.\n\
The GPU adapter can be chosen with the WGPU_BACKEND and WGPU_ADAPTER_NAME environment variables, \
the forward conv's output tile with LAFAM_GPU_TILES=auto|64|128 (default auto)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Where models named by `--weights NAME` are downloaded and kept (default:
    /// $LAFAM_GPU_CACHE, else $XDG_CACHE_HOME/lafam-gpu, else ~/.cache/lafam-gpu).
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compute attribution maps for images or directories of images and write them as .npy
    /// arrays, heatmaps and overlays.
    Run(run::RunArgs),
    /// Show what a weights file holds (architecture, widths, parameters, heads) and the
    /// compute device that would run it.
    Info(info::InfoArgs),
    /// Time a method end to end on random images (median ms/batch, img/s, GFLOP/s).
    Bench(bench::BenchArgs),
    /// Score attribution maps against segmentation masks (pointing game, top-k intersection,
    /// relevance mass/rank accuracy, AUC, sparseness; Quantus 0.6.0 semantics): existing maps
    /// (--maps/--masks), or computed over a dataset (--weights --dataset voc|imagenet-s|folder).
    Eval(Box<eval::EvalArgs>),
    /// What each channel of a layer responds to over a dataset (CRP's reference samples):
    /// per channel the top samples by activation and by relevance, their receptive-field
    /// crops and conditional maps, atlas.json and a static index.html.
    Atlas(Box<atlas::AtlasArgs>),
    /// Convert a PyTorch checkpoint (.pth/.pth.tar; zip or legacy format) to safetensors,
    /// without Python. Non-tensor entries (epoch, optimizer, args) are dropped.
    Convert(convert::ConvertArgs),
    /// A local web viewer: open or drop images, see every method's maps side by side over
    /// the image, change layer, rule or upsampling on the warm engine, click a point for
    /// its top channels and their conditional maps, download any map. Listens on
    /// 127.0.0.1 unless --host says otherwise.
    Serve(Box<serve::ServeArgs>),
}

/// `--cache-dir` of the current invocation (set by [`main_from`]).
static CACHE_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Resolves `--weights` ([`crate::checkpoint::resolve_weights`]), telling the user about
/// downloads (with a progress bar) and the converter's notes on stderr.
pub(crate) fn resolve_weights(arg: &Path) -> Result<LoadedWeights> {
    let flag = CACHE_DIR.lock().map(|g| g.clone()).unwrap_or(None);
    let mut bar: Option<indicatif::ProgressBar> = None;
    crate::checkpoint::resolve_weights(arg, flag.as_deref(), &mut |event| match event {
        Resolving::Downloading { model, to } => {
            eprintln!("{}", crate::checkpoint::download_notice(model, to))
        }
        Resolving::Progress { done, total } => {
            let bar = bar.get_or_insert_with(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "  {bytes}/{total_bytes} {bar:30} {bytes_per_sec} eta {eta}",
                    )
                    .expect("template"),
                );
                bar
            });
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_position(done);
        }
        Resolving::TransferEnded => {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
        }
        Resolving::Downloaded { path, bytes } => {
            eprintln!("downloaded {bytes} bytes to {}", path.shown())
        }
        Resolving::Note { path, note } => eprintln!("note: {}: {note}", path.shown()),
    })
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Parses `args` (the first is the program name) and runs the command. Never panics: a
/// panic is reported as an internal error with exit code 2.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(if code == 0 { EXIT_OK } else { EXIT_FATAL });
        }
    };
    if let Ok(mut g) = CACHE_DIR.lock() {
        *g = cli.cache_dir.clone();
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (a bug; please report it): {info}");
    }));
    let result = std::panic::catch_unwind(|| match &cli.command {
        Command::Run(a) => run::run(a),
        Command::Info(a) => info::info(a),
        Command::Bench(a) => bench::bench(a),
        Command::Eval(a) => eval::eval(a),
        Command::Atlas(a) => atlas::atlas(a),
        Command::Convert(a) => convert::convert(a),
        Command::Serve(a) => serve::serve(a),
    });
    std::panic::set_hook(default_hook);
    ExitCode::from(match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            EXIT_FATAL
        }
        Err(_) => EXIT_FATAL,
    })
}
