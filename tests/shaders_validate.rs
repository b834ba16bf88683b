//! Every shader module parses and validates through naga (no GPU needed), as the GPU backend
//! compiles it: `lafam_gpu::gpu::shader_modules()`, the convs with `shaders/gemm_core.wgsl`
//! composed in. Every WGSL file in `shaders/` is a module or composed into one.

use std::path::PathBuf;

fn shader_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    files.sort();
    files
}

/// The composed source of `shaders/<label>.wgsl`.
fn composed(label: &str) -> &'static str {
    lafam_gpu::gpu::shader_modules()
        .iter()
        .find(|m| m.0 == label)
        .map(|m| m.1.as_str())
        .unwrap_or_else(|| panic!("no module {label}"))
}

#[test]
fn every_shader_file_is_compiled() {
    let modules = lafam_gpu::gpu::shader_modules();
    for path in shader_files() {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read shader");
        let module = modules.iter().any(|m| m.0 == stem);
        let include = format!("// #include {stem}.wgsl");
        let includers: Vec<&str> = modules
            .iter()
            .filter(|m| {
                let file = shader_files()
                    .into_iter()
                    .find(|p| p.file_stem().is_some_and(|s| s == m.0))
                    .expect("a module's file");
                std::fs::read_to_string(file).unwrap().contains(&include)
            })
            .map(|m| m.0)
            .collect();
        assert!(
            module || !includers.is_empty(),
            "{} is neither a module nor composed into one",
            path.display()
        );
        // A composed file appears whole in every module that includes it.
        for m in includers {
            assert!(composed(m).contains(&text), "{m} lacks {}", path.display());
        }
    }
}

#[test]
fn every_shader_parses_and_validates() {
    let modules = lafam_gpu::gpu::shader_modules();
    assert!(!modules.is_empty(), "no shader modules");
    let mut failures = Vec::new();
    for (label, src) in modules {
        let path = PathBuf::from(format!("shaders/{label}.wgsl (composed)"));
        let path = &path;
        let module = match naga::front::wgsl::parse_str(src) {
            Ok(m) => m,
            Err(e) => {
                failures.push(format!(
                    "{}: parse error:\n{}",
                    path.display(),
                    e.emit_to_string(src)
                ));
                continue;
            }
        };
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        );
        if let Err(e) = validator.validate(&module) {
            failures.push(format!(
                "{}: validation error:\n{}",
                path.display(),
                e.emit_to_string(src)
            ));
            continue;
        }
        assert!(
            !module.entry_points.is_empty(),
            "{} has no entry point",
            path.display()
        );
        // Vulkan counts the workgroup variables an entry point uses against the limit.
        let info = validator.validate(&module).expect("validated above");
        for (i, ep) in module.entry_points.iter().enumerate() {
            let bytes: u32 = module
                .global_variables
                .iter()
                .filter(|(h, v)| {
                    v.space == naga::AddressSpace::WorkGroup
                        && !info.get_entry_point(i)[*h].is_empty()
                })
                .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
                .sum();
            let budget = workgroup_budget(&ep.name);
            if bytes > budget {
                failures.push(format!(
                    "{}: {} uses {bytes} bytes of workgroup memory, over its {budget} \
                     (src/gpu/limits.rs)",
                    path.display(),
                    ep.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The workgroup memory src/gpu/limits.rs counts for an entry point (`tile_needs`,
/// `ELEMENTWISE`): the device check and the tile policy rely on these bounds. 16 KiB, the
/// 128x128 tiles', is WebGPU's default limit.
fn workgroup_budget(entry: &str) -> u32 {
    match entry {
        "conv2d_large" | "conv_transpose_large" => 16384,
        "conv2d" | "conv_transpose" => 9216,
        _ => 2048,
    }
}

#[test]
fn the_shaders_the_gpu_backend_loads_exist() {
    let names: Vec<String> = shader_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "conv.wgsl",
        "pool.wgsl",
        "preprocess.wgsl",
        "reduce.wgsl",
        "resample.wgsl",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "shaders/{want} missing (found {names:?})"
        );
    }
}

/// The entry points `src/gpu/pipelines.rs` builds from `conv.wgsl` and `conv_backward.wgsl`
/// exist and are compute shaders of the expected size: 256 invocations for the 64x64 and
/// 128x128 tiles, 64 for the 16x64 tile (the 64x64 entry point with its `TILE_ROWS` override
/// at 16, checked here by specialising the source text the way the pipeline's constant does),
/// 256 for the narrow transposed conv; each specialisation validates.
#[test]
fn conv_entry_points_exist() {
    let tiles = |base: &'static str| {
        vec![
            (base, None, 256u32),
            (base, Some(16u32), 64),
            (
                if base == "conv2d" {
                    "conv2d_large"
                } else {
                    "conv_transpose_large"
                },
                None,
                256,
            ),
        ]
    };
    let mut conv_backward = tiles("conv_transpose");
    conv_backward.push(("conv_transpose_narrow", None, 256));
    let mut conv = tiles("conv2d");
    conv.push(("conv2d_narrow", None, 256));
    for (file, entries) in [("conv.wgsl", conv), ("conv_backward.wgsl", conv_backward)] {
        let src = composed(file.trim_end_matches(".wgsl"));
        let declared = "override TILE_ROWS: u32 = 64u;";
        assert!(src.contains(declared), "{file} declares {declared}");
        for (name, rows, invocations) in entries {
            let specialised = match rows {
                Some(r) => src.replace(declared, &format!("const TILE_ROWS: u32 = {r}u;")),
                None => src.replace(declared, "const TILE_ROWS: u32 = 64u;"),
            };
            let module = naga::front::wgsl::parse_str(&specialised).unwrap_or_else(|e| {
                panic!("{file} ({rows:?}): {}", e.emit_to_string(&specialised))
            });
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{file} ({rows:?}): {}", e.emit_to_string(&specialised)));
            let ep = module
                .entry_points
                .iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{file} has no entry point {name}"));
            assert_eq!(ep.stage, naga::ShaderStage::Compute, "{name}");
            assert_eq!(
                ep.workgroup_size.iter().product::<u32>(),
                invocations,
                "{name} with TILE_ROWS {rows:?}"
            );
        }
    }
}
