//! ResNet model description: what the weights file says, after key normalisation and
//! BatchNorm folding. Generic over the conv representation `C` so the same structure holds
//! host weights (`ConvLayer`) or a backend's prepared weights (`Backend::Conv`).

pub mod load;
pub mod random;

use std::fmt;
use std::str::FromStr;

pub use load::{load_weights, LoadedWeights};

/// A convolution with BatchNorm folded in. Weight layout `[kh][kw][cin][cout]` (HWIO), so the
/// weight is the `[kh*kw*cin, cout]` right-hand matrix of the implicit GEMM over NHWC input.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLayer {
    /// Normalised tensor name of the conv (e.g. "layer1.0.conv2"), for messages.
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl ConvLayer {
    /// The conv's shapes, for the backends' shape rules ([`crate::backend::shapes`]).
    pub fn geometry(&self) -> crate::backend::shapes::ConvGeometry<'_> {
        crate::backend::shapes::ConvGeometry {
            name: &self.name,
            cin: self.cin,
            cout: self.cout,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
        }
    }
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.kh) / self.stride + 1,
            (w + 2 * self.pad - self.kw) / self.stride + 1,
        )
    }
    /// Multiply-accumulates per output pixel.
    pub fn macs_per_pixel(&self) -> usize {
        self.kh * self.kw * self.cin * self.cout
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convs (ResNet-18/34).
    Basic,
    /// 1x1, 3x3 (strided, torchvision v1.5), 1x1 x4 expansion (ResNet-50/101/152).
    Bottleneck,
}

/// A residual block: `relu(convs(x) + downsample(x) or x)`; every conv but the last is
/// followed by ReLU, the last one's ReLU comes after the residual add.
#[derive(Clone, Debug)]
pub struct Block<C> {
    pub convs: Vec<C>,
    pub downsample: Option<C>,
}

/// Non-backbone tensors found in the weights, kept aside (fc is used by Grad-CAM).
#[derive(Clone, Debug, Default)]
pub struct Heads {
    /// `fc.weight` [classes, features] row-major and `fc.bias` [classes].
    pub fc: Option<(Vec<f32>, Vec<f32>, usize)>,
    /// Names of the other head groups seen (e.g. "projection_head", "prototypes").
    pub ignored: Vec<String>,
}

/// A ResNet backbone: stem conv (7x7/2, folded bn1, ReLU), 3x3/2 max-pool, four stages.
#[derive(Clone, Debug)]
pub struct ResNet<C> {
    pub kind: BlockKind,
    pub stem: C,
    pub stages: [Vec<Block<C>>; 4],
    pub heads: Heads,
}

impl<C> ResNet<C> {
    /// The same network with every conv converted (e.g. uploaded to a device).
    pub fn try_map<D, E>(&self, mut f: impl FnMut(&C) -> Result<D, E>) -> Result<ResNet<D>, E> {
        let mut map_block = |b: &Block<C>| -> Result<Block<D>, E> {
            Ok(Block {
                convs: b.convs.iter().map(&mut f).collect::<Result<_, _>>()?,
                downsample: b.downsample.as_ref().map(&mut f).transpose()?,
            })
        };
        let mut stages: [Vec<Block<D>>; 4] = Default::default();
        for (dst, src) in stages.iter_mut().zip(&self.stages) {
            *dst = src.iter().map(&mut map_block).collect::<Result<_, _>>()?;
        }
        Ok(ResNet {
            kind: self.kind,
            stem: f(&self.stem)?,
            stages,
            heads: self.heads.clone(),
        })
    }

    pub fn blocks_per_stage(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| self.stages[i].len())
    }
}

impl ResNet<ConvLayer> {
    /// "ResNet-50", or "ResNet (custom [2,3,4,2], bottleneck)" for non-standard depths.
    pub fn arch_name(&self) -> String {
        let b = self.blocks_per_stage();
        let depth = match (self.kind, b) {
            (BlockKind::Basic, [2, 2, 2, 2]) => Some(18),
            (BlockKind::Basic, [3, 4, 6, 3]) => Some(34),
            (BlockKind::Bottleneck, [3, 4, 6, 3]) => Some(50),
            (BlockKind::Bottleneck, [3, 4, 23, 3]) => Some(101),
            (BlockKind::Bottleneck, [3, 8, 36, 3]) => Some(152),
            _ => None,
        };
        let width = self.stem.cout;
        let base = match depth {
            Some(d) => format!("ResNet-{d}"),
            None => format!("ResNet (custom blocks {b:?}, {:?})", self.kind),
        };
        if width == 64 {
            base
        } else if width.is_multiple_of(64) {
            format!("{base}-w{}", width / 64)
        } else {
            format!("{base} (stem width {width})")
        }
    }

    /// Output channels of each stage.
    pub fn stage_channels(&self) -> [usize; 4] {
        [0, 1, 2, 3].map(|i| {
            self.stages[i]
                .last()
                .and_then(|b| b.convs.last())
                .map_or(0, |c| c.cout)
        })
    }

    pub fn parameter_count(&self) -> usize {
        let mut n = 0;
        self.try_map(|c: &ConvLayer| {
            n += c.weight.len() + c.bias.len();
            Ok::<(), ()>(())
        })
        .ok();
        n + self
            .heads
            .fc
            .as_ref()
            .map_or(0, |(w, b, _)| w.len() + b.len())
    }

    /// Largest activation (elements per image) the forward pass up to `stage` produces for
    /// an `h`x`w` input: used to split batches to the backend's tensor limit.
    pub fn max_activation_per_image(&self, h: usize, w: usize, stage: Stage) -> usize {
        let (mut h, mut w) = self.stem.out_size(h, w);
        let mut max = h * w * self.stem.cout;
        (h, w) = Pool::RESNET_STEM.out_size(h, w);
        for blocks in &self.stages[..=stage.index()] {
            for b in blocks {
                let (mut bh, mut bw) = (h, w);
                for c in &b.convs {
                    (bh, bw) = c.out_size(bh, bw);
                    max = max.max(bh * bw * c.cout);
                }
                (h, w) = (bh, bw);
            }
        }
        max
    }

    /// Multiply-accumulates per image of LaFAM-LRP seeded at `stage` with the default
    /// composite (epsilon-plus-flat): the forward pass, then per conv the rule's own z and the
    /// transposed conv (3x the forward's MACs), except the stem whose Flat rule runs on one
    /// output channel. Rules with two terms (alpha-beta, gamma, z-box) do more.
    pub fn lrp_macs_per_image(&self, h: usize, w: usize, stage: Stage) -> usize {
        let (sh, sw) = self.stem.out_size(h, w);
        let stem = sh * sw * self.stem.macs_per_pixel();
        3 * self.macs_per_image(h, w, stage) - 2 * stem + 2 * stem / self.stem.cout.max(1)
    }

    /// Multiply-accumulates per image for the forward pass up to `stage`.
    pub fn macs_per_image(&self, h: usize, w: usize, stage: Stage) -> usize {
        let (mut h, mut w) = self.stem.out_size(h, w);
        let mut macs = h * w * self.stem.macs_per_pixel();
        (h, w) = Pool::RESNET_STEM.out_size(h, w);
        for blocks in &self.stages[..=stage.index()] {
            for b in blocks {
                let (mut bh, mut bw) = (h, w);
                for c in &b.convs {
                    (bh, bw) = c.out_size(bh, bw);
                    macs += bh * bw * c.macs_per_pixel();
                }
                if let Some(d) = &b.downsample {
                    macs += bh * bw * d.macs_per_pixel();
                }
                (h, w) = (bh, bw);
            }
        }
        macs
    }
}

use crate::backend::Pool;

/// A residual stage of the backbone: the explained layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Layer1,
    Layer2,
    Layer3,
    Layer4,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Layer1, Stage::Layer2, Stage::Layer3, Stage::Layer4];
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer{}", self.index() + 1)
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "layer1" => Ok(Stage::Layer1),
            "layer2" => Ok(Stage::Layer2),
            "layer3" => Ok(Stage::Layer3),
            "layer4" => Ok(Stage::Layer4),
            _ => Err(format!(
                "unknown layer '{s}': expected layer1, layer2, layer3 or layer4"
            )),
        }
    }
}
