//! Input files (regular files only), image decoding and resizing, .npy output, colormaps and overlays, atomic writes.

pub mod colormap;
pub mod files;
pub mod image;
pub mod output;

pub use self::image::{
    collect_inputs, load_image, resize_shorter_side, shorter_side_dims, IMAGE_EXTENSIONS,
};
pub use ::image::RgbImage;
pub use colormap::{heatmap, heatmap_diverging, overlay, overlay_relevance, relevance_scale};
pub use output::{write_atomic, write_npy_f32, write_png};
