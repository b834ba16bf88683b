//! `lafam-gpu convert IN.pth[.tar] OUT.safetensors`: PyTorch checkpoint -> safetensors,
//! without Python (see [`crate::checkpoint`]).

use super::EXIT_OK;
use crate::checkpoint::{convert_bytes, dtype_counts, Format};
use crate::io::output::write_atomic;
use crate::io::Shown;
use crate::model::load::load_weights_from_bytes;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// PyTorch checkpoint (.pth / .pth.tar / .pt): zip (torch >= 1.6) or legacy format.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// safetensors file to write (atomically: a reader never sees a partial file).
    #[arg(value_name = "OUT")]
    pub output: PathBuf,
}

pub fn convert(args: &ConvertArgs) -> Result<u8> {
    let shown = args.input.shown().to_string();
    if args.input == args.output {
        bail!("{shown}: input and output are the same file");
    }
    let bytes = crate::io::files::read_regular(&args.input)
        .with_context(|| format!("{shown}: cannot read"))?;
    let (st, ck) = convert_bytes(&bytes, &shown)?;
    for n in &ck.notes {
        eprintln!("note: {shown}: {n}");
    }
    write_atomic(&args.output, |w: &mut dyn Write| {
        w.write_all(&st)?;
        Ok(())
    })?;
    let dtypes: Vec<String> = dtype_counts(&ck)
        .into_iter()
        .map(|(d, n)| format!("{n} {d}"))
        .collect();
    println!(
        "wrote {} tensors ({}) from a {} checkpoint{} to {}",
        ck.tensors.len(),
        dtypes.join(", "),
        match ck.format {
            Format::Zip => "zip-format",
            Format::Legacy => "legacy-format",
        },
        if ck.path.is_empty() {
            String::new()
        } else {
            format!(" (under '{}')", ck.path.join("."))
        },
        args.output.shown()
    );
    match load_weights_from_bytes(&st, &args.output) {
        Ok(lw) => println!(
            "loads as {} ({} prefixes stripped: {})",
            lw.net.arch_name(),
            lw.prefixes.len(),
            if lw.prefixes.is_empty() {
                "none".to_string()
            } else {
                lw.prefixes.join("")
            }
        ),
        Err(e) => {
            eprintln!("warning: the converted file does not load as a ResNet backbone: {e:#}")
        }
    }
    Ok(EXIT_OK)
}
