// Elementwise LRP steps and the max-pool backward over NHWC f32 (src/gpu/lrp.rs).
// One invocation per output element; dispatched as a 2D grid of 256-wide workgroups
// (linear id = x + y * num_workgroups.x * 256). Inputs are views: element `i` of input `a`
// is a[a_off + i] (same for b, c); outputs are fresh tensors at offset 0.
//
// Bindings: a, b, c read-only (unused ones bound to a dummy), out0 and out1 read-write
// (out1 only for residual_split). The module is created without runtime bounds checks: the
// host validates that every view lies inside its buffer and that shapes agree.

struct Params {
    total: u32,     // elements of the output
    c: u32,         // channels (fill_channels, max_pool_backward)
    a_off: u32,
    b_off: u32,
    c_off: u32,
    flags: u32,     // lrp_ratio: bit 0 gate, bit 1 gate wants negative; lincomb: bit 0 has b;
                    // residual_split: bit 0 b is the ReLU'd sum
    alpha: f32,     // lincomb alpha, clamp lo
    beta: f32,      // lincomb beta, clamp hi
    // max_pool_backward only:
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
    kernel: u32,
    stride: u32,
    pad: u32,
    _p0: u32,
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

// zennit's stabiliser: z + 1e-6 * sign(z) with sign(0) = +1.
fn stab(z: f32) -> f32 {
    return z + select(-1e-6, 1e-6, z >= 0.0);
}

// out0 = a / stab(b), zeroed where the gate c's sign is not the one asked for.
@compute @workgroup_size(256, 1, 1)
fn lrp_ratio(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    var v = a[p.a_off + i] / stab(b[p.b_off + i]);
    if ((p.flags & 1u) != 0u) {
        let g = c[p.c_off + i];
        let open = select(g > 0.0, g < 0.0, (p.flags & 2u) != 0u);
        v = select(0.0, v, open);
    }
    out0[i] = v;
}

// Norm rule on a residual add: q = c / stab(a + b); out0 = a q, out1 = b q (c is the relevance).
// Flag bit 0: b holds the ReLU'd sum s = relu(a + branch): q = c / stab(s), out1 = (s - a) q.
@compute @workgroup_size(256, 1, 1)
fn residual_split(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let x = a[p.a_off + i];
    let y = b[p.b_off + i];
    if ((p.flags & 1u) != 0u) {
        let q = c[p.c_off + i] / stab(y);
        out0[i] = x * q;
        out1[i] = (y - x) * q;
        return;
    }
    let q = c[p.c_off + i] / stab(x + y);
    out0[i] = x * q;
    out1[i] = y * q;
}

// out0 = alpha a + beta b (b optional).
@compute @workgroup_size(256, 1, 1)
fn lincomb(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    var v = p.alpha * a[p.a_off + i];
    if ((p.flags & 1u) != 0u) {
        v += p.beta * b[p.b_off + i];
    }
    out0[i] = v;
}

// out0 = relu(a + b).
@compute @workgroup_size(256, 1, 1)
fn add_relu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let s = a[p.a_off + i] + b[p.b_off + i];
    out0[i] = select(s, 0.0, s <= 0.0);
}

// out0 = clamp(a, alpha, beta) (bounds may be infinite).
@compute @workgroup_size(256, 1, 1)
fn clamp_range(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    out0[i] = min(max(a[p.a_off + i], p.alpha), p.beta);
}

// out0[i] = a[i % c]: a holds one value per channel.
@compute @workgroup_size(256, 1, 1)
fn fill_channels(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    out0[i] = a[i % p.c];
}

// Every image of `a` repeated: out0 image j = a image j / k (h = elements per image, w = k).
// flags bit 0: b holds one channel per output image (as f32) and only that channel is kept.
@compute @workgroup_size(256, 1, 1)
fn repeat_images(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let j = i / p.h;
    let v = a[p.a_off + (j / p.w) * p.h + i % p.h];
    if ((p.flags & 1u) != 0u && (i % p.c) != u32(b[j])) {
        out0[i] = 0.0;
    } else {
        out0[i] = v;
    }
}

// Gradient of a max-pool with implicit -inf padding, in two passes (src/gpu/lrp.rs):
// max_pool_argmax finds each output window's first maximum once, and max_pool_backward gathers,
// for each input element, the relevance of the windows whose maximum it is. (A single gather
// pass rescanned every covering window from each of its elements: 4 windows x 9 reads per
// element of ResNet's 3x3/2 pool, 22 ms of a 3 s LRP on lavapipe.)

// Window positions of output (oy, ox), clipped to the input: [y0, y1) x [x0, x1).
fn pool_window(oy: u32, ox: u32) -> vec4<i32> {
    let y0 = i32(oy * p.stride) - i32(p.pad);
    let x0 = i32(ox * p.stride) - i32(p.pad);
    let k = i32(p.kernel);
    return vec4<i32>(max(y0, 0), min(y0 + k, i32(p.h)), max(x0, 0), min(x0 + k, i32(p.w)));
}

// out0 = the position iy * w + ix (per image) of the first maximum (scan order) of each output
// window of a = x, as u32 bits in an f32 tensor of the pool's output shape.
@compute @workgroup_size(256, 1, 1)
fn max_pool_argmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let ch = i % p.c;
    let pix = i / p.c;
    let ox = pix % p.wo;
    let rest = pix / p.wo;
    let oy = rest % p.ho;
    let img = rest / p.ho;
    let win = pool_window(oy, ox);
    let x_img = p.a_off + img * p.h * p.w * p.c;
    // The host ensures every window holds at least one input element (padding <= kernel / 2).
    var best = 0.0;
    var at = -1;
    for (var yy = win.x; yy < win.y; yy++) {
        for (var xx = win.z; xx < win.w; xx++) {
            let pos = yy * i32(p.w) + xx;
            let v = a[x_img + u32(pos) * p.c + ch];
            if (at < 0 || v > best) {
                best = v;
                at = pos;
            }
        }
    }
    out0[i] = bitcast<f32>(u32(at));
}

// out0 = for input element (img, iy, ix, ch), the sum of the relevance b = r of every window
// covering it whose argmax (c, from max_pool_argmax) it is, in (oy, ox) order as the CPU's
// scatter adds.
@compute @workgroup_size(256, 1, 1)
fn max_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = index(gid, nwg);
    if (i >= p.total) {
        return;
    }
    let ch = i % p.c;
    let pix = i / p.c;
    let ix = pix % p.w;
    let rest = pix / p.w;
    let iy = rest % p.h;
    let img = rest / p.h;
    // Windows oy with oy*stride - pad <= iy <= oy*stride - pad + kernel - 1.
    let ty = i32(iy + p.pad);
    let tx = i32(ix + p.pad);
    let k = i32(p.kernel);
    let st = i32(p.stride);
    let oy_lo = u32(max(ty - k + st, 0) / st);
    let oy_hi = min(u32(ty / st) + 1u, p.ho);
    let ox_lo = u32(max(tx - k + st, 0) / st);
    let ox_hi = min(u32(tx / st) + 1u, p.wo);
    let me = iy * p.w + ix;
    var sum = 0.0;
    for (var oy = oy_lo; oy < oy_hi; oy++) {
        for (var ox = ox_lo; ox < ox_hi; ox++) {
            let o = ((img * p.ho + oy) * p.wo + ox) * p.c + ch;
            if (bitcast<u32>(c[p.c_off + o]) == me) {
                sum += b[p.b_off + o];
            }
        }
    }
    out0[i] = sum;
}
