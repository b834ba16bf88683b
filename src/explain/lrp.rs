//! LaFAM-LRP: relevance propagation seeded with a stage's own activations (`R = A`) and
//! traced back to the input pixels through every block, with zennit's semantics under
//! `ResNetCanonizer`: BatchNorm folded into the convs (done at load), conv rules from the
//! composite (see [`rules`](super::rules)), Norm on residual adds, ReLU pass-through,
//! winner-take-all max-pool.

use super::engine::Engine;
use super::method::{Display, MethodInfo, Needs, Pass, Produced, Resample};
use super::rules::{imagenet_bounds, Composite, InputMod, Rule};
use super::tape::{forward, Tape, TapeSpec};
use crate::backend::{Backend, CamBackend, LrpBackend, Pool};
use crate::model::{ConvLayer, ResNet, Stage};
use crate::tensor::HostTensor;
use anyhow::{ensure, Context, Result};

pub const INFO: MethodInfo = MethodInfo {
    name: "lrp",
    about: "LaFAM-LRP: relevance propagated from the layer's activations back to the input \
            pixels (--rule), summed over RGB: which pixels caused what lafam shows",
    needs: Needs::LrpTape,
    outputs: &[""],
    resample: Resample::Bilinear,
    display: Display::Signed,
    needs_classifier: false,
};

pub fn run<B: CamBackend>(pass: &mut Pass<'_, B>) -> Result<Produced<B::Tensor>> {
    let weights = pass.lrp.context("LRP rules are not prepared")?;
    // Concepts run after LaFAM-LRP in the same pass and need the tape too.
    let tape = if pass.request.methods.contains(&super::Method::Concepts) {
        pass.tape.clone()
    } else {
        pass.tape.take()
    }
    .context("LRP needs a taped forward pass")?;
    let r_in = input_relevance(pass.b, pass.net, weights, tape, None)?;
    // Summed over RGB (the mean kernel times 3); relevance is at pixel resolution already,
    // so it is resampled bilinearly (nearest would alias).
    let mean = pass.b.channel_mean(&r_in)?;
    Ok(Produced::one(pass.b.lincomb(&mean, 3.0, None, 0.0)?))
}

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

impl<C> LrpWeights<C> {
    /// Whether the forward pass must keep each block's branch for the residual split.
    /// Every term of most rules multiplies its relevance by the conv input (x, x⁺ or x⁻), so
    /// a block input's relevance is zero wherever that input (a ReLU output) is: the split
    /// can then work from the block output instead (see
    /// [`LrpBackend::residual_split_relu`]).
    pub fn needs_branch(&self) -> bool {
        !self.rule.terms.iter().all(|t| {
            matches!(
                t.input,
                InputMod::Identity | InputMod::Positive | InputMod::Negative
            )
        })
    }
}

/// The rule-modified weights of every conv: `first` for the stem, `rule` for the others.
pub(crate) fn prepare_lrp<B: Backend>(
    b: &mut B,
    spec: &ResNet<ConvLayer>,
    first: Rule,
    rule: Rule,
) -> Result<LrpWeights<B::Conv>> {
    let stem = &spec.stem as *const ConvLayer;
    let net = spec.try_map(|c| {
        if std::ptr::eq(c, stem) {
            prepare_conv(b, c, &first, false)
        } else {
            prepare_conv(b, c, &rule, true)
        }
    })?;
    Ok(LrpWeights {
        composite: None,
        first,
        rule,
        net,
    })
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
    pub(crate) fn tap<B: Backend>(&mut self, b: &mut B, t: B::Tensor) -> Result<B::Tensor> {
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

impl<B: LrpBackend> Engine<B, LrpWeights<B::Conv>> {
    /// Relevance at the input, `[n, h, w, 3]`, of a preprocessed batch `x` seeded with the
    /// stage's output; also the stage's activations. `trace` collects per-stage relevance
    /// sums and can record or replay the forward tensors.
    pub fn lrp_input_relevance(
        &mut self,
        x: B::Tensor,
        stage: Stage,
        mut trace: Option<&mut RelevanceTrace>,
    ) -> Result<(B::Tensor, B::Tensor)> {
        let spec = TapeSpec {
            lrp: true,
            keep_branch: self.lrp.needs_branch(),
            ..TapeSpec::plain(stage)
        };
        let mut tap = trace.as_deref_mut().and_then(|t| t.forward.take());
        let tape = forward(&mut self.backend, &self.net, x, spec, tap.as_mut())?;
        if let Some(t) = trace.as_deref_mut() {
            t.forward = tap;
        }
        let activations = tape.activations().clone();
        let r_in = input_relevance(&mut self.backend, &self.net, &self.lrp, tape, trace)?;
        Ok((r_in, activations))
    }
}

/// Relevance at the input, `[n, h, w, 3]`, seeded with the output of the tape's stage and
/// traced back through every block. The tape is consumed block by block, so that each entry
/// is released (and its device memory reused) as soon as the backward has used it.
pub(crate) fn input_relevance<B: LrpBackend>(
    b: &mut B,
    net: &ResNet<B::Conv>,
    lrp: &LrpWeights<B::Conv>,
    tape: Tape<B::Tensor>,
    trace: Option<&mut RelevanceTrace>,
) -> Result<B::Tensor> {
    conditional_relevance(b, net, lrp, tape, trace, None)
}

/// Conditions a backward pass at a stage's output (CRP): given the relevance `R [n, h, w, c]`
/// arriving there, returns the conditioned relevance `[n*k, h, w, c]` (image `i`'s `k`
/// conditions at `i*k..(i+1)*k`) and `k`; `k = 0` stops the backward there and returns the
/// conditioner's tensor.
pub(crate) type Conditioner<'a, B> =
    &'a mut dyn FnMut(&mut B, &<B as Backend>::Tensor) -> Result<(<B as Backend>::Tensor, usize)>;

/// [`input_relevance`], optionally conditioned at the output of stage `at.0` (`<=` the tape's
/// stage) by `at.1`: from there on the backward runs once over the `n*k` conditions, the
/// tape of the lower blocks repeated `k` times per image ([`LrpBackend::repeat_images`])
/// rather than recomputed. Returns `[n*k, h, w, 3]`.
pub(crate) fn conditional_relevance<B: LrpBackend>(
    b: &mut B,
    net: &ResNet<B::Conv>,
    lrp: &LrpWeights<B::Conv>,
    tape: Tape<B::Tensor>,
    mut trace: Option<&mut RelevanceTrace>,
    mut at: Option<(Stage, Conditioner<'_, B>)>,
) -> Result<B::Tensor> {
    let stage = tape.spec.stage;
    if let Some((layer, _)) = &at {
        ensure!(
            *layer <= stage,
            "the concept layer {layer} is above the explained layer {stage}"
        );
    }
    // Repeats per image once conditioned (None before).
    let mut k: Option<usize> = None;
    ensure!(tape.spec.lrp, "the forward pass was not taped for LRP");
    let Tape {
        input,
        stem_out,
        outputs,
        blocks: mut tape_blocks,
        ..
    } = tape;
    let stem_out = stem_out.context("the tape lacks the stem output")?;
    let output = outputs[stage.index()].clone();
    drop(outputs);
    let mut record = |b: &mut B, name: String, t: &B::Tensor| -> Result<()> {
        if let Some(tr) = trace.as_deref_mut() {
            let host = b.download(t)?;
            tr.sums
                .push((name, host.data.iter().map(|&v| v as f64).sum()));
        }
        Ok(())
    };
    let mut r = output;
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
            blocks.push((pair, format!("layer{}.{i}", s + 1), s));
        }
    }
    ensure!(tape_blocks.len() == blocks.len(), "tape and network differ");
    // Conditions the relevance once the backward reaches the output of stage `layer`.
    let mut condition =
        |b: &mut B, r: B::Tensor, s: usize, k: &mut Option<usize>| -> Result<B::Tensor> {
            match &mut at {
                Some((layer, f)) if k.is_none() && s <= layer.index() => {
                    let (conditioned, repeats) = f(b, &r)?;
                    *k = Some(repeats);
                    Ok(conditioned)
                }
                _ => Ok(r),
            }
        };
    let rep = |b: &mut B, t: B::Tensor, k: Option<usize>| -> Result<B::Tensor> {
        match k {
            Some(k) if k > 1 => b.repeat_images(&t, k, None),
            _ => Ok(t),
        }
    };
    for ((block, fwd), name, s) in blocks.iter().rev() {
        r = condition(b, r, *s, &mut k)?;
        // A conditioner that asks for no conditions only wanted the relevance there.
        if k == Some(0) {
            return Ok(r);
        }
        let super::tape::BlockTape {
            conv_inputs,
            skip,
            branch,
            out,
            ..
        } = tape_blocks.pop().context("tape shorter than the network")?;
        // Conditioned: each conv input repeated per condition, and as it was, for the
        // denominators z (the same for every condition of an image: computed once).
        let mut conv_inputs = conv_inputs
            .into_iter()
            .map(|t| match k {
                Some(k) if k > 1 => Ok((b.repeat_images(&t, k, None)?, Some(t))),
                _ => Ok((t, None)),
            })
            .collect::<Result<Vec<_>>>()?;
        let skip = rep(b, skip.context("the tape lacks a skip operand")?, k)?;
        let branch = branch.map(|t| rep(b, t, k)).transpose()?;
        let out = rep(b, out, k)?;
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
            rb = apply_rule(
                b,
                &lrp.rule,
                conv,
                fwd_conv,
                &x.0,
                &rb,
                acc,
                true,
                shared_input(&x, k),
            )?;
        }
        r = match (&block.downsample, &fwd.downsample) {
            (Some(ds), Some(fwd_ds)) => apply_rule(
                b,
                &lrp.rule,
                ds,
                fwd_ds,
                &conv_inputs[0].0,
                &r_skip,
                Some(&rb),
                true,
                shared_input(&conv_inputs[0], k),
            )?,
            _ => rb,
        };
        record(b, format!("{name} input"), &r)?;
    }
    let stem_out = rep(b, stem_out, k)?;
    let input_rep = rep(b, input.clone(), k)?;
    r = b.max_pool_backward(&stem_out, &r, Pool::RESNET_STEM)?;
    drop(stem_out);
    record(b, "stem output".into(), &r)?;
    let r_in = apply_rule(
        b,
        &lrp.first,
        &lrp.net.stem,
        &net.stem,
        &input_rep,
        &r,
        None,
        false,
        k.filter(|&k| k > 1).map(|k| (&input, k)),
    )?;
    record(b, "input".into(), &r_in)?;
    Ok(r_in)
}

/// A conditioned conv input `(repeated, Some(base))` as [`apply_rule`]'s `shared`.
fn shared_input<T>(pair: &(T, Option<T>), k: Option<usize>) -> Option<(&T, usize)> {
    pair.1.as_ref().map(|base| (base, k.unwrap_or(1)))
}

/// One conv's backward step under `rule`: `R_in = Σ_terms r_coef · input_t ⊙ convT(s_g, W_t)`
/// with `s_g = R / stab(Σ_{t in g} z_coef · conv(input_t, W_t))` (+ `acc`). `nonneg_input`:
/// `x >= 0` (a ReLU output), so `x⁺ = x` needs no pass. `shared`: `x` is `base` repeated `k`
/// times per image (the conditions of a conditional backward, [`conditional_relevance`]): the
/// denominators depend on the input only, so they are computed once on `base` and repeated.
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
    shared: Option<(&B::Tensor, usize)>,
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
        shared.is_none()
            && members[t.group] == 1
            && t.z_coef == 1.0
            && rule.gates[t.group].is_none()
    };
    // The inputs and denominators are computed on `base` when shared.
    let x_all = x;
    let (x, shape) = match shared {
        Some((base, _)) => (base, b.shape(base)),
        None => (x, shape),
    };
    let repeat = |b: &mut B, t: B::Tensor| -> Result<B::Tensor> {
        match shared {
            Some((_, k)) if k > 1 => b.repeat_images(&t, k, None),
            _ => Ok(t),
        }
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
        let g = b.conv2d(x, forward, None, false)?;
        Some(repeat(b, g)?)
    } else {
        None
    };
    let z: Vec<Option<B::Tensor>> = z
        .into_iter()
        .map(|zg| zg.map(|t| repeat(b, t)).transpose())
        .collect::<Result<_>>()?;
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
        // x itself (or x⁺ = x after a ReLU) is already repeated: `x_all`.
        let plain_x =
            t.input == InputMod::Identity || (t.input == InputMod::Positive && nonneg_input);
        let mul = match (t.input != InputMod::Ones, shared) {
            (false, _) => None,
            (true, Some(_)) if plain_x => Some(x_all.clone()),
            (true, Some(_)) => Some(repeat(b, input.clone())?),
            (true, None) => Some(input.clone()),
        };
        out = Some(b.conv_transpose(
            &ratios[t.group],
            w,
            shape.h,
            shape.w,
            mul.as_ref(),
            t.r_coef,
            out.as_ref(),
        )?);
    }
    out.context("LRP rule without terms")
}
