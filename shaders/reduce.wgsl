// Reductions over NHWC f32.
//   channel_mean: [n,h,w,c] -> [n,h,w,1], one invocation per pixel (2D grid of 256-wide groups).
//   channel_max: the same with max (LaFAM-max); NaN activations are caught by the caller's
//     finiteness probe, so max's unspecified NaN handling does not matter.
//   minmax_normalise: per image (x - min) / (max - min + 1e-6) over its h*w*c values, one
//     workgroup of 256 per image (image = x + y * num_workgroups.x): a strided min/max, a
//     workgroup tree reduction, then the normalised write.
// The module is created without runtime bounds checks: indices are guarded here and sizes
// validated on the host (c > 0, image length > 0).

struct Params {
    count: u32,   // channel_mean/max: pixels n*h*w; minmax: images n
    len: u32,     // channel_mean/max: channels c; minmax: elements per image h*w*c
    x_off: u32,   // element offset of the input view
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn channel_mean(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.count) {
        return;
    }
    let base = p.x_off + i * p.len;
    var s = 0.0;
    for (var c = 0u; c < p.len; c++) {
        s += x[base + c];
    }
    out[i] = s / f32(p.len);
}

@compute @workgroup_size(256, 1, 1)
fn channel_max(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.count) {
        return;
    }
    let base = p.x_off + i * p.len;
    var m = bitcast<f32>(0xff800000u);  // -inf
    for (var c = 0u; c < p.len; c++) {
        m = max(m, x[base + c]);
    }
    out[i] = m;
}

const WG: u32 = 256u;
var<workgroup> wmin: array<f32, 256>;
var<workgroup> wmax: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn minmax_normalise(
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let img = wid.x + wid.y * nwg.x;
    if (img >= p.count) {
        return; // whole workgroup: uniform
    }
    let base = p.x_off + img * p.len;
    var lo = bitcast<f32>(0x7f800000u);  // +inf
    var hi = bitcast<f32>(0xff800000u);  // -inf
    for (var i = t; i < p.len; i += WG) {
        let v = x[base + i];
        lo = min(lo, v);
        hi = max(hi, v);
    }
    wmin[t] = lo;
    wmax[t] = hi;
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (t < s) {
            wmin[t] = min(wmin[t], wmin[t + s]);
            wmax[t] = max(wmax[t], wmax[t + s]);
        }
    }
    workgroupBarrier();
    let mn = wmin[0];
    let range = wmax[0] - mn + 1e-6;
    let obase = img * p.len;
    for (var i = t; i < p.len; i += WG) {
        out[obase + i] = (x[base + i] - mn) / range;
    }
}
