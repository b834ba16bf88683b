//! Command-line interface: `run`, `info`, `bench`, `eval` (clap derive). `main.rs` only calls
//! [`main`].
//!
//! Exit codes: 0 success; 1 some inputs failed (the others were processed); 2 usage error or
//! a fatal error (weights, backend, output directory), in which case nothing is written.

pub mod backends;
pub mod bench;
pub mod eval;
pub mod info;
pub mod run;

use crate::model::{load_weights, LoadedWeights};
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::process::ExitCode;

pub const EXIT_OK: u8 = 0;
/// Some inputs failed; the others were processed.
pub const EXIT_FAILED: u8 = 1;
/// Usage error or fatal error.
pub const EXIT_FATAL: u8 = 2;

/// An attribution method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Method {
    /// LaFAM: channel mean of the layer's activations, min-max normalised, upsampled.
    Lafam,
    /// LaFAM-LRP: relevance propagation seeded with the layer's activations, traced back to
    /// the input pixels (summed over RGB).
    Lrp,
    /// Grad-CAM (needs a linear classifier `fc`): gradient-weighted channel sum of the layer's
    /// activations for the target class, as pytorch-grad-cam.
    Gradcam,
    /// EigenCAM: the layer's activations projected on their first principal component.
    Eigencam,
    /// RELAX: occlusion with random masks, cosine similarity of pooled layer4 embeddings;
    /// also writes `<stem>.relax-uncertainty.npy/.png`.
    Relax,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Lafam => "lafam",
            Method::Lrp => "lrp",
            Method::Gradcam => "gradcam",
            Method::Eigencam => "eigencam",
            Method::Relax => "relax",
        })
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "lafam-gpu",
    version,
    about = "Label-free feature attribution maps (LaFAM) for ResNet backbones, on any GPU via wgpu",
    long_about = "Label-free feature attribution maps (LaFAM) for ResNet backbones (SwAV, SimCLR, MoCo, \
torchvision; safetensors weights), computed on any GPU that wgpu drives (Vulkan, Metal, DX12) or on the CPU.\n\n\
Exit codes: 0 success, 1 some inputs failed (the others were processed), 2 usage or fatal error.\n\
The GPU adapter can be chosen with the WGPU_BACKEND and WGPU_ADAPTER_NAME environment variables."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
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
}

/// Loads weights; the error names the file (the loader's message is kept as is when it
/// already does).
pub fn load_weights_or_explain(path: &Path) -> Result<LoadedWeights> {
    load_weights(path).map_err(|e| {
        let shown = path.display().to_string();
        if format!("{e:#}").contains(&shown) {
            e
        } else {
            e.context(format!("{shown}: cannot load weights"))
        }
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
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error (a bug; please report it): {info}");
    }));
    let result = std::panic::catch_unwind(|| match &cli.command {
        Command::Run(a) => run::run(a),
        Command::Info(a) => info::info(a),
        Command::Bench(a) => bench::bench(a),
        Command::Eval(a) => eval::eval(a),
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
