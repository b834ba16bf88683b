//! Download cache for known models.
//!
//! A model is fetched once into `<cache>/<name>/<file>`: the bytes go to `<file>.part`, which
//! is renamed into place only once complete and verified (length against the server's
//! Content-Length and the table's size if any; sha256, or the prefix of it that the publisher
//! states). An interrupted transfer is resumed with an HTTP Range request (restarted from
//! zero when the server ignores ranges), up to [`ATTEMPTS`] times in one run; a `.part` left
//! by an earlier run is resumed the same way. A checksum mismatch deletes the `.part`.
//!
//! Cache directory: `--cache-dir`, else `$LAFAM_GPU_CACHE`, else `$XDG_CACHE_HOME/lafam-gpu`,
//! else `~/.cache/lafam-gpu` (`%LOCALAPPDATA%\lafam-gpu` on Windows).

use crate::io::Shown;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Transfer attempts in one run (the first plus resumptions).
pub const ATTEMPTS: usize = 4;

/// What to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub url: String,
    pub file_name: String,
    pub size: Option<u64>,
    /// Full sha256 or a hex prefix of it.
    pub sha256: Option<String>,
}

/// The cache directory: `flag`, else `$LAFAM_GPU_CACHE`, else the platform's cache dir.
pub fn cache_dir(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env("LAFAM_GPU_CACHE") {
        return Ok(p);
    }
    if cfg!(windows) {
        if let Some(p) = env("LOCALAPPDATA") {
            return Ok(p.join("lafam-gpu"));
        }
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return Ok(p.join("lafam-gpu"));
    }
    if let Some(h) = env("HOME") {
        return Ok(h.join(".cache").join("lafam-gpu"));
    }
    bail!("no cache directory: set LAFAM_GPU_CACHE or pass --cache-dir")
}

/// Where a source lives in the cache.
pub fn cached_path(cache: &Path, src: &Source) -> PathBuf {
    cache.join(&src.name).join(&src.file_name)
}

/// What happened, for the caller to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// Already in the cache.
    Cached(PathBuf),
    /// Downloaded now (bytes, attempts used).
    Downloaded(PathBuf, u64, usize),
}

impl Fetched {
    pub fn path(&self) -> &Path {
        match self {
            Fetched::Cached(p) | Fetched::Downloaded(p, ..) => p,
        }
    }
}

/// Returns the cached file, downloading it first if needed. `progress` is called with
/// (bytes so far, total if known) as data arrives.
pub fn fetch(
    cache: &Path,
    src: &Source,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Fetched> {
    let dst = cached_path(cache, src);
    if dst.is_file() {
        if let Some(want) = src.size {
            let have = fs::metadata(&dst)?.len();
            if have != want {
                bail!(
                    "{}: cached file has {have} bytes, {want} expected: delete it to download \
                     it again",
                    dst.shown()
                );
            }
        }
        // A file put there by hand (or damaged since) is checked like a download (a quarter
        // of a second for 100 MB): never trusted because of its name.
        if let Some((got, want)) = checksum_mismatch(&dst, src)? {
            bail!(
                "{}: the cached file's sha256 is {got}, the publisher states {want}{}: it is \
                 not {}; delete it to download it again",
                dst.shown(),
                if want.len() < 64 { "..." } else { "" },
                src.name
            );
        }
        return Ok(Fetched::Cached(dst));
    }
    let dir = dst.parent().expect("cache path has a parent");
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the cache directory {}", dir.shown()))?;
    let part = dir.join(format!("{}.part", src.file_name));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .user_agent(concat!("lafam-gpu/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut last_err: Option<anyhow::Error> = None;
    let mut attempts = 0;
    let mut complete = false;
    let mut total: Option<u64> = src.size;
    while attempts < ATTEMPTS {
        attempts += 1;
        match attempt(&agent, src, &part, &mut total, progress) {
            Ok(true) => {
                last_err = None;
                complete = true;
                break;
            }
            Ok(false) => {
                last_err = Some(anyhow::anyhow!("the server did not resume the transfer"));
                continue;
            }
            Err(e) => {
                if e.downcast_ref::<Offline>().is_some() {
                    return Err(offline_error(src, &dst, &e));
                }
                if e.downcast_ref::<Fatal>().is_some() {
                    return Err(e);
                }
                last_err = Some(e);
                std::thread::sleep(Duration::from_millis(200 * attempts as u64));
            }
        }
    }
    if let (false, Some(e)) = (complete, last_err) {
        let have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        return Err(e.context(format!(
            "downloading {} from {} failed after {attempts} attempts ({have} bytes kept in {}; \
             run again to resume)",
            src.name,
            src.url,
            part.shown()
        )));
    }
    let have = fs::metadata(&part)?.len();
    if let Some(t) = total {
        if have != t {
            bail!(
                "{}: downloaded {have} bytes, {t} expected ({} kept; run again to resume)",
                src.name,
                part.shown()
            );
        }
    }
    if let Some((got, want)) = checksum_mismatch(&part, src)? {
        let _ = fs::remove_file(&part);
        bail!(
            "{}: checksum mismatch for {}: sha256 {got}, the publisher states {want}{}; the \
             download was deleted",
            src.name,
            src.url,
            if want.len() < 64 { "..." } else { "" }
        );
    }
    fs::rename(&part, &dst)
        .with_context(|| format!("cannot move the download to {}", dst.shown()))?;
    Ok(Fetched::Downloaded(dst, have, attempts))
}

/// A connection that could not be made at all.
#[derive(Debug)]
struct Offline(String);
impl std::fmt::Display for Offline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Offline {}

/// An answer that retrying will not change (404...).
#[derive(Debug)]
struct Fatal(String);
impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Fatal {}

fn offline_error(src: &Source, dst: &Path, e: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot download {} from {}: {e}.\nIf this machine is offline, download that URL on \
         another machine and put the file at\n  {}\n(or pass --weights /path/to/{}; set \
         --cache-dir or LAFAM_GPU_CACHE to use another cache directory)",
        src.name,
        src.url,
        dst.shown(),
        src.file_name
    )
}

/// One request: resumes `part` if it has bytes. Ok(true) = complete, Ok(false) = retry now
/// (the server ignored or refused the range and `part` was reset).
fn attempt(
    agent: &ureq::Agent,
    src: &Source,
    part: &Path,
    total: &mut Option<u64>,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<bool> {
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(&src.url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        Err(e) => {
            // No connection at all (no network, DNS, refused, connect timeout): retrying now
            // will not help.
            let connect = matches!(
                e,
                ureq::Error::Io(_)
                    | ureq::Error::HostNotFound
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::Timeout(_)
            );
            if connect {
                return Err(Offline(e.to_string()).into());
            }
            return Err(anyhow::anyhow!("{e}"));
        }
    };
    let status = resp.status().as_u16();
    let header = |name: &str| -> Option<String> {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let length: Option<u64> = header("content-length").and_then(|v| v.trim().parse().ok());
    let mut file = match status {
        200 => {
            if let Some(l) = length {
                check_total(total, l, src)?;
            }
            File::create(part).with_context(|| format!("cannot write {}", part.shown()))?
        }
        206 if have > 0 => {
            // Content-Range: bytes START-END/TOTAL
            let cr = header("content-range").unwrap_or_default();
            let (start, full) = parse_content_range(&cr)
                .ok_or_else(|| anyhow::anyhow!("bad Content-Range '{cr}' in a 206 answer"))?;
            if start != have {
                // Not the range asked for: start over.
                File::create(part)?;
                return Ok(false);
            }
            if let Some(f) = full {
                check_total(total, f, src)?;
            }
            OpenOptions::new().append(true).open(part)?
        }
        416 => {
            // The part is as long as the file or longer: start over.
            File::create(part)?;
            return Ok(false);
        }
        s => {
            return Err(Fatal(format!(
                "{}: the server answered HTTP {s} for {}",
                src.name, src.url
            ))
            .into())
        }
    };
    let mut done = fs::metadata(part)?.len();
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                file.flush().ok();
                bail!("transfer interrupted after {done} bytes: {e}");
            }
        };
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.shown()))?;
        done += n as u64;
        progress(done, *total);
    }
    file.flush()?;
    file.sync_all().ok();
    if let Some(t) = *total {
        if done < t {
            bail!("transfer interrupted after {done} of {t} bytes");
        }
        if done > t {
            File::create(part)?;
            bail!("the server sent {done} bytes, {t} announced");
        }
    }
    Ok(true)
}

fn check_total(total: &mut Option<u64>, announced: u64, src: &Source) -> Result<()> {
    match *total {
        Some(t) if t != announced => Err(Fatal(format!(
            "{}: the server announces {announced} bytes, {t} expected",
            src.name
        ))
        .into()),
        _ => {
            *total = Some(announced);
            Ok(())
        }
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) -> (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim();
    let (range, full) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let full = full.trim().parse().ok();
    Some((start, full))
}

/// `Some((file's sha256, the publisher's))` when `src` states a checksum (or a prefix of one,
/// as torchvision's file names do) that `path` does not match.
fn checksum_mismatch(path: &Path, src: &Source) -> Result<Option<(String, String)>> {
    let Some(want) = &src.sha256 else {
        return Ok(None);
    };
    let got = sha256_file(path)?;
    let want = want.to_ascii_lowercase();
    Ok((!got.starts_with(&want)).then_some((got, want)))
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
