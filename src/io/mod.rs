//! Image decoding and resizing, .npy output, colormaps and overlays, atomic writes. (stub)
