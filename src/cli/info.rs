//! `lafam-gpu info`: what the weights file holds and which device would run it.

use crate::device::{open_backend, BackendChoice};
use super::{resolve_weights, EXIT_OK};
use crate::io::Shown;
use crate::model::BlockKind;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Backbone weights (safetensors) to inspect. Without it, only the device is shown.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Which backend to describe (auto: the one `run` would choose).
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendChoice,
}

/// 11176512 -> "11,176,512".
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

pub fn info(args: &InfoArgs) -> Result<u8> {
    if let Some(path) = &args.weights {
        let lw = resolve_weights(path)?;
        let net = &lw.net;
        let kind = match net.kind {
            BlockKind::Basic => "basic blocks",
            BlockKind::Bottleneck => "bottleneck blocks",
        };
        println!("weights:           {}", lw.source.shown());
        println!("architecture:      {} ({kind})", net.arch_name());
        println!("blocks per stage:  {:?}", net.blocks_per_stage());
        println!("stem channels:     {}", net.stem.cout);
        println!("stage channels:    {:?}", net.stage_channels());
        println!(
            "parameters:        {} (BatchNorm folded{})",
            thousands(net.parameter_count()),
            if net.heads.fc.is_some() {
                ", fc included"
            } else {
                ""
            }
        );
        let mut heads = Vec::new();
        if let Some((_, _, classes)) = &net.heads.fc {
            heads.push(format!("fc ({classes} classes)"));
        }
        heads.extend(net.heads.ignored.iter().map(|h| format!("{h} (ignored)")));
        println!("heads:             {}", list(&heads));
        println!("prefixes stripped: {}", list(&lw.prefixes));
        println!("dtypes:            {}", list(&lw.dtypes));
        println!("bn eps:            {:e}", lw.bn_eps);
    }
    // Every adapter wgpu finds, best first, and whether `auto` would take it.
    for (i, a) in crate::gpu::adapters(&crate::gpu::GpuOptions::default())
        .iter()
        .enumerate()
    {
        let kind = match (a.device_type, a.backend) {
            (_, wgpu::Backend::Gl) => "GL: refused",
            (wgpu::DeviceType::Cpu, _) => "software: --backend gpu only",
            _ => "hardware",
        };
        let label = if i == 0 { "adapters:" } else { "" };
        println!(
            "{label:<19}{} ({:?}, {:?}; {kind})",
            a.name, a.backend, a.device_type
        );
    }
    match open_backend(args.backend) {
        Ok((backend, note)) => {
            match note {
                Some(n) => println!("backend:           {} ({n})", backend.describe()),
                None => println!("backend:           {}", backend.describe()),
            }
            for (k, v) in backend.limits() {
                println!("  {k}: {v}");
            }
        }
        Err(e) => return Err(e),
    }
    Ok(EXIT_OK)
}
