//! Random ResNet weights with the real key layouts and realistic BatchNorm statistics, for
//! tests and `bench --arch`.
//!
//! STUB (branch `cli` only): He-initialised folded convs with small biases, enough for the
//! CLI's `bench --arch`. Replace this whole file with the `load` branch's at merge.

use super::{Block, BlockKind, ConvLayer, Heads, ResNet};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Clone, Debug)]
pub struct RandomSpec {
    pub depth: usize,
    pub width: usize,
    pub seed: u64,
}

impl RandomSpec {
    pub fn resnet(depth: usize, width: usize, seed: u64) -> RandomSpec {
        RandomSpec { depth, width, seed }
    }
}

pub fn random_resnet(spec: RandomSpec) -> ResNet<ConvLayer> {
    let (kind, blocks) = match spec.depth {
        18 => (BlockKind::Basic, [2, 2, 2, 2]),
        34 => (BlockKind::Basic, [3, 4, 6, 3]),
        50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
        101 => (BlockKind::Bottleneck, [3, 4, 23, 3]),
        152 => (BlockKind::Bottleneck, [3, 8, 36, 3]),
        d => panic!("no ResNet-{d}"),
    };
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut conv = |name: String, cin: usize, cout: usize, k: usize, stride: usize| {
        let std = (2.0 / (k * k * cin) as f32).sqrt();
        ConvLayer {
            name,
            cin,
            cout,
            kh: k,
            kw: k,
            stride,
            pad: k / 2,
            weight: (0..k * k * cin * cout)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std * 1.7)
                .collect(),
            bias: (0..cout)
                .map(|_| (rng.random::<f32>() - 0.5) * 0.1)
                .collect(),
        }
    };
    let w = spec.width;
    let exp = if kind == BlockKind::Basic { 1 } else { 4 };
    let stem = conv("conv1".into(), 3, w, 7, 2);
    let mut cin = w;
    let mut stages: [Vec<Block<ConvLayer>>; 4] = Default::default();
    for (s, stage) in stages.iter_mut().enumerate() {
        let planes = w << s;
        for b in 0..blocks[s] {
            let stride = if b == 0 && s > 0 { 2 } else { 1 };
            let p = format!("layer{}.{b}", s + 1);
            let convs = match kind {
                BlockKind::Basic => vec![
                    conv(format!("{p}.conv1"), cin, planes, 3, stride),
                    conv(format!("{p}.conv2"), planes, planes, 3, 1),
                ],
                BlockKind::Bottleneck => vec![
                    conv(format!("{p}.conv1"), cin, planes, 1, 1),
                    conv(format!("{p}.conv2"), planes, planes, 3, stride),
                    conv(format!("{p}.conv3"), planes, planes * exp, 1, 1),
                ],
            };
            let downsample = (stride != 1 || cin != planes * exp)
                .then(|| conv(format!("{p}.downsample.0"), cin, planes * exp, 1, stride));
            stage.push(Block { convs, downsample });
            cin = planes * exp;
        }
    }
    ResNet {
        kind,
        stem,
        stages,
        heads: Heads::default(),
    }
}
