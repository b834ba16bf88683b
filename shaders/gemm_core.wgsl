// The GEMM core shared by shaders/conv.wgsl and shaders/conv_backward.wgsl: their tile shapes,
// the 128x128 tile's double-buffered workgroup stages and its 8x8-per-thread micro-kernel.
// Not a module of its own: src/gpu/pipelines.rs (`compose`) puts this text where an including
// module has the line `// #include gemm_core.wgsl`. The including module declares the weight
// binding `wt` (array<vec4<f32>>), as both convs do at binding 2.

// The 64-column tile (conv2d, conv_transpose): TILE_ROWS (64, or 16 for GEMMs of at most 32
// rows: the `_thin` pipelines) by BN columns, 4x4 per thread, K tiles of BK.
override TILE_ROWS: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

// The 128x128 tile (conv2d_large, conv_transpose_large).
const LBM: u32 = 128u;
const LBN: u32 = 128u;
const LBK: u32 = 8u;
// vec4 per row (k) of a large stage, and per stage (LBK rows).
const LROW: u32 = 32u;
const LSTAGE: u32 = 256u;

// Two stages of AL[k][m/4] and BL[k][n/4], 32 vec4 per k (8 KiB each, 16 KiB in all, the
// minimum every adapter offers). Only the variables an entry point uses count against its
// workgroup-memory limit.
var<workgroup> AL: array<vec4<f32>, 512>;
var<workgroup> BL: array<vec4<f32>, 512>;

fn w_scalar(i: u32) -> f32 {
    return wt[i >> 2u][i & 3u];
}

// One thread's 8x8 outputs of a 128x128 tile: c<i><j> is row i (0..3: ty*4+i, 4..7:
// 64+ty*4+i-4), column half j (0: tx*4..+4, 1: 64+tx*4..+4). Zero when declared.
struct LargeAcc {
    c00: vec4<f32>,
    c01: vec4<f32>,
    c10: vec4<f32>,
    c11: vec4<f32>,
    c20: vec4<f32>,
    c21: vec4<f32>,
    c30: vec4<f32>,
    c31: vec4<f32>,
    c40: vec4<f32>,
    c41: vec4<f32>,
    c50: vec4<f32>,
    c51: vec4<f32>,
    c60: vec4<f32>,
    c61: vec4<f32>,
    c70: vec4<f32>,
    c71: vec4<f32>,
}

// The micro-kernel over one staged K tile (the stage at `base` of AL / BL): rows ty*4..+4 and
// 64+ty*4..+4, columns tx*4..+4 and 64+tx*4..+4. A warp's 16 tx read 16 consecutive vec4 of a
// B row (no bank conflict; contiguous 8-wide columns would read every other vec4), its ty two
// vec4 of an A row (broadcast). Per thread and k, 64 FMAs per 16 floats read from workgroup
// memory.
fn large_tile_step(acc: ptr<function, LargeAcc>, base: u32, tx: u32, ty: u32) {
    for (var kk = 0u; kk < LBK; kk++) {
        let i = base + kk * LROW;
        let a0 = AL[i + ty];
        let a1 = AL[i + 16u + ty];
        let b0 = BL[i + tx];
        let b1 = BL[i + 16u + tx];
        (*acc).c00 += a0.x * b0;
        (*acc).c01 += a0.x * b1;
        (*acc).c10 += a0.y * b0;
        (*acc).c11 += a0.y * b1;
        (*acc).c20 += a0.z * b0;
        (*acc).c21 += a0.z * b1;
        (*acc).c30 += a0.w * b0;
        (*acc).c31 += a0.w * b1;
        (*acc).c40 += a1.x * b0;
        (*acc).c41 += a1.x * b1;
        (*acc).c50 += a1.y * b0;
        (*acc).c51 += a1.y * b1;
        (*acc).c60 += a1.z * b0;
        (*acc).c61 += a1.z * b1;
        (*acc).c70 += a1.w * b0;
        (*acc).c71 += a1.w * b1;
    }
}
