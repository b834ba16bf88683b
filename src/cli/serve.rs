//! `lafam-gpu serve`: the local web viewer ([`crate::serve`]): argument parsing and start-up.

use super::resolve_weights;
use super::run::MapArgs;
use crate::serve::{ServeConfig, Server};
use anyhow::Result;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Backbone weights: a safetensors or PyTorch file, or a known model name (as for `run`).
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,

    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub port: u16,

    /// Address to listen on. The default, 127.0.0.1, is reachable from this machine only;
    /// 0.0.0.0 makes the viewer (and the --folder and --atlas files) reachable by anyone
    /// on the network.
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub host: String,

    /// A directory of images the page offers to pick from (not recursive; nothing outside
    /// it is served).
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,

    /// A directory written by `lafam-gpu atlas`: clicking a point links each top channel's
    /// crops there (crops/<stem>.c<C>.y<Y>x<X>.png) and the atlas's index.html.
    #[arg(long, value_name = "DIR")]
    pub atlas: Option<PathBuf>,

    /// The largest upload accepted, in MiB (larger ones get HTTP 413).
    #[arg(long, default_value_t = 32, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_upload: u32,

    /// RELAX: random occlusion masks per image (fewer than `run`'s 3000, for a responsive page).
    #[arg(long, default_value_t = 500, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub masks: u32,

    /// The page's defaults (--method: the methods ticked when it opens; --layer, --rule,
    /// --upsample, --size: the settings it starts with) and the backend.
    #[command(flatten)]
    pub map: MapArgs,
}

pub(crate) fn serve(args: &ServeArgs) -> Result<u8> {
    let weights = resolve_weights(&args.weights)?;
    let explainer = args.map.open(&weights, &args.weights, args.masks)?;
    drop(weights);
    let name = args
        .weights
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| args.weights.to_string_lossy().into_owned());
    let server = Server::bind(
        explainer,
        ServeConfig {
            host: args.host.clone(),
            port: args.port,
            folder: args.folder.clone(),
            atlas: args.atlas.clone(),
            max_upload: args.max_upload as usize * 1024 * 1024,
            weights: name,
            methods: args.map.methods(),
        },
    )?;
    let addr = server.address();
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    println!("serving http://{host}:{}/ (Ctrl-C stops)", addr.port());
    let _ = std::io::stdout().flush();
    server.run();
    Ok(super::EXIT_OK)
}
