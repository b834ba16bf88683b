//! The library's front door: open weights once, explain images with several methods, use
//! the maps. Runs on the bundled sample image and the small test checkpoint by default.
//!
//!     cargo run --release --example explain -- [WEIGHTS [IMAGE...]]

use lafam_gpu::{Explainer, Method, Options, Stage, Upsample};

fn main() -> anyhow::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut args = std::env::args().skip(1);
    let weights = args
        .next()
        .unwrap_or(format!("{root}/tests/fixtures/reference/r18_swav.safetensors"));
    let mut paths: Vec<String> = args.collect();
    if paths.is_empty() {
        paths.push(format!("{root}/assets/chelsea.jpg"));
    }
    let options = Options {
        stage: Stage::Layer3,
        upsample: Upsample::Bilinear,
        size: 96, // small, so that the example runs in seconds on a CPU
        ..Options::default()
    };
    let mut explainer = Explainer::open(&weights, options)?;
    println!("backend: {}", explainer.backend());
    let images = paths
        .iter()
        .map(|p| Ok(image::open(p)?.to_rgb8()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let methods = [Method::Lafam, Method::LafamMax, Method::Lrp];
    for out in explainer.explain(&images, &methods)? {
        for (path, map) in paths.iter().zip(&out.maps) {
            // Where the map peaks, in the image's own pixels.
            let (w, peak) = (map.shape.w, map.data.iter().copied().enumerate());
            let (i, v) = peak.fold((0, f32::MIN), |b, (i, v)| if v > b.1 { (i, v) } else { b });
            println!(
                "{path}: {}{} {}x{} peaks at (x {}, y {}) with {v:.3}",
                out.method,
                out.output,
                map.shape.w,
                map.shape.h,
                i % w,
                i / w
            );
        }
    }
    Ok(())
}
