//! Portability: every pipeline specialisation that `src/gpu/pipelines.rs` compiles
//! (`lafam_gpu::gpu::specialisations()`) translates through naga, with its override constants
//! resolved, to the shading languages of wgpu's other backends: MSL (Metal), HLSL (DX12),
//! GLSL ES 3.10 (GL) and SPIR-V (Vulkan), the last checked by `spirv-val` from Debian's
//! `spirv-tools`. Each also fits WebGPU's default limits. The options follow how wgpu-hal 30
//! writes a module created with `ShaderRuntimeChecks::unchecked()` and a pipeline with
//! `zero_initialize_workgroup_memory: false`, as ours are.
//!
//! A second test checks, on a device, that the list is what `Pipelines::build` compiles.

mod common;

use lafam_gpu::gpu::{specialisations, Specialisation};
use naga::back;
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Module, ShaderStage, StorageAccess};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

/// The targets, as the summary names them.
const TARGETS: [&str; 4] = [
    "MSL 2.1",
    "HLSL SM 6.0",
    "GLSL ES 3.10",
    "SPIR-V 1.0 (vulkan1.0)",
];

/// WebGPU's default limits (the ones `create_context` may not exceed without asking).
const MAX_WORKGROUP_BYTES: u32 = 16384;
const MAX_INVOCATIONS: u32 = 256;
const MAX_WORKGROUP_SIZE: [u32; 3] = [256, 256, 64];
const MAX_STORAGE_BUFFERS: usize = 8;
const MAX_UNIFORM_BUFFERS: usize = 12;

/// Runtime checks off, as `ShaderRuntimeChecks::unchecked()` tells wgpu-hal.
fn unchecked() -> BoundsCheckPolicies {
    BoundsCheckPolicies {
        index: BoundsCheckPolicy::Unchecked,
        buffer: BoundsCheckPolicy::Unchecked,
        image_load: BoundsCheckPolicy::Unchecked,
        binding_array: BoundsCheckPolicy::Unchecked,
    }
}

/// `MODULE.wgsl:ENTRY{K=V,...}`, naming a specialisation in failures.
fn describe(s: &Specialisation) -> String {
    let constants: Vec<String> = s
        .constants
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{}.wgsl:{}{{{}}}",
        s.module,
        s.entry_point,
        constants.join(",")
    )
}

/// The resource-bound globals of `module`: (binding, is a uniform buffer, is written).
fn resources(module: &Module) -> Vec<(naga::ResourceBinding, bool, bool)> {
    module
        .global_variables
        .iter()
        .filter_map(|(_, v)| {
            let binding = v.binding?;
            let (uniform, written) = match v.space {
                AddressSpace::Uniform => (true, false),
                AddressSpace::Storage { access } => (false, access.contains(StorageAccess::STORE)),
                other => panic!("unexpected bound global in {other:?}"),
            };
            Some((binding, uniform, written))
        })
        .collect()
}

/// What a specialisation uses of the limits: invocations per workgroup, bytes of workgroup
/// memory, storage buffers.
type Usage = [u32; 3];

/// The WebGPU limits `module` (specialised, for entry point `entry`) must fit, and what it
/// uses of them; `declared` is the module before compaction, whose bound buffers all are in
/// the pipeline layout.
fn check_limits(
    module: &Module,
    info: &ModuleInfo,
    entry: &str,
    declared: &Module,
) -> (Vec<String>, Usage) {
    let mut errors = Vec::new();
    let Some(index) = module.entry_points.iter().position(|e| e.name == entry) else {
        let e = format!("entry point {entry} missing after specialisation");
        return (vec![e], [0; 3]);
    };
    let ep = &module.entry_points[index];
    let size = ep.workgroup_size;
    let invocations: u32 = size.iter().product();
    if invocations > MAX_INVOCATIONS {
        errors.push(format!(
            "{invocations} invocations per workgroup, over {MAX_INVOCATIONS}"
        ));
    }
    if size.iter().zip(MAX_WORKGROUP_SIZE).any(|(s, m)| *s > m) {
        errors.push(format!(
            "workgroup size {size:?} over {MAX_WORKGROUP_SIZE:?}"
        ));
    }
    // WebGPU counts each workgroup variable rounded up to 16 bytes.
    let ep_info = info.get_entry_point(index);
    let bytes: u32 = module
        .global_variables
        .iter()
        .filter(|(h, v)| v.space == AddressSpace::WorkGroup && !ep_info[*h].is_empty())
        .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()).div_ceil(16) * 16)
        .sum();
    if bytes > MAX_WORKGROUP_BYTES {
        errors.push(format!(
            "{bytes} bytes of workgroup memory, over {MAX_WORKGROUP_BYTES}"
        ));
    }
    let bound = resources(declared);
    let storage = bound.iter().filter(|r| !r.1).count();
    let uniform = bound.len() - storage;
    if storage > MAX_STORAGE_BUFFERS {
        errors.push(format!(
            "{storage} storage buffers, over {MAX_STORAGE_BUFFERS}"
        ));
    }
    if uniform > MAX_UNIFORM_BUFFERS {
        errors.push(format!(
            "{uniform} uniform buffers, over {MAX_UNIFORM_BUFFERS}"
        ));
    }
    (errors, [invocations, bytes, storage as u32])
}

/// Metal: buffers in slots 0.. in binding order, plus the runtime-array sizes buffer, as
/// wgpu-hal's metal backend assigns them.
fn msl(module: &Module, info: &ModuleInfo, entry: &str) -> Result<String, String> {
    let mut map = back::msl::BindingMap::default();
    let bound = resources(module);
    for (slot, &(binding, _, mutable)) in bound.iter().enumerate() {
        let target = back::msl::BindTarget {
            buffer: Some(slot as u8),
            mutable,
            ..Default::default()
        };
        map.insert(binding, target);
    }
    let resources = back::msl::EntryPointResources {
        resources: map,
        immediates_buffer: None,
        sizes_buffer: Some(bound.len() as u8),
    };
    let options = back::msl::Options {
        lang_version: (2, 1),
        per_entry_point_map: [(entry.to_string(), resources)].into(),
        fake_missing_bindings: false,
        bounds_check_policies: unchecked(),
        zero_initialize_workgroup_memory: false,
        force_loop_bounding: false,
        emit_int_div_checks: false,
        ..Default::default()
    };
    let pipeline = back::msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry.to_string())),
        ..Default::default()
    };
    back::msl::write_string(module, info, &options, &pipeline)
        .map(|(src, _)| src)
        .map_err(|e| format!("{e:?}"))
}

/// DX12: one register class each for constant buffers (b), read-only (t) and read-write (u)
/// storage buffers, in register space = bind group; the special constants (the
/// `num_workgroups` builtin) in the next constant-buffer register, as wgpu-hal's dx12 backend
/// does. Shader model 6.0 is the least wgpu 30's DX12 backend accepts.
fn hlsl(module: &Module, info: &ModuleInfo, entry: &str) -> Result<String, String> {
    let mut map = back::hlsl::BindingMap::default();
    let mut registers = [0u32; 3];
    for (binding, uniform, written) in resources(module) {
        let class = if uniform {
            0
        } else if written {
            2
        } else {
            1
        };
        let target = back::hlsl::BindTarget {
            space: binding.group as u8,
            register: registers[class],
            ..Default::default()
        };
        registers[class] += 1;
        map.insert(binding, target);
    }
    let options = back::hlsl::Options {
        shader_model: back::hlsl::ShaderModel::V6_0,
        binding_map: map,
        fake_missing_bindings: false,
        special_constants_binding: Some(back::hlsl::BindTarget {
            register: registers[0],
            ..Default::default()
        }),
        zero_initialize_workgroup_memory: false,
        restrict_indexing: false,
        force_loop_bounding: false,
        ..Default::default()
    };
    let pipeline = back::hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry.to_string())),
    };
    let mut out = String::new();
    back::hlsl::Writer::new(&mut out, &options, &pipeline)
        .write(module, info, None)
        .map_err(|e| format!("{e:?}"))?;
    Ok(out)
}

/// GL: GLSL ES 3.10 (compute shaders' minimum), uniform and storage blocks numbered
/// separately, as wgpu-hal's gles backend does; bounds checks are the driver's.
fn glsl(module: &Module, info: &ModuleInfo, entry: &str) -> Result<String, String> {
    let mut map = back::glsl::BindingMap::default();
    let mut counters = [0u8; 2];
    for (binding, uniform, _) in resources(module) {
        let class = usize::from(!uniform);
        map.insert(binding, counters[class]);
        counters[class] += 1;
    }
    let options = back::glsl::Options {
        version: back::glsl::Version::Embedded {
            version: 310,
            is_webgl: false,
        },
        writer_flags: back::glsl::WriterFlags::ADJUST_COORDINATE_SPACE
            | back::glsl::WriterFlags::FORCE_POINT_SIZE,
        binding_map: map,
        zero_initialize_workgroup_memory: false,
    };
    let pipeline = back::glsl::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry.to_string(),
        multiview: None,
    };
    let mut out = String::new();
    back::glsl::Writer::new(&mut out, module, info, &options, &pipeline, unchecked())
        .and_then(|mut w| w.write())
        .map_err(|e| format!("{e:?}"))?;
    Ok(out)
}

/// Vulkan: SPIR-V 1.0 (Vulkan 1.0's version) using the `Shader` capability alone; descriptor
/// set = bind group, bindings numbered in order, as wgpu-hal's vulkan backend does.
fn spirv(module: &Module, info: &ModuleInfo, entry: &str) -> Result<Vec<u32>, String> {
    let mut map = back::spv::BindingMap::default();
    let mut bound = resources(module);
    bound.sort_by_key(|r| (r.0.group, r.0.binding));
    let mut next = HashMap::new();
    for (binding, _, _) in bound {
        let slot = next.entry(binding.group).or_insert(0u32);
        let target = back::spv::BindingInfo {
            descriptor_set: binding.group,
            binding: *slot,
            binding_array_size: None,
        };
        *slot += 1;
        map.insert(binding, target);
    }
    let options = back::spv::Options {
        binding_map: map,
        lang_version: (1, 0),
        flags: back::spv::WriterFlags::LABEL_VARYINGS | back::spv::WriterFlags::FORCE_POINT_SIZE,
        fake_missing_bindings: false,
        capabilities: Some([back::spv::Capability::Shader].into_iter().collect()),
        bounds_check_policies: unchecked(),
        zero_initialize_workgroup_memory: back::spv::ZeroInitializeWorkgroupMemoryMode::None,
        force_loop_bounding: false,
        emit_int_div_checks: false,
        ..Default::default()
    };
    let pipeline = back::spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    back::spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| format!("{e:?}"))
}

const SPIRV_VAL: &str = "spirv-val";
const SPIRV_ENV: &str = "vulkan1.0";

/// Runs `spirv-val` on `words`; an error names what it found.
fn spirv_val(words: &[u32], dir: &std::path::Path, name: &str) -> Result<(), String> {
    let path = dir.join(format!("{name}.spv"));
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(&path, bytes).map_err(|e| format!("write {}: {e}", path.display()))?;
    let out = Command::new(SPIRV_VAL)
        .args(["--target-env", SPIRV_ENV])
        .arg(&path)
        .output()
        .map_err(|e| format!("cannot run {SPIRV_VAL}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{SPIRV_VAL} --target-env {SPIRV_ENV}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn every_specialisation_translates_to_every_backend() {
    let start = Instant::now();
    // Must fail, not skip, without the validator.
    let version = Command::new(SPIRV_VAL).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "{SPIRV_VAL} not found or not working ({:?}): install Debian's `spirv-tools` \
         package (apt-get install spirv-tools)",
        version.err()
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let specs = specialisations();
    assert!(!specs.is_empty(), "no specialisations");

    let mut parsed: HashMap<&str, (Module, ModuleInfo)> = HashMap::new();
    let mut failures = Vec::new();
    let mut times = [Duration::ZERO; 4];
    let mut bytes_out = [0usize; 4];
    // The most any specialisation uses of each limit (`Usage`), and which.
    let mut most: [(u32, String); 3] = Default::default();
    for (n, s) in specs.iter().enumerate() {
        let name = describe(s);
        if !parsed.contains_key(s.module) {
            let module = match naga::front::wgsl::parse_str(s.source) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{name}: parse: {}", e.emit_to_string(s.source)));
                    continue;
                }
            };
            let mut validator = Validator::new(ValidationFlags::all(), Capabilities::default());
            let info = match validator.validate(&module) {
                Ok(i) => i,
                Err(e) => {
                    failures.push(format!("{name}: validate: {}", e.emit_to_string(s.source)));
                    continue;
                }
            };
            parsed.insert(s.module, (module, info));
        }
        let (module, info) = &parsed[s.module];
        let constants: back::PipelineConstants = s.constants.iter().cloned().collect();
        let entry = s.entry_point.as_str();
        let (module_s, info_s) = match back::pipeline_constants::process_overrides(
            module,
            info,
            Some((ShaderStage::Compute, entry)),
            &constants,
        ) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: overrides: {e}"));
                continue;
            }
        };
        // The overrides took effect: `TILE_ROWS` sizes the tiled entry points' workgroups.
        if let Some((_, rows)) = s.constants.iter().find(|c| c.0 == "TILE_ROWS") {
            let ep = module_s.entry_points.iter().find(|e| e.name == entry);
            let want = [16, *rows as u32 / 4, 1];
            if ep.map(|e| e.workgroup_size) != Some(want) {
                failures.push(format!(
                    "{name}: workgroup size is not {want:?} after overrides"
                ));
            }
        }
        let (errors, usage) = check_limits(&module_s, &info_s, entry, module);
        for e in errors {
            failures.push(format!("{name}: WebGPU default limits: {e}"));
        }
        for (max, used) in most.iter_mut().zip(usage) {
            if used > max.0 {
                *max = (used, name.clone());
            }
        }
        let mut run = |target: usize, result: Result<usize, String>, t: Instant| {
            times[target] += t.elapsed();
            match result {
                Ok(len) => bytes_out[target] += len,
                Err(e) => failures.push(format!("{name}: {}: {e}", TARGETS[target])),
            }
        };
        let t = Instant::now();
        run(0, msl(&module_s, &info_s, entry).map(|s| s.len()), t);
        let t = Instant::now();
        run(1, hlsl(&module_s, &info_s, entry).map(|s| s.len()), t);
        let t = Instant::now();
        run(2, glsl(&module_s, &info_s, entry).map(|s| s.len()), t);
        let t = Instant::now();
        let spv = spirv(&module_s, &info_s, entry).and_then(|words| {
            spirv_val(&words, dir.path(), &format!("{n}_{entry}"))?;
            Ok(words.len() * 4)
        });
        run(3, spv, t);
    }
    println!(
        "{} specialisations x {} targets = {} translations in {:.2}s ({} failures)",
        specs.len(),
        TARGETS.len(),
        specs.len() * TARGETS.len(),
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    for (i, target) in TARGETS.iter().enumerate() {
        println!(
            "  {target}: {:.2}s, {} KiB written",
            times[i].as_secs_f64(),
            bytes_out[i] / 1024
        );
    }
    let limits = [
        MAX_INVOCATIONS,
        MAX_WORKGROUP_BYTES,
        MAX_STORAGE_BUFFERS as u32,
    ];
    for (((used, name), limit), what) in most.iter().zip(limits).zip([
        "invocations per workgroup",
        "bytes of workgroup memory",
        "storage buffers per stage",
    ]) {
        println!("  most {what}: {used} of {limit} ({name})");
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Each specialisation names a distinct pipeline.
#[test]
fn specialisations_are_distinct() {
    let specs = specialisations();
    let mut kernels: Vec<&str> = specs.iter().map(|s| s.kernel.as_str()).collect();
    kernels.sort();
    let before = kernels.len();
    kernels.dedup();
    assert_eq!(kernels.len(), before, "duplicate kernel names: {kernels:?}");
    let mut keys: Vec<String> = specs.iter().map(describe).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), before, "duplicate specialisations");
}

/// The list is exactly what `Pipelines::build` compiles (needs a device: lavapipe will do).
#[test]
fn specialisations_are_the_compiled_pipelines() {
    let gpu = common::gpu();
    let mut listed: Vec<String> = specialisations().into_iter().map(|s| s.kernel).collect();
    listed.sort();
    let compiled = gpu.kernel_names();
    let missing: Vec<&String> = compiled.iter().filter(|k| !listed.contains(k)).collect();
    let extra: Vec<&String> = listed.iter().filter(|k| !compiled.contains(k)).collect();
    assert!(
        compiled == listed,
        "specialisations() differs from the compiled pipelines: compiled but not listed \
         {missing:?}, listed but not compiled {extra:?} ({} compiled, {} listed)",
        compiled.len(),
        listed.len()
    );
}
