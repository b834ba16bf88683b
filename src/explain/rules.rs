//! LRP rules as small declarative objects, after zennit's `BasicHook`: a rule is a list of
//! terms, each a (modified input, modified parameters) pair whose conv outputs add up to
//! one of the rule's denominators `z`; the relevance ratio `s = R / stab(z)` of that group is
//! sent back through each term's transposed conv, multiplied by the term's input and summed
//! with the term's coefficient. Semantics follow zennit's `rules.py` and `composites.py`.

use crate::backend::GateSign;
use std::fmt;
use std::str::FromStr;

/// ImageNet normalisation: the ZBox bounds are `(0 - mean) / std` and `(1 - mean) / std`.
pub fn imagenet_bounds() -> ([f32; 3], [f32; 3]) {
    let (mean, std) = (crate::ops::IMAGENET_MEAN, crate::ops::IMAGENET_STD);
    (
        [0, 1, 2].map(|c| (0.0 - mean[c]) / std[c]),
        [0, 1, 2].map(|c| (1.0 - mean[c]) / std[c]),
    )
}

/// What a term feeds the conv instead of its input `x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputMod {
    Identity,
    /// `x⁺ = max(x, 0)`
    Positive,
    /// `x⁻ = min(x, 0)`
    Negative,
    /// Ones (Flat): the term's relevance is then not multiplied by the input.
    Ones,
    /// The lowest possible input, per channel (ZBox).
    Low,
    /// The highest possible input, per channel (ZBox).
    High,
}

/// How a term modifies the conv's weight and bias (zennit's ParamMod / ClampMod / GammaMod).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamMod {
    Identity,
    /// `max(p, 0)`
    Positive,
    /// `min(p, 0)`
    Negative,
    /// `p + γ max(p, 0)`
    GammaPositive,
    /// `p + γ min(p, 0)`
    GammaNegative,
    /// All ones (Flat).
    Ones,
}

impl ParamMod {
    pub fn apply(self, p: f32, gamma: f32) -> f32 {
        match self {
            ParamMod::Identity => p,
            ParamMod::Positive => p.max(0.0),
            ParamMod::Negative => p.min(0.0),
            ParamMod::GammaPositive => p + gamma * p.max(0.0),
            ParamMod::GammaNegative => p + gamma * p.min(0.0),
            ParamMod::Ones => 1.0,
        }
    }
}

/// One (input, parameter) modification of a rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Term {
    pub input: InputMod,
    pub params: ParamMod,
    /// Whether the bias is kept (modified like the weight) or zeroed (zennit's `zero_bias`).
    pub bias: bool,
    /// Which denominator this term's output adds to, and whose ratio it propagates.
    pub group: usize,
    /// Sign of this term's output in its group's denominator.
    pub z_coef: f32,
    /// Weight of this term in the reducer (the relevance sum).
    pub r_coef: f32,
}

const fn term(
    input: InputMod,
    params: ParamMod,
    bias: bool,
    group: usize,
    z_coef: f32,
    r_coef: f32,
) -> Term {
    Term {
        input,
        params,
        bias,
        group,
        z_coef,
        r_coef,
    }
}

/// A rule: its terms and, per denominator group, an optional gate on the sign of the layer's
/// unmodified output (zennit's Gamma).
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: &'static str,
    pub terms: Vec<Term>,
    pub gates: Vec<Option<GateSign>>,
    pub gamma: f32,
}

impl Rule {
    /// ZPlus (= alpha1-beta0): `x⁺` with `w⁺, b⁺` plus `x⁻` with `w⁻` and no bias.
    pub fn zplus() -> Rule {
        use InputMod::*;
        use ParamMod as P;
        Rule {
            name: "ZPlus",
            terms: vec![
                term(Positive, P::Positive, true, 0, 1.0, 1.0),
                term(Negative, P::Negative, false, 0, 1.0, 1.0),
            ],
            gates: vec![None],
            gamma: 0.0,
        }
    }

    /// Generalised Gamma: positive outputs explained by `w + γw⁺`, negative ones by `w + γw⁻`.
    pub fn gamma(gamma: f32) -> Rule {
        use InputMod::*;
        use ParamMod as P;
        Rule {
            name: "Gamma",
            terms: vec![
                term(Positive, P::GammaPositive, true, 0, 1.0, 1.0),
                term(Negative, P::GammaNegative, false, 0, 1.0, 1.0),
                term(Positive, P::GammaNegative, true, 1, 1.0, 1.0),
                term(Negative, P::GammaPositive, false, 1, 1.0, 1.0),
            ],
            gates: vec![Some(GateSign::Positive), Some(GateSign::Negative)],
            gamma,
        }
    }

    /// AlphaBeta: `alpha` times the positive contributions minus `beta` times the negative.
    pub fn alpha_beta(alpha: f32, beta: f32) -> Rule {
        use InputMod::*;
        use ParamMod as P;
        Rule {
            name: "AlphaBeta",
            terms: vec![
                term(Positive, P::Positive, true, 0, 1.0, alpha),
                term(Negative, P::Negative, false, 0, 1.0, alpha),
                term(Positive, P::Negative, true, 1, 1.0, -beta),
                term(Negative, P::Positive, false, 1, 1.0, -beta),
            ],
            gates: vec![None, None],
            gamma: 0.0,
        }
    }

    /// ZBox for bounded inputs: `x w - l w⁺ - h w⁻` (biases cancel).
    pub fn zbox() -> Rule {
        use InputMod::*;
        use ParamMod as P;
        Rule {
            name: "ZBox",
            terms: vec![
                term(Identity, P::Identity, true, 0, 1.0, 1.0),
                term(Low, P::Positive, true, 0, -1.0, -1.0),
                term(High, P::Negative, true, 0, -1.0, -1.0),
            ],
            gates: vec![None],
            gamma: 0.0,
        }
    }

    /// Epsilon (LRP-ε with ε as the stabiliser): `R_i = x_i Σ_j w_ij R_j / stab(z_j)`.
    /// Conservative when the biases are zero; zennit uses it for linear layers.
    pub fn epsilon() -> Rule {
        Rule {
            name: "Epsilon",
            terms: vec![term(
                InputMod::Identity,
                ParamMod::Identity,
                true,
                0,
                1.0,
                1.0,
            )],
            gates: vec![None],
            gamma: 0.0,
        }
    }

    /// Flat: relevance spread uniformly over each receptive field.
    pub fn flat() -> Rule {
        Rule {
            name: "Flat",
            terms: vec![term(InputMod::Ones, ParamMod::Ones, false, 0, 1.0, 1.0)],
            gates: vec![None],
            gamma: 0.0,
        }
    }

    /// The terms that contribute, given whether the layer's input is known to be >= 0 (every
    /// conv after the stem reads ReLU outputs): then `x⁻ = 0`, and a bias-free `x⁻` term is 0.
    pub fn active_terms(&self, nonneg_input: bool) -> impl Iterator<Item = &Term> {
        self.terms
            .iter()
            .filter(move |t| !(nonneg_input && t.input == InputMod::Negative && !t.bias))
    }
}

/// A zennit composite: the rule for the first conv and for every other conv. Residual adds
/// use Norm, ReLUs pass relevance through, max-pool takes the gradient (winner-take-all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Composite {
    #[default]
    EpsilonPlusFlat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonAlpha2Beta1Flat,
}

impl Composite {
    pub const ALL: [Composite; 4] = [
        Composite::EpsilonPlusFlat,
        Composite::EpsilonGammaBox,
        Composite::EpsilonPlus,
        Composite::EpsilonAlpha2Beta1Flat,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Composite::EpsilonPlusFlat => "epsilon-plus-flat",
            Composite::EpsilonGammaBox => "epsilon-gamma-box",
            Composite::EpsilonPlus => "epsilon-plus",
            Composite::EpsilonAlpha2Beta1Flat => "epsilon-alpha2-beta1-flat",
        }
    }

    pub fn first_rule(self) -> Rule {
        match self {
            Composite::EpsilonPlusFlat | Composite::EpsilonAlpha2Beta1Flat => Rule::flat(),
            Composite::EpsilonGammaBox => Rule::zbox(),
            Composite::EpsilonPlus => Rule::zplus(),
        }
    }

    pub fn rule(self) -> Rule {
        match self {
            Composite::EpsilonPlusFlat | Composite::EpsilonPlus => Rule::zplus(),
            Composite::EpsilonGammaBox => Rule::gamma(0.25),
            Composite::EpsilonAlpha2Beta1Flat => Rule::alpha_beta(2.0, 1.0),
        }
    }
}

impl fmt::Display for Composite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Composite {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Composite::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Composite::ALL.iter().map(|c| c.name()).collect();
                format!(
                    "unknown LRP rule '{s}': expected one of {}",
                    names.join(", ")
                )
            })
    }
}
