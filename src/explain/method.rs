//! What a method is: a small declarative description ([`MethodInfo`]) and one function over
//! a forward pass ([`Pass`]). The registry in [`super`] lists every method once; the
//! pipeline ([`super::pipeline`]) groups the requested ones by the forward pass they need and
//! resamples, downloads and checks their maps, so a method file holds only its own math.

use super::engine::ImageBatch;
use super::lrp::LrpWeights;
use super::pipeline::Request;
use super::tape::Tape;
use crate::backend::CamBackend;
use crate::model::{ConvLayer, ResNet};

/// The forward pass a method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Needs {
    /// Only the explained stage's activations: the method joins whichever pass runs.
    Activations,
    /// A pass taped for the LRP backward (blocks up to the stage); the method consumes the
    /// tape, so it runs last in its pass.
    LrpTape,
    /// A pass to layer4 taped for the gradient of the blocks after the stage.
    GradientTape,
    /// Its own forward passes per image (RELAX): no shared pass, no chunking.
    OwnPasses,
}

/// How a method's maps reach the image's resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// The request's `upsample` mode (nearest as in the LaFAM paper, or bilinear).
    AsRequested,
    /// Bilinear (maps already at pixel resolution, or smooth by definition).
    Bilinear,
    /// Bilinear, then min-max normalised again (pytorch-grad-cam's `scale_cam_image`).
    BilinearRenormalised,
}

/// How a map is shown as an image (the values themselves are written as they are): defined
/// with the colormaps that draw it.
pub use crate::io::colormap::Display;

/// A method's description.
#[derive(Clone, Copy, Debug)]
pub struct MethodInfo {
    /// The name on the command line and in output files (`<stem>.<name>.npy`).
    pub name: &'static str,
    /// One paragraph for `--help`.
    pub about: &'static str,
    pub needs: Needs,
    /// Suffixes of the maps the method makes, appended to its name in output files ("" for
    /// the main map; RELAX also makes "-uncertainty"). Empty: as many as the method makes
    /// for the request, named per image ([`Produced::names`]; concepts).
    pub outputs: &'static [&'static str],
    pub resample: Resample,
    pub display: Display,
    /// Needs a linear classifier head (`fc`).
    pub needs_classifier: bool,
}

/// What a method gets: the backend, the network and one forward pass over a chunk of images.
pub struct Pass<'a, B: CamBackend> {
    pub b: &'a mut B,
    pub net: &'a ResNet<B::Conv>,
    pub spec: &'a ResNet<ConvLayer>,
    /// The LRP rules' weights (checked by the planner for methods that need them).
    pub lrp: Option<&'a LrpWeights<B::Conv>>,
    pub request: &'a Request,
    /// The chunk's images (for methods with their own passes).
    pub images: ImageBatch<'a>,
    /// The pass's tape (`None` for [`Needs::OwnPasses`], or once a method consumed it).
    pub tape: Option<Tape<B::Tensor>>,
}

/// What a method makes for a chunk of `n` images.
pub struct Produced<T> {
    /// One tensor `[n, h, w, 1]` per entry of [`MethodInfo::outputs`], at any resolution:
    /// the pipeline resamples each image to its output size.
    pub maps: Vec<T>,
    /// Per image, whether the method found its input not finite (empty: all finite). The
    /// pipeline fills such an image's maps with NaN, as it does for non-finite activations.
    pub non_finite: Vec<bool>,
    /// Per image, the class the maps explain (Grad-CAM's target; empty for label-free
    /// methods).
    pub targets: Vec<usize>,
    /// Per map, the index of each image in the map's tensor (empty: image `i` at `i`): the
    /// maps of a batched conditional backward share one tensor.
    pub index: Vec<Vec<usize>>,
    /// Per map, per image, the output's name in file names in place of
    /// `<method><suffix>` (empty: that default), e.g. "concept-17".
    pub names: Vec<Vec<String>>,
    /// Per image, a JSON side output `<stem>.<method>.json` (empty: none).
    pub json: Vec<serde_json::Value>,
}

impl<T> Produced<T> {
    pub fn one(map: T) -> Self {
        Produced::many(vec![map])
    }

    /// Maps with nothing else to say (all finite, no targets, default names).
    pub fn many(maps: Vec<T>) -> Self {
        Produced {
            maps,
            non_finite: Vec::new(),
            targets: Vec::new(),
            index: Vec::new(),
            names: Vec::new(),
            json: Vec::new(),
        }
    }
}

/// Declares the method modules and the [`Method`](super::Method) enum from one list: adding a
/// method is one file with an `INFO` and a `run`, and one line in the list.
macro_rules! methods {
    ($($(#[$doc:meta])* $variant:ident => $module:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// An attribution method (see [`MethodInfo`](method::MethodInfo) for what each needs).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Method {
            $($(#[$doc])* $variant),*
        }

        impl Method {
            /// Every method, in registry order.
            pub const ALL: &'static [Method] = &[$(Method::$variant),*];

            /// The method's description.
            pub fn info(self) -> &'static method::MethodInfo {
                match self {
                    $(Method::$variant => &$module::INFO),*
                }
            }

            /// Runs the method over one pass.
            pub(crate) fn run<B: $crate::backend::CamBackend>(
                self,
                pass: &mut method::Pass<'_, B>,
            ) -> anyhow::Result<method::Produced<B::Tensor>> {
                match self {
                    $(Method::$variant => $module::run(pass)),*
                }
            }
        }
    };
}
pub(crate) use methods;
