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
// Stride > 1 guards the divisibility per k (a stride-2 3x3 kernel skips 3/4 of its taps as
// zeros); a per-phase split would remove that waste without changing the tile structure.
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

// Per-thread description of the A row (input pixel) it loads.
struct RowInfo {
    valid: bool,
    base: u32,     // PLAIN_GEMM: element index of the row start; else: image base in s
    ty0: i32,      // iy + pad
    tx0: i32,      // ix + pad
}

// Element index in s of A[m, k] (k < K), or -1 where the tap hits no output pixel.
fn a_index(r: RowInfo, k: u32) -> i32 {
    if (PLAIN_GEMM) {
        return i32(r.base + k);
    }
    let tap = k / p.cout;
    let co = k - tap * p.cout;
    let ky = tap / p.kw;
    let kx = tap - ky * p.kw;
    let ny = r.ty0 - i32(ky);
    let nx = r.tx0 - i32(kx);
    if (ny < 0 || nx < 0) {
        return -1;
    }
    let oy = u32(ny) / p.stride;
    let ox = u32(nx) / p.stride;
    if (oy * p.stride != u32(ny) || ox * p.stride != u32(nx) || oy >= p.ho || ox >= p.wo) {
        return -1;
    }
    return i32(r.base + (oy * p.wo + ox) * p.cout + co);
}

// A[m, k..k+4] for the K tile: vec4 over co (K_VEC4) or four scalar taps.
fn load_a(r: RowInfo, k: u32, kdim: u32) -> vec4<f32> {
    if (!r.valid) {
        return vec4<f32>(0.0);
    }
    if (K_VEC4) {
        if (k >= kdim) {
            return vec4<f32>(0.0);
        }
        let i = a_index(r, k);
        if (i < 0) {
            return vec4<f32>(0.0);
        }
        return s[u32(i) >> 2u];
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (k + j < kdim) {
            let i = a_index(r, k + j);
            if (i >= 0) {
                v[j] = s_scalar(u32(i));
            }
        }
    }
    return v;
}

// B[k..k+4, n] = W[tap, n, co..co+4]: vec4 over co (K_VEC4) or four scalars.
fn load_b(k: u32, n: u32, kdim: u32) -> vec4<f32> {
    if (n >= p.cin) {
        return vec4<f32>(0.0);
    }
    if (K_VEC4) {
        if (k >= kdim) {
            return vec4<f32>(0.0);
        }
        let tap = k / p.cout;
        let co = k - tap * p.cout;
        return wt[((tap * p.cin + n) * p.cout + co) >> 2u];
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let kj = k + j;
        if (kj < kdim) {
            let tap = kj / p.cout;
            let co = kj - tap * p.cout;
            v[j] = w_scalar((tap * p.cin + n) * p.cout + co);
        }
    }
    return v;
}

fn epilogue(m: u32, n: u32, mdim: u32, sum: vec4<f32>) {
    if (m >= mdim || n >= p.cin) {
        return;
    }
    let o = m * p.cin + n;
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

// Grid: x = N tiles, (y, z) = M tiles split over two dimensions (tile = y + z * num_y).
@compute @workgroup_size(16, 16, 1)
fn conv_transpose(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let mdim = p.n * p.h * p.w;
    let kdim = p.kh * p.kw * p.cout;
    let m_tile = wid.y + wid.z * nwg.y;
    let m_tiles = (mdim + BM - 1u) / BM;
    if (m_tile >= m_tiles) {
        return; // whole workgroup: uniform
    }
    let m0 = m_tile * BM;
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
    let m = m0 + a_row;
    r.valid = m < mdim;
    r.base = 0u;
    r.ty0 = 0;
    r.tx0 = 0;
    if (r.valid) {
        if (PLAIN_GEMM) {
            r.base = p.s_off + m * p.cout;
        } else {
            let hw = p.h * p.w;
            let img = m / hw;
            let rem = m - img * hw;
            let iy = rem / p.w;
            let ix = rem - iy * p.w;
            r.base = p.s_off + img * p.ho * p.wo * p.cout;
            r.ty0 = i32(iy + p.pad);
            r.tx0 = i32(ix + p.pad);
        }
    }

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    let k_tiles = (kdim + BK - 1u) / BK;
    var a_reg = load_a(r, a_kq * 4u, kdim);
    var b_reg = load_b(b_kq * 4u, n0 + b_col, kdim);

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
            a_reg = load_a(r, k0 + a_kq * 4u, kdim);
            b_reg = load_b(k0 + b_kq * 4u, n0 + b_col, kdim);
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
    epilogue(om, on, mdim, acc0);
    epilogue(om + 1u, on, mdim, acc1);
    epilogue(om + 2u, on, mdim, acc2);
    epilogue(om + 3u, on, mdim, acc3);
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
