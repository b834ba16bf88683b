//! One level down: an [`Engine`] on a chosen backend, a [`Request`] with every method, the
//! planner's passes, and the maps of an in-memory batch. No files needed: the network is a
//! random width-8 ResNet-18 and the images are generated.
//!
//!     cargo run --release --example engine

use lafam_gpu::cpu::Cpu;
use lafam_gpu::explain::pipeline::plan;
use lafam_gpu::explain::{Composite, Engine, ImageBatch, Method, Request};
use lafam_gpu::model::random::{random_resnet, RandomSpec};
use lafam_gpu::{Stage, Upsample};

fn main() -> anyhow::Result<()> {
    let net = random_resnet(&RandomSpec::resnet(18, 8, 7)?);
    // The CPU backend here; `lafam_gpu::gpu::Gpu::new(&GpuOptions::default())` on a GPU.
    let mut engine = Engine::new(Cpu::new(), &net)?.with_lrp(Composite::EpsilonPlusFlat)?;
    let methods: Vec<Method> = Method::ALL
        .iter()
        .copied()
        .filter(|m| !m.info().needs_classifier) // a random backbone has no classifier
        .collect();
    for pass in plan(&methods) {
        let names: Vec<String> = pass.methods.iter().map(|m| m.to_string()).collect();
        println!("pass {:?}: {}", pass.needs, names.join(", "));
    }
    let (n, h, w) = (2, 64, 48);
    let rgb: Vec<u8> = (0..n * h * w * 3).map(|i| (i * 37 % 251) as u8).collect();
    let mut request = Request::new(&methods);
    request.stage = Stage::Layer3;
    request.upsample = Upsample::Bilinear;
    request.relax.masks = 16;
    let images = ImageBatch::new(&rgb, n, h, w)?;
    // Maps at twice the network's resolution, as for images resized before the network.
    let out = engine.explain(images, &request, &[(2 * h, 2 * w); 2])?;
    for m in &out {
        let s = m.maps[0].shape;
        let finite = m.maps.iter().all(|t| t.data.iter().all(|v| v.is_finite()));
        println!("{}{}: {} maps of {}x{}, finite: {finite}", m.method, m.output, m.maps.len(), s.w, s.h);
    }
    Ok(())
}
