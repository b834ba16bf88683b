//! One explain pipeline for every method: the planner groups the requested methods by the
//! forward pass they need ([`Needs`]), each pass runs once per chunk of images, every method
//! makes its maps from it, and the pipeline resamples them to each image's size, downloads
//! them in one submission and marks the maps of images with non-finite activations.

use super::concepts::ConceptConfig;
use super::engine::{finite_images, finite_probe, Engine, ImageBatch, LrpState};
use super::method::{Needs, Pass, Resample};
use super::relax::RelaxConfig;
use super::tape::{forward, TapeSpec};
use super::Method;
use crate::backend::{Backend, CamBackend, Upsample};
use crate::model::Stage;
use crate::tensor::HostTensor;
use anyhow::{bail, ensure, Result};

/// What to explain and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The methods, in any order (duplicates are ignored).
    pub methods: Vec<Method>,
    /// The stage whose activations are explained.
    pub stage: Stage,
    /// How stage-resolution maps that follow the request are upsampled.
    pub upsample: Upsample,
    /// Grad-CAM's target class (None: each image's argmax logit).
    pub class: Option<usize>,
    pub relax: RelaxConfig,
    /// The concepts method's layer and channels.
    pub concepts: ConceptConfig,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            methods: vec![Method::Lafam],
            stage: Stage::Layer4,
            upsample: Upsample::Nearest,
            class: None,
            relax: RelaxConfig::default(),
            concepts: ConceptConfig::default(),
        }
    }
}

impl Request {
    pub fn new(methods: &[Method]) -> Self {
        Request {
            methods: methods.to_vec(),
            ..Request::default()
        }
    }
}

/// One method output's maps, one per image, each `[1, h, w, 1]` at the image's output size.
#[derive(Clone, Debug)]
pub struct MethodMaps {
    pub method: Method,
    /// The output's suffix ("" for the main map, see
    /// [`MethodInfo::outputs`](super::method::MethodInfo::outputs)).
    pub output: &'static str,
    pub maps: Vec<HostTensor>,
    /// Per image, the class the maps explain (Grad-CAM's target; empty for label-free
    /// methods).
    pub targets: Vec<usize>,
    /// Per image, the output's name in file names in place of `<method><output>` (empty:
    /// that default; concepts: "concept-<c>").
    pub names: Vec<String>,
    /// Per image, the method's JSON side output `<stem>.<method>.json` (empty: none; carried
    /// by the method's first output only).
    pub json: Vec<serde_json::Value>,
}

/// One forward pass and the methods that share it (the one that needs the pass last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPass {
    pub needs: Needs,
    pub methods: Vec<Method>,
}

/// Groups `methods` by the pass they need. Methods that only need the stage's activations
/// join the LRP pass if there is one, else the gradient pass, else a plain forward pass.
///
/// ```
/// use lafam_gpu::explain::method::Needs;
/// use lafam_gpu::explain::pipeline::plan;
/// use lafam_gpu::Method;
///
/// let passes = plan(&[Method::Relax, Method::Lrp, Method::Lafam]);
/// assert_eq!(passes[0].needs, Needs::LrpTape);
/// assert_eq!(passes[0].methods, [Method::Lafam, Method::Lrp]); // LaFAM rides on LRP's pass
/// assert_eq!(passes[1].needs, Needs::OwnPasses);
/// ```
pub fn plan(methods: &[Method]) -> Vec<PlannedPass> {
    let mut methods = methods.to_vec();
    methods.sort();
    methods.dedup();
    let needing = |n: Needs| -> Vec<Method> {
        methods
            .iter()
            .copied()
            .filter(|m| m.info().needs == n)
            .collect()
    };
    let riders = needing(Needs::Activations);
    let mut passes = Vec::new();
    for needs in [Needs::LrpTape, Needs::GradientTape, Needs::OwnPasses] {
        let owners = needing(needs);
        if !owners.is_empty() {
            passes.push(PlannedPass {
                needs,
                methods: owners,
            });
        }
    }
    if !riders.is_empty() {
        match passes.iter_mut().find(|p| p.needs != Needs::OwnPasses) {
            Some(p) => p.methods.splice(0..0, riders),
            None => {
                passes.insert(
                    0,
                    PlannedPass {
                        needs: Needs::Activations,
                        methods: riders,
                    },
                );
                return passes;
            }
        };
    }
    passes
}

impl<B: CamBackend, L: LrpState<B::Conv>> Engine<B, L> {
    /// Checks, before any work, that every method of `req` can run on these weights.
    pub fn check(&self, req: &Request) -> Result<()> {
        ensure!(!req.methods.is_empty(), "no method requested");
        for &m in &req.methods {
            let info = m.info();
            if info.needs_classifier && self.spec.heads.fc.is_none() {
                bail!("{}", super::gradcam::NEEDS_CLASSIFIER);
            }
            if info.needs == Needs::LrpTape && self.lrp.weights().is_none() {
                bail!("{m} needs LRP rules: prepare them with Engine::with_lrp");
            }
        }
        if req.methods.contains(&Method::Concepts) {
            super::concepts::conditions(&req.concepts, req.stage, self.spec.stage_channels())?;
        }
        if let (Some(c), Some((_, _, classes))) = (req.class, &self.spec.heads.fc) {
            ensure!(
                c < *classes,
                "--class {c} is out of range: the classifier has {classes} classes (0..{})",
                classes.saturating_sub(1)
            );
        }
        Ok(())
    }

    /// Every requested method's maps for `images`, image `i` resampled to `out_sizes[i]`
    /// (its original resolution). The maps of an image whose activations were not finite
    /// are all NaN.
    ///
    /// ```
    /// use lafam_gpu::cpu::Cpu;
    /// use lafam_gpu::explain::{Engine, ImageBatch, Method, Request};
    /// use lafam_gpu::model::random::{random_resnet, RandomSpec};
    ///
    /// let net = random_resnet(&RandomSpec::resnet(18, 4, 1)?);
    /// let mut engine = Engine::new(Cpu::new(), &net)?;
    /// let rgb: Vec<u8> = (0..32 * 32 * 3).map(|i| (i % 251) as u8).collect();
    /// let images = ImageBatch::new(&rgb, 1, 32, 32)?;
    /// let request = Request::new(&[Method::Lafam, Method::LafamMax]);
    /// let out = engine.explain(images, &request, &[(64, 64)])?;
    /// assert_eq!(out.len(), 2);
    /// assert_eq!((out[0].maps[0].shape.h, out[0].maps[0].shape.w), (64, 64));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn explain(
        &mut self,
        images: ImageBatch,
        req: &Request,
        out_sizes: &[(usize, usize)],
    ) -> Result<Vec<MethodMaps>> {
        ensure!(
            out_sizes.len() == images.n,
            "{} output sizes for {} images",
            out_sizes.len(),
            images.n
        );
        self.check(req)?;
        let mut out: Vec<MethodMaps> = Vec::new();
        for pass in plan(&req.methods) {
            // The pass's outputs, from its first chunk (a method may make as many as the
            // request asks for); later chunks append to them in order.
            let mut mine: Vec<MethodMaps> = Vec::new();
            let spec = self.tape_spec(pass.needs, req.stage);
            let chunks = match spec {
                Some(s) => self.chunks(images, s.upto),
                None => vec![images],
            };
            let mut start = 0;
            for chunk in chunks {
                let sizes = &out_sizes[start..start + chunk.n];
                let maps = self.run_pass(&pass.methods, spec, chunk, req, sizes)?;
                if mine.is_empty() {
                    mine = maps;
                } else {
                    ensure!(mine.len() == maps.len(), "chunks made different outputs");
                    for (dst, src) in mine.iter_mut().zip(maps) {
                        dst.maps.extend(src.maps);
                        dst.targets.extend(src.targets);
                        dst.names.extend(src.names);
                        dst.json.extend(src.json);
                    }
                }
                start += chunk.n;
            }
            out.extend(mine);
        }
        Ok(out)
    }

    /// One method's main maps (see [`Self::explain`]) with the other settings at their
    /// defaults: `explain_method(images, Method::Lafam, Stage::Layer3, Upsample::Bilinear, ..)`.
    pub fn explain_method(
        &mut self,
        images: ImageBatch,
        method: Method,
        stage: Stage,
        upsample: Upsample,
        out_sizes: &[(usize, usize)],
    ) -> Result<Vec<HostTensor>> {
        let req = Request {
            methods: vec![method],
            stage,
            upsample,
            ..Request::default()
        };
        let mut out = self.explain(images, &req, out_sizes)?;
        Ok(std::mem::take(&mut out[0].maps))
    }

    /// The forward pass `needs` asks for (None: the methods run their own).
    fn tape_spec(&self, needs: Needs, stage: Stage) -> Option<TapeSpec> {
        let plain = TapeSpec::plain(stage);
        match needs {
            Needs::Activations => Some(plain),
            Needs::LrpTape => Some(TapeSpec {
                lrp: true,
                keep_branch: self.lrp.weights().is_some_and(|w| w.needs_branch()),
                ..plain
            }),
            Needs::GradientTape => Some(TapeSpec {
                upto: Stage::Layer4,
                gradient: true,
                ..plain
            }),
            Needs::OwnPasses => None,
        }
    }

    /// One chunk through one pass: per method output, one map per image.
    fn run_pass(
        &mut self,
        methods: &[Method],
        spec: Option<TapeSpec>,
        chunk: ImageBatch,
        req: &Request,
        sizes: &[(usize, usize)],
    ) -> Result<Vec<MethodMaps>> {
        let Engine {
            backend: b,
            net,
            spec: host,
            lrp,
        } = self;
        let (tape, probe) = match spec {
            Some(s) => {
                let x = b.preprocess(chunk.rgb, chunk.n, chunk.h, chunk.w)?;
                let tape = forward(b, net, x, s, None)?;
                let probe = finite_probe(b, &tape.outputs[..=s.stage.index()])?;
                (Some(tape), probe)
            }
            None => (None, Vec::new()),
        };
        let mut pass = Pass {
            b,
            net,
            spec: host,
            lrp: lrp.weights(),
            request: req,
            images: chunk,
            tape,
        };
        let mut produced = Vec::with_capacity(methods.len());
        for &m in methods {
            produced.push((m, m.run(&mut pass)?));
        }
        drop(pass.tape.take());
        // Record every image's resampling before the first download, so that the whole
        // chunk is one submission.
        let mut pending: Vec<Vec<B::Tensor>> = Vec::new();
        // (method, output suffix, its Produced, map index) per pending output.
        let mut owners: Vec<(Method, &'static str, usize, usize)> = Vec::new();
        for (pi, (m, p)) in produced.iter().enumerate() {
            let info = m.info();
            ensure!(
                p.maps.len() == info.outputs.len() || info.outputs.is_empty(),
                "{m} made {} maps for {} outputs",
                p.maps.len(),
                info.outputs.len()
            );
            for (k, small) in p.maps.iter().enumerate() {
                let index = p.index.get(k);
                let mut per_image = Vec::with_capacity(chunk.n);
                for (i, &size) in sizes.iter().enumerate() {
                    let at = index.map_or(i, |ix| ix[i]);
                    per_image.push(resample(b, small, at, size, info.resample, req.upsample)?);
                }
                pending.push(per_image);
                owners.push((*m, info.outputs.get(k).copied().unwrap_or(""), pi, k));
            }
        }
        let finite = finite_images(b, &probe)?;
        let mut maps = Vec::with_capacity(pending.len());
        for (tensors, &(method, output, pi, k)) in pending.iter().zip(&owners) {
            let p = &produced[pi].1;
            let bad = &p.non_finite;
            let mut host = Vec::with_capacity(tensors.len());
            for (i, t) in tensors.iter().enumerate() {
                let mut map = b.download(t)?;
                let not_finite =
                    !finite.get(i).copied().unwrap_or(true) || bad.get(i).copied().unwrap_or(false);
                if not_finite {
                    // Min-max normalisation and ReLUs can turn non-finite activations into
                    // finite but meaningless values (all zeros): a NaN map says so.
                    map.data.fill(f32::NAN);
                }
                host.push(map);
            }
            maps.push(MethodMaps {
                method,
                output,
                maps: host,
                targets: p.targets.clone(),
                names: p.names.get(k).cloned().unwrap_or_default(),
                json: if k == 0 { p.json.clone() } else { Vec::new() },
            });
        }
        Ok(maps)
    }
}

/// Image `i` of a batch of maps resampled to `(h, w)` as `how` says.
fn resample<B: Backend>(
    b: &mut B,
    maps: &B::Tensor,
    i: usize,
    size: (usize, usize),
    how: Resample,
    requested: Upsample,
) -> Result<B::Tensor> {
    match how {
        Resample::AsRequested => image_at(b, maps, i, size, requested),
        Resample::Bilinear => image_at(b, maps, i, size, Upsample::Bilinear),
        Resample::BilinearRenormalised => {
            let big = image_at(b, maps, i, size, Upsample::Bilinear)?;
            b.minmax_normalise(&big)
        }
    }
}

/// Image `i` of a batch resampled to `(h, w)`; the view itself when it already has that size
/// (resampling to the same size is the identity in both modes).
pub(crate) fn image_at<B: Backend>(
    b: &mut B,
    t: &B::Tensor,
    i: usize,
    (h, w): (usize, usize),
    mode: Upsample,
) -> Result<B::Tensor> {
    let one = b.image(t, i);
    let s = b.shape(&one);
    if (s.h, s.w) == (h, w) {
        Ok(one)
    } else {
        b.resize(&one, h, w, mode)
    }
}
