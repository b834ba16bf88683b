//! Opening input files safely: only regular files are read. A FIFO with no writer would block
//! forever, `/dev/zero` would be read until memory runs out, and a pipe such as `<(cat x)`
//! can only be read once; each is named and refused instead.

use anyhow::{bail, Result};
use std::path::Path;

/// What a non-regular file is, in words.
fn kind_of(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    let _ = t;
    "not a regular file"
}

/// Checks that `path` is a regular file (symbolic links followed) without opening it, and
/// returns its length. The errors read `no such file`, `permission denied`, `is a directory`
/// or `is a FIFO (named pipe), not a regular file: save it to a file first`.
pub fn check_regular(path: &Path) -> Result<u64> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => bail!("{}", io_reason(&e)),
    };
    if meta.is_dir() {
        bail!("is a directory");
    }
    if !meta.is_file() {
        bail!(
            "is {}, not a regular file: save it to a file first",
            kind_of(meta.file_type())
        );
    }
    Ok(meta.len())
}

/// Reads a whole regular file (see [`check_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    check_regular(path)?;
    std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read: {}", io_reason(&e)))
}

/// A short reason for an I/O error.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        std::io::ErrorKind::UnexpectedEof => "file ends early (truncated)".to_string(),
        _ => e.to_string(),
    }
}
