//! safetensors -> ResNet<ConvLayer>: key normalisation, architecture detection, BN folding.
//!
//! What the loader accepts:
//! - tensors stored as F32, F16, BF16 (or F64); integer tensors such as BatchNorm's
//!   `num_batches_tracked` (I64) are skipped;
//! - torchvision key names under any combination of the wrapper prefixes in [`PREFIXES`]
//!   (`module.encoder_q.conv1.weight` -> `conv1.weight`);
//! - Basic or Bottleneck blocks (Bottleneck iff `layer1.0.conv3.weight` exists), any number
//!   of blocks per stage and any channel widths: both are read from the tensors, and every
//!   other shape is checked against what they imply;
//! - heads: a linear `fc` goes to [`Heads::fc`]; an MLP `fc` (`fc.0.weight`...),
//!   `projection_head`, `prototypes` and `head` are listed in [`Heads::ignored`]; any other
//!   top-level group is skipped and listed in [`LoadedWeights::unknown`].
//!
//! A tensor inside the backbone namespace (`conv1`, `bn1`, `layer1..4`) that a torchvision
//! ResNet does not have (e.g. squeeze-excitation weights) is an error rather than being
//! skipped: ignoring it would silently compute a different network.
//!
//! BatchNorm is folded into the preceding conv in f64 and rounded to f32 once:
//! `s = γ/sqrt(σ²+eps)`, `W' = W·s`, `b' = (b-μ)·s + β` (`b` = 0 unless the conv has a bias),
//! with `eps` from the metadata key `bn_eps` (or `eps`) when present and parseable, else 1e-5.
//! Weights are transposed from PyTorch's OIHW to HWIO.

use super::{Block, BlockKind, ConvLayer, Heads, ResNet};
use crate::io::Shown;
use anyhow::{bail, Result};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// Wrapper prefixes stripped from keys, repeatedly and in any combination.
pub const PREFIXES: [&str; 6] = [
    "module.",
    "backbone.",
    "encoder.",
    "encoder_q.",
    "base_encoder.",
    "model.",
];

/// Head groups that self-supervised / supervised checkpoints carry next to the backbone.
const HEAD_GROUPS: [&str; 3] = ["projection_head", "prototypes", "head"];

/// BatchNorm epsilon used when the file's metadata does not say.
pub const DEFAULT_BN_EPS: f64 = 1e-5;

/// A loaded backbone and what the loader learnt about the file.
#[derive(Clone, Debug)]
pub struct LoadedWeights {
    pub net: ResNet<ConvLayer>,
    /// The file the weights came from (or a description for in-memory weights).
    pub source: PathBuf,
    /// Key prefixes that were stripped (e.g. ["module.", "encoder_q."]), in the order they
    /// appear in the backbone's keys.
    pub prefixes: Vec<String>,
    /// Storage dtypes of the floating-point tensors seen ("F32", "F16", "BF16").
    pub dtypes: Vec<String>,
    /// BatchNorm epsilon used for folding.
    pub bn_eps: f32,
    /// Original keys of tensors outside the backbone and the known heads, skipped.
    pub unknown: Vec<String>,
}

/// Loads a safetensors file. Errors name the file and, where relevant, the tensor with the
/// expected and found shapes.
pub fn load_weights(path: &Path) -> Result<LoadedWeights> {
    let shown = path.shown();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => bail!(
            "{shown}: cannot open weights file: {}",
            crate::io::files::io_reason(&e)
        ),
    };
    if meta.is_dir() {
        bail!("{shown}: is a directory, not a safetensors weights file");
    }
    if let Err(e) = crate::io::files::check_regular(path) {
        bail!("{shown}: {e}");
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => bail!(
            "{shown}: cannot read weights file: {}",
            crate::io::files::io_reason(&e)
        ),
    };
    load_weights_from_bytes(&bytes, path)
}

/// Loads safetensors bytes already in memory; `source` names them in messages.
pub fn load_weights_from_bytes(bytes: &[u8], source: &Path) -> Result<LoadedWeights> {
    let file = source.shown().to_string();
    let st = parse_container(bytes, &file)?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow::anyhow!("{file}: not a valid safetensors file: {e}"))?;
    let bn_eps = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("bn_eps").or_else(|| m.get("eps")))
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|e| e.is_finite() && *e >= 0.0)
        .unwrap_or(DEFAULT_BN_EPS);

    let mut reader = Reader::new(&st, file.clone(), bn_eps)?;
    let net = reader.build()?;
    Ok(LoadedWeights {
        net,
        source: source.to_path_buf(),
        prefixes: reader.prefixes.clone(),
        dtypes: reader.dtypes.clone(),
        bn_eps: bn_eps as f32,
        unknown: reader.unknown.clone(),
    })
}

/// Parses the container, turning every failure into one line that says what is wrong.
fn parse_container<'a>(bytes: &'a [u8], file: &str) -> Result<SafeTensors<'a>> {
    if bytes.is_empty() {
        bail!("{file}: file is empty (0 bytes), not a safetensors file");
    }
    if bytes.len() < 8 {
        bail!(
            "{file}: not a safetensors file: {} bytes is too short for the 8-byte header length",
            bytes.len()
        );
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let avail = (bytes.len() - 8) as u64;
    if n == 0 || n > 100_000_000 {
        bail!("{file}: not a safetensors file (header length field reads {n})");
    }
    if bytes.get(8).is_some_and(|&b| b != b'{') {
        bail!("{file}: not a safetensors file (the header does not start with a JSON object)");
    }
    if n > avail {
        bail!(
            "{file}: truncated or not a safetensors file: header of {n} bytes announced, only \
             {avail} bytes follow"
        );
    }
    match SafeTensors::deserialize(bytes) {
        Ok(st) => Ok(st),
        Err(safetensors::SafeTensorError::MetadataIncompleteBuffer) => {
            let data = avail - n;
            match declared_data_len(&bytes[8..8 + n as usize]) {
                Some(want) if want > data => bail!(
                    "{file}: truncated: the header describes {want} bytes of tensor data, only \
                     {data} are present"
                ),
                Some(want) => bail!(
                    "{file}: corrupt safetensors file: the header describes {want} bytes of \
                     tensor data but {data} follow it"
                ),
                None => bail!("{file}: corrupt safetensors file: data size does not match header"),
            }
        }
        Err(e) => bail!("{file}: not a valid safetensors file: {e}"),
    }
}

/// End of the last tensor's data according to a header (None if it cannot be read).
fn declared_data_len(header: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    let mut end = 0u64;
    for (k, t) in v.as_object()? {
        if k == "__metadata__" {
            continue;
        }
        end = end.max(t.get("data_offsets")?.get(1)?.as_u64()?);
    }
    Some(end)
}

/// `W'[y][x][i][o] = W[o][i][y][x] * scale[o]` rounded to f32, as a tiled transpose of the
/// `[cout, cin*k*k]` matrix (a plain loop scatters its writes `cout` floats apart and is
/// several times slower on wide layers).
fn fold_to_hwio(w: &[f64], scale: &[f64], cin: usize, cout: usize, k: usize) -> Vec<f32> {
    const T: usize = 32;
    let kk = k * k;
    let row = kk * cin;
    debug_assert_eq!(w.len(), row * cout);
    let mut out = vec![0f32; w.len()];
    // Blocks of T output rows (HWIO rows j), in parallel; within a block, T x T tiles.
    out.par_chunks_mut(T * cout)
        .enumerate()
        .for_each(|(jb, block)| {
            let j0 = jb * T;
            for o0 in (0..cout).step_by(T) {
                let o1 = (o0 + T).min(cout);
                for (jj, dst_row) in block.chunks_exact_mut(cout).enumerate() {
                    let j = j0 + jj;
                    // dst column j = (y*k + x)*cin + i; src offset within a row = i*kk + y*k + x.
                    let src = (j % cin) * kk + j / cin;
                    for (d, o) in dst_row[o0..o1].iter_mut().zip(o0..o1) {
                        *d = (w[o * row + src] * scale[o]) as f32;
                    }
                }
            }
        });
    out
}

/// Strips wrapper prefixes (repeatedly); returns the normalised key and what was stripped.
pub fn normalise_key(key: &str) -> (&str, Vec<&'static str>) {
    let mut k = key;
    let mut stripped = Vec::new();
    'outer: loop {
        for p in PREFIXES {
            if let Some(rest) = k.strip_prefix(p) {
                if !rest.is_empty() {
                    k = rest;
                    stripped.push(p);
                    continue 'outer;
                }
            }
        }
        return (k, stripped);
    }
}

/// An expected tensor shape; `None` dims are free (read from the file).
struct Expect(Vec<Option<usize>>);

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            match d {
                Some(d) => write!(f, "{d}")?,
                None => write!(f, "*")?,
            }
        }
        write!(f, "]")
    }
}

struct Entry<'a> {
    original: String,
    view: safetensors::tensor::TensorView<'a>,
}

struct Reader<'a> {
    file: String,
    bn_eps: f64,
    /// Normalised key -> tensor, backbone and fc only.
    tensors: HashMap<String, Entry<'a>>,
    used: BTreeSet<String>,
    prefixes: Vec<String>,
    dtypes: Vec<String>,
    unknown: Vec<String>,
    heads_ignored: Vec<String>,
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

impl<'a> Reader<'a> {
    fn new(st: &SafeTensors<'a>, file: String, bn_eps: f64) -> Result<Self> {
        let mut r = Reader {
            file,
            bn_eps,
            tensors: HashMap::new(),
            used: BTreeSet::new(),
            prefixes: Vec::new(),
            dtypes: Vec::new(),
            unknown: Vec::new(),
            heads_ignored: Vec::new(),
        };
        // Sorted for deterministic messages and prefix order.
        let mut all: Vec<(&str, safetensors::tensor::TensorView<'a>)> = st.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        if all.is_empty() {
            bail!("{}: the safetensors file holds no tensors", r.file);
        }
        let mut originals: BTreeMap<String, String> = BTreeMap::new();
        for (key, view) in all {
            let (norm, stripped) = normalise_key(key);
            let group = norm.split('.').next().unwrap_or("");
            let backbone = matches!(
                group,
                "conv1" | "bn1" | "layer1" | "layer2" | "layer3" | "layer4"
            );
            if is_float(view.dtype()) {
                let d = dtype_name(view.dtype());
                if !r.dtypes.contains(&d) {
                    r.dtypes.push(d);
                }
            }
            if backbone || group == "fc" {
                if backbone {
                    for p in &stripped {
                        if !r.prefixes.iter().any(|q| q == p) {
                            r.prefixes.push(p.to_string());
                        }
                    }
                }
                if let Some(prev) = originals.insert(norm.to_string(), key.to_string()) {
                    bail!(
                        "{}: tensors '{prev}' and '{key}' both name '{norm}' once prefixes are \
                         stripped",
                        r.file
                    );
                }
                r.tensors.insert(
                    norm.to_string(),
                    Entry {
                        original: key.to_string(),
                        view,
                    },
                );
            } else if HEAD_GROUPS.contains(&group) {
                if !r.heads_ignored.iter().any(|g| g == group) {
                    r.heads_ignored.push(group.to_string());
                }
            } else {
                r.unknown.push(key.to_string());
            }
        }
        if !r.tensors.keys().any(|k| k != "fc" && !k.starts_with("fc.")) {
            let n = st.len();
            let mut sample: Vec<&str> = st.names();
            sample.sort();
            sample.truncate(4);
            bail!(
                "{}: no ResNet backbone found: none of the {n} tensors is conv1/bn1/layer1..4 \
                 after stripping prefixes {PREFIXES:?} (first keys: {sample:?})",
                r.file
            );
        }
        Ok(r)
    }

    /// The original key a normalised key would have in this file (for messages about
    /// missing tensors).
    fn original_of(&self, norm: &str) -> String {
        match self.tensors.get(norm) {
            Some(e) => e.original.clone(),
            None => format!("{}{norm}", self.prefixes.concat()),
        }
    }

    fn has(&self, norm: &str) -> bool {
        self.tensors.contains_key(norm)
    }

    /// Checks a tensor's presence, dtype and shape; returns its shape.
    fn check(&mut self, norm: &str, expect: &[Option<usize>], why: &str) -> Result<Vec<usize>> {
        let file = &self.file;
        let exp = Expect(expect.to_vec());
        let Some(e) = self.tensors.get(norm) else {
            bail!(
                "{file}: missing tensor '{}' (expected shape {exp}{why})",
                self.original_of(norm)
            );
        };
        if !is_float(e.view.dtype()) {
            bail!(
                "{file}: tensor '{}' has dtype {:?}, expected a floating-point tensor (F32, F16 \
                 or BF16)",
                e.original,
                e.view.dtype()
            );
        }
        let shape = e.view.shape().to_vec();
        let ok = shape.len() == expect.len()
            && shape
                .iter()
                .zip(expect)
                .all(|(&s, &x)| s > 0 && x.is_none_or(|x| x == s));
        if !ok {
            bail!(
                "{file}: tensor '{}' has shape {shape:?}, expected {exp}{why}",
                e.original
            );
        }
        self.used.insert(norm.to_string());
        Ok(shape)
    }

    /// Values of a (checked) tensor as f64, rejecting NaN/inf.
    fn values(&self, norm: &str) -> Result<Vec<f64>> {
        let e = &self.tensors[norm];
        let data = e.view.data();
        let v: Vec<f64> = match e.view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            Dtype::F64 => data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            d => bail!(
                "{}: tensor '{}' has unsupported dtype {d:?}",
                self.file,
                e.original
            ),
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!(
                "{}: tensor '{}' contains {} at flat index {i}",
                self.file,
                e.original,
                if v[i].is_nan() {
                    "NaN"
                } else {
                    "an infinite value"
                }
            );
        }
        Ok(v)
    }

    /// Loads conv `conv` (normalised prefix, e.g. "layer1.0.conv2") with its BatchNorm `bn`,
    /// folds and transposes it. `cout` None = read from the file.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        cin: usize,
        cout: Option<usize>,
        k: usize,
        stride: usize,
        pad: usize,
        why: &str,
    ) -> Result<ConvLayer> {
        let wkey = format!("{conv}.weight");
        let shape = self.check(&wkey, &[cout, Some(cin), Some(k), Some(k)], why)?;
        let cout = shape[0];
        let bkey = format!("{conv}.bias");
        let conv_bias = if self.has(&bkey) {
            self.check(&bkey, &[Some(cout)], " (conv bias, one per output channel)")?;
            Some(self.values(&bkey)?)
        } else {
            None
        };
        let bn_why = format!(" (one per output channel of '{}')", self.original_of(&wkey));
        let mut bnv = Vec::with_capacity(4);
        for p in ["weight", "bias", "running_mean", "running_var"] {
            let key = format!("{bn}.{p}");
            self.check(&key, &[Some(cout)], &bn_why)?;
            bnv.push(self.values(&key)?);
        }
        let nbt = format!("{bn}.num_batches_tracked");
        if self.has(&nbt) {
            self.used.insert(nbt);
        }
        let (gamma, beta, mean, var) = (&bnv[0], &bnv[1], &bnv[2], &bnv[3]);
        let mut scale = vec![0f64; cout];
        let mut bias = vec![0f32; cout];
        for o in 0..cout {
            let d = var[o] + self.bn_eps;
            if d.is_nan() || d <= 0.0 {
                bail!(
                    "{}: tensor '{}' has running_var {} at channel {o}: variance + eps must be \
                     positive",
                    self.file,
                    self.original_of(&format!("{bn}.running_var")),
                    var[o]
                );
            }
            scale[o] = gamma[o] / d.sqrt();
            let b = conv_bias.as_ref().map_or(0.0, |b| b[o]);
            bias[o] = ((b - mean[o]) * scale[o] + beta[o]) as f32;
        }
        let w = self.values(&wkey)?;
        let weight = fold_to_hwio(&w, &scale, cin, cout, k);
        if weight.iter().chain(&bias).any(|v| !v.is_finite()) {
            bail!(
                "{}: folding '{}' into '{}' overflows f32 (tiny running_var?)",
                self.file,
                self.original_of(&format!("{bn}.weight")),
                self.original_of(&wkey)
            );
        }
        Ok(ConvLayer {
            name: conv.to_string(),
            cin,
            cout,
            kh: k,
            kw: k,
            stride,
            pad,
            weight,
            bias,
        })
    }

    /// Block indices present under `layer{s}.`; must be 0..n without gaps.
    fn block_count(&self, s: usize) -> Result<usize> {
        let pre = format!("layer{s}.");
        let mut idx = BTreeSet::new();
        for k in self.tensors.keys() {
            if let Some(rest) = k.strip_prefix(&pre) {
                let j = rest.split('.').next().unwrap_or("");
                match j.parse::<usize>() {
                    Ok(j) => {
                        idx.insert(j);
                    }
                    Err(_) => bail!(
                        "{}: unexpected tensor '{}': not a block of a torchvision ResNet",
                        self.file,
                        self.tensors[k].original
                    ),
                }
            }
        }
        if idx.is_empty() {
            bail!(
                "{}: no blocks found for stage layer{s} (expected tensors like '{}'); a ResNet \
                 needs four non-empty stages",
                self.file,
                self.original_of(&format!("layer{s}.0.conv1.weight"))
            );
        }
        let n = idx.len();
        if let Some(missing) = (0..n).find(|j| !idx.contains(j)) {
            bail!(
                "{}: stage layer{s} has blocks {:?}: block {missing} is missing (missing tensor \
                 '{}')",
                self.file,
                idx,
                self.original_of(&format!("layer{s}.{missing}.conv1.weight"))
            );
        }
        Ok(n)
    }

    fn build(&mut self) -> Result<ResNet<ConvLayer>> {
        let stem = self.conv_bn("conv1", "bn1", 3, None, 7, 2, 3, " (stem: 7x7 conv of RGB)")?;
        let kind = if self.has("layer1.0.conv3.weight") {
            BlockKind::Bottleneck
        } else {
            BlockKind::Basic
        };
        let mut stages: [Vec<Block<ConvLayer>>; 4] = Default::default();
        let mut c = stem.cout;
        for s in 1..=4 {
            let n = self.block_count(s)?;
            for j in 0..n {
                let stride = if s > 1 && j == 0 { 2 } else { 1 };
                let p = format!("layer{s}.{j}");
                let from = if j == 0 && s == 1 {
                    "the stem".to_string()
                } else if j == 0 {
                    format!("layer{}", s - 1)
                } else {
                    format!("layer{s}.{}", j - 1)
                };
                let inw = format!(" (input channels {c} from {from})");
                let mut convs = Vec::new();
                match kind {
                    BlockKind::Bottleneck => {
                        let c1 = self.conv_bn(
                            &format!("{p}.conv1"),
                            &format!("{p}.bn1"),
                            c,
                            None,
                            1,
                            1,
                            0,
                            &inw,
                        )?;
                        let w = c1.cout;
                        let why = format!(" (3x3 conv after {p}.conv1 with {w} outputs)");
                        let c2 = self.conv_bn(
                            &format!("{p}.conv2"),
                            &format!("{p}.bn2"),
                            w,
                            Some(w),
                            3,
                            stride,
                            1,
                            &why,
                        )?;
                        let why = format!(" (1x1 conv after {p}.conv2 with {w} outputs)");
                        let c3 = self.conv_bn(
                            &format!("{p}.conv3"),
                            &format!("{p}.bn3"),
                            w,
                            None,
                            1,
                            1,
                            0,
                            &why,
                        )?;
                        convs.extend([c1, c2, c3]);
                    }
                    BlockKind::Basic => {
                        if self.has(&format!("{p}.conv3.weight")) {
                            bail!(
                                "{}: unexpected tensor '{}': layer1.0 is a basic block (no \
                                 conv3) but {p} has a conv3",
                                self.file,
                                self.original_of(&format!("{p}.conv3.weight"))
                            );
                        }
                        let c1 = self.conv_bn(
                            &format!("{p}.conv1"),
                            &format!("{p}.bn1"),
                            c,
                            None,
                            3,
                            stride,
                            1,
                            &inw,
                        )?;
                        let w = c1.cout;
                        let why = format!(" (3x3 conv after {p}.conv1 with {w} outputs)");
                        let c2 = self.conv_bn(
                            &format!("{p}.conv2"),
                            &format!("{p}.bn2"),
                            w,
                            Some(w),
                            3,
                            1,
                            1,
                            &why,
                        )?;
                        convs.extend([c1, c2]);
                    }
                }
                let out = convs.last().expect("convs").cout;
                let ds_key = format!("{p}.downsample.0.weight");
                let downsample = if self.has(&ds_key) {
                    let why = format!(
                        " (1x1 projection of the block input, {c} channels, to the block \
                         output, {out} channels)"
                    );
                    Some(self.conv_bn(
                        &format!("{p}.downsample.0"),
                        &format!("{p}.downsample.1"),
                        c,
                        Some(out),
                        1,
                        stride,
                        0,
                        &why,
                    )?)
                } else if stride != 1 || c != out {
                    bail!(
                        "{}: missing tensor '{}' (expected shape [{out}, {c}, 1, 1]): block {p} \
                         maps {c} to {out} channels with stride {stride}, so its residual needs \
                         a projection",
                        self.file,
                        self.original_of(&ds_key)
                    );
                } else {
                    None
                };
                stages[s - 1].push(Block { convs, downsample });
                c = out;
            }
        }
        let fc = self.fc(c)?;
        // Anything in the backbone namespace that was not consumed is a different network.
        let mut stray: Vec<&str> = self
            .tensors
            .iter()
            .filter(|(k, _)| !self.used.contains(*k) && *k != "fc" && !k.starts_with("fc."))
            .map(|(_, e)| e.original.as_str())
            .collect();
        stray.sort();
        if let Some(first) = stray.first() {
            bail!(
                "{}: unexpected tensor '{first}' (and {} more): not part of a torchvision \
                 {kind:?} ResNet",
                self.file,
                stray.len() - 1
            );
        }
        let mut heads = Heads {
            fc,
            ignored: self.heads_ignored.clone(),
        };
        heads.ignored.sort();
        Ok(ResNet {
            kind,
            stem,
            stages,
            heads,
        })
    }

    /// The fc head: a linear classifier over `features` pooled channels, an MLP (noted in
    /// ignored), or absent.
    #[allow(clippy::type_complexity)]
    fn fc(&mut self, features: usize) -> Result<Option<(Vec<f32>, Vec<f32>, usize)>> {
        let fc_keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with("fc."))
            .cloned()
            .collect();
        if fc_keys.is_empty() {
            return Ok(None);
        }
        if !self.has("fc.weight") {
            // fc.0.weight, fc.2.weight...: an MLP head (MoCo v2, SimCLR).
            self.heads_ignored.push("fc (mlp)".to_string());
            return Ok(None);
        }
        if let Some(k) = fc_keys
            .iter()
            .find(|k| *k != "fc.weight" && *k != "fc.bias")
        {
            bail!(
                "{}: unexpected tensor '{}' next to 'fc.weight': fc is neither a linear layer \
                 nor an MLP",
                self.file,
                self.tensors[k].original
            );
        }
        let why = format!(" (linear classifier over the {features} pooled layer4 channels)");
        let shape = self.check("fc.weight", &[None, Some(features)], &why)?;
        let classes = shape[0];
        let w: Vec<f32> = self
            .values("fc.weight")?
            .into_iter()
            .map(|v| v as f32)
            .collect();
        let b: Vec<f32> = if self.has("fc.bias") {
            self.check("fc.bias", &[Some(classes)], " (one per class of fc.weight)")?;
            self.values("fc.bias")?
                .into_iter()
                .map(|v| v as f32)
                .collect()
        } else {
            vec![0.0; classes]
        };
        Ok(Some((w, b, classes)))
    }
}
