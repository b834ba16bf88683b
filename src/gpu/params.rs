//! The uniform parameter block of every kernel, one `#[repr(C)]` struct per WGSL
//! `struct Params`, its fields named and ordered as the WGSL members (`tests/shader_params.rs`
//! reflects every shader through naga and compares names, offsets and sizes with
//! [`all`]). Fields a kernel does not use stay zero (`Default`).

use bytemuck::{Pod, Zeroable};

/// Where a parameter struct's fields lie: `(name, byte offset)` in declaration order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamsLayout {
    /// The WGSL file under `shaders/` whose `struct Params` this is.
    pub shader: &'static str,
    /// The Rust struct's name.
    pub name: &'static str,
    pub fields: Vec<(&'static str, usize)>,
    pub size: usize,
}

/// A kernel's parameter block: plain data that fits the bound uniform range.
pub(crate) trait ShaderParams: Pod {}

/// Declares a parameter struct (all fields 4-byte scalars), its [`ShaderParams`] impl and
/// its [`ParamsLayout`].
macro_rules! params {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident in $shader:literal { $($(#[doc = $fdoc:literal])* $field:ident: $ty:ty,)* }
    )*) => {
        $(
            $(#[doc = $doc])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
            pub struct $name {
                $($(#[doc = $fdoc])* pub $field: $ty,)*
            }

            impl ShaderParams for $name {}

            const _: () = assert!(
                std::mem::size_of::<$name>() as u64 <= super::pipelines::PARAMS_BYTES,
                "a parameter block exceeds the bound uniform range"
            );

            impl $name {
                /// This struct's layout, for the reflection test.
                pub fn layout() -> ParamsLayout {
                    ParamsLayout {
                        shader: $shader,
                        name: stringify!($name),
                        fields: vec![$((stringify!($field), std::mem::offset_of!($name, $field)),)*],
                        size: std::mem::size_of::<$name>(),
                    }
                }
            }
        )*

        /// Every parameter struct's layout.
        pub fn all() -> Vec<ParamsLayout> {
            vec![$($name::layout(),)*]
        }
    };
}

params! {
    /// `shaders/preprocess.wgsl`.
    PreprocessParams in "preprocess.wgsl" {
        /// Output elements `n * h * w * 3` (= input bytes).
        total: u32,
        /// Input words `ceil(total / 4)`.
        words: u32,
        _p0: u32,
        _p1: u32,
    }

    /// `shaders/conv.wgsl` (the forward conv and its fused epilogue).
    ConvParams in "conv.wgsl" {
        n: u32,
        h: u32,
        w: u32,
        cin: u32,
        ho: u32,
        wo: u32,
        cout: u32,
        kh: u32,
        kw: u32,
        stride: u32,
        pad: u32,
        /// GEMM rows `n * ho * wo`.
        m: u32,
        /// Reduction length `kh * kw * cin`.
        k: u32,
        x_off: u32,
        r_off: u32,
        /// Bit 0: add the residual, bit 1: ReLU, bit 2: LRP ratio `residual / stab(z)`.
        flags: u32,
    }

    /// `shaders/conv_backward.wgsl` (the transposed conv and its LRP epilogue).
    ConvTransposeParams in "conv_backward.wgsl" {
        n: u32,
        /// Input (= result) height.
        h: u32,
        w: u32,
        cin: u32,
        /// Relevance (= forward output) height.
        ho: u32,
        wo: u32,
        cout: u32,
        kh: u32,
        kw: u32,
        stride: u32,
        pad: u32,
        s_off: u32,
        mul_off: u32,
        acc_off: u32,
        /// Bit 0: multiply by `mul`, bit 1: add `acc`.
        flags: u32,
        scale: f32,
    }

    /// `shaders/pool.wgsl` (the forward max-pool).
    PoolParams in "pool.wgsl" {
        n: u32,
        h: u32,
        w: u32,
        c: u32,
        ho: u32,
        wo: u32,
        kernel: u32,
        stride: u32,
        pad: u32,
        x_off: u32,
        /// Output elements.
        total: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
        _p3: u32,
        _p4: u32,
    }

    /// `shaders/reduce.wgsl` (channel mean, min-max normalisation).
    ReduceParams in "reduce.wgsl" {
        /// channel_mean: pixels `n*h*w`; minmax: images `n`.
        count: u32,
        /// channel_mean: channels; minmax: elements per image.
        len: u32,
        x_off: u32,
        _p0: u32,
    }

    /// `shaders/resample.wgsl` (nearest and bilinear resize).
    ResampleParams in "resample.wgsl" {
        n: u32,
        h: u32,
        w: u32,
        c: u32,
        ho: u32,
        wo: u32,
        x_off: u32,
        /// Output elements.
        total: u32,
    }

    /// `shaders/lrp.wgsl` (the elementwise LRP steps and the max-pool backward).
    LrpParams in "lrp.wgsl" {
        /// Output elements.
        total: u32,
        /// Channels (fill_channels, max_pool_backward).
        c: u32,
        a_off: u32,
        b_off: u32,
        c_off: u32,
        /// lrp_ratio: bit 0 gate, bit 1 gate wants negative; lincomb: bit 0 has b;
        /// residual_split: bit 0 b is the ReLU'd sum.
        flags: u32,
        /// lincomb alpha, clamp lo.
        alpha: f32,
        /// lincomb beta, clamp hi.
        beta: f32,
        h: u32,
        w: u32,
        ho: u32,
        wo: u32,
        kernel: u32,
        stride: u32,
        pad: u32,
        _p0: u32,
    }

    /// `shaders/cam.wgsl` (the baseline methods' ops).
    CamParams in "cam.wgsl" {
        /// Output elements.
        total: u32,
        /// Channels.
        c: u32,
        a_off: u32,
        b_off: u32,
        c_off: u32,
        /// channel_projection: bit 0 has mean, bit 1 ReLU; centred_gram: bit 0 channels.
        flags: u32,
        /// broadcast_spatial: scale; relax_accumulate: shift.
        f0: f32,
        /// Pixels per image.
        hw: u32,
        h: u32,
        w: u32,
        /// centred_gram: matrix side; relax_accumulate: masks in the batch.
        d: u32,
        /// relax_masks: index of the first mask.
        start: u32,
        /// relax_masks: seed key.
        key: u32,
        _p0: u32,
        _p1: u32,
        _p2: u32,
    }
}
