//! Dataset layouts for `lafam-gpu eval --dataset`, and the deterministic `--shard I/N` split.
//!
//! - `voc`: PASCAL VOC 2012 (`--root` = `VOCdevkit/VOC2012` or `VOCdevkit`):
//!   `ImageSets/Segmentation/<split>.txt` lists the ids; images `JPEGImages/<id>.jpg`; masks
//!   `SegmentationObject/<id>.png` (else `SegmentationClass/<id>.png`), palette indices,
//!   0 = background, 255 = void.
//! - `imagenet-s`: ImageNet-S (`--root` = e.g. `ImageNetS919`): images
//!   `validation/<wnid>/<name>.JPEG` (or flat), masks `validation-segmentation/<wnid>/<name>.png`
//!   whose class id is `R + 256·G`, 0 = background, 1000 = other/ignored (void).
//! - `folder`: `images/<stem>.<ext>` and `masks/<stem>.png` (8-bit grey or palette; nonzero =
//!   object, 255 = void).
//!
//! Stems are file names up to the first dot.

use crate::io::Shown;
use crate::io::IMAGE_EXTENSIONS;
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetKind {
    Voc,
    #[value(name = "imagenet-s")]
    ImagenetS,
    Folder,
}

impl DatasetKind {
    /// The label id of void pixels.
    pub fn void_id(self) -> u16 {
        match self {
            DatasetKind::Voc | DatasetKind::Folder => 255,
            DatasetKind::ImagenetS => 1000,
        }
    }
}

/// One image of a dataset; `mask` is None when its mask file does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub stem: String,
    pub image: PathBuf,
    pub mask: Option<PathBuf>,
}

/// The file name up to its first dot.
pub fn stem_of(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('.').next().unwrap_or_default().to_string()
}

fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.shown()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn existing(p: PathBuf) -> Option<PathBuf> {
    p.is_file().then_some(p)
}

/// The dataset's entries for `split`, sorted by stem (duplicate stems are an error).
pub fn entries(kind: DatasetKind, root: &Path, split: &str) -> Result<Vec<Entry>> {
    let mut v = match kind {
        DatasetKind::Voc => voc(root, split)?,
        DatasetKind::ImagenetS => imagenet_s(root, split)?,
        DatasetKind::Folder => folder(root)?,
    };
    v.sort_by(|a, b| a.stem.cmp(&b.stem));
    for w in v.windows(2) {
        ensure!(
            w[0].stem != w[1].stem,
            "two images with stem '{}': {} and {}",
            crate::io::escape_controls(&w[0].stem),
            w[0].image.shown(),
            w[1].image.shown()
        );
    }
    Ok(v)
}

fn voc(root: &Path, split: &str) -> Result<Vec<Entry>> {
    let root = if root.join("ImageSets").is_dir() {
        root.to_path_buf()
    } else if root.join("VOC2012/ImageSets").is_dir() {
        root.join("VOC2012")
    } else {
        bail!(
            "{}: not a VOC 2012 directory (no ImageSets/ nor VOC2012/ImageSets/)",
            root.shown()
        )
    };
    let list = root.join(format!("ImageSets/Segmentation/{split}.txt"));
    let text = std::fs::read_to_string(&list)
        .with_context(|| format!("{}: cannot read the split list", list.shown()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|id| Entry {
            stem: id.to_string(),
            image: root.join(format!("JPEGImages/{id}.jpg")),
            mask: existing(root.join(format!("SegmentationObject/{id}.png")))
                .or_else(|| existing(root.join(format!("SegmentationClass/{id}.png")))),
        })
        .collect())
}

fn imagenet_s(root: &Path, split: &str) -> Result<Vec<Entry>> {
    let name = match split {
        "val" | "validation" => "validation",
        "test" => "test",
        other => other,
    };
    let images = root.join(name);
    let masks = root.join(format!("{name}-segmentation"));
    ensure!(
        images.is_dir(),
        "{}: no such directory (ImageNet-S layout: <root>/{name}/<wnid>/<name>.JPEG)",
        images.shown()
    );
    let mut out = Vec::new();
    for p in list_dir(&images)? {
        let (files, sub) = if p.is_dir() {
            let sub = p.file_name().map(PathBuf::from).unwrap_or_default();
            (list_dir(&p)?, sub)
        } else {
            (vec![p], PathBuf::new())
        };
        for f in files.into_iter().filter(|f| is_image(f)) {
            let stem = stem_of(&f);
            out.push(Entry {
                mask: existing(masks.join(&sub).join(format!("{stem}.png"))),
                stem,
                image: f,
            });
        }
    }
    Ok(out)
}

fn folder(root: &Path) -> Result<Vec<Entry>> {
    let images = root.join("images");
    ensure!(
        images.is_dir(),
        "{}: no such directory (folder layout: <root>/images/ and <root>/masks/)",
        images.shown()
    );
    Ok(list_dir(&images)?
        .into_iter()
        .filter(|f| is_image(f))
        .map(|f| {
            let stem = stem_of(&f);
            Entry {
                mask: existing(root.join("masks").join(format!("{stem}.png"))),
                stem,
                image: f,
            }
        })
        .collect())
}

/// `--shard I/N`: item j of the sorted inputs belongs to shard `j mod N` (0-based I, as
/// Slurm's `SLURM_ARRAY_TASK_ID` with `--array=0-(N-1)` and Kubernetes'
/// `JOB_COMPLETION_INDEX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}': expected I/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("'{s}': bad index '{i}'"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("'{s}': bad count '{n}'"))?;
        if count == 0 || index >= count {
            return Err(format!("'{s}': need 0 <= I < N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's items of an already sorted list.
    pub fn select<T>(&self, items: Vec<T>) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(j, _)| j % self.count == self.index)
            .map(|(_, x)| x)
            .collect()
    }
}
