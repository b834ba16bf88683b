// The baseline methods' ops (Grad-CAM, EigenCAM, RELAX) over NHWC f32 (src/gpu/cam.rs).
// One invocation per output element; a 2D grid of 256-wide workgroups (linear id = x + y *
// num_workgroups.x * 256), as shaders/lrp.wgsl, with whose bind-group layout this module is
// used: a, b, c read-only (unused ones bound to a dummy), out0 read-write (out1 unused).
// Inputs are views at element offsets a_off, b_off, c_off; outputs are fresh tensors.
// The module is created without runtime bounds checks: the host validates every view and
// size. Every sum runs in the same order as the CPU twin (src/cpu/cam.rs).

struct Params {
    total: u32,   // output elements
    c: u32,       // channels
    a_off: u32,
    b_off: u32,
    c_off: u32,
    flags: u32,   // channel_projection: bit 0 has mean, bit 1 relu; centred_gram: bit 0 channels
    f0: f32,      // broadcast_spatial: scale; relax_accumulate: shift
    hw: u32,      // pixels per image (h * w)
    h: u32,
    w: u32,
    d: u32,       // centred_gram: matrix side; relax_accumulate: masks in the batch
    start: u32,   // relax_masks: index of the first mask
    key: u32,     // relax_masks: seed key
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> out0: array<f32>;
@group(0) @binding(5) var<storage, read_write> out1: array<f32>;

fn index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

// [n, h, w, c] -> [n, 1, 1, c]: mean over pixels (total = n * c).
@compute @workgroup_size(256, 1, 1)
fn spatial_mean(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let img = i / p.c;
    let ch = i % p.c;
    let base = p.a_off + img * p.hw * p.c + ch;
    var acc = 0.0;
    for (var q = 0u; q < p.hw; q++) {
        acc += a[base + q * p.c];
    }
    out0[i] = acc / f32(p.hw);
}

// [n, 1, 1, c] -> [n, h, w, c], scaled by f0 (total = n * hw * c).
@compute @workgroup_size(256, 1, 1)
fn broadcast_spatial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let img = i / (p.hw * p.c);
    out0[i] = p.f0 * a[p.a_off + img * p.c + i % p.c];
}

// out0 = a where b > 0, else 0 (the gradient of a ReLU with output b).
@compute @workgroup_size(256, 1, 1)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    out0[i] = select(0.0, a[p.a_off + i], b[p.b_off + i] > 0.0);
}

// out0[n, q] = sum_k b[n, k] (a[n, q, k] - c[n, k]) (c optional), ReLU'd with flag bit 1
// (total = n * hw).
@compute @workgroup_size(256, 1, 1)
fn channel_projection(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let img = i / p.hw;
    let has_mean = (p.flags & 1u) != 0u;
    var acc = 0.0;
    for (var k = 0u; k < p.c; k++) {
        var mu = 0.0;
        if (has_mean) {
            mu = c[p.c_off + img * p.c + k];
        }
        acc += b[p.b_off + img * p.c + k] * (a[p.a_off + i * p.c + k] - mu);
    }
    if ((p.flags & 2u) != 0u) {
        acc = max(acc, 0.0);
    }
    out0[i] = acc;
}

// Centred Gram matrix per image (b = per-image channel means): over pixels (d = hw) or, with
// flag bit 0, over channels (d = c). total = n * d * d.
@compute @workgroup_size(256, 1, 1)
fn centred_gram(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let img = i / (p.d * p.d);
    let r = (i / p.d) % p.d;
    let q = i % p.d;
    let base = p.a_off + img * p.hw * p.c;
    let mu = p.b_off + img * p.c;
    var acc = 0.0;
    if ((p.flags & 1u) == 0u) {
        for (var k = 0u; k < p.c; k++) {
            acc += (a[base + r * p.c + k] - b[mu + k]) * (a[base + q * p.c + k] - b[mu + k]);
        }
    } else {
        for (var t = 0u; t < p.hw; t++) {
            acc += (a[base + t * p.c + r] - b[mu + r]) * (a[base + t * p.c + q] - b[mu + q]);
        }
    }
    out0[i] = acc;
}

// PCG-RXS-M-XS 32-bit hash (src/explain/relax.rs: the generator's specification).
fn pcg(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

fn reflect(q: u32, size: u32) -> u32 {
    var r = i32(q) - 3;
    if (r < 0) {
        r = -r;
    }
    let last = i32(size) - 1;
    if (r > last) {
        r = 2 * last - r;
    }
    return u32(r);
}

// Source cells and weight of torch's bilinear upsampling (align_corners=False) from 7 cells to
// `size` at coordinate q: (i0, i1, t) with i0, i1 packed in a vec2.
fn tap(q: u32, size: u32) -> vec3<f32> {
    let scale = 7.0 / f32(size);
    let src = max((f32(q) + 0.5) * scale - 0.5, 0.0);
    let i0 = min(u32(floor(src)), 6u);
    let i1 = min(i0 + 1u, 6u);
    return vec3<f32>(f32(i0), f32(i1), src - f32(i0));
}

fn cell(k: u32, gy: u32, gx: u32) -> f32 {
    return f32(pcg(k ^ pcg((gy * 7u + gx) ^ 0x9E3779B9u)) >> 31u);
}

// RELAX masks start .. start + total / hw, [count, h, w, 1].
@compute @workgroup_size(256, 1, 1)
fn relax_masks(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let m = p.start + i / p.hw;
    let pix = i % p.hw;
    let y = pix / p.w;
    let x = pix % p.w;
    let k = pcg(p.key ^ pcg(m));
    let sy = pcg(k ^ pcg(49u ^ 0x9E3779B9u)) % 7u;
    let sx = pcg(k ^ pcg(50u ^ 0x9E3779B9u)) % 7u;
    let ty = tap(reflect(y + sy, p.h), p.h);
    let tx = tap(reflect(x + sx, p.w), p.w);
    let y0 = u32(ty.x);
    let y1 = u32(ty.y);
    let x0 = u32(tx.x);
    let x1 = u32(tx.y);
    let top = cell(k, y0, x0) * (1.0 - tx.z) + cell(k, y0, x1) * tx.z;
    let bottom = cell(k, y1, x0) * (1.0 - tx.z) + cell(k, y1, x1) * tx.z;
    out0[i] = top * (1.0 - ty.z) + bottom * ty.z;
}

// a [1, h, w, c] times every mask b [m, h, w, 1]: [m, h, w, c] (total = m * hw * c).
@compute @workgroup_size(256, 1, 1)
fn mask_images(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let px = i / p.c;
    out0[i] = a[p.a_off + (px % p.hw) * p.c + i % p.c] * b[p.b_off + px];
}

// Cosine similarity of every row of a [m, 1, 1, c] with b [1, 1, 1, c] (total = m).
@compute @workgroup_size(256, 1, 1)
fn cosine_similarity(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    var dot = 0.0;
    var ne = 0.0;
    var nr = 0.0;
    for (var k = 0u; k < p.c; k++) {
        let x = a[p.a_off + i * p.c + k];
        let y = b[p.b_off + k];
        dot += x * y;
        ne += x * x;
        nr += y * y;
    }
    out0[i] = dot / max(sqrt(ne) * sqrt(nr), 1e-8);
}

// RELAX running sums [1, h, w, 3] += sum over the d masks a [d, h, w, 1] of
// (m, m t, m t^2), t = b[mask] - f0; c holds the previous sums (flag bit 0). total = hw.
@compute @workgroup_size(256, 1, 1)
fn relax_accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    var w = 0.0;
    var s1 = 0.0;
    var s2 = 0.0;
    if ((p.flags & 1u) != 0u) {
        w = c[p.c_off + i * 3u];
        s1 = c[p.c_off + i * 3u + 1u];
        s2 = c[p.c_off + i * 3u + 2u];
    }
    for (var m = 0u; m < p.d; m++) {
        let v = a[p.a_off + m * p.hw + i];
        let t = b[p.b_off + m] - p.f0;
        w += v;
        s1 += v * t;
        s2 += v * t * t;
    }
    out0[i * 3u] = w;
    out0[i * 3u + 1u] = s1;
    out0[i * 3u + 2u] = s2;
}
