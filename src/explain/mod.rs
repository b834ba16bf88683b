//! Attribution methods, written once over [`Backend`](crate::Backend).
//!
//! - [`method`]: what a method is ([`MethodInfo`](method::MethodInfo) + one `run` function).
//! - [`pipeline`]: the planner and the one explain pipeline every method goes through.
//! - [`tape`]: the one forward pass, keeping what the backward passes need.
//! - [`engine`]: a backend with a network prepared on it; LRP's weights as a typestate.
//! - one file per method (the registry below), plus [`rules`] (LRP rules as data) and
//!   [`ties`] (taking a backend comparison of LRP apart).

pub mod atlas;
pub mod engine;
pub mod method;
pub mod pipeline;
pub mod randomise;
pub mod rules;
pub mod score;
pub mod tape;
pub mod ties;

pub use concepts::ConceptConfig;
pub use engine::{Engine, ImageBatch, NoLrp};
pub use lrp::LrpWeights;
pub use pipeline::{MethodMaps, Request};
pub use rules::Composite;

// The registry: one line per method (variant => module). The module holds the method's
// `INFO` and its `run` over a forward pass.
method::methods! {
    /// LaFAM: channel mean of the stage's activations, min-max normalised, upsampled.
    Lafam => lafam,
    /// LaFAM with the channel max instead of the mean.
    LafamMax => lafam_max,
    /// LaFAM-LRP: relevance propagated from the stage's activations back to the pixels.
    Lrp => lrp,
    /// Grad-CAM (needs a linear classifier).
    Gradcam => gradcam,
    /// EigenCAM: projection on the first principal component of the activations.
    Eigencam => eigencam,
    /// RELAX: occlusion with random masks, similarity of embeddings.
    Relax => relax,
    /// Concepts (CRP): the concept layer's channels ranked by relevance, with conditional
    /// LaFAM-LRP maps.
    Concepts => concepts,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.info().name)
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Method::ALL
            .iter()
            .copied()
            .find(|m| m.info().name.eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Method::ALL.iter().map(|m| m.info().name).collect();
                format!("unknown method '{s}' (known: {})", names.join(", "))
            })
    }
}
