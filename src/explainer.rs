//! The library's front door: open a backbone once, then explain images with any set of
//! methods.
//!
//! ```no_run
//! use lafam_gpu::{Explainer, Method, Options};
//!
//! let mut explainer = Explainer::open("swav.safetensors", Options::default())?;
//! let image = image::open("cat.jpg")?.to_rgb8();
//! for out in explainer.explain(&[image], &[Method::Lafam, Method::Lrp])? {
//!     let map = &out.maps[0]; // [1, h, w, 1] at the image's own resolution
//!     println!("{}{}: {}x{}", out.method, out.output, map.shape.h, map.shape.w);
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

use crate::backend::{Backend, CamBackend, KernelTimes, Upsample};
use crate::device::{open_backend, AnyBackend, BackendChoice};
use crate::explain::method::Needs;
use crate::explain::relax::RelaxConfig;
use crate::explain::{Composite, Engine, ImageBatch, LrpWeights, Method, MethodMaps, Request};
use crate::model::{ConvLayer, LoadedWeights, ResNet, Stage};
use crate::stream::{stream_maps, MapSink, StreamSettings};
use crate::{cpu::Cpu, gpu::Gpu};
use anyhow::{bail, Context, Result};
use image::RgbImage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How an [`Explainer`] computes maps. `Options::default()` is what the CLI does without
/// flags.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The compute backend (default: a hardware GPU if there is one, else the CPU).
    pub backend: BackendChoice,
    /// The stage whose activations are explained.
    pub stage: Stage,
    /// How stage-resolution maps (LaFAM) are upsampled.
    pub upsample: Upsample,
    /// The LRP rules (zennit composite).
    pub rule: Composite,
    /// Shorter side of the network's input (0: each image at its own size).
    pub size: u32,
    /// Images per forward pass (split further to fit the device).
    pub batch: usize,
    /// Grad-CAM's target class (None: each image's argmax logit).
    pub class: Option<usize>,
    pub relax: RelaxConfig,
    /// The concepts method's layer and channels.
    pub concepts: crate::explain::ConceptConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: BackendChoice::Auto,
            stage: Stage::Layer4,
            upsample: Upsample::Nearest,
            rule: Composite::EpsilonPlusFlat,
            size: 224,
            batch: 16,
            class: None,
            relax: RelaxConfig::default(),
            concepts: Default::default(),
        }
    }
}

impl Options {
    /// The request for `methods` under these options.
    pub fn request(&self, methods: &[Method]) -> Request {
        Request {
            methods: methods.to_vec(),
            stage: self.stage,
            upsample: self.upsample,
            class: self.class,
            relax: self.relax,
            concepts: self.concepts.clone(),
        }
    }
}

/// An engine whose LRP weights are prepared on first use.
enum Slot<B: Backend> {
    Plain(Box<Engine<B>>),
    Lrp(Box<Engine<B, LrpWeights<B::Conv>>>),
    /// LRP preparation failed and took the engine with it.
    Lost,
}

impl<B: CamBackend> Slot<B> {
    /// Prepares LRP's weights for `rule` now if they are prepared (for another rule).
    fn change_rule(&mut self, rule: Composite) -> Result<()> {
        if let Slot::Lrp(_) = self {
            let Slot::Lrp(engine) = std::mem::replace(self, Slot::Lost) else {
                unreachable!("matched above");
            };
            *self = Slot::Lrp(Box::new(
                engine
                    .with_lrp(rule)
                    .context("cannot prepare the LRP rules on the backend")?,
            ));
        }
        Ok(())
    }

    fn ensure_lrp(&mut self, rule: Composite) -> Result<()> {
        if let Slot::Plain(_) = self {
            let Slot::Plain(engine) = std::mem::replace(self, Slot::Lost) else {
                unreachable!("matched above");
            };
            *self = Slot::Lrp(Box::new(
                engine
                    .with_lrp(rule)
                    .context("cannot prepare the LRP rules on the backend")?,
            ));
        }
        Ok(())
    }
}

enum Engines {
    Gpu(Slot<Gpu>),
    Cpu(Slot<Cpu>),
}

/// Runs `$body` with `$e` bound to the concrete engine (`&mut Engine<B, L>`).
macro_rules! on_engine {
    ($engines:expr, $e:ident => $body:expr) => {
        match $engines {
            Engines::Gpu(slot) => on_slot!(slot, $e => $body),
            Engines::Cpu(slot) => on_slot!(slot, $e => $body),
        }
    };
}

macro_rules! on_slot {
    ($slot:expr, $e:ident => $body:expr) => {
        match $slot {
            Slot::Plain(boxed) => {
                let $e = &mut **boxed;
                $body
            }
            Slot::Lrp(boxed) => {
                let $e = &mut **boxed;
                $body
            }
            Slot::Lost => bail!("the engine was lost when preparing LRP failed"),
        }
    };
}

/// Runs `$body` with `$e` bound to the concrete engine with LRP prepared.
macro_rules! on_lrp_engine {
    ($engines:expr, $e:ident => $body:expr) => {
        match $engines {
            Engines::Gpu(Slot::Lrp(boxed)) => {
                let $e = &mut **boxed;
                $body
            }
            Engines::Cpu(Slot::Lrp(boxed)) => {
                let $e = &mut **boxed;
                $body
            }
            _ => bail!("the LRP rules are not prepared"),
        }
    };
}

/// A backbone prepared on a backend.
pub struct Explainer {
    engines: Engines,
    options: Options,
    backend: String,
    kind: &'static str,
    note: Option<String>,
    source: PathBuf,
}

impl Explainer {
    /// Loads a weights file (safetensors, or a PyTorch `.pth`/`.pth.tar` converted in memory)
    /// and prepares it on the backend `options` names.
    pub fn open(weights: impl AsRef<Path>, options: Options) -> Result<Self> {
        let (weights, _notes) = crate::checkpoint::open_weights(weights.as_ref())?;
        Self::from_weights(&weights, options)
    }

    /// Prepares already loaded weights.
    pub fn from_weights(weights: &LoadedWeights, options: Options) -> Result<Self> {
        let (backend, note) = open_backend(options.backend)?;
        let describe = backend.describe();
        let kind = backend.kind();
        let engines = match backend {
            AnyBackend::Gpu(g) => Engines::Gpu(Slot::Plain(Box::new(prepare(*g, &weights.net)?))),
            AnyBackend::Cpu(c) => Engines::Cpu(Slot::Plain(Box::new(prepare(c, &weights.net)?))),
        };
        Ok(Explainer {
            engines,
            options,
            backend: describe,
            kind,
            note,
            source: weights.source.clone(),
        })
    }

    /// The backend, e.g. "gpu: NVIDIA H200 (Vulkan)" or "cpu (2 threads)".
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// "gpu" or "cpu".
    pub fn backend_kind(&self) -> &'static str {
        self.kind
    }

    /// Why `auto` chose the backend it did (None for an explicit choice).
    pub fn backend_note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The weights' file.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Changes how maps are computed from now on (stage, rule, upsampling, size, ...), keeping
    /// the engine warm: the network stays on the device; a new LRP rule re-prepares only
    /// LRP's weights (on first use, as at open). The backend cannot change (open another
    /// explainer for that).
    pub fn set_options(&mut self, options: Options) -> Result<()> {
        if options.backend != self.options.backend {
            bail!(
                "the backend cannot change on an open explainer ({} -> {})",
                self.options.backend.name(),
                options.backend.name()
            );
        }
        if options.rule != self.options.rule {
            let rule = options.rule;
            match &mut self.engines {
                Engines::Gpu(slot) => slot.change_rule(rule)?,
                Engines::Cpu(slot) => slot.change_rule(rule)?,
            }
        }
        self.options = options;
        Ok(())
    }

    /// The activations of `stage` for one image (`[1, h, w, channels]`, at the stage's
    /// resolution), the image resized for the network as the options say.
    pub fn stage_activations(
        &mut self,
        image: &RgbImage,
        stage: Stage,
    ) -> Result<crate::HostTensor> {
        let (w, h) = image.dimensions();
        let (nw, nh) = match self.options.size {
            0 => (w, h),
            s => crate::io::shorter_side_dims(w, h, s),
        };
        crate::io::check_net_input(nw, nh).with_context(|| format!("image ({w}x{h})"))?;
        let resized =
            ((nw, nh) != (w, h)).then(|| crate::io::resize_shorter_side(image, self.options.size));
        let net = resized.as_ref().unwrap_or(image);
        let batch = ImageBatch::new(net.as_raw(), 1, nh as usize, nw as usize)?;
        let mut stages = on_engine!(&mut self.engines, e => e.stage_activations(batch, stage))?;
        stages.pop().context("no stage activations")
    }

    /// The network's host description (architecture, widths, heads).
    pub fn network(&mut self) -> Result<ResNet<ConvLayer>> {
        on_engine!(&mut self.engines, e => Ok(e.spec.clone()))
    }

    /// Refuses, before any work, methods these weights cannot serve (Grad-CAM needs a
    /// classifier; `class` must be one of its classes). Prepares LRP if a method needs it.
    pub fn check(&mut self, methods: &[Method]) -> Result<()> {
        self.prepare_for(methods)?;
        let req = self.options.request(methods);
        on_engine!(&mut self.engines, e => e.check(&req))
    }

    fn prepare_for(&mut self, methods: &[Method]) -> Result<()> {
        if methods.iter().any(|m| m.info().needs == Needs::LrpTape) {
            let rule = self.options.rule;
            match &mut self.engines {
                Engines::Gpu(slot) => slot.ensure_lrp(rule)?,
                Engines::Cpu(slot) => slot.ensure_lrp(rule)?,
            }
        }
        Ok(())
    }

    /// Every method's maps for `images`, each map at its image's own resolution
    /// (`[1, h, w, 1]`, one per image in order). Images are resized for the network as the
    /// options say and batched by size. The maps of an image whose activations are not
    /// finite are all NaN.
    pub fn explain(&mut self, images: &[RgbImage], methods: &[Method]) -> Result<Vec<MethodMaps>> {
        self.check(methods)?;
        let req = self.options.request(methods);
        // The resized network input, None where the image is fed as it is (no copy).
        let resized: Vec<Option<RgbImage>> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let (w, h) = img.dimensions();
                let (nw, nh) = match self.options.size {
                    0 => (w, h),
                    s => crate::io::shorter_side_dims(w, h, s),
                };
                crate::io::check_net_input(nw, nh)
                    .with_context(|| format!("image {i} ({w}x{h})"))?;
                Ok(((nw, nh) != (w, h))
                    .then(|| crate::io::resize_shorter_side(img, self.options.size)))
            })
            .collect::<Result<_>>()?;
        let nets: Vec<&RgbImage> = resized
            .iter()
            .zip(images)
            .map(|(r, img)| r.as_ref().unwrap_or(img))
            .collect();
        // Images of one network size, in batches.
        let mut groups: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
        for (i, img) in nets.iter().enumerate() {
            groups.entry(img.dimensions()).or_default().push(i);
        }
        let mut slots: Vec<MethodMaps> = Vec::new();
        let mut per_image: Vec<Vec<Option<crate::HostTensor>>> = Vec::new();
        let mut targets: Vec<Vec<Option<usize>>> = Vec::new();
        let mut names: Vec<Vec<Option<String>>> = Vec::new();
        let mut jsons: Vec<Vec<Option<serde_json::Value>>> = Vec::new();
        for ((w, h), members) in groups {
            for batch in members.chunks(self.options.batch.max(1)) {
                let mut rgb = Vec::with_capacity(batch.len() * (w * h * 3) as usize);
                for &i in batch {
                    rgb.extend_from_slice(nets[i].as_raw());
                }
                let sizes: Vec<(usize, usize)> = batch
                    .iter()
                    .map(|&i| (images[i].height() as usize, images[i].width() as usize))
                    .collect();
                let images = ImageBatch::new(&rgb, batch.len(), h as usize, w as usize)?;
                let out = on_engine!(&mut self.engines, e => e.explain(images, &req, &sizes))?;
                if slots.is_empty() {
                    slots = out
                        .iter()
                        .map(|m| MethodMaps {
                            method: m.method,
                            output: m.output,
                            maps: Vec::new(),
                            targets: Vec::new(),
                            names: Vec::new(),
                            json: Vec::new(),
                        })
                        .collect();
                    per_image = vec![vec![None; nets.len()]; slots.len()];
                    targets = vec![vec![None; nets.len()]; slots.len()];
                    names = vec![vec![None; nets.len()]; slots.len()];
                    jsons = vec![vec![None; nets.len()]; slots.len()];
                }
                for (k, m) in out.into_iter().enumerate() {
                    for (&i, name) in batch.iter().zip(m.names) {
                        names[k][i] = Some(name);
                    }
                    for (&i, j) in batch.iter().zip(m.json) {
                        jsons[k][i] = Some(j);
                    }
                    for (&i, map) in batch.iter().zip(m.maps) {
                        per_image[k][i] = Some(map);
                    }
                    for (&i, t) in batch.iter().zip(m.targets) {
                        targets[k][i] = Some(t);
                    }
                }
            }
        }
        for ((slot, maps), targets) in slots.iter_mut().zip(per_image).zip(targets) {
            slot.maps = maps
                .into_iter()
                .map(|m| m.expect("every image explained"))
                .collect();
            slot.targets = targets.into_iter().flatten().collect();
        }
        for ((slot, names), jsons) in slots.iter_mut().zip(names).zip(jsons) {
            slot.names = names.into_iter().flatten().collect();
            slot.json = jsons.into_iter().flatten().collect();
        }
        Ok(slots)
    }

    /// Streams image files through the explainer (see [`crate::stream`]): `jobs` are
    /// (path, output stem) pairs; `sink` receives every batch's maps or each input's error.
    pub fn stream(
        &mut self,
        jobs: &[(PathBuf, String)],
        methods: &[Method],
        sink: &mut dyn MapSink,
    ) -> Result<()> {
        self.check(methods)?;
        let settings = StreamSettings {
            request: self.options.request(methods),
            size: self.options.size,
            batch: self.options.batch,
        };
        on_engine!(&mut self.engines, e => {
            stream_maps(e, jobs, &settings, sink);
            Ok(())
        })
    }

    /// The concept atlas's first pass ([`Engine::concept_activity`]): activations and
    /// LaFAM-LRP relevance (seeded at the options' stage) at the output of `concept`, on the
    /// host, `[n, h, w, c]` each, for a batch of network inputs.
    pub fn concept_activity(
        &mut self,
        images: ImageBatch,
        concept: Stage,
    ) -> Result<(crate::HostTensor, crate::HostTensor)> {
        self.prepare_for(&[Method::Lrp])?;
        let stage = self.options.stage;
        on_lrp_engine!(&mut self.engines, e => e.concept_activity(images, stage, concept))
    }

    /// The concept atlas's receptive-field maps ([`Engine::neuron_maps`]) of one network
    /// input: per `(channel, [y, x])` of `concept`, `[k, h, w, 1]`.
    pub fn neuron_maps(
        &mut self,
        image: ImageBatch,
        concept: Stage,
        neurons: &[(usize, [usize; 2])],
    ) -> Result<crate::HostTensor> {
        self.prepare_for(&[Method::Lrp])?;
        on_lrp_engine!(&mut self.engines, e => e.neuron_maps(image, concept, neurons))
    }

    /// The label-free score of the faithfulness metrics for the original image `x`
    /// (`[3, h, w]` in the normalised input space): see [`crate::explain::score`]. The stage
    /// is the explained one; `logit` targets the options' class, else the argmax.
    pub fn score_for(
        &mut self,
        kind: crate::explain::score::ScoreKind,
        x: &[f64],
        hw: (usize, usize),
    ) -> Result<crate::explain::score::Score> {
        let (stage, class) = (self.options.stage, self.options.class);
        on_engine!(&mut self.engines, e => e.score_for(kind, x, hw, stage, class))
    }

    /// The score of every image (`[3, h, w]` each), batched on the backend.
    pub fn score_images(
        &mut self,
        images: &[Vec<f64>],
        hw: (usize, usize),
        score: &crate::explain::score::Score,
    ) -> Result<Vec<f64>> {
        on_engine!(&mut self.engines, e => e.score_images(images, hw, score))
    }

    /// Sets Grad-CAM's target class (None: each image's argmax) for the following calls.
    pub fn set_class(&mut self, class: Option<usize>) {
        self.options.class = class;
    }

    /// Replaces the network by another of the same architecture on the same backend (MPRT's
    /// randomised networks; LRP's weights are re-prepared where they were).
    pub fn set_network(&mut self, spec: &ResNet<ConvLayer>) -> Result<()> {
        use crate::explain::randomise::SetNetwork;
        on_engine!(&mut self.engines, e => e.set_network(spec))
    }

    /// Starts timing every kernel (GPU timestamps); false where the adapter has none.
    pub fn start_kernel_timing(&mut self) -> bool {
        match &mut self.engines {
            Engines::Gpu(slot) => match slot {
                Slot::Plain(e) => e.backend.start_kernel_timing(),
                Slot::Lrp(e) => e.backend.start_kernel_timing(),
                Slot::Lost => false,
            },
            Engines::Cpu(_) => false,
        }
    }

    /// The kernel times since [`Self::start_kernel_timing`].
    pub fn stop_kernel_timing(&mut self) -> Result<Option<KernelTimes>> {
        on_engine!(&mut self.engines, e => e.backend.stop_kernel_timing())
    }
}

fn prepare<B: Backend>(backend: B, net: &ResNet<ConvLayer>) -> Result<Engine<B>> {
    Engine::new(backend, net).context("cannot prepare the network on the backend")
}
