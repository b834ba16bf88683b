//! Known models: public ResNet checkpoints by name, with their publisher's URL and terms.
//!
//! Checksums are listed only where the publisher states one. torchvision names its files
//! `<arch>-<first 8 hex digits of the sha256>.pth` and `torch.hub` verifies that prefix
//! (`check_hash=True`); those prefixes are listed. The other publishers (Meta AI research
//! repos) state no checksum for these files, so none is listed: the download is checked for
//! completeness against the server's Content-Length and then parsed, which catches a
//! truncated or garbled file but not a substituted one.

use super::download::Source;

/// One known model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownModel {
    /// Name accepted by `--weights`.
    pub name: &'static str,
    pub url: &'static str,
    /// Architecture as the loader will see it.
    pub arch: &'static str,
    pub training: &'static str,
    pub licence: &'static str,
    /// Where the URL and terms are published.
    pub publisher: &'static str,
    /// Exact size in bytes, where the publisher states it.
    pub size: Option<u64>,
    /// Full sha256 or a prefix of it (hex), where the publisher states it.
    pub sha256: Option<&'static str>,
}

impl KnownModel {
    /// The file name in the cache (the URL's last segment).
    pub fn file_name(&self) -> &'static str {
        self.url.rsplit('/').next().unwrap_or(self.name)
    }

    pub fn source(&self) -> Source {
        Source {
            name: self.name.to_string(),
            url: self.url.to_string(),
            file_name: self.file_name().to_string(),
            size: self.size,
            sha256: self.sha256.map(String::from),
        }
    }
}

const SWAV: &str = "github.com/facebookresearch/swav (README, hubconf.py)";
const MOCO: &str = "github.com/facebookresearch/moco (README)";
const TV: &str = "torchvision.models.resnet (ResNet*_Weights)";
const CC_BY_NC: &str = "CC-BY-NC 4.0 (non-commercial)";

/// The table. `swav`, `moco-v2`, `dino-resnet50`, `barlow-twins`, `torchvision-resnet50`
/// are the names the README uses.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "swav",
        url: "https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar",
        arch: "ResNet-50",
        training: "SwAV, self-supervised, ImageNet, 800 epochs",
        licence: CC_BY_NC,
        publisher: SWAV,
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "swav-400ep",
        url: "https://dl.fbaipublicfiles.com/deepcluster/swav_400ep_pretrain.pth.tar",
        arch: "ResNet-50",
        training: "SwAV, self-supervised, ImageNet, 400 epochs",
        licence: CC_BY_NC,
        publisher: SWAV,
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "swav-rn50w2",
        url: "https://dl.fbaipublicfiles.com/deepcluster/swav_RN50w2_400ep_pretrain.pth.tar",
        arch: "ResNet-50 w2 (stem width 128)",
        training: "SwAV, self-supervised, ImageNet, 400 epochs",
        licence: CC_BY_NC,
        publisher: SWAV,
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "deepcluster-v2",
        url: "https://dl.fbaipublicfiles.com/deepcluster/deepclusterv2_800ep_pretrain.pth.tar",
        arch: "ResNet-50",
        training: "DeepCluster-v2, self-supervised, ImageNet, 800 epochs",
        licence: CC_BY_NC,
        publisher: SWAV,
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "sela-v2",
        url: "https://dl.fbaipublicfiles.com/deepcluster/selav2_400ep_pretrain.pth.tar",
        arch: "ResNet-50",
        training: "SeLa-v2, self-supervised, ImageNet, 400 epochs",
        licence: CC_BY_NC,
        publisher: SWAV,
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "moco-v2",
        url: "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar",
        arch: "ResNet-50 (MLP head dropped)",
        training: "MoCo v2, self-supervised, ImageNet, 800 epochs",
        licence: CC_BY_NC,
        publisher: MOCO,
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "moco-v3",
        url: "https://dl.fbaipublicfiles.com/moco-v3/r-50-1000ep/r-50-1000ep.pth.tar",
        arch: "ResNet-50 (base encoder; momentum encoder and predictor dropped)",
        training: "MoCo v3, self-supervised, ImageNet, 1000 epochs",
        licence: CC_BY_NC,
        publisher: "github.com/facebookresearch/moco-v3 (README)",
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "moco-v2-200ep",
        url: "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar",
        arch: "ResNet-50 (MLP head dropped)",
        training: "MoCo v2, self-supervised, ImageNet, 200 epochs",
        licence: CC_BY_NC,
        publisher: MOCO,
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "moco-v1",
        url: "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar",
        arch: "ResNet-50",
        training: "MoCo v1, self-supervised, ImageNet, 200 epochs",
        licence: CC_BY_NC,
        publisher: MOCO,
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "dino-resnet50",
        url: "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        arch: "ResNet-50 (backbone only)",
        training: "DINO, self-supervised, ImageNet",
        licence: "Apache-2.0",
        publisher: "github.com/facebookresearch/dino (README, hubconf.py)",
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "barlow-twins",
        url: "https://dl.fbaipublicfiles.com/barlowtwins/ljng/resnet50.pth",
        arch: "ResNet-50 (backbone only)",
        training: "Barlow Twins, self-supervised, ImageNet, 1000 epochs",
        licence: "MIT",
        publisher: "github.com/facebookresearch/barlowtwins (README, hubconf.py)",
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "vicreg",
        url: "https://dl.fbaipublicfiles.com/vicreg/resnet50.pth",
        arch: "ResNet-50 (backbone only)",
        training: "VICReg, self-supervised, ImageNet, 1000 epochs",
        licence: "MIT",
        publisher: "github.com/facebookresearch/vicreg (README, hubconf.py)",
        size: None,
        sha256: None,
    },
    KnownModel {
        name: "torchvision-resnet18",
        url: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        arch: "ResNet-18 (with fc, 1000 classes)",
        training: "supervised, ImageNet (IMAGENET1K_V1)",
        licence: "BSD-3-Clause",
        publisher: TV,
        size: None,
        sha256: Some("f37072fd"),
    },
    KnownModel {
        name: "torchvision-resnet34",
        url: "https://download.pytorch.org/models/resnet34-b627a593.pth",
        arch: "ResNet-34 (with fc, 1000 classes)",
        training: "supervised, ImageNet (IMAGENET1K_V1)",
        licence: "BSD-3-Clause",
        publisher: TV,
        size: None,
        sha256: Some("b627a593"),
    },
    KnownModel {
        name: "torchvision-resnet50",
        url: "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        arch: "ResNet-50 (with fc, 1000 classes)",
        training: "supervised, ImageNet (IMAGENET1K_V2)",
        licence: "BSD-3-Clause",
        publisher: TV,
        size: None,
        sha256: Some("11ad3fa6"),
    },
    KnownModel {
        name: "torchvision-resnet50-v1",
        url: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        arch: "ResNet-50 (with fc, 1000 classes)",
        training: "supervised, ImageNet (IMAGENET1K_V1)",
        licence: "BSD-3-Clause",
        publisher: TV,
        size: None,
        sha256: Some("0676ba61"),
    },
    KnownModel {
        name: "torchvision-resnet101",
        url: "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
        arch: "ResNet-101 (with fc, 1000 classes)",
        training: "supervised, ImageNet (IMAGENET1K_V2)",
        licence: "BSD-3-Clause",
        publisher: TV,
        size: None,
        sha256: Some("cd907fc2"),
    },
    KnownModel {
        name: "torchvision-resnet152",
        url: "https://download.pytorch.org/models/resnet152-f82ba261.pth",
        arch: "ResNet-152 (with fc, 1000 classes)",
        training: "supervised, ImageNet (IMAGENET1K_V2)",
        licence: "BSD-3-Clause",
        publisher: TV,
        size: None,
        sha256: Some("f82ba261"),
    },
];

/// Looks a name up (case-insensitive; `_` and `-` are the same).
pub fn find_model(name: &str) -> Option<&'static KnownModel> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    let n = norm(name);
    KNOWN_MODELS.iter().find(|m| m.name == n)
}

/// The names, comma separated, for messages.
pub fn model_names() -> String {
    KNOWN_MODELS
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ")
}
