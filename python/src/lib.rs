//! `lafam_gpu._native`: the Python bindings of lafam-gpu (PyO3, numpy in and out). The
//! pure-Python package `lafam_gpu` (python/lafam_gpu/) re-exports these and adds the
//! Quantus explain function.
//!
//! Everything computes through the library (`lafam_gpu::Explainer`, `io::load_image`,
//! `io::render_map`, `checkpoint::resolve_weights`), so maps, overlays and error messages
//! are the CLI's. The GIL is released while images are decoded and while the engine works.

use ::lafam_gpu as lib;
use lib::checkpoint::Resolving;
use lib::explain::relax::RelaxConfig;
use lib::io::{Display, Shown};
use lib::model::BlockKind;
use lib::{BackendChoice, Composite, Explainer, Method, Options, Stage, Upsample};
use numpy::{
    PyArray1, PyArray3, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// An anyhow error as a Python exception with the CLI's message (`{e:#}`): a missing file is
/// a `FileNotFoundError`, anything else `default` (ValueError for what the caller gave,
/// RuntimeError for the engine).
fn py_err(e: anyhow::Error, default: fn(String) -> PyErr) -> PyErr {
    let msg = format!("{e:#}");
    let not_found = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    }) || msg.contains(": no such file");
    if not_found {
        PyFileNotFoundError::new_err(msg)
    } else {
        default(msg)
    }
}

fn value_err(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

fn runtime_err(msg: String) -> PyErr {
    PyRuntimeError::new_err(msg)
}

fn parse_upsample(s: &str) -> PyResult<Upsample> {
    match s {
        "nearest" => Ok(Upsample::Nearest),
        "bilinear" => Ok(Upsample::Bilinear),
        _ => Err(PyValueError::new_err(format!(
            "unknown upsample '{s}': expected one of nearest, bilinear"
        ))),
    }
}

fn parse_methods(methods: &Bound<'_, PyAny>) -> PyResult<Vec<Method>> {
    let names: Vec<String> = if let Ok(s) = methods.cast::<PyString>() {
        s.to_cow()?
            .split(',')
            .map(|m| m.trim().to_string())
            .collect()
    } else {
        let mut v = Vec::new();
        for item in methods.try_iter().map_err(|_| {
            PyTypeError::new_err("methods must be a method name or a sequence of names")
        })? {
            v.push(item?.extract::<String>().map_err(|_| {
                PyTypeError::new_err("methods must be a method name or a sequence of names")
            })?);
        }
        v
    };
    let mut out: Vec<Method> = Vec::new();
    for n in &names {
        let m: Method = n
            .parse()
            .map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
        if m == Method::Concepts {
            // Its outputs are named per image (concept-<channel>) with a JSON side output:
            // not yet mapped to the dict this API returns.
            return Err(PyValueError::new_err(
                "concepts is not available from Python yet: use `lafam-gpu run --method concepts`",
            ));
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    if out.is_empty() {
        return Err(PyValueError::new_err("no method requested"));
    }
    Ok(out)
}

/// One `uint8` H x W x 3 (or N x H x W x 3) array as images; `what` names it in errors.
fn array_images(arr: &Bound<'_, PyUntypedArray>, what: &str, out: &mut Vec<Input>) -> PyResult<()> {
    let py = arr.py();
    let shape = arr.shape().to_vec();
    let shape_s = format!(
        "({})",
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !arr.dtype().is_equiv_to(&numpy::dtype::<u8>(py)) {
        return Err(PyValueError::new_err(format!(
            "{what}: expected uint8 RGB values 0..255, got an array of dtype {}{}",
            arr.dtype(),
            if arr.dtype().is_equiv_to(&numpy::dtype::<f32>(py))
                || arr.dtype().is_equiv_to(&numpy::dtype::<f64>(py))
            {
                " (for floats in [0, 1]: (x * 255).round().astype(numpy.uint8))"
            } else {
                ""
            }
        )));
    }
    let (n, h, w) = match shape[..] {
        [h, w, 3] => (1, h, w),
        [n, h, w, 3] => (n, h, w),
        _ => {
            return Err(PyValueError::new_err(format!(
                "{what}: expected an H x W x 3 or N x H x W x 3 array (RGB), got shape {shape_s}"
            )))
        }
    };
    if h == 0 || w == 0 || n == 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: empty image array (shape {shape_s})"
        )));
    }
    if h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(PyValueError::new_err(format!(
            "{what}: image too large (shape {shape_s})"
        )));
    }
    let typed = arr.cast::<PyArrayDyn<u8>>()?;
    let ro = typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?;
    // The one copy: into the library's RGB images (row-major, channels last), image by image.
    let per = h * w * 3;
    let mut push = |pixels: Vec<u8>| {
        let img =
            image::RgbImage::from_raw(w as u32, h as u32, pixels).expect("buffer sized h*w*3");
        out.push(Input::Image(img));
    };
    // (`as_slice` also takes Fortran order, in memory order: only C order is read as is.)
    match ro.as_slice().ok().filter(|_| arr.is_c_contiguous()) {
        Some(all) => all.chunks_exact(per).for_each(|c| push(c.to_vec())),
        None => {
            // Not C-contiguous (a view, a transpose): in logical order.
            let mut it = ro.as_array().into_iter().copied();
            for _ in 0..n {
                push(it.by_ref().take(per).collect());
            }
        }
    }
    Ok(())
}

enum Input {
    Image(image::RgbImage),
    Path(PathBuf),
}

fn as_path(obj: &Bound<'_, PyAny>) -> Option<PathBuf> {
    if obj.is_instance_of::<PyString>() {
        return obj.extract::<PathBuf>().ok();
    }
    if obj.hasattr("__fspath__").unwrap_or(false) {
        return obj.extract::<PathBuf>().ok();
    }
    None
}

/// `images` as given: one array (H x W x 3 or N x H x W x 3), one path, or a list/tuple of
/// arrays (H x W x 3) and/or paths.
fn read_inputs(images: &Bound<'_, PyAny>) -> PyResult<Vec<Input>> {
    let mut out = Vec::new();
    if let Ok(arr) = images.cast::<PyUntypedArray>() {
        array_images(arr, "images", &mut out)?;
    } else if let Some(p) = as_path(images) {
        out.push(Input::Path(p));
    } else if images.is_instance_of::<PyList>() || images.is_instance_of::<PyTuple>() {
        for (i, item) in images.try_iter()?.enumerate() {
            let item = item?;
            if let Ok(arr) = item.cast::<PyUntypedArray>() {
                if arr.ndim() != 3 {
                    return Err(PyValueError::new_err(format!(
                        "images[{i}]: expected an H x W x 3 array in a list, got {} dimensions",
                        arr.ndim()
                    )));
                }
                array_images(arr, &format!("images[{i}]"), &mut out)?;
            } else if let Some(p) = as_path(&item) {
                out.push(Input::Path(p));
            } else {
                return Err(PyTypeError::new_err(format!(
                    "images[{i}]: expected a uint8 H x W x 3 numpy array or a file path, got {}",
                    item.get_type().name()?
                )));
            }
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "images: expected a uint8 numpy array (H x W x 3 or N x H x W x 3), a file path or \
             a list of them, got {}",
            images.get_type().name()?
        )));
    }
    if out.is_empty() {
        return Err(PyValueError::new_err("images: no images given"));
    }
    Ok(out)
}

/// Decodes the paths among `inputs` with the library's loader (in parallel, the GIL
/// released), in order.
fn decode(py: Python<'_>, inputs: Vec<Input>) -> PyResult<Vec<image::RgbImage>> {
    py.detach(|| {
        inputs
            .into_par_iter()
            .map(|i| match i {
                Input::Image(img) => Ok(img),
                Input::Path(p) => lib::io::load_image(&p),
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .map_err(|e| py_err(e, value_err))
}

/// What `info()` reports of the weights (kept from loading).
struct WeightsInfo {
    source: PathBuf,
    prefixes: Vec<String>,
    dtypes: Vec<String>,
    bn_eps: f32,
    arch: String,
    block: &'static str,
    blocks_per_stage: Vec<usize>,
    stem_channels: usize,
    stage_channels: Vec<usize>,
    parameters: usize,
    /// The classifier's classes (None: no `fc`).
    classes: Option<usize>,
    heads: Vec<String>,
}

/// A backbone prepared on a backend: `Explainer(weights, backend="auto", layer="layer4",
/// rule="epsilon-plus-flat", upsample="nearest", size=224, batch=16, class_=None,
/// masks=3000, mask_batch=100, seed=0, cache_dir=None)`.
///
/// `weights` is a safetensors or PyTorch (.pth, .pth.tar) file, or a known model name
/// (e.g. "swav", downloaded once into the cache). The options are the `run` command's.
#[pyclass(module = "lafam_gpu._native", name = "Explainer")]
struct PyExplainer {
    inner: Mutex<Explainer>,
    weights: WeightsInfo,
    /// The last `explain` call: (seconds in all, seconds inside the engine).
    last: Mutex<(f64, f64)>,
}

/// Prints a download's progress through Python (stderr, tqdm where installed).
fn resolve(
    py: Python<'_>,
    arg: &Path,
    cache: Option<&Path>,
) -> PyResult<lib::model::LoadedWeights> {
    let sys = py.import("sys")?;
    let stderr = sys.getattr("stderr")?;
    let say = |s: String| {
        let _ = stderr.call_method1("write", (format!("{s}\n"),));
    };
    let mut bar: Option<Bound<'_, PyAny>> = None;
    let mut last = 0u64;
    let r = lib::checkpoint::resolve_weights(arg, cache, &mut |event| match event {
        Resolving::Downloading { model, to } => {
            say(lib::checkpoint::download_notice(model, to))
        }
        Resolving::Progress { done, total } => {
            if bar.is_none() {
                bar = tqdm(py, total, "B").ok();
            }
            if let Some(b) = &bar {
                let _ = b.call_method1("update", (done.saturating_sub(last),));
            }
            last = done;
        }
        Resolving::TransferEnded => {
            if let Some(b) = bar.take() {
                let _ = b.call_method0("close");
            }
        }
        Resolving::Downloaded { path, bytes } => {
            say(format!("downloaded {bytes} bytes to {}", path.shown()))
        }
        Resolving::Note { path, note } => say(format!("note: {}: {note}", path.shown())),
    });
    r.map_err(|e| py_err(e, value_err))
}

/// A tqdm bar, if tqdm is installed.
fn tqdm<'py>(py: Python<'py>, total: Option<u64>, unit: &str) -> PyResult<Bound<'py, PyAny>> {
    let tqdm = py.import("tqdm.auto")?.getattr("tqdm")?;
    let kw = PyDict::new(py);
    kw.set_item("total", total)?;
    kw.set_item("unit", unit)?;
    if unit == "B" {
        kw.set_item("unit_scale", true)?;
    }
    kw.set_item("leave", false)?;
    tqdm.call((), Some(&kw))
}

fn check_range(name: &str, v: i64, lo: i64, hi: i64) -> PyResult<()> {
    if v < lo || v > hi {
        return Err(PyValueError::new_err(format!(
            "{name}={v} is out of range: expected {lo}..={hi}"
        )));
    }
    Ok(())
}

#[pymethods]
impl PyExplainer {
    #[new]
    #[pyo3(signature = (weights, *, backend="auto", layer="layer4", rule="epsilon-plus-flat",
        upsample="nearest", size=224, batch=16, class_=None, masks=3000, mask_batch=100, seed=0,
        cache_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        weights: PathBuf,
        backend: &str,
        layer: &str,
        rule: &str,
        upsample: &str,
        size: i64,
        batch: i64,
        class_: Option<i64>,
        masks: i64,
        mask_batch: i64,
        seed: u64,
        cache_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let backend: BackendChoice = backend
            .parse()
            .map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
        let stage: Stage = layer
            .parse()
            .map_err(|e| PyValueError::new_err(format!("{e:#}")))?;
        let rule: Composite = rule.parse().map_err(PyValueError::new_err)?;
        let upsample = parse_upsample(upsample)?;
        // The CLI's ranges.
        check_range("size", size, 0, 16384)?;
        check_range("batch", batch, 1, 4096)?;
        check_range("masks", masks, 1, u32::MAX as i64)?;
        check_range("mask_batch", mask_batch, 1, u32::MAX as i64)?;
        if let Some(c) = class_ {
            check_range("class_", c, 0, i64::MAX)?;
        }
        let loaded = resolve(py, &weights, cache_dir.as_deref())?;
        if let (Some(c), Some((_, _, classes))) = (class_, &loaded.net.heads.fc) {
            if c as usize >= *classes {
                return Err(PyValueError::new_err(format!(
                    "class_={c} is out of range: the classifier of {} has {classes} classes (0..{})",
                    weights.shown(),
                    classes.saturating_sub(1)
                )));
            }
        }
        let options = Options {
            backend,
            stage,
            upsample,
            rule,
            size: size as u32,
            batch: batch as usize,
            class: class_.map(|c| c as usize),
            relax: RelaxConfig {
                masks: masks as usize,
                batch: mask_batch as usize,
                seed,
            },
            ..Options::default()
        };
        let net = &loaded.net;
        let mut heads = Vec::new();
        if let Some((_, _, classes)) = &net.heads.fc {
            heads.push(format!("fc ({classes} classes)"));
        }
        heads.extend(net.heads.ignored.iter().map(|h| format!("{h} (ignored)")));
        let info = WeightsInfo {
            source: weights.clone(),
            prefixes: loaded.prefixes.clone(),
            dtypes: loaded.dtypes.clone(),
            bn_eps: loaded.bn_eps,
            arch: net.arch_name(),
            block: match net.kind {
                BlockKind::Basic => "basic",
                BlockKind::Bottleneck => "bottleneck",
            },
            blocks_per_stage: net.blocks_per_stage().to_vec(),
            stem_channels: net.stem.cout,
            stage_channels: net.stage_channels().to_vec(),
            parameters: net.parameter_count(),
            classes: net.heads.fc.as_ref().map(|(_, _, c)| *c),
            heads,
        };
        let explainer = py
            .detach(|| Explainer::from_weights(&loaded, options))
            .map_err(|e| py_err(e, runtime_err))?;
        Ok(PyExplainer {
            inner: Mutex::new(explainer),
            weights: info,
            last: Mutex::new((0.0, 0.0)),
        })
    }

    /// Every method's maps for `images`: a dict from output name ("lafam", "lrp", ...,
    /// "relax" and "relax-uncertainty") to float32 maps at each image's own resolution, an
    /// N x H x W array when all images share a size, else a list of H x W arrays.
    ///
    /// `images`: a uint8 H x W x 3 array, an N x H x W x 3 array, a file path, or a list of
    /// H x W x 3 arrays and/or paths. `progress`: None (a tqdm bar when tqdm is installed and
    /// there are more images than one batch holds), False, True, or a callable `(done, total)`.
    #[pyo3(signature = (images, methods=None, *, progress=None))]
    fn explain<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        methods: Option<&Bound<'py, PyAny>>,
        progress: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let start = Instant::now();
        let mut engine_s = 0.0;
        let methods = match methods {
            Some(m) => parse_methods(m)?,
            None => vec![Method::Lafam],
        };
        let inputs = read_inputs(images)?;
        let images = decode(py, inputs)?;
        // Waits for another thread's call with the GIL released (no deadlock with it).
        let mut guard = self
            .inner
            .lock_py_attached(py)
            .map_err(|_| PyRuntimeError::new_err("the explainer was poisoned by a panic"))?;
        let ex: &mut Explainer = &mut guard;
        // Refused before any work, with the CLI's messages.
        if methods.contains(&Method::Gradcam) && self.weights.classes.is_none() {
            return Err(PyValueError::new_err(format!(
                "{}: {}",
                self.weights.source.shown(),
                lib::explain::gradcam::NEEDS_CLASSIFIER
            )));
        }
        py.detach(|| ex.check(&methods))
            .map_err(|e| py_err(e, runtime_err))?;
        // Batches as one `Explainer::explain` call makes them (by network size, in order),
        // one call each, so that progress can be told between them.
        let size = ex.options().size;
        let per_batch = ex.options().batch.max(1);
        let mut groups: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        for (i, img) in images.iter().enumerate() {
            let (w, h) = img.dimensions();
            let (nw, nh) = match size {
                0 => (w, h),
                s => lib::io::shorter_side_dims(w, h, s),
            };
            if let Err(e) = lib::io::check_net_input(nw, nh) {
                let fix = match lib::io::max_net_size(w, h) {
                    Some(n) => format!("use size={n} or smaller"),
                    None => "its aspect ratio cannot fit at any size: crop it".to_string(),
                };
                return Err(PyValueError::new_err(format!(
                    "image {i}: {e:#} (size={size} on a {w}x{h} image); {fix}"
                )));
            }
            groups.entry((nw, nh)).or_default().push(i);
        }
        let chunks: Vec<Vec<usize>> = groups
            .into_values()
            .flat_map(|g| {
                g.chunks(per_batch)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect();
        let total = images.len();
        // The images in batch order (moved, not copied), so that each batch is one slice.
        let mut slots: Vec<Option<image::RgbImage>> = images.into_iter().map(Some).collect();
        let ordered: Vec<image::RgbImage> = chunks
            .iter()
            .flatten()
            .map(|&i| slots[i].take().expect("each image in one batch"))
            .collect();
        drop(slots);
        let mut report = Progress::new(py, progress, total, chunks.len() > 1 && total > per_batch)?;
        // (output name, map per image)
        let mut outputs: Vec<(String, Vec<Option<lib::HostTensor>>)> = Vec::new();
        let mut first = 0;
        for chunk in &chunks {
            let batch = &ordered[first..first + chunk.len()];
            first += chunk.len();
            let t = Instant::now();
            let out = py.detach(|| ex.explain(batch, &methods));
            engine_s += t.elapsed().as_secs_f64();
            let out = out.map_err(|e| {
                report.close();
                py_err(e, runtime_err)
            })?;
            if outputs.is_empty() {
                outputs = out
                    .iter()
                    .map(|m| {
                        (
                            format!("{}{}", m.method.info().name, m.output),
                            vec![None; total],
                        )
                    })
                    .collect();
            }
            for (slot, m) in outputs.iter_mut().zip(out) {
                for (&i, map) in chunk.iter().zip(m.maps) {
                    slot.1[i] = Some(map);
                }
            }
            report.advance(chunk.len())?;
        }
        report.close();
        drop(guard);
        let dict = PyDict::new(py);
        for (name, maps) in outputs {
            let maps: Vec<lib::HostTensor> = maps
                .into_iter()
                .map(|m| m.expect("every image explained"))
                .collect();
            dict.set_item(name, maps_to_py(py, maps)?)?;
        }
        if let Ok(mut last) = self.last.lock() {
            *last = (start.elapsed().as_secs_f64(), engine_s);
        }
        Ok(dict)
    }

    /// The network and the backend as a dict.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let ex = self
            .inner
            .lock_py_attached(py)
            .map_err(|_| PyRuntimeError::new_err("the explainer was poisoned by a panic"))?;
        let w = &self.weights;
        let d = PyDict::new(py);
        d.set_item("weights", w.source.to_string_lossy().into_owned())?;
        d.set_item("arch", &w.arch)?;
        d.set_item("block", w.block)?;
        d.set_item("blocks_per_stage", w.blocks_per_stage.clone())?;
        d.set_item("stem_channels", w.stem_channels)?;
        d.set_item("stage_channels", w.stage_channels.clone())?;
        d.set_item("parameters", w.parameters)?;
        d.set_item("classes", w.classes)?;
        d.set_item("heads", w.heads.clone())?;
        d.set_item("prefixes_stripped", self.weights.prefixes.clone())?;
        d.set_item("dtypes", self.weights.dtypes.clone())?;
        d.set_item("bn_eps", self.weights.bn_eps)?;
        d.set_item("backend", ex.backend())?;
        d.set_item("backend_kind", ex.backend_kind())?;
        d.set_item("backend_note", ex.backend_note())?;
        let o = ex.options();
        let opts = PyDict::new(py);
        opts.set_item("layer", o.stage.to_string())?;
        opts.set_item("rule", o.rule.name())?;
        opts.set_item(
            "upsample",
            match o.upsample {
                Upsample::Nearest => "nearest",
                Upsample::Bilinear => "bilinear",
            },
        )?;
        opts.set_item("size", o.size)?;
        opts.set_item("batch", o.batch)?;
        opts.set_item("class_", o.class)?;
        opts.set_item("masks", o.relax.masks)?;
        opts.set_item("mask_batch", o.relax.batch)?;
        opts.set_item("seed", o.relax.seed)?;
        d.set_item("options", opts)?;
        Ok(d)
    }

    /// The last `explain` call's wall time and the part of it spent in the engine (the
    /// library's `Explainer::explain`, GIL released), in seconds: `{"total_s", "engine_s"}`.
    /// The difference is what Python adds (argument checks, array conversions, progress).
    #[getter]
    fn last_timings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (total, engine) = self.last.lock().map(|g| *g).unwrap_or((0.0, 0.0));
        let d = PyDict::new(py);
        d.set_item("total_s", total)?;
        d.set_item("engine_s", engine)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        // Never waits: another thread may be explaining.
        let backend = match self.inner.try_lock() {
            Ok(e) => e.backend().to_string(),
            Err(_) => "busy".to_string(),
        };
        format!(
            "Explainer({:?}, backend: {backend})",
            self.weights.source.to_string_lossy()
        )
    }
}

/// Progress between batches: a callable, a tqdm bar, or nothing.
enum Progress<'py> {
    None,
    Callback(Bound<'py, PyAny>, usize, usize),
    Bar(Bound<'py, PyAny>),
}

impl<'py> Progress<'py> {
    fn new(
        py: Python<'py>,
        arg: Option<&Bound<'py, PyAny>>,
        total: usize,
        long: bool,
    ) -> PyResult<Self> {
        Ok(match arg {
            Some(a) if a.is_callable() => Progress::Callback(a.clone(), 0, total),
            Some(a) if !a.is_truthy()? => Progress::None,
            Some(_) => {
                Progress::Bar(tqdm(py, Some(total as u64), "img").map_err(|e| {
                    PyValueError::new_err(format!("progress=True needs tqdm ({e})"))
                })?)
            }
            None if long => {
                tqdm(py, Some(total as u64), "img").map_or(Progress::None, Progress::Bar)
            }
            None => Progress::None,
        })
    }

    fn advance(&mut self, n: usize) -> PyResult<()> {
        match self {
            Progress::None => {}
            Progress::Callback(f, done, total) => {
                *done += n;
                f.call1((*done, *total))?;
            }
            Progress::Bar(b) => {
                b.call_method1("update", (n,))?;
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        if let Progress::Bar(b) = self {
            let _ = b.call_method0("close");
        }
        *self = Progress::None;
    }
}

/// Maps `[1, h, w, 1]` as one N x H x W array when they share a size (one copy), else a
/// list of H x W arrays (no copy: the buffers move into numpy).
fn maps_to_py(py: Python<'_>, maps: Vec<lib::HostTensor>) -> PyResult<Bound<'_, PyAny>> {
    let (h, w) = (maps[0].shape.h, maps[0].shape.w);
    let n = maps.len();
    if maps.iter().all(|m| (m.shape.h, m.shape.w) == (h, w)) {
        if n == 1 {
            let data = maps.into_iter().next().expect("one map").data;
            return Ok(PyArray1::from_vec(py, data).reshape([1, h, w])?.into_any());
        }
        let arr = PyArray3::<f32>::zeros(py, [n, h, w], false);
        {
            // SAFETY: freshly allocated, contiguous, not shared with Python yet.
            let dst = unsafe { arr.as_slice_mut() }.expect("contiguous");
            for (k, m) in maps.iter().enumerate() {
                dst[k * h * w..(k + 1) * h * w].copy_from_slice(&m.data);
            }
        }
        return Ok(arr.into_any());
    }
    let list = PyList::empty(py);
    for m in maps {
        let (h, w) = (m.shape.h, m.shape.w);
        list.append(PyArray1::from_vec(py, m.data).reshape([h, w])?)?;
    }
    Ok(list.into_any())
}

/// `Display` by name: "inferno" (values in [0, 1]), "inferno-scaled" (min-max scaled),
/// "rdbu" (signed, centred on zero), or a method's output name (how the CLI shows it).
fn parse_colormap(name: &str) -> PyResult<Display> {
    match name {
        "inferno" => return Ok(Display::Unit),
        "inferno-scaled" => return Ok(Display::Scaled),
        "rdbu" => return Ok(Display::Signed),
        _ => {}
    }
    let base = name.strip_suffix("-uncertainty").unwrap_or(name);
    match base.parse::<Method>() {
        Ok(m) if base == name || m.info().outputs.contains(&"-uncertainty") => Ok(m.info().display),
        _ => Err(PyValueError::new_err(format!(
            "unknown colormap '{name}': expected inferno, inferno-scaled, rdbu or a method name ({})",
            Method::ALL.iter().map(|m| m.info().name).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// `(heatmap, overlay)` as the CLI draws them (`io::render_map`): uint8 H x W x 3 arrays.
#[pyfunction]
#[pyo3(signature = (image, map, colormap, alpha))]
fn _render<'py>(
    py: Python<'py>,
    image: &Bound<'py, PyAny>,
    map: &Bound<'py, PyAny>,
    colormap: &str,
    alpha: Option<f32>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let display = parse_colormap(colormap)?;
    if display == Display::Signed && alpha.is_some() {
        return Err(PyValueError::new_err(
            "alpha does not apply to the signed (rdbu) colormap: its opacity follows |relevance|",
        ));
    }
    let alpha = alpha.unwrap_or(lib::io::OVERLAY_ALPHA);
    if !alpha.is_finite() {
        return Err(PyValueError::new_err(
            "alpha must be a finite number in [0, 1]",
        ));
    }
    let mut imgs = Vec::new();
    let arr = image
        .cast::<PyUntypedArray>()
        .map_err(|_| PyTypeError::new_err("image: expected a uint8 H x W x 3 numpy array"))?;
    if arr.ndim() != 3 {
        return Err(PyValueError::new_err(format!(
            "image: expected an H x W x 3 array, got {} dimensions",
            arr.ndim()
        )));
    }
    array_images(arr, "image", &mut imgs)?;
    let Some(Input::Image(img)) = imgs.pop() else {
        unreachable!("one image")
    };
    let map = map
        .cast::<PyArrayDyn<f32>>()
        .map_err(|_| PyTypeError::new_err("map: expected a float32 numpy array"))?;
    let shape = map.shape().to_vec();
    let (h, w) = (img.height() as usize, img.width() as usize);
    if shape[..] != [h, w] {
        return Err(PyValueError::new_err(format!(
            "map: shape {:?} does not match the image's {h} x {w}",
            shape
        )));
    }
    let ro = map.readonly();
    let values: Vec<f32> = match ro.as_slice().ok().filter(|_| map.is_c_contiguous()) {
        Some(s) => s.to_vec(),
        None => ro.as_array().iter().copied().collect(),
    };
    let (heat, over) = py.detach(|| lib::io::render_map(&values, &img, display, alpha));
    let to_py = |im: image::RgbImage| -> PyResult<Bound<'py, PyAny>> {
        let (w, h) = im.dimensions();
        Ok(PyArray1::from_vec(py, im.into_raw())
            .reshape([h as usize, w as usize, 3])?
            .into_any())
    };
    Ok((to_py(heat)?, to_py(over)?))
}

/// An image file decoded as the CLI decodes it (content-sniffed, EXIF orientation applied):
/// a uint8 H x W x 3 array.
#[pyfunction]
fn load_image(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyAny>> {
    let img = py
        .detach(|| lib::io::load_image(&path))
        .map_err(|e| py_err(e, value_err))?;
    let (w, h) = img.dimensions();
    Ok(PyArray1::from_vec(py, img.into_raw())
        .reshape([h as usize, w as usize, 3])?
        .into_any())
}

/// The methods: name -> one-paragraph description.
#[pyfunction]
fn methods(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for m in Method::ALL {
        d.set_item(m.info().name, m.info().about)?;
    }
    Ok(d)
}

/// The known model names (`Explainer("swav")` downloads once into the cache).
#[pyfunction]
fn known_models() -> Vec<&'static str> {
    lib::checkpoint::models::KNOWN_MODELS
        .iter()
        .map(|m| m.name)
        .collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyExplainer>()?;
    m.add_function(wrap_pyfunction!(_render, m)?)?;
    m.add_function(wrap_pyfunction!(load_image, m)?)?;
    m.add_function(wrap_pyfunction!(methods, m)?)?;
    m.add_function(wrap_pyfunction!(known_models, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
