//! Image decoding and resizing, .npy output, colormaps and overlays, atomic writes.

pub mod colormap;
pub mod image;
pub mod output;

pub use self::image::{
    check_net_input, collect_inputs, load_image, max_net_size, resize_shorter_side,
    shorter_side_dims, IMAGE_EXTENSIONS, MAX_NET_PIXELS, MAX_NET_SIDE,
};
pub use ::image::RgbImage;
pub use colormap::{heatmap, heatmap_diverging, overlay, overlay_relevance, relevance_scale};
pub use output::{write_atomic, write_npy_f32, write_png};
