//! What an op is, independent of any backend: conv and pool geometry (one output-size
//! formula), the resampling modes, the ImageNet normalisation, the shape rules both backends
//! enforce ([`shapes`]) and the RELAX mask generator both backends implement
//! ([`relax_mask`]). A leaf: it imports nothing from the crate but [`crate::tensor`], so
//! `backend`, `model`, `gpu`, `cpu` and `explain` can all depend on it without cycles.

pub mod relax_mask;
pub mod shapes;

use std::fmt;
use std::str::FromStr;

/// ImageNet channel means (RGB) of the networks' input normalisation.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Output length of a window of `kernel` sliding by `stride` over `size` values padded by
/// `pad` on both sides (torch's floor formula), or `None` where the window does not fit
/// (or `kernel` or `stride` is 0). The one output-size formula of convs and pools.
pub fn window_out(size: usize, kernel: usize, stride: usize, pad: usize) -> Option<usize> {
    if kernel == 0 || stride == 0 {
        return None;
    }
    (size + 2 * pad)
        .checked_sub(kernel)
        .map(|span| span / stride + 1)
}

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
    /// The conv's shapes, for the shape rules ([`shapes`]).
    pub fn geometry(&self) -> ConvGeometry<'_> {
        ConvGeometry {
            name: &self.name,
            cin: self.cin,
            cout: self.cout,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pad: self.pad,
        }
    }
    /// The output size of an `h`x`w` input ([`window_out`]; 0 where the kernel does not
    /// fit, which the shape rules refuse).
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        self.geometry().out_size(h, w).unwrap_or((0, 0))
    }
    /// Multiply-accumulates per output pixel.
    pub fn macs_per_pixel(&self) -> usize {
        self.kh * self.kw * self.cin * self.cout
    }
}

/// A convolution whose geometry the shape rules can read: host weights ([`ConvLayer`]) and
/// every backend's prepared ones (`Backend::Conv`).
pub trait ConvShape {
    fn geometry(&self) -> ConvGeometry<'_>;
}

impl ConvShape for ConvLayer {
    fn geometry(&self) -> ConvGeometry<'_> {
        ConvLayer::geometry(self)
    }
}

/// What the shape rules need of a convolution.
#[derive(Clone, Copy, Debug)]
pub struct ConvGeometry<'a> {
    pub name: &'a str,
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeometry<'_> {
    /// The output size of an `h`x`w` input, or an error where the kernel does not fit.
    pub fn out_size(&self, h: usize, w: usize) -> anyhow::Result<(usize, usize)> {
        let (name, kh, kw, pad) = (self.name, self.kh, self.kw, self.pad);
        anyhow::ensure!(
            self.stride > 0 && kh > 0 && kw > 0,
            "conv {name}: kernel and stride must be positive"
        );
        match (
            window_out(h, kh, self.stride, pad),
            window_out(w, kw, self.stride, pad),
        ) {
            (Some(ho), Some(wo)) => Ok((ho, wo)),
            _ => anyhow::bail!(
                "conv {name}: input {h}x{w} smaller than its {kh}x{kw} kernel (padding {pad})"
            ),
        }
    }
}

/// Parameters of a max-pool (ResNet's stem uses 3x3, stride 2, padding 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Pool {
    pub const RESNET_STEM: Pool = Pool {
        kernel: 3,
        stride: 2,
        pad: 1,
    };
    /// The output size of an `h`x`w` input ([`window_out`]; 0 where the window does not fit,
    /// which the shape rules refuse).
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let out = |size| window_out(size, self.kernel, self.stride, self.pad).unwrap_or(0);
        (out(h), out(w))
    }
}

/// How a map is resampled. Both follow `torch.nn.functional.interpolate` with
/// `align_corners=False`: nearest picks `floor(dst * in / out)`, bilinear samples at
/// `(dst + 0.5) * in / out - 0.5` clamped at 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Upsample {
    Nearest,
    Bilinear,
}

impl Upsample {
    /// The names [`FromStr`] accepts (and [`fmt::Display`] writes), for a CLI's possible values.
    pub const NAMES: [&'static str; 2] = ["nearest", "bilinear"];
}

impl fmt::Display for Upsample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::NAMES[*self as usize])
    }
}

impl FromStr for Upsample {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nearest" => Ok(Upsample::Nearest),
            "bilinear" => Ok(Upsample::Bilinear),
            _ => Err(format!(
                "unknown upsampling '{s}': expected nearest or bilinear"
            )),
        }
    }
}

/// Which centred Gram matrix `CamBackend::centred_gram` forms from an activation `X`
/// (`hw x c` per image, centred per channel: `Xc = X - mean_hw X`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GramOver {
    /// `Xc Xcᵀ`, `hw x hw`: the smaller one when the map has fewer pixels than channels.
    Pixels,
    /// `Xcᵀ Xc`, `c x c`.
    Channels,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_out_size_formula() {
        assert_eq!(window_out(7, 3, 2, 1), Some(4));
        assert_eq!(window_out(1, 3, 1, 0), None);
        assert_eq!(window_out(5, 3, 0, 0), None);
        assert_eq!(Pool::RESNET_STEM.out_size(112, 111), (56, 56));
        for s in Upsample::NAMES {
            assert_eq!(s.parse::<Upsample>().unwrap().to_string(), s);
        }
    }
}
