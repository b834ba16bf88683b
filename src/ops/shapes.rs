//! Shape rules of the ops, shared by the backends so that both accept and refuse the same
//! inputs with the same message (the GPU adds its own device limits: binding sizes, 32-bit
//! indices, view extents).

use super::{ConvGeometry, GramOver, Pool};
use crate::tensor::Shape;
use anyhow::{bail, ensure, Result};

/// `a` and `b` of an elementwise op have one shape.
pub fn same(what: &str, a: Shape, b: Shape) -> Result<()> {
    ensure!(a == b, "{what}: shapes {a} and {b} differ");
    Ok(())
}

/// The output shape of a conv of `x` (with `residual`, which must have it).
pub fn conv2d(c: &ConvGeometry, x: Shape, residual: Option<Shape>) -> Result<Shape> {
    ensure!(
        x.c == c.cin,
        "conv {}: input {x} has {} channels, the conv expects {}",
        c.name,
        x.c,
        c.cin
    );
    ensure!(x.n > 0, "conv {}: empty input {x}", c.name);
    let (ho, wo) = c.out_size(x.h, x.w)?;
    let out = Shape::new(x.n, ho, wo, c.cout);
    if let Some(r) = residual {
        ensure!(
            r == out,
            "conv {}: residual {r} does not match the output {out}",
            c.name
        );
    }
    Ok(out)
}

/// The result shape `[n, in_h, in_w, cin]` of a transposed conv of the relevance `s`;
/// the named epilogue `operands` must have it.
pub fn conv_transpose(
    c: &ConvGeometry,
    s: Shape,
    in_h: usize,
    in_w: usize,
    operands: [(&str, Option<Shape>); 2],
) -> Result<Shape> {
    let (ho, wo) = c.out_size(in_h, in_w)?;
    ensure!(
        (s.h, s.w, s.c) == (ho, wo, c.cout) && s.n > 0,
        "conv_transpose {}: relevance {s} does not come from a {in_h}x{in_w} input \
         (expected [n, {ho}, {wo}, {}])",
        c.name,
        c.cout
    );
    let result = Shape::new(s.n, in_h, in_w, c.cin);
    for (what, t) in operands {
        if let Some(t) = t {
            ensure!(
                t == result,
                "conv_transpose {}: {what} operand {t} is not {result}",
                c.name
            );
        }
    }
    Ok(result)
}

/// The output shape of a max-pool of `x`: the window must fit the (padded) input.
pub fn max_pool(x: Shape, pool: Pool) -> Result<Shape> {
    pool_window("max-pool", x, pool)
}

fn pool_window(what: &str, x: Shape, pool: Pool) -> Result<Shape> {
    ensure!(
        pool.kernel > 0 && pool.stride > 0 && 2 * pool.pad <= pool.kernel,
        "{what} {pool:?}: kernel and stride must be positive and padding at most half the \
         kernel"
    );
    ensure!(
        x.h + 2 * pool.pad >= pool.kernel && x.w + 2 * pool.pad >= pool.kernel && !x.is_empty(),
        "{what} {pool:?} on input {x}: input smaller than the window"
    );
    let (ho, wo) = pool.out_size(x.h, x.w);
    Ok(Shape::new(x.n, ho, wo, x.c))
}

/// `[n, h, w, c]` repeated `k` times per image, `keep` (if given) one channel per output
/// image.
pub fn repeat_images(x: Shape, k: usize, keep: Option<&[u32]>) -> Result<Shape> {
    ensure!(k >= 1, "repeat_images: k must be at least 1");
    let out = Shape::new(x.n * k, x.h, x.w, x.c);
    if let Some(keep) = keep {
        ensure!(
            keep.len() == out.n,
            "repeat_images: {} kept channels for {} output images",
            keep.len(),
            out.n
        );
        if let Some(&c) = keep.iter().find(|&&c| c as usize >= x.c) {
            bail!("repeat_images: channel {c} out of range ({} channels)", x.c);
        }
    }
    Ok(out)
}

/// The relevance `r` of a max-pool of `x` has the pool's output shape.
pub fn max_pool_backward(x: Shape, r: Shape, pool: Pool) -> Result<()> {
    let want = pool_window("max-pool backward", x, pool)?;
    ensure!(
        r == want,
        "max_pool_backward: relevance {r} for input {x} (expected {want})"
    );
    Ok(())
}

/// `[n, h, w, 3]`: `bytes` of RGB8 hold an `n`x`h`x`w` batch.
pub fn preprocess(bytes: usize, n: usize, h: usize, w: usize) -> Result<Shape> {
    ensure!(n > 0 && h > 0 && w > 0, "empty image batch {n}x{h}x{w}");
    ensure!(
        n.checked_mul(h)
            .and_then(|v| v.checked_mul(w))
            .and_then(|v| v.checked_mul(3))
            == Some(bytes),
        "image batch holds {bytes} bytes, expected {n}x{h}x{w}x3"
    );
    Ok(Shape::new(n, h, w, 3))
}

/// `[n, h, w, 1]`: the channel mean of a non-empty `x`.
pub fn channel_mean(x: Shape) -> Result<Shape> {
    ensure!(!x.is_empty(), "channel mean of an empty tensor {x}");
    Ok(Shape::new(x.n, x.h, x.w, 1))
}

/// `[n, h, w, 1]`: the channel max of a non-empty `x`.
pub fn channel_max(x: Shape) -> Result<Shape> {
    ensure!(!x.is_empty(), "channel max of an empty tensor {x}");
    Ok(Shape::new(x.n, x.h, x.w, 1))
}

/// Min-max normalisation needs a non-empty `x` (its shape is the result's).
pub fn minmax_normalise(x: Shape) -> Result<()> {
    ensure!(
        !x.is_empty(),
        "min-max normalisation of an empty tensor {x}"
    );
    Ok(())
}

/// `[n, h, w, c]`: a non-empty `x` resampled to a non-empty `h`x`w`.
pub fn resize(x: Shape, h: usize, w: usize) -> Result<Shape> {
    ensure!(
        !x.is_empty() && h > 0 && w > 0,
        "resize of {x} to {h}x{w}: empty input or output"
    );
    Ok(Shape::new(x.n, h, w, x.c))
}

/// The operands of a ratio `r / stab(z)` (and its optional `gate`) have one shape.
pub fn lrp_ratio(r: Shape, z: Shape, gate: Option<Shape>) -> Result<()> {
    same("lrp_ratio", r, z)?;
    if let Some(g) = gate {
        same("lrp_ratio gate", r, g)?;
    }
    Ok(())
}

/// The three operands of a residual split (`what`: the op's name) have one shape.
pub fn residual_split(what: &str, a: Shape, b: Shape, r: Shape) -> Result<()> {
    same(what, a, b)?;
    same(what, a, r)
}

/// `clamp(x, lo, hi)` needs `lo <= hi` (neither a NaN).
pub fn clamp(lo: f32, hi: f32) -> Result<()> {
    ensure!(
        lo <= hi,
        "clamp: bounds [{lo}, {hi}] are empty or not numbers"
    );
    Ok(())
}

/// `fill_channels` has one value per channel of `shape`.
pub fn fill_channels(shape: Shape, values: usize) -> Result<()> {
    ensure!(
        values == shape.c,
        "fill_channels: {values} values for {} channels",
        shape.c
    );
    Ok(())
}

/// The output shape `[n, h, w, 1]` of projecting `x` on per-image channel weights `w`
/// (`[n, 1, 1, c]`, as the optional `mean`).
pub fn channel_projection(x: Shape, w: Shape, mean: Option<Shape>) -> Result<Shape> {
    let want = Shape::new(x.n, 1, 1, x.c);
    ensure!(w == want, "channel_projection: weights {w} for input {x}");
    if let Some(m) = mean {
        ensure!(m == want, "channel_projection: mean {m} for input {x}");
    }
    Ok(Shape::new(x.n, x.h, x.w, 1))
}

fn is_vector(s: Shape) -> bool {
    s.h == 1 && s.w == 1
}

/// `[n, 1, 1, c]`: the spatial mean of a non-empty `x`.
pub fn spatial_mean(x: Shape) -> Result<Shape> {
    ensure!(!x.is_empty(), "spatial mean of an empty tensor {x}");
    Ok(Shape::new(x.n, 1, 1, x.c))
}

/// `[n, h, w, c]`: a per-image vector `v` (`[n, 1, 1, c]`) broadcast over `h`x`w`.
pub fn broadcast_spatial(v: Shape, h: usize, w: usize) -> Result<Shape> {
    ensure!(is_vector(v), "broadcast_spatial: {v} is not [n, 1, 1, c]");
    Ok(Shape::new(v.n, h, w, v.c))
}

/// `[n, d, d, 1]`: the centred Gram matrix of `x` over pixels (`d = h w`) or channels
/// (`d = c`), given its channel means `mean` (`[n, 1, 1, c]`).
pub fn centred_gram(x: Shape, mean: Shape, over: GramOver) -> Result<Shape> {
    ensure!(
        mean == Shape::new(x.n, 1, 1, x.c),
        "centred_gram: mean {mean} for input {x}"
    );
    let d = match over {
        GramOver::Pixels => x.h * x.w,
        GramOver::Channels => x.c,
    };
    Ok(Shape::new(x.n, d, d, 1))
}

/// `[count, h, w, 1]`: RELAX masks `start .. start + count` of an `h`x`w` image.
pub fn relax_masks(start: u32, count: usize, h: usize, w: usize) -> Result<Shape> {
    ensure!(
        h >= 4 && w >= 4,
        "RELAX masks need an image of at least 4x4, got {h}x{w}"
    );
    ensure!(
        (start as u64) + (count as u64) <= u32::MAX as u64,
        "RELAX mask index beyond 2^32"
    );
    Ok(Shape::new(count, h, w, 1))
}

/// `[b, h, w, c]`: one image `x` (`[1, h, w, c]`) times each of the masks `m`.
pub fn mask_images(x: Shape, m: Shape) -> Result<Shape> {
    ensure!(
        x.n == 1 && (m.h, m.w, m.c) == (x.h, x.w, 1),
        "mask_images: image {x} and masks {m}"
    );
    Ok(Shape::new(m.n, x.h, x.w, x.c))
}

/// `[n, 1, 1, 1]`: the cosine similarity of embeddings `e` with one reference `r`.
pub fn cosine_similarity(e: Shape, r: Shape) -> Result<Shape> {
    ensure!(
        is_vector(e) && r == Shape::new(1, 1, 1, e.c),
        "cosine_similarity: embeddings {e} and reference {r}"
    );
    Ok(Shape::new(e.n, 1, 1, 1))
}

/// `[1, h, w, 3]`: RELAX's running sums over `masks` with one similarity each (and the
/// previous sums `acc`, which must have that shape).
pub fn relax_accumulate(masks: Shape, sims: Shape, acc: Option<Shape>) -> Result<Shape> {
    ensure!(
        masks.c == 1 && sims == Shape::new(masks.n, 1, 1, 1),
        "relax_accumulate: masks {masks} and similarities {sims}"
    );
    let out = Shape::new(1, masks.h, masks.w, 3);
    if let Some(a) = acc {
        ensure!(a == out, "relax_accumulate: sums {a} for masks {masks}");
    }
    Ok(out)
}
