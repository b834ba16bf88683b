// Transposed convolution (the gradient of conv2d with respect to its input) over NHWC f32 as
// an implicit GEMM, with the fused LRP epilogue:
//   out[m, n] = scale * mul[m, n] * sum_k A[m, k] * B[k, n] + acc[m, n]
// M = n*h*w input pixels, N = cin, K = kh*kw*cout with k = (ky, kx, co), and
//   A[m, k] = s[img, oy, ox, co] where oy = (iy + pad - ky) / stride when that divides exactly
//             and 0 <= oy < ho (same for x), else 0 (never materialised: col2im folded in),
//   B[k, n] = W[ky, kx, n, co] (the HWIO weight read transposed).
//
// Tiling as shaders/conv.wgsl: a 64x64 output tile per workgroup of 16x16 threads, each thread
// owning a 4x4 block in registers; K walked in tiles of 16 staged in workgroup memory (8 KiB),
// the next K tile's global loads prefetched into registers during the current one's compute.
//
// Specialisations (override constants, one pipeline each, created at start-up):
//   K_VEC4: cout % 4 == 0 and the relevance's element offset % 4 == 0: s and W are read as
//           vec4 over co (four consecutive k share one kernel tap).
//   N_VEC4: cin % 4 == 0 and the mul/acc offsets % 4 == 0: the epilogue reads and writes vec4
//           over input channels.
//   PLAIN_GEMM: 1x1 kernel, stride 1, no padding: A[m, k] = s[m*cout + k].
//
// Stride > 1 is split into stride^2 phases (see `Phase`), each a dense GEMM over only the taps
// that reach its pixels.
//
// The module is created without runtime bounds checks: every index is guarded here, and the
// host validates every size (non-zero stride and kernel, view extents) before a dispatch.

override K_VEC4: bool = true;
override N_VEC4: bool = true;
override PLAIN_GEMM: bool = false;

struct Params {
    n: u32,
    h: u32,          // input (= result) height
    w: u32,
    cin: u32,
    ho: u32,         // relevance (= forward output) height
    wo: u32,
    cout: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    s_off: u32,      // element offset of the relevance view
    mul_off: u32,
    acc_off: u32,
    flags: u32,      // bit 0: multiply by mul, bit 1: add acc
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> s: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> mul_in: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> acc_in: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

// As[k][m/4] and Bs[k][n/4]: one row of 16 vec4 per k.
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

fn s_scalar(i: u32) -> f32 {
    return s[i >> 2u][i & 3u];
}

fn w_scalar(i: u32) -> f32 {
    return wt[i >> 2u][i & 3u];
}

fn mul_scalar(i: u32) -> f32 {
    return mul_in[i >> 2u][i & 3u];
}

fn acc_scalar(i: u32) -> f32 {
    return acc_in[i >> 2u][i & 3u];
}

// The stride phase a workgroup works on. With stride s, the input pixels (iy, ix) with
// iy % s == py, ix % s == px receive relevance only from the taps ky = ky0 + s*ty, kx = kx0 + s*tx
// (ky0 = (py + pad) % s), and then from the output pixel oy = jy + qy - ty (iy = py + s*jy,
// qy = (py + pad - ky0) / s), same for x. Each phase is its own GEMM over its pixels with
// K = nky*nkx*cout: no tap of a stride-2 kernel is evaluated in vain. Stride 1: one phase.
struct Phase {
    valid: bool,
    py: u32,
    px: u32,
    hp: u32,       // rows of the phase: iy = py + s*jy, jy < hp
    wp: u32,
    ky0: u32,
    kx0: u32,
    nkx: u32,
    qy: u32,
    qx: u32,
    mdim: u32,     // n * hp * wp
    kdim: u32,     // nky * nkx * cout
    first_tile: u32,
}

fn ceil_div(a: u32, b: u32) -> u32 {
    return (a + b - 1u) / b;
}

// Phases are laid out one after another over the M tiles, each given ceil(n*ceil(h/s)*ceil(w/s)
// / BM) tiles (the largest phase's count).
fn tiles_per_phase() -> u32 {
    let st = p.stride;
    return ceil_div(p.n * ceil_div(p.h, st) * ceil_div(p.w, st), BM);
}

fn phase_of(m_tile: u32) -> Phase {
    var f: Phase;
    let st = p.stride;
    let tpp = tiles_per_phase();
    let phase = m_tile / tpp;
    f.valid = phase < st * st;
    f.first_tile = phase * tpp;
    f.py = phase / st;
    f.px = phase - f.py * st;
    f.hp = select(0u, ceil_div(p.h - min(f.py, p.h), st), f.py < p.h);
    f.wp = select(0u, ceil_div(p.w - min(f.px, p.w), st), f.px < p.w);
    f.ky0 = (f.py + p.pad) % st;
    f.kx0 = (f.px + p.pad) % st;
    let nky = select(0u, ceil_div(p.kh - min(f.ky0, p.kh), st), f.ky0 < p.kh);
    f.nkx = select(0u, ceil_div(p.kw - min(f.kx0, p.kw), st), f.kx0 < p.kw);
    f.qy = (f.py + p.pad - f.ky0) / st;
    f.qx = (f.px + p.pad - f.kx0) / st;
    f.mdim = p.n * f.hp * f.wp;
    f.kdim = nky * f.nkx * p.cout;
    return f;
}

// Row `ml` (< f.mdim) of the phase's GEMM as an input pixel: (image, jy, jx).
fn phase_row(f: Phase, ml: u32) -> vec3<u32> {
    let per = f.hp * f.wp;
    let img = ml / per;
    let rem = ml - img * per;
    let jy = rem / f.wp;
    return vec3<u32>(img, jy, rem - jy * f.wp);
}

// Element index of the result row of the phase's row `ml`.
fn out_row(f: Phase, ml: u32) -> u32 {
    if (PLAIN_GEMM) {
        return ml * p.cin;
    }
    let r = phase_row(f, ml);
    let iy = f.py + p.stride * r.y;
    let ix = f.px + p.stride * r.z;
    return ((r.x * p.h + iy) * p.w + ix) * p.cin;
}

// Per-thread description of the A row (input pixel) it loads.
struct RowInfo {
    valid: bool,
    base: u32,     // PLAIN_GEMM: element index of the row start; else: image base in s
    oy0: i32,      // jy + qy: the output row of tap ty = 0
    ox0: i32,
}

// Element index in s of A[m, k] (k < K), or -1 where the tap falls outside the output.
fn a_index(f: Phase, r: RowInfo, k: u32) -> i32 {
    if (PLAIN_GEMM) {
        return i32(r.base + k);
    }
    let tap = k / p.cout;
    let co = k - tap * p.cout;
    let ty = tap / f.nkx;
    let tx = tap - ty * f.nkx;
    let oy = r.oy0 - i32(ty);
    let ox = r.ox0 - i32(tx);
    if (oy < 0 || ox < 0 || oy >= i32(p.ho) || ox >= i32(p.wo)) {
        return -1;
    }
    return i32(r.base + (u32(oy) * p.wo + u32(ox)) * p.cout + co);
}

// A[m, k..k+4] for the K tile: vec4 over co (K_VEC4) or four scalar taps.
fn load_a(f: Phase, r: RowInfo, k: u32) -> vec4<f32> {
    if (!r.valid) {
        return vec4<f32>(0.0);
    }
    if (K_VEC4) {
        if (k >= f.kdim) {
            return vec4<f32>(0.0);
        }
        let i = a_index(f, r, k);
        if (i < 0) {
            return vec4<f32>(0.0);
        }
        return s[u32(i) >> 2u];
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k + j < f.kdim) {
            let i = a_index(f, r, k + j);
            if (i >= 0) {
                v[j] = s_scalar(u32(i));
            }
        }
    }
    return v;
}

// Element index in the weight of B[k, n] = W[ky, kx, n, co] for the phase's k.
fn w_index(f: Phase, k: u32, n: u32) -> u32 {
    let tap = k / p.cout;
    let co = k - tap * p.cout;
    let ty = tap / f.nkx;
    let tx = tap - ty * f.nkx;
    let ky = f.ky0 + p.stride * ty;
    let kx = f.kx0 + p.stride * tx;
    return ((ky * p.kw + kx) * p.cin + n) * p.cout + co;
}

// B[k..k+4, n]: vec4 over co (K_VEC4) or four scalars.
fn load_b(f: Phase, k: u32, n: u32) -> vec4<f32> {
    if (n >= p.cin) {
        return vec4<f32>(0.0);
    }
    if (K_VEC4) {
        if (k >= f.kdim) {
            return vec4<f32>(0.0);
        }
        return wt[w_index(f, k, n) >> 2u];
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k + j < f.kdim) {
            v[j] = w_scalar(w_index(f, k + j, n));
        }
    }
    return v;
}

fn epilogue(f: Phase, ml: u32, n: u32, sum: vec4<f32>) {
    if (ml >= f.mdim || n >= p.cin) {
        return;
    }
    let o = out_row(f, ml) + n;
    if (N_VEC4) {
        var v = p.scale * sum;
        if ((p.flags & 1u) != 0u) {
            v *= mul_in[(p.mul_off + o) >> 2u];
        }
        if ((p.flags & 2u) != 0u) {
            v += acc_in[(p.acc_off + o) >> 2u];
        }
        out[o >> 2u] = v;
    } else {
        for (var j = 0u; j < 4u; j++) {
            if (n + j < p.cin) {
                var v = p.scale * sum[j];
                if ((p.flags & 1u) != 0u) {
                    v *= mul_scalar(p.mul_off + o + j);
                }
                if ((p.flags & 2u) != 0u) {
                    v += acc_scalar(p.acc_off + o + j);
                }
                let oi = o + j;
                out[oi >> 2u][oi & 3u] = v;
            }
        }
    }
}

// Grid: x = N tiles, (y, z) = M tiles split over two dimensions (tile = y + z * num_y), the
// stride phases one after another (stride^2 * tiles_per_phase() tiles).
@compute @workgroup_size(16, 16, 1)
fn conv_transpose(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m_tile = wid.y + wid.z * nwg.y;
    let f = phase_of(m_tile);
    if (!f.valid) {
        return; // whole workgroup: uniform
    }
    let m0 = (m_tile - f.first_tile) * BM;
    if (m0 >= f.mdim) {
        return; // a smaller phase's spare tile: uniform
    }
    let n0 = wid.x * BN;

    // A staging: row a_row (0..63), k quad a_kq (0..3).
    let a_row = t >> 2u;
    let a_kq = t & 3u;
    // B staging: column b_col (0..63), k quad b_kq (0..3).
    let b_col = t >> 2u;
    let b_kq = t & 3u;
    // Compute: rows ty*4..+4, cols tx*4..+4.
    let tx = t & 15u;
    let ty = t >> 4u;

    var r: RowInfo;
    let ml = m0 + a_row;
    r.valid = ml < f.mdim;
    r.base = 0u;
    r.oy0 = 0;
    r.ox0 = 0;
    if (r.valid) {
        if (PLAIN_GEMM) {
            r.base = p.s_off + ml * p.cout;
        } else {
            let q = phase_row(f, ml);
            r.base = p.s_off + q.x * p.ho * p.wo * p.cout;
            r.oy0 = i32(q.y + f.qy);
            r.ox0 = i32(q.z + f.qx);
        }
    }

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    let k_tiles = (f.kdim + BK - 1u) / BK;
    var a_reg = load_a(f, r, a_kq * 4u);
    var b_reg = load_b(f, b_kq * 4u, n0 + b_col);

    for (var kt = 0u; kt < k_tiles; kt++) {
        workgroupBarrier();
        // Stage both transposed: As[k][m], Bs[k][n].
        let kb = a_kq * 4u;
        let a_c = a_row >> 2u;
        let a_comp = a_row & 3u;
        As[(kb + 0u) * 16u + a_c][a_comp] = a_reg.x;
        As[(kb + 1u) * 16u + a_c][a_comp] = a_reg.y;
        As[(kb + 2u) * 16u + a_c][a_comp] = a_reg.z;
        As[(kb + 3u) * 16u + a_c][a_comp] = a_reg.w;
        let bb = b_kq * 4u;
        let b_c = b_col >> 2u;
        let b_comp = b_col & 3u;
        Bs[(bb + 0u) * 16u + b_c][b_comp] = b_reg.x;
        Bs[(bb + 1u) * 16u + b_c][b_comp] = b_reg.y;
        Bs[(bb + 2u) * 16u + b_c][b_comp] = b_reg.z;
        Bs[(bb + 3u) * 16u + b_c][b_comp] = b_reg.w;
        workgroupBarrier();

        // Prefetch the next K tile while this one is computed.
        if (kt + 1u < k_tiles) {
            let k0 = (kt + 1u) * BK;
            a_reg = load_a(f, r, k0 + a_kq * 4u);
            b_reg = load_b(f, k0 + b_kq * 4u, n0 + b_col);
        }

        for (var kk = 0u; kk < BK; kk++) {
            let a = As[kk * 16u + ty];
            let b = Bs[kk * 16u + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
    }

    let om = m0 + ty * 4u;
    let on = n0 + tx * 4u;
    epilogue(f, om, on, acc0);
    epilogue(f, om + 1u, on, acc1);
    epilogue(f, om + 2u, on, acc2);
    epilogue(f, om + 3u, on, acc3);
}

// Narrow variant for cin <= 4 (the stem, whose cin = 3 would leave 61 of a tile's 64 columns
// idle): one invocation per input pixel, all of its (<= 4) channels in one vec4 accumulator,
// visiting only the taps that hit an output pixel (no stride waste). Weights are read from
// global memory (every invocation of a phase reads the same ones, so they stay in cache).
// 1D grid of 256-wide workgroups over M (linear id = x + y * num_workgroups.x * 256).
@compute @workgroup_size(256, 1, 1)
fn conv_transpose_narrow(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = gid.x + gid.y * nwg.x * 256u;
    let mdim = p.n * p.h * p.w;
    if (m >= mdim) {
        return;
    }
    let hw = p.h * p.w;
    let img = m / hw;
    let rem = m - img * hw;
    let iy = rem / p.w;
    let ix = rem - iy * p.w;
    let ty = iy + p.pad;
    let tx = ix + p.pad;
    let base = p.s_off + img * p.ho * p.wo * p.cout;
    var sum = vec4<f32>(0.0);
    // Taps with (ty - ky) % stride == 0 and ky <= ty: ky = ty % stride, + stride, ...
    for (var ky = ty % p.stride; ky < p.kh && ky <= ty; ky += p.stride) {
        let oy = (ty - ky) / p.stride;
        if (oy >= p.ho) {
            continue;
        }
        for (var kx = tx % p.stride; kx < p.kw && kx <= tx; kx += p.stride) {
            let ox = (tx - kx) / p.stride;
            if (ox >= p.wo) {
                continue;
            }
            let srow = base + (oy * p.wo + ox) * p.cout;
            let wrow = (ky * p.kw + kx) * p.cin;
            if (K_VEC4) {
                for (var co = 0u; co < p.cout; co += 4u) {
                    let a = s[(srow + co) >> 2u];
                    for (var ci = 0u; ci < p.cin; ci++) {
                        sum[ci] += dot(a, wt[((wrow + ci) * p.cout + co) >> 2u]);
                    }
                }
            } else {
                for (var co = 0u; co < p.cout; co++) {
                    let a = s_scalar(srow + co);
                    for (var ci = 0u; ci < p.cin; ci++) {
                        sum[ci] += a * w_scalar((wrow + ci) * p.cout + co);
                    }
                }
            }
        }
    }
    for (var ci = 0u; ci < p.cin; ci++) {
        let o = m * p.cin + ci;
        var v = p.scale * sum[ci];
        if ((p.flags & 1u) != 0u) {
            v *= mul_scalar(p.mul_off + o);
        }
        if ((p.flags & 2u) != 0u) {
            v += acc_scalar(p.acc_off + o);
        }
        out[o >> 2u][o & 3u] = v;
    }
}
