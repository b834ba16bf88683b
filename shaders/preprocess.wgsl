// RGB8 images (interleaved, row-major, packed little-endian into u32 words) to
// ImageNet-normalised NHWC f32: (v/255 - mean_c) / std_c. Because the output is NHWC with
// c = 3, output element e is input byte e and its channel is e % 3.
// One invocation per input word (four output elements); 2D grid of 256-wide workgroups.
// The module is created without runtime bounds checks: indices are guarded here.

struct Params {
    total: u32,   // n * h * w * 3 output elements (= input bytes)
    words: u32,   // ceil(total / 4)
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rgb: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const MEAN = array<f32, 3>(0.485, 0.456, 0.406);
const STD = array<f32, 3>(0.229, 0.224, 0.225);

@compute @workgroup_size(256, 1, 1)
fn preprocess(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    if (i >= p.words) {
        return;
    }
    let word = rgb[i];
    for (var j = 0u; j < 4u; j++) {
        let e = i * 4u + j;
        if (e < p.total) {
            let c = e % 3u;
            let v = f32((word >> (8u * j)) & 0xffu) / 255.0;
            out[e] = (v - MEAN[c]) / STD[c];
        }
    }
}
