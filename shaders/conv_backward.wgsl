// Transposed convolution (the gradient of conv2d with respect to its input) over NHWC f32 as
// an implicit GEMM, with the fused LRP epilogue:
//   out[m, n] = scale * mul[m, n] * sum_k A[m, k] * B[k, n] + acc[m, n]
// M = n*h*w input pixels, N = cin, K = kh*kw*cout with k = (ky, kx, co), and
//   A[m, k] = s[img, oy, ox, co] where oy = (iy + pad - ky) / stride when that divides exactly
//             and 0 <= oy < ho (same for x), else 0 (never materialised: col2im folded in),
//   B[k, n] = W[ky, kx, n, co] (the HWIO weight read transposed).
//
// Tilings of the same GEMM (chosen per shape by the host with the forward conv's `ConvTiles`
// policy, src/gpu/lrp.rs), over the same loads and epilogue:
//   conv_transpose:       a TILE_ROWS x 64 output tile per workgroup of 16 x TILE_ROWS/4
//                         threads, each thread owning a 4x4 block in registers; K walked in
//                         tiles of 16 staged in workgroup memory as loaded (vec4 over k, see
//                         At / Bt), the next K tile's global loads prefetched into registers
//                         during the current one's compute (two barriers per K tile).
//                         TILE_ROWS = 64 (pipeline `conv_transpose`), or 16 (`conv_transpose_thin`)
//                         for phases of at most 32 input pixels (layer3/4 of small images at
//                         batch 1).
//   conv_transpose_large: a 128x128 output tile per workgroup of 16x16 threads, each thread
//                         owning 8x8 outputs as two 4x4 sub-blocks 64 apart in M and in N; K
//                         tiles of 8 in a double-buffered workgroup memory (2 stages x (A 8x128
//                         + B 8x128) f32 = 16 KiB): one barrier per K tile.
//
// Specialisations (override constants, one pipeline each, created at start-up):
//   K_VEC4: cout % 4 == 0 and the relevance's element offset % 4 == 0: s and W are read as
//           vec4 over co (four consecutive k share one kernel tap).
//   N_VEC4: cin % 4 == 0 and the mul/acc offsets % 4 == 0: the epilogue reads and writes vec4
//           over input channels.
//   PLAIN_GEMM: 1x1 kernel, stride 1, no padding: A[m, k] = s[m*cout + k].
//   TILE_ROWS: see conv_transpose.
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

// conv_transpose's output tile: TILE_ROWS (64, or 16 for GEMMs of at most 32 rows: the
// pipeline `conv_transpose_thin`) by BN input channels, 4x4 per thread, K tiles of BK.

// conv_transpose keeps both operands as they are loaded, vec4 over k: At[m][k/4] (4 vec4 per
// row) and Bt[n][k/4], and forms the products as dot products over k. Staging then needs no
// transpose: one vec4 store per load (B arrives as vec4 over co for one input channel; a
// [k][n] layout needed 4 scalar stores per vec4, 17% of the time of the 16-row tile on
// lavapipe). Bt's rows are padded to 5 vec4: a thread reads columns tx*4..+4, so with 4 vec4
// per row the threads of a quarter-warp would all hit one group of 4 banks (8-way conflict
// on NVIDIA); with 5 it is 4-way. Reading columns tx + 16j instead would be conflict-free but
// needs a strided epilogue; to weigh on a real GPU (not measured yet).
var<workgroup> At: array<vec4<f32>, 256>;
const BT_ROW: u32 = 5u;
var<workgroup> Bt: array<vec4<f32>, 320>;

// The tile shapes (TILE_ROWS, BN, BK; LBM, LBN, LBK), the 128x128 tile's stages AL / BL,
// w_scalar and the micro-kernel `large_tile_step`:
// #include gemm_core.wgsl

fn s_scalar(i: u32) -> f32 {
    return s[i >> 2u][i & 3u];
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
    tile: u32,     // the workgroup's M tile within its phase
}

fn ceil_div(a: u32, b: u32) -> u32 {
    return (a + b - 1u) / b;
}

// Every phase is given ceil(n*ceil(h/s)*ceil(w/s) / bm) M tiles of edge `bm` (the largest
// phase's count), and the phases are interleaved over the grid (`phase_of`: consecutive
// workgroups work on consecutive phases). Phases differ in work (a 3x3 stride-2 kernel gives them 4, 2, 2 and 1 taps; a 1x1
// stride-2 one 1, 0, 0, 0), and adapters that hand each thread a contiguous range of
// workgroups (llvmpipe) would otherwise give one thread the heavy phases and the others the
// light ones: laid out one after another, a stride-2 transposed conv ran 1.5-2x slower than
// its forward on lavapipe.
fn tiles_per_phase(bm: u32) -> u32 {
    let st = p.stride;
    return ceil_div(p.n * ceil_div(p.h, st) * ceil_div(p.w, st), bm);
}

// The phase, M tile (of edge `bm`) and N tile (of edge `bn`, returned in `n_tile`) of the
// workgroup at linear grid index `wg`: phases vary fastest, then N tiles, then M tiles.
fn phase_of(wg: u32, bm: u32, bn: u32, n_tile: ptr<function, u32>) -> Phase {
    var f: Phase;
    let st = p.stride;
    let phases = st * st;
    let phase = wg % phases;
    let rest = wg / phases;
    let n_tiles = ceil_div(p.cin, bn);
    *n_tile = rest % n_tiles;
    f.tile = rest / n_tiles;
    f.valid = f.tile < tiles_per_phase(bm);
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

// The A row (input pixel) `ml` of the phase, for a thread that stages it.
fn row_info(f: Phase, ml: u32) -> RowInfo {
    var r: RowInfo;
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
    return r;
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

// out[row, n..n+4] = scale * mul * sum + acc, `row` the element index of the result row
// (`out_row`) of a valid GEMM row; columns past cin are dropped.
fn epilogue_at(row: u32, n: u32, sum: vec4<f32>) {
    if (n >= p.cin) {
        return;
    }
    let o = row + n;
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

// The epilogue of the phase's GEMM row `ml` (rows past the phase are dropped).
fn epilogue(f: Phase, ml: u32, n: u32, sum: vec4<f32>) {
    if (ml < f.mdim) {
        epilogue_at(out_row(f, ml), n, sum);
    }
}

// Grid: stride^2 * N tiles * tiles_per_phase(TILE_ROWS) workgroups, split over x and y (linear
// index x + y * num_x, decoded by `phase_of`).
@compute @workgroup_size(16, TILE_ROWS / 4u, 1)
fn conv_transpose(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var n_tile = 0u;
    let f = phase_of(wid.x + wid.y * nwg.x, TILE_ROWS, BN, &n_tile);
    if (!f.valid) {
        return; // whole workgroup: uniform
    }
    let m0 = f.tile * TILE_ROWS;
    if (m0 >= f.mdim) {
        return; // a smaller phase's spare tile: uniform
    }
    let n0 = n_tile * BN;
    let threads = 4u * TILE_ROWS;

    // A staging: row a_row (0..TILE_ROWS-1), k quad a_kq (0..3): one vec4 per thread.
    let a_row = t >> 2u;
    let a_kq = t & 3u;
    // B staging: 64 columns x 4 k quads, 64 / TILE_ROWS vec4 per thread: item q = t + j *
    // threads is column q >> 2, k quad q & 3 (four neighbouring threads read one column's 16
    // consecutive k).
    let b_loads = BN / TILE_ROWS;
    // Compute: rows ty*4..+4, cols tx*4..+4.
    let tx = t & 15u;
    let ty = t >> 4u;

    let r = row_info(f, m0 + a_row);

    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));

    let k_tiles = (f.kdim + BK - 1u) / BK;
    var a_reg = load_a(f, r, a_kq * 4u);
    var b_reg: array<vec4<f32>, 4>;
    for (var j = 0u; j < b_loads; j++) {
        let q = t + j * threads;
        b_reg[j] = load_b(f, (q & 3u) * 4u, n0 + (q >> 2u));
    }

    for (var kt = 0u; kt < k_tiles; kt++) {
        workgroupBarrier();
        At[a_row * 4u + a_kq] = a_reg;
        for (var j = 0u; j < b_loads; j++) {
            let q = t + j * threads;
            Bt[(q >> 2u) * BT_ROW + (q & 3u)] = b_reg[j];
        }
        workgroupBarrier();

        // Prefetch the next K tile while this one is computed.
        if (kt + 1u < k_tiles) {
            let k0 = (kt + 1u) * BK;
            a_reg = load_a(f, r, k0 + a_kq * 4u);
            for (var j = 0u; j < b_loads; j++) {
                let q = t + j * threads;
                b_reg[j] = load_b(f, k0 + (q & 3u) * 4u, n0 + (q >> 2u));
            }
        }

        for (var kq = 0u; kq < 4u; kq++) {
            let b0 = Bt[(tx * 4u) * BT_ROW + kq];
            let b1 = Bt[(tx * 4u + 1u) * BT_ROW + kq];
            let b2 = Bt[(tx * 4u + 2u) * BT_ROW + kq];
            let b3 = Bt[(tx * 4u + 3u) * BT_ROW + kq];
            for (var i = 0u; i < 4u; i++) {
                let a = At[(ty * 4u + i) * 4u + kq];
                acc[i] += vec4<f32>(dot(a, b0), dot(a, b1), dot(a, b2), dot(a, b3));
            }
        }
    }

    let om = m0 + ty * 4u;
    let on = n0 + tx * 4u;
    for (var i = 0u; i < 4u; i++) {
        epilogue(f, om + i, on, acc[i]);
    }
}

// Stores one thread's staged A (row `row` of the tile) and B (column `row` of the tile), both
// vec4 over k = kq*4..+4 of the K tile, transposed to [k][m] and [k][n] in stage `stage` of
// AL / BL.
fn stage_large(stage: u32, row: u32, kq: u32, a: vec4<f32>, b: vec4<f32>) {
    let col = stage * LSTAGE + (row >> 2u);
    let comp = row & 3u;
    let kb = kq * 4u;
    for (var j = 0u; j < 4u; j++) {
        AL[(kb + j) * LROW + col][comp] = a[j];
        BL[(kb + j) * LROW + col][comp] = b[j];
    }
}

// The epilogue of the phase's GEMM row `ml` for the columns n and n + 64 of a large tile.
fn epilogue_large(f: Phase, ml: u32, n: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (ml < f.mdim) {
        let row = out_row(f, ml);
        epilogue_at(row, n, lo);
        epilogue_at(row, n + 64u, hi);
    }
}

// Grid as conv_transpose's, over 128x128 tiles.
@compute @workgroup_size(16, 16, 1)
fn conv_transpose_large(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var n_tile = 0u;
    let f = phase_of(wid.x + wid.y * nwg.x, LBM, LBN, &n_tile);
    if (!f.valid) {
        return; // whole workgroup: uniform
    }
    let m0 = f.tile * LBM;
    if (m0 >= f.mdim) {
        return; // a smaller phase's spare tile: uniform
    }
    let n0 = n_tile * LBN;

    // Staging: A row / B column `row` (0..127), k quad `kq` (0..1): one vec4 of each per thread
    // per K tile.
    let row = t >> 1u;
    let kq = t & 1u;
    // Compute: rows ty*4..+4 and 64+ty*4..+4, cols tx*4..+4 and 64+tx*4..+4 (as conv2d_large:
    // a warp's 16 tx read 16 consecutive vec4 of a B row, its ty two vec4 of an A row).
    let tx = t & 15u;
    let ty = t >> 4u;

    let r = row_info(f, m0 + row);
    let bn = n0 + row;

    // This thread's 8x8 outputs (gemm_core.wgsl).
    var acc: LargeAcc;

    // Double buffering as conv2d_large: stage K tile 0, then for each K tile kt: global loads of
    // tile kt+1 into registers, compute on stage kt&1, store tile kt+1 into the other stage,
    // barrier. The other stage was last read in iteration kt-1, before that iteration's
    // barrier, so one barrier per K tile orders both the reuse and the visibility of the new
    // stage. A phase without taps (kdim = 0) skips the loop: its epilogue sees zero sums.
    let k_tiles = ceil_div(f.kdim, LBK);
    stage_large(0u, row, kq, load_a(f, r, kq * 4u), load_b(f, kq * 4u, bn));
    workgroupBarrier();

    for (var kt = 0u; kt < k_tiles; kt++) {
        let next = kt + 1u < k_tiles;
        var a_reg = vec4<f32>(0.0);
        var b_reg = vec4<f32>(0.0);
        if (next) {
            let k = (kt + 1u) * LBK + kq * 4u;
            a_reg = load_a(f, r, k);
            b_reg = load_b(f, k, bn);
        }

        let base = (kt & 1u) * LSTAGE;
        large_tile_step(&acc, base, tx, ty);

        if (next) {
            stage_large((kt + 1u) & 1u, row, kq, a_reg, b_reg);
        }
        workgroupBarrier();
    }

    let om = m0 + ty * 4u;
    let on = n0 + tx * 4u;
    epilogue_large(f, om, on, acc.c00, acc.c01);
    epilogue_large(f, om + 1u, on, acc.c10, acc.c11);
    epilogue_large(f, om + 2u, on, acc.c20, acc.c21);
    epilogue_large(f, om + 3u, on, acc.c30, acc.c31);
    epilogue_large(f, om + 64u, on, acc.c40, acc.c41);
    epilogue_large(f, om + 65u, on, acc.c50, acc.c51);
    epilogue_large(f, om + 66u, on, acc.c60, acc.c61);
    epilogue_large(f, om + 67u, on, acc.c70, acc.c71);
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
