// Convolution over NHWC f32 as an implicit GEMM:
//   out[m, n] = act( sum_k A[m, k] * W[k, n] + bias[n] + residual[m, n] )
// with M = n*ho*wo output pixels, N = cout, K = kh*kw*cin, A the (never materialised) im2col of
// the input with zero padding, W the HWIO weight ([kh][kw][cin][cout] = row-major [K][N]).
//
// Entry points over the same loads and epilogue, chosen per shape by the host (`ConvTiles` in
// src/gpu/tiles.rs):
//   conv2d:       a TILE_ROWS x 64 output tile per workgroup of 16 x TILE_ROWS/4 threads, each
//                 thread owning a 4x4 block of outputs in registers; K is walked in tiles of 16
//                 staged in workgroup memory, with the next K tile's global loads prefetched
//                 into registers while the current one is computed (two barriers per K tile).
//                 TILE_ROWS = 64 (pipeline `conv2d`), or 16 (`conv2d_thin`) for GEMMs of at
//                 most 32 output pixels (layer3/4 of small images at batch 1), where a 64-row
//                 tile would be more than half padding.
//   conv2d_large: a 128x128 output tile per workgroup of 16x16 threads, each thread owning 8x8
//                 outputs as two 4x4 sub-blocks 64 apart in M and in N; K tiles of 8 in a
//                 double-buffered workgroup memory (2 stages x (A 8x128 + B 8x128) f32 = 16 KiB,
//                 the minimum every adapter offers): one barrier per K tile. Per thread and k,
//                 64 FMAs per 16 floats read from workgroup memory (conv2d: 16 per 8), and
//                 half the global loads per output; for big GPUs given enough output tiles.
// And for cout <= 4 (the Flat rule's one-channel conv in the stem's LRP), where a tile would
// leave 60+ of its 64 columns idle:
//   conv2d_narrow: one invocation per output pixel, its <= 4 channels in one vec4, the taps
//                  that fall in the padding skipped (B_VEC4 only: A is read as scalars).
//
// Specialisations (override constants, one pipeline each, created at start-up):
//   A_VEC4: cin % 4 == 0 and the input's element offset % 4 == 0: A is read as vec4 over
//           channels (one load per thread per K tile). Otherwise scalar loads (stem, cin=3).
//   B_VEC4: cout % 4 == 0 (and the residual's offset % 4 == 0): weights, residual and output
//           are read/written as vec4 over output channels.
//   PLAIN_GEMM: 1x1 kernel, stride 1, no padding: A[m, k] = x[m*cin + k], no im2col arithmetic.
//   TILE_ROWS: see conv2d.
//
// The module is created without runtime bounds checks: every index is guarded here, and the
// host validates every size (and that divisors are non-zero) before recording a dispatch.

override A_VEC4: bool = true;
override B_VEC4: bool = true;
override PLAIN_GEMM: bool = false;

struct Params {
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
    m: u32,          // n * ho * wo
    k: u32,          // kh * kw * cin
    x_off: u32,      // element offset of the input view
    r_off: u32,      // element offset of the residual view
    flags: u32,      // bit 0: add residual, bit 1: ReLU, bit 2: LRP ratio res / stab(z)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wt: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

// conv2d's output tile: TILE_ROWS (64, or 16 for GEMMs of at most 32 rows: the pipeline
// `conv2d_thin`) by BN channels, 4x4 per thread, K tiles of BK.

// conv2d: As[k][m/4] (TILE_ROWS/4 vec4 per k) and Bs[k][n/4] (16 vec4 per k).
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

// The tile shapes (TILE_ROWS, BN, BK; LBM, LBN, LBK), the 128x128 tile's stages AL / BL,
// w_scalar and the micro-kernel `large_tile_step`:
// #include gemm_core.wgsl

fn x_scalar(i: u32) -> f32 {
    return x[i >> 2u][i & 3u];
}

// Per-thread description of the A row (output pixel) it loads.
struct RowInfo {
    valid: bool,
    base: u32,     // PLAIN_GEMM: element index of the row start; else: image base element
    iy0: i32,
    ix0: i32,
}

// The A row (output pixel) m, for a thread that stages it.
fn row_info(m: u32) -> RowInfo {
    var r: RowInfo;
    r.valid = m < p.m;
    r.base = 0u;
    r.iy0 = 0;
    r.ix0 = 0;
    if (r.valid) {
        if (PLAIN_GEMM) {
            r.base = p.x_off + m * p.cin;
        } else {
            let hw = p.ho * p.wo;
            let img = m / hw;
            let rem = m - img * hw;
            let oy = rem / p.wo;
            let ox = rem - oy * p.wo;
            r.base = p.x_off + img * p.h * p.w * p.cin;
            r.iy0 = i32(oy * p.stride) - i32(p.pad);
            r.ix0 = i32(ox * p.stride) - i32(p.pad);
        }
    }
    return r;
}

// One element A[m, k] through im2col with zero padding (scalar path).
fn load_a_scalar(r: RowInfo, k: u32) -> f32 {
    if (!r.valid || k >= p.k) {
        return 0.0;
    }
    if (PLAIN_GEMM) {
        return x_scalar(r.base + k);
    }
    let tap = k / p.cin;
    let ci = k - tap * p.cin;
    let ky = tap / p.kw;
    let kx = tap - ky * p.kw;
    let iy = r.iy0 + i32(ky);
    let ix = r.ix0 + i32(kx);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return x_scalar(r.base + (u32(iy) * p.w + u32(ix)) * p.cin + ci);
}

// A[m, k..k+4] (k % 4 == 0, cin % 4 == 0 so the four share one kernel tap).
fn load_a_vec4(r: RowInfo, k: u32) -> vec4<f32> {
    if (!r.valid || k >= p.k) {
        return vec4<f32>(0.0);
    }
    if (PLAIN_GEMM) {
        return x[(r.base + k) >> 2u];
    }
    let tap = k / p.cin;
    let ci = k - tap * p.cin;
    let ky = tap / p.kw;
    let kx = tap - ky * p.kw;
    let iy = r.iy0 + i32(ky);
    let ix = r.ix0 + i32(kx);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return vec4<f32>(0.0);
    }
    return x[(r.base + (u32(iy) * p.w + u32(ix)) * p.cin + ci) >> 2u];
}

// The four A values a thread stages for the K tile starting at k0: its row, k = k0+kq*4..+4.
fn load_a(r: RowInfo, k0: u32, kq: u32) -> vec4<f32> {
    let k = k0 + kq * 4u;
    if (A_VEC4) {
        return load_a_vec4(r, k);
    }
    return vec4<f32>(load_a_scalar(r, k), load_a_scalar(r, k + 1u), load_a_scalar(r, k + 2u), load_a_scalar(r, k + 3u));
}

// W[k, n..n+4] with k = k0 + kl, n = n0 + nq*4.
fn load_b(k: u32, n: u32) -> vec4<f32> {
    if (k >= p.k || n >= p.cout) {
        return vec4<f32>(0.0);
    }
    let i = k * p.cout + n;
    if (B_VEC4) {
        return wt[i >> 2u];
    }
    var v = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        if (n + j < p.cout) {
            v[j] = w_scalar(i + j);
        }
    }
    return v;
}

// LRP stabiliser: z + 1e-6 sign(z), sign(0) = +1 (as shaders/lrp.wgsl).
fn stab4(z: vec4<f32>) -> vec4<f32> {
    return z + select(vec4<f32>(-1e-6), vec4<f32>(1e-6), z >= vec4<f32>(0.0));
}

// Flag bit 2 (LRP ratio): out = res / stab(acc + bias), res holding the relevance; the
// denominator z of a one-term rule group is never written.
fn epilogue(m: u32, n: u32, acc: vec4<f32>) {
    if (m >= p.m || n >= p.cout) {
        return;
    }
    let o = m * p.cout + n;
    if (B_VEC4) {
        var v = acc + vec4<f32>(bias[n], bias[n + 1u], bias[n + 2u], bias[n + 3u]);
        if ((p.flags & 4u) != 0u) {
            out[o >> 2u] = res[(p.r_off + o) >> 2u] / stab4(v);
            return;
        }
        if ((p.flags & 1u) != 0u) {
            v += res[(p.r_off + o) >> 2u];
        }
        if ((p.flags & 2u) != 0u) {
            // Not max(v, 0): NaN (an overflow upstream) must stay NaN, not become 0.
            v = select(v, vec4<f32>(0.0), v <= vec4<f32>(0.0));
        }
        out[o >> 2u] = v;
    } else {
        for (var j = 0u; j < 4u; j++) {
            if (n + j < p.cout) {
                var v = acc[j] + bias[n + j];
                if ((p.flags & 4u) != 0u) {
                    let ri = p.r_off + o + j;
                    v = res[ri >> 2u][ri & 3u] / (v + select(-1e-6, 1e-6, v >= 0.0));
                } else if ((p.flags & 1u) != 0u) {
                    let ri = p.r_off + o + j;
                    v += res[ri >> 2u][ri & 3u];
                }
                if ((p.flags & 2u) != 0u) {
                    v = select(v, 0.0, v <= 0.0);
                }
                let oi = o + j;
                out[oi >> 2u][oi & 3u] = v;
            }
        }
    }
}

// Grid: x = N tiles, (y, z) = M tiles of TILE_ROWS split over two dimensions (tile = y + z *
// num_y).
@compute @workgroup_size(16, TILE_ROWS / 4u, 1)
fn conv2d(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m_tile = wid.y + wid.z * nwg.y;
    let m_tiles = (p.m + TILE_ROWS - 1u) / TILE_ROWS;
    if (m_tile >= m_tiles) {
        return; // whole workgroup: uniform
    }
    let m0 = m_tile * TILE_ROWS;
    let n0 = wid.x * BN;
    // vec4 per k row of As.
    let a_width = TILE_ROWS / 4u;

    // A staging: row a_row (0..TILE_ROWS-1), k quad a_kq (0..3): one vec4 per thread.
    let a_row = t >> 2u;
    let a_kq = t & 3u;
    // B staging: k rows b_k + j * TILE_ROWS/4 (b_k < TILE_ROWS/4, j < 64/TILE_ROWS), n quad
    // b_nq (0..15): one vec4 per thread and row.
    let b_k = t >> 4u;
    let b_nq = t & 15u;
    let b_loads = BN / TILE_ROWS;
    let bn = n0 + b_nq * 4u;
    // Compute: rows ty*4..+4, cols tx*4..+4.
    let tx = t & 15u;
    let ty = t >> 4u;

    let r = row_info(m0 + a_row);

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    let k_tiles = (p.k + BK - 1u) / BK;
    var a_reg = load_a(r, 0u, a_kq);
    var b_reg: array<vec4<f32>, 4>;
    for (var j = 0u; j < b_loads; j++) {
        b_reg[j] = load_b(b_k + j * a_width, bn);
    }

    for (var kt = 0u; kt < k_tiles; kt++) {
        workgroupBarrier();
        // Stage: A transposed to As[k][m], B as is.
        let col = a_row >> 2u;
        let comp = a_row & 3u;
        let kb = a_kq * 4u;
        As[(kb + 0u) * a_width + col][comp] = a_reg.x;
        As[(kb + 1u) * a_width + col][comp] = a_reg.y;
        As[(kb + 2u) * a_width + col][comp] = a_reg.z;
        As[(kb + 3u) * a_width + col][comp] = a_reg.w;
        for (var j = 0u; j < b_loads; j++) {
            Bs[(b_k + j * a_width) * 16u + b_nq] = b_reg[j];
        }
        workgroupBarrier();

        // Prefetch the next K tile while this one is computed.
        if (kt + 1u < k_tiles) {
            let k0 = (kt + 1u) * BK;
            a_reg = load_a(r, k0, a_kq);
            for (var j = 0u; j < b_loads; j++) {
                b_reg[j] = load_b(k0 + b_k + j * a_width, bn);
            }
        }

        for (var kk = 0u; kk < BK; kk++) {
            let a = As[kk * a_width + ty];
            let b = Bs[kk * 16u + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
    }

    let om = m0 + ty * 4u;
    let on = n0 + tx * 4u;
    epilogue(om, on, acc0);
    epilogue(om + 1u, on, acc1);
    epilogue(om + 2u, on, acc2);
    epilogue(om + 3u, on, acc3);
}

// Stores one thread's staged A (row a_row, k = kq*4..+4 of the tile, transposed to [k][m]) and
// B (row b_k, n quad b_nq) into stage `stage` of AL / BL.
fn stage_large(stage: u32, a_row: u32, a_kq: u32, a: vec4<f32>, b_k: u32, b_nq: u32, b: vec4<f32>) {
    let base = stage * LSTAGE;
    let col = base + (a_row >> 2u);
    let comp = a_row & 3u;
    let kb = a_kq * 4u;
    AL[(kb + 0u) * LROW + col][comp] = a.x;
    AL[(kb + 1u) * LROW + col][comp] = a.y;
    AL[(kb + 2u) * LROW + col][comp] = a.z;
    AL[(kb + 3u) * LROW + col][comp] = a.w;
    BL[base + b_k * LROW + b_nq] = b;
}

// Grid as conv2d's, over 128x128 tiles.
@compute @workgroup_size(16, 16, 1)
fn conv2d_large(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m_tile = wid.y + wid.z * nwg.y;
    let m_tiles = (p.m + LBM - 1u) / LBM;
    if (m_tile >= m_tiles) {
        return; // whole workgroup: uniform
    }
    let m0 = m_tile * LBM;
    let n0 = wid.x * LBN;

    // A staging: row a_row (0..127), k quad a_kq (0..1): one vec4 per thread per K tile.
    let a_row = t >> 1u;
    let a_kq = t & 1u;
    // B staging: k row b_k (0..7), n quad b_nq (0..31): one vec4 per thread per K tile.
    let b_k = t >> 5u;
    let b_nq = t & 31u;
    // Compute: rows ty*4..+4 and 64+ty*4..+4, cols tx*4..+4 and 64+tx*4..+4. A warp's 16 tx
    // read 16 consecutive vec4 of a B row (no bank conflict; contiguous 8-wide columns would
    // read every other vec4), its ty read two vec4 of an A row (broadcast).
    let tx = t & 15u;
    let ty = t >> 4u;

    let r = row_info(m0 + a_row);

    // This thread's 8x8 outputs (gemm_core.wgsl).
    var acc: LargeAcc;

    // Double buffering: stage K tile 0, then for each K tile kt: global loads of tile kt+1 into
    // registers, compute on stage kt&1, store tile kt+1 into the other stage, barrier. The other
    // stage was last read in iteration kt-1, before that iteration's barrier, so one barrier
    // per K tile orders both the reuse and the visibility of the new stage.
    let k_tiles = (p.k + LBK - 1u) / LBK;
    stage_large(0u, a_row, a_kq, load_a(r, 0u, a_kq), b_k, b_nq, load_b(b_k, n0 + b_nq * 4u));
    workgroupBarrier();

    for (var kt = 0u; kt < k_tiles; kt++) {
        let next = kt + 1u < k_tiles;
        var a_reg = vec4<f32>(0.0);
        var b_reg = vec4<f32>(0.0);
        if (next) {
            let k0 = (kt + 1u) * LBK;
            a_reg = load_a(r, k0, a_kq);
            b_reg = load_b(k0 + b_k, n0 + b_nq * 4u);
        }

        let base = (kt & 1u) * LSTAGE;
        large_tile_step(&acc, base, tx, ty);

        if (next) {
            stage_large((kt + 1u) & 1u, a_row, a_kq, a_reg, b_k, b_nq, b_reg);
        }
        workgroupBarrier();
    }

    let om = m0 + ty * 4u;
    let on = n0 + tx * 4u;
    epilogue(om, on, acc.c00);
    epilogue(om, on + 64u, acc.c01);
    epilogue(om + 1u, on, acc.c10);
    epilogue(om + 1u, on + 64u, acc.c11);
    epilogue(om + 2u, on, acc.c20);
    epilogue(om + 2u, on + 64u, acc.c21);
    epilogue(om + 3u, on, acc.c30);
    epilogue(om + 3u, on + 64u, acc.c31);
    epilogue(om + 64u, on, acc.c40);
    epilogue(om + 64u, on + 64u, acc.c41);
    epilogue(om + 65u, on, acc.c50);
    epilogue(om + 65u, on + 64u, acc.c51);
    epilogue(om + 66u, on, acc.c60);
    epilogue(om + 66u, on + 64u, acc.c61);
    epilogue(om + 67u, on, acc.c70);
    epilogue(om + 67u, on + 64u, acc.c71);
}

// 1D grid of 256-wide workgroups over M (linear id = x + y * num_workgroups.x * 256).
@compute @workgroup_size(256, 1, 1)
fn conv2d_narrow(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let m = gid.x + gid.y * nwg.x * 256u;
    if (m >= p.m) {
        return;
    }
    // With PLAIN_GEMM off, row_info's im2col origin also serves 1x1 kernels.
    let r = row_info(m);
    var acc = vec4<f32>(0.0);
    for (var ky = 0u; ky < p.kh; ky++) {
        let iy = r.iy0 + i32(ky);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.kw; kx++) {
            let ix = r.ix0 + i32(kx);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let xrow = r.base + (u32(iy) * p.w + u32(ix)) * p.cin;
            let krow = (ky * p.kw + kx) * p.cin;
            for (var ci = 0u; ci < p.cin; ci++) {
                acc += x_scalar(xrow + ci) * load_b(krow + ci, 0u);
            }
        }
    }
    epilogue(m, 0u, acc);
}
