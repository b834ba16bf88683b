//! LaFAM-LRP: relevance propagation seeded with a stage's own activations (`R = A`) and
//! traced back to the input pixels through every block, with zennit's semantics under
//! `ResNetCanonizer`: BatchNorm folded into the convs (done at load), conv rules from the
//! composite (see [`rules`](super::rules)), Norm on residual adds, ReLU pass-through,
//! winner-take-all max-pool.

use super::lafam::{image_at, Explainer, ImageBatch};
use super::rules::{imagenet_bounds, Composite, InputMod, Rule};
use crate::backend::{Backend, LrpBackend, Pool, Upsample};
use crate::model::{ConvLayer, ResNet, Stage};
use crate::tensor::HostTensor;
use anyhow::{ensure, Context, Result};

/// The rule-modified weights of one conv, one per rule term (None where the term cannot
/// contribute, e.g. an `x⁻` term on a conv whose input is a ReLU output).
pub struct LrpConv<C> {
    pub terms: Vec<Option<C>>,
    /// For a Flat rule (one term, ones for input and weights, no bias): the conv with a single
    /// output channel of ones. Every output channel of the Flat conv is the same, so its
    /// backward sums the relevance over channels first and runs on one channel (cout times
    /// fewer MACs for the z and transposed convs).
    pub flat: Option<C>,
}

/// The weights the backward pass needs, prepared once for a composite.
pub struct LrpWeights<C> {
    /// The composite the rules came from (None for a custom pair of rules).
    pub composite: Option<Composite>,
    pub first: Rule,
    pub rule: Rule,
    pub net: ResNet<LrpConv<C>>,
}

/// The conv with a term's parameter modification applied.
fn modified(conv: &ConvLayer, rule: &Rule, term: usize) -> ConvLayer {
    let t = &rule.terms[term];
    let mut c = conv.clone();
    c.name = format!("{} ({} term {term})", conv.name, rule.name);
    c.weight
        .iter_mut()
        .for_each(|w| *w = t.params.apply(*w, rule.gamma));
    c.bias.iter_mut().for_each(|b| {
        *b = if t.bias {
            t.params.apply(*b, rule.gamma)
        } else {
            0.0
        }
    });
    c
}

/// One term with ones for input and weights and a zero bias (zennit's Flat).
fn is_flat(rule: &Rule) -> bool {
    matches!(
        rule.terms.as_slice(),
        [t] if t.input == InputMod::Ones && t.params == super::rules::ParamMod::Ones && !t.bias
    )
}

fn prepare_conv<B: Backend>(
    b: &mut B,
    conv: &ConvLayer,
    rule: &Rule,
    nonneg_input: bool,
) -> Result<LrpConv<B::Conv>> {
    let active: Vec<_> = rule
        .active_terms(nonneg_input)
        .map(|t| t as *const _)
        .collect();
    let terms = (0..rule.terms.len())
        .map(|i| {
            // A Flat conv runs through its one-channel form only.
            let used = active.contains(&(&rule.terms[i] as *const _)) && !is_flat(rule);
            used.then(|| b.prepare_conv(&modified(conv, rule, i)))
                .transpose()
        })
        .collect::<Result<_>>()?;
    let flat = if is_flat(rule) {
        let mut c = modified(conv, rule, 0);
        c.name = format!("{} (Flat, one channel)", conv.name);
        c.cout = 1;
        c.weight = vec![1.0; conv.kh * conv.kw * conv.cin];
        c.bias = vec![0.0];
        Some(b.prepare_conv(&c)?)
    } else {
        None
    };
    Ok(LrpConv { terms, flat })
}

/// What the forward pass keeps for the backward: each conv's input, each block's skip
/// operand and output (the next block's input: no extra memory). The branch is kept only
/// where the rule's relevance is not zero wherever the block output is (see
/// [`LrpBackend::residual_split_relu`]). Nothing else.
struct BlockTape<T> {
    /// Input of each conv of the branch (the first is the block input).
    conv_inputs: Vec<T>,
    skip: T,
    branch: Option<T>,
    out: T,
}

struct Tape<T> {
    input: T,
    stem_out: T,
    blocks: Vec<BlockTape<T>>,
    output: T,
}

/// Per-stage relevance sums, for conservation checks (`--debug-relevance`, tests).
#[derive(Clone, Debug, Default)]
pub struct RelevanceTrace {
    pub sums: Vec<(String, f64)>,
    /// Records the forward pass's tensors, or replays another engine's in their place (see
    /// [`super::ties`]).
    pub forward: Option<ForwardTap>,
}

/// The forward tensors of an LRP pass (stem output, pooled stem, and per block the skip,
/// every inner conv output and the block output), in the order they are made.
#[derive(Clone, Debug, Default)]
pub struct ForwardTap {
    /// Replay `tensors` instead of recording them.
    pub replay: bool,
    pub tensors: Vec<HostTensor>,
    next: usize,
}

impl ForwardTap {
    /// A tap that records.
    pub fn record() -> Self {
        ForwardTap::default()
    }
    /// A tap that replays what another engine recorded.
    pub fn replay(recorded: ForwardTap) -> Self {
        ForwardTap {
            replay: true,
            tensors: recorded.tensors,
            next: 0,
        }
    }
    /// Records `t`, or returns the next recorded tensor in its place (the shapes must agree).
    fn tap<B: Backend>(&mut self, b: &mut B, t: B::Tensor) -> Result<B::Tensor> {
        if !self.replay {
            self.tensors.push(b.download(&t)?);
            return Ok(t);
        }
        let recorded = self
            .tensors
            .get(self.next)
            .context("the replayed forward pass has fewer tensors")?;
        ensure!(
            recorded.shape == b.shape(&t),
            "replayed forward tensor {} is {}, this pass made {}",
            self.next,
            recorded.shape,
            b.shape(&t)
        );
        self.next += 1;
        b.upload(recorded)
    }
}

impl<B: LrpBackend> Explainer<B> {
    /// Prepares the rule-modified weights for `composite` (once per process).
    pub fn enable_lrp(&mut self, composite: Composite) -> Result<()> {
        self.enable_lrp_rules(composite.first_rule(), composite.rule())?;
        self.lrp.as_mut().unwrap().composite = Some(composite);
        Ok(())
    }

    /// Prepares LRP with any pair of rules (first conv, every other conv).
    pub fn enable_lrp_rules(&mut self, first: Rule, rule: Rule) -> Result<()> {
        let stem = &self.spec.stem as *const ConvLayer;
        let backend = &mut self.backend;
        let net = self.spec.try_map(|c| {
            if std::ptr::eq(c, stem) {
                prepare_conv(backend, c, &first, false)
            } else {
                prepare_conv(backend, c, &rule, true)
            }
        })?;
        self.lrp = Some(LrpWeights {
            composite: None,
            first,
            rule,
            net,
        });
        Ok(())
    }

    fn forward_tape(
        &mut self,
        x: B::Tensor,
        upto: Stage,
        keep_branch: bool,
        mut tap: Option<&mut ForwardTap>,
    ) -> Result<Tape<B::Tensor>> {
        let b = &mut self.backend;
        let mut tap = |b: &mut B, t: B::Tensor| match tap.as_deref_mut() {
            Some(tap) => tap.tap(b, t),
            None => Ok(t),
        };
        let stem_out = b.conv2d(&x, &self.net.stem, None, true)?;
        let stem_out = tap(b, stem_out)?;
        let mut h = b.max_pool(&stem_out, Pool::RESNET_STEM)?;
        h = tap(b, h)?;
        let mut blocks = Vec::new();
        for block in self.net.stages[..=upto.index()].iter().flatten() {
            let skip = match &block.downsample {
                Some(ds) => {
                    let skip = b.conv2d(&h, ds, None, false)?;
                    tap(b, skip)?
                }
                None => h.clone(),
            };
            let (last, inner) = block.convs.split_last().expect("a block has convs");
            let mut conv_inputs = vec![h.clone()];
            let mut y = h;
            for conv in inner {
                y = b.conv2d(&y, conv, None, true)?;
                y = tap(b, y)?;
                conv_inputs.push(y.clone());
            }
            let branch = if keep_branch {
                let branch = b.conv2d(&y, last, None, false)?;
                let branch = tap(b, branch)?;
                h = b.add_relu(&branch, &skip)?;
                Some(branch)
            } else {
                // The residual add and ReLU fused into the conv, as the plain forward does.
                h = b.conv2d(&y, last, Some(&skip), true)?;
                None
            };
            h = tap(b, h)?;
            blocks.push(BlockTape {
                conv_inputs,
                skip,
                branch,
                out: h.clone(),
            });
        }
        Ok(Tape {
            input: x,
            stem_out,
            blocks,
            output: h,
        })
    }

    /// Relevance at the input, `[n, h, w, 3]`, of the batch seeded with the stage's output.
    /// Also returns the stage activations (for LaFAM from the same forward pass).
    pub fn lrp_input_relevance(
        &mut self,
        x: B::Tensor,
        stage: Stage,
        mut trace: Option<&mut RelevanceTrace>,
    ) -> Result<(B::Tensor, B::Tensor)> {
        ensure!(self.lrp.is_some(), "LRP weights not prepared (enable_lrp)");
        // Every term of the rule multiplies its relevance by the conv input (x, x⁺ or x⁻), so a
        // block input's relevance is zero wherever that input (a ReLU output) is: the residual
        // split can then work from the block output instead of a kept branch.
        let zero_where_input_zero = self.lrp.as_ref().unwrap().rule.terms.iter().all(|t| {
            matches!(
                t.input,
                InputMod::Identity | InputMod::Positive | InputMod::Negative
            )
        });
        let mut tap = trace.as_deref_mut().and_then(|t| t.forward.take());
        let tape = self.forward_tape(x, stage, !zero_where_input_zero, tap.as_mut())?;
        if let Some(t) = trace.as_deref_mut() {
            t.forward = tap;
        }
        let Explainer {
            backend: b,
            net,
            lrp,
            ..
        } = self;
        let lrp = lrp.as_ref().unwrap();
        let mut record = |b: &mut B, name: String, t: &B::Tensor| -> Result<()> {
            if let Some(tr) = trace.as_deref_mut() {
                let host = b.download(t)?;
                tr.sums
                    .push((name, host.data.iter().map(|&v| v as f64).sum()));
            }
            Ok(())
        };
        let mut r = tape.output.clone();
        record(b, format!("{stage} output (seed)"), &r)?;
        // (rule weights, forward weights, name) of every block up to the stage, in order.
        let mut blocks = Vec::new();
        for (s, (lrp_blocks, fwd_blocks)) in lrp
            .net
            .stages
            .iter()
            .zip(&net.stages)
            .take(stage.index() + 1)
            .enumerate()
        {
            for (i, pair) in lrp_blocks.iter().zip(fwd_blocks).enumerate() {
                blocks.push((pair, format!("layer{}.{i}", s + 1)));
            }
        }
        // The tape is consumed block by block, so that each entry is released (and its
        // device memory reused) as soon as the backward has used it.
        let Tape {
            input,
            stem_out,
            blocks: mut tape_blocks,
            output,
        } = tape;
        ensure!(tape_blocks.len() == blocks.len(), "tape and network differ");
        for ((block, fwd), name) in blocks.iter().rev() {
            let BlockTape {
                mut conv_inputs,
                skip,
                branch,
                out,
            } = tape_blocks.pop().context("tape shorter than the network")?;
            let (r_skip, r_branch) = match &branch {
                Some(branch) => b.residual_split(&skip, branch, &r)?,
                None => b.residual_split_relu(&skip, &out, &r)?,
            };
            drop((skip, branch, out, r));
            let mut rb = r_branch;
            for (i, (conv, fwd_conv)) in block.convs.iter().zip(&fwd.convs).enumerate().rev() {
                let x = if i == 0 {
                    conv_inputs[0].clone()
                } else {
                    conv_inputs.pop().context("tape lacks a conv input")?
                };
                // The identity skip's relevance joins the first conv's result in its epilogue.
                let acc = (i == 0 && block.downsample.is_none()).then_some(&r_skip);
                rb = apply_rule(b, &lrp.rule, conv, fwd_conv, &x, &rb, acc, true)?;
            }
            r = match (&block.downsample, &fwd.downsample) {
                (Some(ds), Some(fwd_ds)) => apply_rule(
                    b,
                    &lrp.rule,
                    ds,
                    fwd_ds,
                    &conv_inputs[0],
                    &r_skip,
                    Some(&rb),
                    true,
                )?,
                _ => rb,
            };
            record(b, format!("{name} input"), &r)?;
        }
        r = b.max_pool_backward(&stem_out, &r, Pool::RESNET_STEM)?;
        drop(stem_out);
        record(b, "stem output".into(), &r)?;
        let r_in = apply_rule(
            b,
            &lrp.first,
            &lrp.net.stem,
            &net.stem,
            &input,
            &r,
            None,
            false,
        )?;
        record(b, "input".into(), &r_in)?;
        Ok((r_in, output))
    }

    /// LaFAM-LRP maps: input relevance summed over RGB, image `i` resampled (bilinearly) to
    /// `out_sizes[i]`; `upsample` is the LaFAM maps' mode.
    /// With `with_lafam`, the LaFAM maps of the same forward pass come back too.
    pub fn lrp(
        &mut self,
        images: ImageBatch,
        stage: Stage,
        upsample: Upsample,
        out_sizes: &[(usize, usize)],
        with_lafam: bool,
    ) -> Result<Vec<(HostTensor, Option<HostTensor>)>> {
        ensure!(
            out_sizes.len() == images.n,
            "{} output sizes for {} images",
            out_sizes.len(),
            images.n
        );
        let mut maps = Vec::with_capacity(images.n);
        let mut start = 0;
        for chunk in self.chunks(images, stage) {
            let x = self
                .backend
                .preprocess(chunk.rgb, chunk.n, chunk.h, chunk.w)?;
            let (r_in, activations) = self.lrp_input_relevance(x, stage, None)?;
            let probe = self.finite_probe(std::slice::from_ref(&activations))?;
            let mean = self.backend.channel_mean(&r_in)?;
            let summed = self.backend.lincomb(&mean, 3.0, None, 0.0)?;
            let small = if with_lafam {
                Some(self.lafam_tail(&activations)?)
            } else {
                None
            };
            let mut pending = Vec::with_capacity(chunk.n);
            for i in 0..chunk.n {
                let (h, w) = out_sizes[start + i];
                // Relevance is at pixel resolution already: resampled bilinearly (nearest would
                // alias); `upsample` applies to the coarse LaFAM map.
                let map = image_at(&mut self.backend, &summed, i, (h, w), Upsample::Bilinear)?;
                let lafam = match &small {
                    Some(s) => Some(image_at(&mut self.backend, s, i, (h, w), upsample)?),
                    None => None,
                };
                pending.push((map, lafam));
            }
            for (map, lafam) in &pending {
                let lafam = lafam
                    .as_ref()
                    .map(|t| self.backend.download(t))
                    .transpose()?;
                maps.push((self.backend.download(map)?, lafam));
            }
            // Non-finite stage activations: every map of the image is NaN (see
            // `poison_non_finite`).
            for (pair, ok) in maps[start..].iter_mut().zip(self.finite_images(&probe)?) {
                if !ok {
                    pair.0.data.fill(f32::NAN);
                    if let Some(l) = &mut pair.1 {
                        l.data.fill(f32::NAN);
                    }
                }
            }
            start += chunk.n;
        }
        Ok(maps)
    }
}

/// One conv's backward step under `rule`: `R_in = Σ_terms r_coef · input_t ⊙ convT(s_g, W_t)`
/// with `s_g = R / stab(Σ_{t in g} z_coef · conv(input_t, W_t))` (+ `acc`). `nonneg_input`:
/// `x >= 0` (a ReLU output), so `x⁺ = x` needs no pass.
#[allow(clippy::too_many_arguments)]
fn apply_rule<B: LrpBackend>(
    b: &mut B,
    rule: &Rule,
    conv: &LrpConv<B::Conv>,
    forward: &B::Conv,
    x: &B::Tensor,
    r: &B::Tensor,
    acc: Option<&B::Tensor>,
    nonneg_input: bool,
) -> Result<B::Tensor> {
    let shape = b.shape(x);
    if let Some(flat) = &conv.flat {
        // Flat: z and convT(s) are the same for every output channel, so
        // Σ_j W_ij s_j = convT(Σ_j R_j / stab(z)) through the one-channel conv.
        let t = &rule.terms[0];
        let cout = b.shape(r).c;
        let mean = b.channel_mean(r)?;
        let rsum = b.lincomb(&mean, cout as f32, None, 0.0)?;
        drop(mean);
        let ones = b.fill_channels(shape, &vec![1.0; shape.c])?;
        let s = b.conv2d_ratio(&ones, flat, &rsum)?;
        drop((ones, rsum));
        return b.conv_transpose(&s, flat, shape.h, shape.w, None, t.r_coef, acc);
    }
    // Groups with exactly one contributing term (coefficient 1, no gate) get their ratio from
    // one conv with a ratio epilogue: z is never stored and needs no pass of its own.
    let mut members = vec![0usize; rule.gates.len()];
    for (t, w) in rule.terms.iter().zip(&conv.terms) {
        if w.is_some() {
            members[t.group] += 1;
        }
    }
    let fused = |t: &super::rules::Term| {
        members[t.group] == 1 && t.z_coef == 1.0 && rule.gates[t.group].is_none()
    };
    let mut ratios: Vec<Option<B::Tensor>> = vec![None; rule.gates.len()];
    let mut inputs: Vec<Option<B::Tensor>> = Vec::with_capacity(rule.terms.len());
    let mut z: Vec<Option<B::Tensor>> = vec![None; rule.gates.len()];
    for (t, w) in rule.terms.iter().zip(&conv.terms) {
        let Some(w) = w else {
            inputs.push(None);
            continue;
        };
        let input = match t.input {
            InputMod::Identity => x.clone(),
            InputMod::Positive if nonneg_input => x.clone(),
            InputMod::Positive => b.clamp(x, 0.0, f32::INFINITY)?,
            InputMod::Negative => b.clamp(x, f32::NEG_INFINITY, 0.0)?,
            InputMod::Ones => b.fill_channels(shape, &vec![1.0; shape.c])?,
            InputMod::Low | InputMod::High => {
                ensure!(
                    shape.c == 3,
                    "{}: box bounds need an RGB input, found {} channels",
                    rule.name,
                    shape.c
                );
                let (low, high) = imagenet_bounds();
                b.fill_channels(
                    shape,
                    if t.input == InputMod::Low {
                        &low
                    } else {
                        &high
                    },
                )?
            }
        };
        if fused(t) {
            ratios[t.group] = Some(b.conv2d_ratio(&input, w, r)?);
            inputs.push(Some(input));
            continue;
        }
        let out = b.conv2d(&input, w, None, false)?;
        z[t.group] = Some(match z[t.group].take() {
            None if t.z_coef == 1.0 => out,
            None => b.lincomb(&out, t.z_coef, None, 0.0)?,
            Some(prev) => b.lincomb(&prev, 1.0, Some(&out), t.z_coef)?,
        });
        inputs.push(Some(input));
    }
    let gate_out = if rule.gates.iter().any(Option::is_some) {
        Some(b.conv2d(x, forward, None, false)?)
    } else {
        None
    };
    for ((zg, gate), ratio) in z.iter().zip(&rule.gates).zip(&mut ratios) {
        if ratio.is_some() {
            continue;
        }
        let zg = zg.as_ref().context("LRP rule group without terms")?;
        let gate = gate.map(|sign| (gate_out.as_ref().unwrap(), sign));
        *ratio = Some(b.lrp_ratio(r, zg, gate)?);
    }
    drop(z);
    let ratios: Vec<B::Tensor> = ratios
        .into_iter()
        .map(|q| q.context("LRP rule group without terms"))
        .collect::<Result<_>>()?;
    let mut out: Option<B::Tensor> = acc.cloned();
    for ((t, w), input) in rule.terms.iter().zip(&conv.terms).zip(&inputs) {
        let (Some(w), Some(input)) = (w, input) else {
            continue;
        };
        let mul = (t.input != InputMod::Ones).then_some(input);
        out = Some(b.conv_transpose(
            &ratios[t.group],
            w,
            shape.h,
            shape.w,
            mul,
            t.r_coef,
            out.as_ref(),
        )?);
    }
    out.context("LRP rule without terms")
}
