//! PyTorch checkpoints (`.pth`, `.pth.tar`) without Python: read, pick the weights, convert
//! to safetensors; known models by name with a download cache.
//!
//! Formats:
//! - zip (torch >= 1.6): `<name>/data.pkl` (the pickled object), `<name>/data/<key>` (one raw
//!   storage per key), `<name>/byteorder` (`little` or `big`; absent = little);
//! - legacy (torch 0.4 .. 1.5, or `_use_new_zipfile_serialization=False`): back to back, a
//!   pickled magic number, protocol version (1001) and sys-info dict, the pickled object with
//!   6-field storage ids, the pickled list of storage keys, then for each key an 8-byte
//!   little-endian element count and the raw storage bytes;
//! - the pre-0.4 tar format (`storages`/`tensors`/`pickle` members) is recognised and refused.
//!
//! The pickles go through [`pickle`], which resolves only the globals a checkpoint needs and
//! never executes anything. Tensors are views (offset, size, stride) on storages; views that
//! are not contiguous (channels_last, transposes, expands) are materialised in row-major
//! order. The weights are the top-level dict, or the dict under `state_dict`, `model`,
//! `teacher` or `student` (the first present, repeatedly); entries that are not tensors are
//! dropped and listed in [`Checkpoint::notes`]. Key prefixes are kept as they are: the
//! safetensors loader strips them.

pub mod download;
pub mod models;
pub mod pickle;
pub mod resolve;

pub use resolve::{download_notice, resolve_weights, Resolving};

use crate::io::Shown;
use crate::model::LoadedWeights;
use anyhow::{bail, Context, Result};
use pickle::{unpickle, DType, Pid, StorageRef, TensorRef, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

/// Keys under which training checkpoints nest the weights, in order of preference.
pub const NESTING_KEYS: [&str; 4] = ["state_dict", "model", "teacher", "student"];

/// Container format of a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zip,
    Legacy,
}

/// One tensor, materialised: row-major little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The weights of a checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub format: Format,
    /// Tensors in file order, with their keys as stored.
    pub tensors: Vec<(String, Tensor)>,
    /// The nesting followed to the weights, e.g. ["state_dict"].
    pub path: Vec<String>,
    /// What was dropped and why, one line each.
    pub notes: Vec<String>,
}

/// True for bytes that start like a PyTorch checkpoint (zip or pickle), as opposed to
/// safetensors.
pub fn looks_like_pytorch(bytes: &[u8]) -> bool {
    // A safetensors header length whose low byte is 0x80 starts like a pickle's PROTO opcode
    // (a 1/256 chance): a length that fits the file followed by a JSON object is safetensors.
    !looks_like_safetensors(bytes)
        && (bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80) || is_tar(bytes))
}

/// An 8-byte little-endian header length that fits in the file, then `{`.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(..8) else {
        return false;
    };
    let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    n >= 2 && n <= (bytes.len() - 8) as u64 && bytes.get(8) == Some(&b'{')
}

fn is_tar(bytes: &[u8]) -> bool {
    bytes.len() > 262 && &bytes[257..262] == b"ustar"
}

/// Reads a checkpoint file.
pub fn read_checkpoint_file(path: &Path) -> Result<Checkpoint> {
    let bytes = crate::io::files::read_regular(path)
        .with_context(|| format!("{}: cannot read checkpoint", path.shown()))?;
    read_checkpoint(&bytes, &path.shown().to_string())
}

/// Reads checkpoint bytes; `source` names them in messages.
pub fn read_checkpoint(bytes: &[u8], source: &str) -> Result<Checkpoint> {
    read_any(bytes).map_err(|e| e.context(format!("{source}: cannot read PyTorch checkpoint")))
}

fn read_any(bytes: &[u8]) -> Result<Checkpoint> {
    if bytes.is_empty() {
        bail!("file is empty (0 bytes), not a PyTorch checkpoint")
    } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes)
    } else if is_tar(bytes) {
        bail!(
            "a tar archive: the pre-0.4 PyTorch tar format is not supported; load and re-save \
             it with a recent torch (torch.save(torch.load(f), g))"
        )
    } else if bytes.first() == Some(&0x80) {
        read_legacy(bytes)
    } else if bytes.len() > 8 && bytes[8] == b'{' {
        bail!("this looks like a safetensors file, not a PyTorch checkpoint: use it directly")
    } else {
        bail!(
            "not a PyTorch checkpoint: it starts neither with a zip header (torch >= 1.6) nor \
             with a pickle (legacy format)"
        )
    }
}

/// The zip format.
fn read_zip(bytes: &[u8]) -> Result<Checkpoint> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("corrupt or truncated zip archive: {e}"))?;
    let names: Vec<String> = zip.file_names().map(String::from).collect();
    let pkl: Vec<&String> = names
        .iter()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .collect();
    let pkl_name = match pkl.as_slice() {
        [one] => (*one).clone(),
        [] if names.iter().any(|n| n.ends_with("constants.pkl")) => bail!(
            "a TorchScript archive (torch.jit.save), not a checkpoint: save the model's \
             state_dict() with torch.save instead"
        ),
        [] => bail!("zip archive without data.pkl: not a torch.save checkpoint"),
        _ => bail!("zip archive with several data.pkl records: not a torch.save checkpoint"),
    };
    let prefix = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    let read = |zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str| -> Result<Vec<u8>> {
        let mut f = zip
            .by_name(name)
            .map_err(|e| anyhow::anyhow!("zip record '{name}': {e}"))?;
        let mut out = Vec::with_capacity((f.size() as usize).min(bytes.len()));
        f.read_to_end(&mut out)
            .map_err(|e| anyhow::anyhow!("zip record '{name}' is corrupt or truncated: {e}"))?;
        Ok(out)
    };
    let big_endian = match names.iter().any(|n| *n == format!("{prefix}byteorder")) {
        true => {
            let b = read(&mut zip, &format!("{prefix}byteorder"))?;
            match b.trim_ascii() {
                b"little" => false,
                b"big" => true,
                other => bail!("byteorder record says {:?}", String::from_utf8_lossy(other)),
            }
        }
        false => false,
    };
    let data = read(&mut zip, &pkl_name)?;
    let (root, _) = unpickle(&data, Pid::Zip).context("data.pkl")?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut need: Vec<StorageRef> = Vec::new();
    collect_storages(&root, &mut need, &mut HashSet::new(), 0)?;
    for s in need {
        if storages.contains_key(&s.key) {
            continue;
        }
        let name = format!("{prefix}data/{}", s.key);
        if !names.contains(&name) {
            bail!(
                "storage '{}' is referenced but missing from the archive",
                s.key
            );
        }
        let mut b = read(&mut zip, &name)?;
        if big_endian {
            let es = s.dtype.map(|d| d.size()).unwrap_or(1);
            for c in b.chunks_exact_mut(es) {
                c.reverse();
            }
        }
        storages.insert(s.key.clone(), b);
    }
    select(root, &storages, Format::Zip)
}

/// torch's legacy magic number.
const MAGIC: i128 = 0x1950a86a20f9469cfc6c;

/// The legacy format.
fn read_legacy(bytes: &[u8]) -> Result<Checkpoint> {
    let mut pos = 0;
    let mut next = |pid: Pid, what: &str| -> Result<Value> {
        let (v, n) = unpickle(&bytes[pos..], pid).with_context(|| what.to_string())?;
        pos += n;
        Ok(v)
    };
    match next(Pid::None, "magic number")? {
        Value::Int(MAGIC) => {}
        _ => bail!(
            "a pickle, but not a PyTorch checkpoint (wrong magic number): torch.save writes a \
             zip archive or a legacy checkpoint starting with its magic number"
        ),
    }
    match next(Pid::None, "protocol version")? {
        Value::Int(1001) => {}
        Value::Int(v) => bail!("unsupported legacy protocol version {v} (expected 1001)"),
        _ => bail!("corrupt header: protocol version is not an int"),
    }
    if let Value::Dict(d) = next(Pid::None, "sys info")? {
        for (k, v) in d.borrow().iter() {
            if matches!((k, v), (Value::Str(k), Value::Bool(false)) if &**k == "little_endian") {
                bail!("big-endian legacy checkpoints are not supported");
            }
        }
    }
    let root = next(Pid::Legacy, "object pickle")?;
    let keys = match next(Pid::None, "storage key list")? {
        Value::List(l) => l.borrow().to_vec(),
        _ => bail!("corrupt file: the storage key list is not a list"),
    };
    let mut need: Vec<StorageRef> = Vec::new();
    collect_storages(&root, &mut need, &mut HashSet::new(), 0)?;
    let sizes: HashMap<&str, usize> = need
        .iter()
        .filter_map(|s| s.dtype.map(|d| (s.key.as_str(), d.size())))
        .collect();
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for k in keys {
        let key = match k {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => bail!("corrupt file: a storage key is not a string"),
        };
        let es = *sizes.get(key.as_str()).unwrap_or(&1);
        if bytes.len() - pos < 8 {
            bail!("truncated: storage '{key}' is missing (file ends at byte {pos})");
        }
        let n = u64::from_le_bytes(bytes[pos..pos + 8].try_into().expect("8 bytes"));
        pos += 8;
        let nbytes = (n as u128) * es as u128;
        if nbytes > (bytes.len() - pos) as u128 {
            bail!(
                "truncated: storage '{key}' needs {nbytes} bytes, only {} are left",
                bytes.len() - pos
            );
        }
        let nbytes = nbytes as usize;
        storages.insert(key, bytes[pos..pos + nbytes].to_vec());
        pos += nbytes;
    }
    select(root, &storages, Format::Legacy)
}

/// Every storage a value references (for reading them from the archive).
fn collect_storages(
    v: &Value,
    out: &mut Vec<StorageRef>,
    seen: &mut HashSet<usize>,
    depth: usize,
) -> Result<()> {
    if depth > 100 {
        bail!("pickle nests deeper than 100 levels");
    }
    match v {
        Value::Tensor(t) => out.push(t.storage.clone()),
        Value::Storage(s) => out.push(s.clone()),
        // Tuples are shared through the memo too: a DAG of `(x, x)` nested 60 deep would
        // otherwise be walked 2^60 times.
        Value::Tuple(t) if seen.insert(Rc::as_ptr(t) as *const () as usize) => {
            for x in t.iter() {
                collect_storages(x, out, seen, depth + 1)?;
            }
        }
        Value::List(l) if seen.insert(Rc::as_ptr(l) as usize) => {
            for x in l.borrow().iter() {
                collect_storages(x, out, seen, depth + 1)?;
            }
        }
        Value::Dict(d) if seen.insert(Rc::as_ptr(d) as usize) => {
            for (_, x) in d.borrow().iter() {
                collect_storages(x, out, seen, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn key_str(k: &Value) -> Option<String> {
    match k {
        Value::Str(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn dict_get(d: &pickle::Dict, key: &str) -> Option<Value> {
    d.borrow()
        .iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if &**s == key))
        .map(|(_, v)| v.clone())
}

/// Follows the nesting to the weights dict and materialises its tensors.
fn select(root: Value, storages: &HashMap<String, Vec<u8>>, format: Format) -> Result<Checkpoint> {
    let mut notes = Vec::new();
    let mut path = Vec::new();
    let mut cur = match root {
        Value::Dict(d) => d,
        Value::ModuleSource(_) => bail!(
            "the checkpoint pickles a whole nn.Module (torch.save(model)); this needs its \
             Python class. Save model.state_dict() instead"
        ),
        other => bail!(
            "the checkpoint holds a {}, not a dict of tensors (a state_dict)",
            other.kind()
        ),
    };
    loop {
        let nested = NESTING_KEYS.iter().find_map(|k| match dict_get(&cur, k) {
            Some(Value::Dict(d)) => Some((k, d)),
            _ => None,
        });
        let Some((k, d)) = nested else { break };
        let others: Vec<String> = cur
            .borrow()
            .iter()
            .filter_map(|(kk, _)| key_str(kk))
            .filter(|kk| kk != k)
            .collect();
        if !others.is_empty() {
            notes.push(format!(
                "using '{}'; dropped the other top-level entries: {}",
                path.iter()
                    .chain(std::iter::once(&k.to_string()))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("."),
                others.join(", ")
            ));
        }
        path.push(k.to_string());
        cur = d;
        if path.len() > 8 {
            break;
        }
    }
    let mut dropped = Vec::new();
    let mut walk = Flatten {
        storages,
        tensors: Vec::new(),
        seen: HashSet::new(),
        budget: tensor_budget(storages),
    };
    walk.dict(&cur, "", &mut dropped, 0)?;
    let tensors = walk.tensors;
    if !dropped.is_empty() {
        notes.push(format!(
            "dropped non-tensor entries: {}",
            dropped.join(", ")
        ));
    }
    if tensors.is_empty() {
        bail!(
            "no tensors found in the checkpoint{}",
            if path.is_empty() {
                String::new()
            } else {
                format!(" (under '{}')", path.join("."))
            }
        );
    }
    let mut names = HashSet::new();
    for (k, _) in &tensors {
        if !names.insert(k.as_str()) {
            bail!("the checkpoint holds two tensors named '{k}'");
        }
    }
    Ok(Checkpoint {
        format,
        tensors,
        path,
        notes,
    })
}

/// How many bytes the tensors of a checkpoint may take: twice its storages' bytes plus
/// 64 MiB (views of a storage take at most its bytes, unless expanded).
fn tensor_budget(storages: &HashMap<String, Vec<u8>>) -> usize {
    let stored: usize = storages.values().map(Vec::len).sum();
    stored.saturating_mul(2).saturating_add(64 << 20)
}

/// Walks a state dict's nesting, materialising its tensors.
struct Flatten<'a> {
    storages: &'a HashMap<String, Vec<u8>>,
    tensors: Vec<(String, Tensor)>,
    /// Dicts already walked (the memo can share them).
    seen: HashSet<usize>,
    /// Bytes the tensors may still take ([`tensor_budget`]).
    budget: usize,
}

impl Flatten<'_> {
    /// The tensors of `d`, named `prefix` + key; what is not a tensor goes to `dropped`.
    fn dict(
        &mut self,
        d: &pickle::Dict,
        prefix: &str,
        dropped: &mut Vec<String>,
        depth: usize,
    ) -> Result<()> {
        if depth > 16 || !self.seen.insert(Rc::as_ptr(d) as usize) {
            return Ok(());
        }
        for (k, v) in d.borrow().iter() {
            let Some(k) = key_str(k) else {
                dropped.push(format!("{prefix}<{} key>", k.kind()));
                continue;
            };
            let name = format!("{prefix}{k}");
            match v {
                Value::Tensor(t) => {
                    let tensor = materialise(t, self.storages, &mut self.budget)
                        .with_context(|| format!("tensor '{name}'"))?;
                    self.tensors.push((name, tensor));
                }
                Value::Dict(sub) => {
                    let before = self.tensors.len();
                    let mut sub_dropped = Vec::new();
                    self.dict(sub, &format!("{name}."), &mut sub_dropped, depth + 1)?;
                    if self.tensors.len() == before {
                        dropped.push(name);
                    } else {
                        dropped.extend(sub_dropped);
                    }
                }
                _ => dropped.push(name),
            }
        }
        Ok(())
    }
}

/// Copies a tensor view out of its storage in row-major order, checking every bound.
/// `budget` is what may still be allocated for tensors (see [`tensor_budget`]); a tensor
/// larger than what is left is refused before it is allocated.
fn materialise(
    t: &TensorRef,
    storages: &HashMap<String, Vec<u8>>,
    budget: &mut usize,
) -> Result<Tensor> {
    let es = t.dtype.size();
    let Some(raw) = storages.get(&t.storage.key) else {
        bail!("storage '{}' was not found in the file", t.storage.key);
    };
    if let Some(sd) = t.storage.dtype {
        if sd != t.dtype {
            bail!("storage of {sd:?} viewed as {:?}", t.dtype);
        }
    }
    // The storage's window in bytes (legacy views start at an element offset of the root).
    let start = t
        .storage
        .offset
        .checked_mul(es)
        .filter(|&s| s <= raw.len())
        .ok_or_else(|| anyhow::anyhow!("storage view offset beyond the storage"))?;
    let avail = (raw.len() - start) / es;
    let numel_storage = if t.storage.dtype.is_some() {
        t.storage.numel.min(avail)
    } else {
        avail
    };
    if t.storage.dtype.is_some() && t.storage.numel > avail {
        bail!(
            "storage '{}' holds {} elements, {} expected: the file is truncated or corrupt",
            t.storage.key,
            avail,
            t.storage.numel
        );
    }
    let data = &raw[start..start + numel_storage * es];
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or_else(|| anyhow::anyhow!("tensor size {:?} overflows", t.size))?;
    if numel == 0 {
        return Ok(Tensor {
            dtype: t.dtype,
            shape: t.size.clone(),
            data: Vec::new(),
        });
    }
    // Highest element index the view touches.
    let mut last = t.offset;
    for (&s, &st) in t.size.iter().zip(&t.stride) {
        last = (s - 1)
            .checked_mul(st)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| anyhow::anyhow!("tensor stride overflows"))?;
    }
    if last >= numel_storage {
        bail!(
            "tensor (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of \
             {numel_storage}: the file is corrupt",
            t.offset,
            t.size,
            t.stride
        );
    }
    let nbytes = numel
        .checked_mul(es)
        .ok_or_else(|| anyhow::anyhow!("tensor too large"))?;
    // Expanded (stride-0) views hold more elements than their storage: materialised in
    // full they could turn a 600-byte file into a TiB.
    if nbytes > *budget {
        bail!(
            "tensor of {numel} elements (size {:?}, stride {:?}) would take the tensors past \
             twice the file's storage bytes plus 64 MiB: an expanded view, not a weight",
            t.size,
            t.stride
        );
    }
    *budget -= nbytes;
    // Contiguous (row-major) strides: one copy.
    let mut contiguous = true;
    let mut expect = 1usize;
    for (&s, &st) in t.size.iter().zip(&t.stride).rev() {
        if s != 1 && st != expect {
            contiguous = false;
        }
        expect *= s;
    }
    if contiguous {
        let b = t.offset * es;
        return Ok(Tensor {
            dtype: t.dtype,
            shape: t.size.clone(),
            data: data[b..b + nbytes].to_vec(),
        });
    }
    // Strided gather, innermost dimension fastest.
    let mut out = Vec::with_capacity(nbytes);
    let nd = t.size.len();
    let mut idx = vec![0usize; nd];
    loop {
        let e = t.offset
            + idx
                .iter()
                .zip(&t.stride)
                .map(|(&i, &st)| i * st)
                .sum::<usize>();
        out.extend_from_slice(&data[e * es..(e + 1) * es]);
        let mut d = nd;
        loop {
            if d == 0 {
                return Ok(Tensor {
                    dtype: t.dtype,
                    shape: t.size.clone(),
                    data: out,
                });
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Serialises the tensors as safetensors (dtypes and keys as they are), with metadata.
pub fn to_safetensors(ck: &Checkpoint, metadata: &[(&str, &str)]) -> Result<Vec<u8>> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = ck
        .tensors
        .iter()
        .map(|(k, t)| {
            safetensors::tensor::TensorView::new(t.dtype.safetensors(), t.shape.clone(), &t.data)
                .map(|v| (k.clone(), v))
                .map_err(|e| anyhow::anyhow!("tensor '{k}': {e}"))
        })
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| anyhow::anyhow!("cannot serialise safetensors: {e}"))
}

/// Reads a checkpoint and returns safetensors bytes plus the notes.
pub fn convert_bytes(bytes: &[u8], source: &str) -> Result<(Vec<u8>, Checkpoint)> {
    let ck = read_checkpoint(bytes, source)?;
    let name = Path::new(source)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let st = to_safetensors(
        &ck,
        &[
            ("format", "pt"),
            ("source", &name),
            ("converted_by", "lafam-gpu convert"),
        ],
    )?;
    Ok((st, ck))
}

/// Summary of dtypes for messages: {"F32": 120, "I64": 20}.
pub fn dtype_counts(ck: &Checkpoint) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, t) in &ck.tensors {
        *m.entry(format!("{:?}", t.dtype.safetensors())).or_insert(0) += 1;
    }
    m
}

/// Loads a weights file: safetensors as is, a PyTorch checkpoint (zip or legacy format)
/// converted in memory. Returns the converter's notes (dropped entries and such) with it.
/// Errors name the file.
pub fn open_weights(path: &Path) -> Result<(LoadedWeights, Vec<String>)> {
    let shown = path.shown().to_string();
    // Not read before it is known to be a regular file (a FIFO would block, /dev/zero never
    // ends); a missing file or a directory gets load_weights' own message.
    if let Err(e) = crate::io::files::check_regular(path) {
        if std::fs::metadata(path).is_ok_and(|m| !m.is_dir()) {
            bail!("{shown}: {e}");
        }
        return Ok((load_weights_or_explain(path)?, Vec::new()));
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(_) => return Ok((load_weights_or_explain(path)?, Vec::new())),
    };
    if !looks_like_pytorch(&bytes) {
        return Ok((load_weights_or_explain(path)?, Vec::new()));
    }
    let (st, ck) = convert_bytes(&bytes, &shown)?;
    drop(bytes);
    Ok((
        crate::model::load::load_weights_from_bytes(&st, path)?,
        ck.notes,
    ))
}

/// Loads weights; the error names the file (the loader's message is kept as is when it
/// already does).
pub fn load_weights_or_explain(path: &Path) -> Result<LoadedWeights> {
    crate::model::load_weights(path).map_err(|e| {
        let shown = path.shown().to_string();
        if format!("{e:#}").contains(&shown) {
            e
        } else {
            e.context(format!("{shown}: cannot load weights"))
        }
    })
}
