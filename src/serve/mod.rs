//! `lafam-gpu serve`: a local web viewer over one warm [`Explainer`].
//!
//! A synchronous HTTP server (`tiny_http`) with a few worker threads; the explainer sits
//! behind one mutex, so concurrent explain requests are queued and run one at a time on the
//! warm engine while static files and cached results are served meanwhile. The page
//! (`page.html`) is embedded in the binary and loads nothing from elsewhere.
//!
//! Routes:
//! - `GET /`: the page.
//! - `GET /api/info`: weights, backend, methods, layers, rules, defaults, limits.
//! - `POST /api/explain?methods=lafam,lrp&layer=layer4&rule=...&upsample=...&size=...&name=...`:
//!   the body is the image file's bytes; the answer is JSON with, per map, its size, value
//!   range and a base64 PNG, and the URLs of its downloads.
//! - `POST /api/point?id=ID&x=X&y=Y[&top=K][&concepts=N]`: the top channels of the explained
//!   stage at pixel (x, y) of result ID's image, and the conditional (CRP) maps of the first N.
//! - `GET /api/result/ID/image.png`, `.../NAME.npy`, `.../NAME.png`, `.../NAME.overlay.png`:
//!   a recent result's image and maps (the last [`KEEP_RESULTS`] are kept).
//! - `GET /api/folder` and `GET /folder/NAME`: the `--folder`'s images.
//! - `GET /api/atlas?channel=C` and `GET /atlas/PATH`: the `--atlas` directory's files.
//!
//! Errors are JSON `{"error": "<one line>"}` with a 4xx status for anything the request got
//! wrong (a bad upload gets the CLI's message for the same file); no path outside the given
//! directories is ever served ([`resolve_under`]).

use crate::explain::{ConceptConfig, Method};
use crate::explainer::{Explainer, Options};
use crate::io::colormap::{display_scale, finite_range, render_map_styled, Colormap, Display};
use crate::io::output::{encode_npy_f32, encode_png_with_text};
use crate::io::{Shown, Style};
use crate::model::Stage;
use crate::{Composite, HostTensor, Upsample};
use anyhow::{Context, Result};
use base64::Engine as _;
use image::RgbImage;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What is percent-encoded in URLs made from file names (all but `A-Za-z0-9-._~`).
const FILE_NAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The page, embedded.
pub const PAGE: &str = include_str!("page.html");

/// How many explain results are kept for downloads and clicks.
pub const KEEP_RESULTS: usize = 8;

/// Worker threads answering requests.
pub const WORKERS: usize = 4;

/// The largest network input the viewer accepts (`size` query parameter).
pub const MAX_SIZE: u32 = 1024;

/// What `serve` was started with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    /// 0: any free port (the bound one is in [`Server::address`]).
    pub port: u16,
    /// Images offered in the page (`--folder`).
    pub folder: Option<PathBuf>,
    /// An atlas directory (`lafam-gpu atlas --out DIR`) whose crops are linked.
    pub atlas: Option<PathBuf>,
    /// The largest upload in bytes.
    pub max_upload: usize,
    /// The weights' name shown in the page and figures.
    pub weights: String,
    /// The methods selected when the page opens.
    pub methods: Vec<Method>,
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    http: Arc<tiny_http::Server>,
    state: Arc<State>,
    address: std::net::SocketAddr,
}

struct Entry {
    id: u64,
    name: String,
    image: RgbImage,
    options: Options,
    maps: Vec<MapEntry>,
    /// The explained stage's activations, computed on the first click.
    activations: Mutex<Option<HostTensor>>,
}

struct MapEntry {
    name: String,
    method: Method,
    data: Vec<f32>,
    h: usize,
    w: usize,
}

struct State {
    engine: Mutex<Explainer>,
    base: Options,
    config: ServeConfig,
    folder: Option<PathBuf>,
    atlas: Option<PathBuf>,
    results: Mutex<VecDeque<Arc<Entry>>>,
    next_id: AtomicU64,
    backend: String,
}

/// An HTTP answer.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// `Content-Disposition: attachment; filename=...` for downloads.
    download: Option<String>,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(v).expect("JSON of strings and numbers"),
            download: None,
        }
    }
    fn ok(v: Value) -> Reply {
        Reply::json(200, &v)
    }
    fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
        let line = crate::io::escape_controls(&msg.to_string()).into_owned();
        Reply::json(status, &json!({ "error": line }))
    }
    fn bytes(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            content_type,
            body,
            download: None,
        }
    }
}

/// A request's problem, answered with a 4xx status.
struct Bad(u16, String);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Server {
    /// Binds `config.host:config.port` (port 0: a free one) over an opened explainer, whose
    /// options are the page's defaults.
    pub fn bind(explainer: Explainer, config: ServeConfig) -> Result<Server> {
        let canon = |d: &Option<PathBuf>, flag: &str| -> Result<Option<PathBuf>> {
            d.as_ref()
                .map(|d| {
                    let c = d
                        .canonicalize()
                        .with_context(|| format!("{flag} {}: cannot open", d.shown()))?;
                    anyhow::ensure!(c.is_dir(), "{flag} {}: not a directory", d.shown());
                    Ok(c)
                })
                .transpose()
        };
        let folder = canon(&config.folder, "--folder")?;
        let atlas = canon(&config.atlas, "--atlas")?;
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let address = listener.local_addr()?;
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| anyhow::anyhow!("cannot start the HTTP server: {e}"))?;
        let backend = explainer.backend().to_string();
        let base = explainer.options().clone();
        Ok(Server {
            http: Arc::new(http),
            address,
            state: Arc::new(State {
                engine: Mutex::new(explainer),
                base,
                config,
                folder,
                atlas,
                results: Mutex::new(VecDeque::new()),
                next_id: AtomicU64::new(1),
                backend,
            }),
        })
    }

    /// The address the server listens on.
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Answers requests until the process ends.
    pub fn run(self) {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                let http = Arc::clone(&self.http);
                let state = Arc::clone(&self.state);
                std::thread::spawn(move || {
                    while let Ok(rq) = http.recv() {
                        answer(&state, rq);
                    }
                })
            })
            .collect();
        for w in workers {
            let _ = w.join();
        }
    }
}

fn answer(state: &State, mut rq: tiny_http::Request) {
    let reply =
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route(state, &mut rq))) {
            Ok(r) => r,
            Err(_) => Reply::error(500, "internal error (a bug; please report it)"),
        };
    let mut resp = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).ok();
    for h in [
        header("Content-Type", reply.content_type),
        header("X-Content-Type-Options", "nosniff"),
        header("Cache-Control", "no-store"),
        header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; \
             script-src 'self' 'unsafe-inline'",
        ),
    ]
    .into_iter()
    .flatten()
    {
        resp.add_header(h);
    }
    if let Some(name) = reply.download {
        if let Some(h) = header(
            "Content-Disposition",
            &format!("attachment; filename=\"{name}\""),
        ) {
            resp.add_header(h);
        }
    }
    let _ = rq.respond(resp);
}

fn route(state: &State, rq: &mut tiny_http::Request) -> Reply {
    let url = rq.url().to_string();
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (url.clone(), String::new()),
    };
    let params = parse_query(&query);
    if !host_allowed(state, rq) {
        return Reply::error(
            403,
            "this viewer answers requests addressed to its own host name only (Host header)",
        );
    }
    let get = *rq.method() == tiny_http::Method::Get || *rq.method() == tiny_http::Method::Head;
    let post = *rq.method() == tiny_http::Method::Post;
    let result: Result<Reply, Bad> = match path.as_str() {
        "/" | "/index.html" if get => Ok(Reply::bytes(
            "text/html; charset=utf-8",
            PAGE.as_bytes().to_vec(),
        )),
        "/api/info" if get => Ok(info(state)),
        "/api/explain" if post => explain(state, rq, &params),
        "/api/point" if post || get => point(state, &params),
        "/api/folder" if get => folder_list(state),
        "/api/atlas" if get => atlas_list(state, &params),
        p if get && p.starts_with("/folder/") => {
            serve_file(state.folder.as_deref(), &p["/folder/".len()..], true)
        }
        p if get && p.starts_with("/atlas/") => {
            serve_file(state.atlas.as_deref(), &p["/atlas/".len()..], false)
        }
        p if get && p.starts_with("/api/result/") => result_file(state, &p["/api/result/".len()..]),
        "/" | "/index.html" | "/api/info" | "/api/explain" | "/api/folder" | "/api/atlas" => Err(
            Bad(405, format!("{} is not allowed on {path}", rq.method())),
        ),
        _ => Err(Bad(404, "not found".to_string())),
    };
    result.unwrap_or_else(|Bad(status, msg)| Reply::error(status, msg))
}

/// Whether the request's `Host` header names this server: `localhost`, a loopback address or
/// the `--host` given. This keeps a web page the user visits from reaching the viewer
/// through a DNS name it rebinds to 127.0.0.1. A server listening on every address
/// (`--host 0.0.0.0` or `::`) is reachable by any name and accepts any.
fn host_allowed(state: &State, rq: &tiny_http::Request) -> bool {
    let listen = state.config.host.trim_matches(['[', ']']);
    if listen
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return true;
    }
    let Some(h) = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str().to_ascii_lowercase())
    else {
        return true;
    };
    // Without the port: "[::1]:8080" -> "::1", "localhost:8080" -> "localhost".
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("").to_string()
    } else {
        h.rsplit_once(':')
            .map_or(h.as_str(), |(n, _)| n)
            .to_string()
    };
    name == "localhost"
        || name.eq_ignore_ascii_case(listen)
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `a=1&b=2` percent-decoded (`+` as a space).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn info(state: &State) -> Reply {
    let methods: Vec<Value> = Method::ALL
        .iter()
        .map(|m| {
            let i = m.info();
            json!({
                "name": i.name,
                "about": i.about,
                "display": display_name(i.display),
                "default": state.config.methods.contains(m),
            })
        })
        .collect();
    let b = &state.base;
    Reply::ok(json!({
        "weights": state.config.weights,
        "backend": state.backend,
        "methods": methods,
        "layers": Stage::ALL.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "rules": Composite::ALL.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "upsample": Upsample::NAMES,
        "colormaps": Colormap::ALL.iter().map(|c| c.name()).collect::<Vec<_>>(),
        "defaults": {
            "layer": b.stage.to_string(),
            "rule": b.rule.name(),
            "upsample": b.upsample.to_string(),
            "size": b.size,
        },
        "max_upload": state.config.max_upload,
        "max_size": MAX_SIZE,
        "folder": state.folder.is_some(),
        "atlas": state.atlas.is_some(),
    }))
}

fn display_name(d: Display) -> &'static str {
    match d {
        Display::Unit => "unit",
        Display::Signed => "signed",
        Display::Scaled => "scaled",
    }
}

/// The request's options and methods from the query, over the server's defaults.
fn request_options(
    state: &State,
    params: &[(String, String)],
) -> Result<(Options, Vec<Method>, Style), Bad> {
    let mut o = state.base.clone();
    if let Some(l) = param(params, "layer") {
        o.stage = l.parse().map_err(|e| Bad(400, format!("layer: {e}")))?;
    }
    if let Some(r) = param(params, "rule") {
        o.rule = r.parse().map_err(|e| Bad(400, format!("rule: {e}")))?;
    }
    if let Some(u) = param(params, "upsample") {
        o.upsample = u.parse().map_err(|e| Bad(400, format!("upsample: {e}")))?;
    }
    if let Some(s) = param(params, "size") {
        let n: u32 = s
            .parse()
            .map_err(|_| Bad(400, format!("size: '{s}' is not a whole number")))?;
        if n > MAX_SIZE {
            return Err(Bad(
                400,
                format!("size: {n} is over the viewer's limit of {MAX_SIZE}"),
            ));
        }
        o.size = n;
    }
    let methods = match param(params, "methods") {
        Some(list) if !list.trim().is_empty() => {
            let mut v = Vec::new();
            for m in list.split(',') {
                v.push(
                    m.parse::<Method>()
                        .map_err(|e| Bad(400, format!("methods: {e}")))?,
                );
            }
            v.sort();
            v.dedup();
            v
        }
        _ => state.config.methods.clone(),
    };
    let colormap = match param(params, "colormap") {
        Some(c) => c.parse().map_err(|e| Bad(400, format!("colormap: {e}")))?,
        None => Colormap::Auto,
    };
    Ok((
        o,
        methods,
        Style {
            colormap,
            alpha: None,
        },
    ))
}

/// The upload's name for messages: the `name` parameter's last path component, else
/// "upload".
fn upload_name(params: &[(String, String)]) -> String {
    param(params, "name")
        .and_then(|n| n.rsplit(['/', '\\']).next())
        .filter(|n| !n.is_empty())
        .unwrap_or("upload")
        .to_string()
}

/// Reads the body, at most `limit` bytes (413 beyond).
fn read_body(rq: &mut tiny_http::Request, limit: usize, name: &str) -> Result<Vec<u8>, Bad> {
    let too_large = |size: String| {
        Bad(
            413,
            format!("{name}: the upload{size} is over the limit of {limit} bytes (--max-upload)"),
        )
    };
    if let Some(n) = rq.body_length() {
        if n > limit {
            return Err(too_large(format!(" of {n} bytes")));
        }
    }
    let mut body = Vec::new();
    rq.as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Bad(400, format!("{name}: cannot read the upload: {e}")))?;
    if body.len() > limit {
        return Err(too_large(String::new()));
    }
    Ok(body)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The heatmap as the viewer shows it over the image: RGBA, the colormap's colour with an
/// opacity of 1 for maps in [0, 1] and scaled maps, `|v| / relevance_scale` for signed ones
/// (the page's slider scales it).
fn viewer_png(
    map: &[f32],
    h: usize,
    w: usize,
    display: Display,
    colormap: Colormap,
) -> Result<Vec<u8>> {
    let blank = RgbImage::new(w as u32, h as u32);
    let (heat, _) = render_map_styled(
        map,
        &blank,
        display,
        Style {
            colormap,
            alpha: None,
        },
    );
    let scale = display_scale(map, display);
    let mut rgba = image::RgbaImage::new(w as u32, h as u32);
    for ((o, p), &v) in rgba.pixels_mut().zip(heat.pixels()).zip(map) {
        let a = match display {
            Display::Signed if scale.hi > 0.0 && v.is_finite() => (v.abs() / scale.hi).min(1.0),
            Display::Signed => 0.0,
            _ => 1.0,
        };
        *o = image::Rgba([p[0], p[1], p[2], (a * 255.0).round() as u8]);
    }
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(rgba).write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

/// The colour bar (256x1) of a colormap for maps of kind `display`, as a PNG.
fn bar_png(colormap: Colormap, display: Display) -> Result<Vec<u8>> {
    let bar = crate::io::figure::colour_bar(256, 1, colormap, display);
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(bar).write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

fn map_json(id: u64, m: &MapEntry, colormap: Colormap, options: &Options) -> Result<Value> {
    let MapEntry {
        name,
        method,
        data,
        h,
        w,
    } = m;
    let (method, h, w) = (*method, *h, *w);
    let display = method.info().display;
    use crate::explain::method::{Needs, Resample};
    let how = if method.info().needs == Needs::LrpTape {
        options.rule.name().to_string()
    } else if method.info().resample == Resample::AsRequested {
        format!("{} upsampling", options.upsample)
    } else {
        "bilinear upsampling".to_string()
    };
    let (lo, hi) = finite_range(data);
    let scale = display_scale(data, display);
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, FILE_NAME).to_string();
    Ok(json!({
        "name": name,
        "method": method.to_string(),
        "caption": format!("{} · {how}", options.stage),
        "display": display_name(display),
        "height": h,
        "width": w,
        "min": lo,
        "max": hi,
        "scale": [scale.lo, scale.hi],
        "colormap": colormap.resolve(display).name(),
        "png": b64(&viewer_png(data, h, w, display, colormap)?),
        "bar": b64(&bar_png(colormap, display)?),
        "npy_url": format!("/api/result/{id}/{}.npy", enc(name)),
        "png_url": format!("/api/result/{id}/{}.png", enc(name)),
        "overlay_url": format!("/api/result/{id}/{}.overlay.png", enc(name)),
    }))
}

fn explain(
    state: &State,
    rq: &mut tiny_http::Request,
    params: &[(String, String)],
) -> Result<Reply, Bad> {
    let name = upload_name(params);
    let (options, methods, style) = request_options(state, params)?;
    let body = read_body(rq, state.config.max_upload, &name)?;
    let image =
        crate::io::image::decode_image(&body).map_err(|e| Bad(400, format!("{name}: {e:#}")))?;
    let (w, h) = image.dimensions();
    let (nw, nh) = match options.size {
        0 => (w, h),
        s => crate::io::shorter_side_dims(w, h, s),
    };
    crate::io::check_net_input(nw, nh).map_err(|e| Bad(413, format!("{name}: {e:#}")))?;
    let out = {
        let mut engine = lock(&state.engine);
        engine
            .set_options(options.clone())
            .map_err(|e| Bad(400, format!("{e:#}")))?;
        // What the weights cannot serve (Grad-CAM without a classifier) is the request's
        // problem; anything else is the server's.
        engine
            .check(&methods)
            .map_err(|e| Bad(400, format!("{e:#}")))?;
        engine
            .explain(std::slice::from_ref(&image), &methods)
            .map_err(|e| Bad(500, format!("{name}: {e:#}")))?
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let mut maps = Vec::new();
    let mut side = serde_json::Map::new();
    for m in out {
        let Some(map) = m.maps.into_iter().next() else {
            continue;
        };
        let map_name = m
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{}{}", m.method, m.output));
        if let Some(j) = m.json.first() {
            side.insert(m.method.to_string(), j.clone());
        }
        maps.push(MapEntry {
            name: map_name,
            method: m.method,
            h: map.shape.h,
            w: map.shape.w,
            data: map.data,
        });
    }
    let mut listed = Vec::new();
    for m in &maps {
        listed.push(
            map_json(id, m, style.colormap, &options).map_err(|e| Bad(500, format!("{e:#}")))?,
        );
    }
    let entry = Arc::new(Entry {
        id,
        name: name.clone(),
        image,
        options: options.clone(),
        maps,
        activations: Mutex::new(None),
    });
    {
        let mut results = lock(&state.results);
        results.push_back(entry);
        while results.len() > KEEP_RESULTS {
            results.pop_front();
        }
    }
    Ok(Reply::ok(json!({
        "id": id,
        "image": {"name": name, "width": w, "height": h, "url": format!("/api/result/{id}/image.png")},
        "layer": options.stage.to_string(),
        "rule": options.rule.name(),
        "upsample": options.upsample.to_string(),
        "size": options.size,
        "weights": state.config.weights,
        "backend": state.backend,
        "maps": listed,
        "side": side,
    })))
}

fn find_result(state: &State, id: &str) -> Result<Arc<Entry>, Bad> {
    let id: u64 = id
        .parse()
        .map_err(|_| Bad(400, format!("'{id}' is not a result id")))?;
    lock(&state.results)
        .iter()
        .find(|e| e.id == id)
        .cloned()
        .ok_or_else(|| Bad(404, format!("result {id} is no longer kept (the last {KEEP_RESULTS} are); explain the image again")))
}

fn point(state: &State, params: &[(String, String)]) -> Result<Reply, Bad> {
    let entry = find_result(state, param(params, "id").unwrap_or(""))?;
    let num = |k: &str| -> Result<f64, Bad> {
        let s = param(params, k).ok_or_else(|| Bad(400, format!("{k}: missing")))?;
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| Bad(400, format!("{k}: '{s}' is not a number")))
    };
    let (x, y) = (num("x")?, num("y")?);
    let (w, h) = entry.image.dimensions();
    if x < 0.0 || y < 0.0 || x >= w as f64 || y >= h as f64 {
        return Err(Bad(400, format!("({x}, {y}) is outside the {w}x{h} image")));
    }
    let count = |k: &str, default: usize, max: usize| -> Result<usize, Bad> {
        match param(params, k) {
            None => Ok(default),
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| Bad(400, format!("{k}: '{s}' is not a whole number up to {max}"))),
        }
    };
    let top = count("top", 8, 64)?;
    let n_concepts = count("concepts", 4, 16)?.min(top);
    let stage = entry.options.stage;

    let mut engine = lock(&state.engine);
    let acts = {
        let mut cached = lock(&entry.activations);
        if cached.is_none() {
            engine
                .set_options(entry.options.clone())
                .map_err(|e| Bad(500, format!("{e:#}")))?;
            *cached = Some(
                engine
                    .stage_activations(&entry.image, stage)
                    .map_err(|e| Bad(500, format!("{e:#}")))?,
            );
        }
        cached.clone().expect("set above")
    };
    let s = acts.shape;
    let sy = ((y * s.h as f64 / h as f64) as usize).min(s.h - 1);
    let sx = ((x * s.w as f64 / w as f64) as usize).min(s.w - 1);
    let at = &acts.data[(sy * s.w + sx) * s.c..(sy * s.w + sx + 1) * s.c];
    let total: f32 = at.iter().filter(|v| v.is_finite()).sum();
    let mut order: Vec<usize> = (0..s.c).collect();
    order.sort_by(|&a, &b| at[b].total_cmp(&at[a]).then(a.cmp(&b)));
    order.truncate(top);
    // Each channel's mean over the stage, to say whether the point is typical for it.
    let mean = |c: usize| -> f32 {
        let mut sum = 0.0f64;
        for p in 0..s.h * s.w {
            sum += acts.data[p * s.c + c] as f64;
        }
        (sum / (s.h * s.w).max(1) as f64) as f32
    };
    // atlas.json is read once per request (it can be large, and may be rewritten meanwhile).
    let (doc, layer) = (atlas_doc(state), stage.to_string());
    let channels: Vec<Value> = order
        .iter()
        .map(|&c| {
            json!({
                "channel": c,
                "activation": at[c],
                "share": if total > 0.0 { at[c] / total } else { 0.0 },
                "mean": mean(c),
                "atlas": atlas_crops(state, doc.as_ref(), c, Some(&layer)),
            })
        })
        .collect();

    // The conditional (CRP) maps of the first channels: the concepts method restricted to them.
    let mut concepts = Vec::new();
    if n_concepts > 0 {
        let mut o = entry.options.clone();
        o.concepts = ConceptConfig {
            layer: None,
            top: n_concepts,
            channels: order[..n_concepts].to_vec(),
        };
        engine
            .set_options(o)
            .map_err(|e| Bad(500, format!("{e:#}")))?;
        let out = engine
            .explain(std::slice::from_ref(&entry.image), &[Method::Concepts])
            .map_err(|e| Bad(500, format!("{e:#}")))?;
        let relevance: Vec<Value> = out
            .iter()
            .find_map(|m| m.json.first())
            .and_then(|j| j.get("concepts"))
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default();
        for m in out {
            let Some(map) = m.maps.into_iter().next() else {
                continue;
            };
            let name = m.names.first().cloned().unwrap_or_default();
            let channel: Option<u64> = name.strip_prefix("concept-").and_then(|c| c.parse().ok());
            let r = relevance
                .iter()
                .find(|c| c["channel"].as_u64() == channel)
                .cloned()
                .unwrap_or(Value::Null);
            let concept = MapEntry {
                name,
                method: Method::Concepts,
                h: map.shape.h,
                w: map.shape.w,
                data: map.data,
            };
            let mut j = map_json(entry.id, &concept, Colormap::Auto, &entry.options)
                .map_err(|e| Bad(500, format!("{e:#}")))?;
            // Not kept: no download links.
            for k in ["npy_url", "png_url", "overlay_url"] {
                j.as_object_mut().expect("an object").remove(k);
            }
            j["channel"] = json!(channel);
            j["relevance"] = r.get("relevance").cloned().unwrap_or(Value::Null);
            j["share"] = r.get("share").cloned().unwrap_or(Value::Null);
            concepts.push(j);
        }
    }
    drop(engine);
    Ok(Reply::ok(json!({
        "id": entry.id,
        "x": x,
        "y": y,
        "layer": stage.to_string(),
        "stage": {"height": s.h, "width": s.w, "channels": s.c, "y": sy, "x": sx},
        "total": total,
        "channels": channels,
        "concepts": concepts,
        "atlas": atlas_summary(state, doc.as_ref()),
    })))
}

fn result_file(state: &State, rest: &str) -> Result<Reply, Bad> {
    let (id, file) = rest
        .split_once('/')
        .ok_or_else(|| Bad(404, "not found".to_string()))?;
    let entry = find_result(state, id)?;
    let file = percent_encoding::percent_decode_str(file)
        .decode_utf8_lossy()
        .into_owned();
    let safe = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    let stem = Path::new(&entry.name)
        .file_stem()
        .map(|s| safe(&s.to_string_lossy()))
        .unwrap_or_else(|| "upload".into());
    if file == "image.png" {
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(entry.image.clone())
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .map_err(|e| Bad(500, e.to_string()))?;
        return Ok(Reply::bytes("image/png", bytes));
    }
    let (name, kind) = if let Some(n) = file.strip_suffix(".npy") {
        (n, "npy")
    } else if let Some(n) = file.strip_suffix(".overlay.png") {
        (n, "overlay")
    } else if let Some(n) = file.strip_suffix(".png") {
        (n, "heatmap")
    } else {
        return Err(Bad(404, "not found".to_string()));
    };
    let m = entry
        .maps
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| Bad(404, format!("result {} has no map '{name}'", entry.id)))?;
    let download = format!("{stem}.{}", safe(&file));
    let mut reply = if kind == "npy" {
        Reply::bytes(
            "application/octet-stream",
            encode_npy_f32(m.h, m.w, &m.data).map_err(|e| Bad(500, e.to_string()))?,
        )
    } else {
        let display = m.method.info().display;
        let (heat, over) = render_map_styled(&m.data, &entry.image, display, Style::default());
        let o = &entry.options;
        let rule = if m.method.info().needs == crate::explain::method::Needs::LrpTape {
            o.rule.name().to_string()
        } else {
            "none (not an LRP method)".to_string()
        };
        let text = vec![
            (
                "Software".to_string(),
                format!("lafam-gpu {}", env!("CARGO_PKG_VERSION")),
            ),
            ("method".to_string(), m.method.to_string()),
            ("map".to_string(), m.name.clone()),
            ("layer".to_string(), o.stage.to_string()),
            ("rule".to_string(), rule),
            ("weights".to_string(), state.config.weights.clone()),
            (
                "colormap".to_string(),
                Colormap::Auto.resolve(display).name().to_string(),
            ),
            ("kind".to_string(), kind.to_string()),
        ];
        let img = if kind == "overlay" { over } else { heat };
        Reply::bytes(
            "image/png",
            encode_png_with_text(&img, &text).map_err(|e| Bad(500, e.to_string()))?,
        )
    };
    reply.download = Some(download);
    Ok(reply)
}

/// `raw` (a URL path below a route, still percent-encoded) as a file under `root`, or None:
/// refused are empty, `.` and `..` components (also percent-encoded), hidden names (a
/// leading `.`), backslashes and NUL bytes, absolute paths, anything whose real path
/// (symlinks resolved) is outside `root`, and anything that is not a regular file. `root`
/// must be canonical.
pub fn resolve_under(root: &Path, raw: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()?;
    if decoded.is_empty() || decoded.starts_with('/') || decoded.contains(['\\', '\0']) {
        return None;
    }
    let mut p = root.to_path_buf();
    for comp in decoded.split('/') {
        if comp.is_empty() || comp.starts_with('.') {
            return None;
        }
        p.push(comp);
    }
    let real = p.canonicalize().ok()?;
    if !real.starts_with(root) {
        return None;
    }
    std::fs::metadata(&real).ok()?.is_file().then_some(real)
}

fn content_type(p: &Path) -> &'static str {
    match p
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg" | "jpe") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        Some("tif" | "tiff") => "image/tiff",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("css") => "text/css",
        Some("txt" | "md" | "csv") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn is_image_name(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .is_some_and(|e| crate::io::IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn serve_file(root: Option<&Path>, raw: &str, images_only: bool) -> Result<Reply, Bad> {
    let not_found = || Bad(404, "not found".to_string());
    let root = root.ok_or_else(not_found)?;
    let path = resolve_under(root, raw).ok_or_else(not_found)?;
    if images_only && !is_image_name(&path) {
        return Err(not_found());
    }
    let bytes = std::fs::read(&path).map_err(|_| not_found())?;
    Ok(Reply::bytes(content_type(&path), bytes))
}

fn folder_list(state: &State) -> Result<Reply, Bad> {
    let root = state
        .folder
        .as_deref()
        .ok_or_else(|| Bad(404, "no --folder was given".to_string()))?;
    let mut names = Vec::new();
    for e in std::fs::read_dir(root)
        .map_err(|e| Bad(500, e.to_string()))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let enc = percent_encoding::utf8_percent_encode(&name, FILE_NAME).to_string();
        if is_image_name(Path::new(&name))
            && !crate::io::image::is_map_output(&name)
            && resolve_under(root, &enc).is_some()
        {
            names.push(name);
        }
    }
    names.sort();
    let files: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "name": n,
                "url": format!("/folder/{}", percent_encoding::utf8_percent_encode(n, FILE_NAME)),
            })
        })
        .collect();
    Ok(Reply::ok(json!({ "files": files })))
}

/// The atlas's `atlas.json` (None where there is no atlas or it cannot be read).
fn atlas_doc(state: &State) -> Option<Value> {
    let root = state.atlas.as_deref()?;
    let bytes = std::fs::read(root.join("atlas.json")).ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()
}

/// The atlas's concept layer, from its settings.
fn atlas_layer(doc: &Value) -> Option<&str> {
    doc["settings"]["concept_layer"].as_str()
}

/// The atlas's crops of `channel`, at most 8, as URLs. With an `atlas.json`: its ranked
/// samples (RelMax first, then ActMax, each best first), and none when the atlas is of another
/// layer than `layer` (its channel numbers would be another layer's). Without one: the crop
/// files of the channel by name (`crops/<stem>.c<channel>.y<y>x<x>.png`, as `lafam-gpu atlas`
/// names them; their `.heat.png` maps are left out).
fn atlas_crops(
    state: &State,
    doc: Option<&Value>,
    channel: usize,
    layer: Option<&str>,
) -> Vec<String> {
    let Some(root) = state.atlas.as_deref() else {
        return Vec::new();
    };
    let names: Vec<String> = match doc {
        Some(doc) => {
            if layer.is_some_and(|l| atlas_layer(doc).is_some_and(|a| a != l)) {
                return Vec::new();
            }
            let entry = doc["atlas"]["channels"].as_array().and_then(|chs| {
                chs.iter()
                    .find(|c| c["channel"].as_u64() == Some(channel as u64))
            });
            let mut names = Vec::new();
            for list in ["relmax", "actmax"] {
                let samples = entry.and_then(|e| e[list]["samples"].as_array());
                for crop in samples
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x["crop"].as_str())
                {
                    if let Some(n) = crop.strip_prefix("crops/") {
                        if !names.iter().any(|m| m == n) {
                            names.push(n.to_string());
                        }
                    }
                }
            }
            names
        }
        None => {
            let Ok(entries) = std::fs::read_dir(root.join("crops")) else {
                return Vec::new();
            };
            let key = format!(".c{channel}.y");
            let mut found: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(&key) && n.ends_with(".png") && !n.ends_with(".heat.png"))
                .collect();
            found.sort();
            found
        }
    };
    names
        .iter()
        .map(|n| percent_encoding::utf8_percent_encode(n, FILE_NAME).to_string())
        .filter(|n| resolve_under(root, &format!("crops/{n}")).is_some())
        .take(8)
        .map(|n| format!("/atlas/crops/{n}"))
        .collect()
}

/// What the atlas directory holds: its index page and its concept layer (from atlas.json).
fn atlas_summary(state: &State, doc: Option<&Value>) -> Value {
    let Some(root) = state.atlas.as_deref() else {
        return Value::Null;
    };
    json!({
        "index": resolve_under(root, "index.html").map(|_| "/atlas/index.html"),
        "concept_layer": doc.and_then(atlas_layer),
    })
}

fn atlas_list(state: &State, params: &[(String, String)]) -> Result<Reply, Bad> {
    if state.atlas.is_none() {
        return Err(Bad(404, "no --atlas was given".to_string()));
    }
    let c = param(params, "channel").unwrap_or("");
    let channel: usize = c
        .parse()
        .map_err(|_| Bad(400, format!("channel: '{c}' is not a channel number")))?;
    let doc = atlas_doc(state);
    Ok(Reply::ok(json!({
        "channel": channel,
        "crops": atlas_crops(state, doc.as_ref(), channel, param(params, "layer")),
        "atlas": atlas_summary(state, doc.as_ref()),
    })))
}
