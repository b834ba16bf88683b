//! Every kernel's `struct Params` (WGSL, reflected through naga) and its Rust twin
//! (`lafam_gpu::gpu::params`) agree member by member: same names, same order, same byte
//! offsets, same size. A slip would make a kernel read a wrong field (or past its block);
//! the kernels run without bounds checks. No GPU needed.

use lafam_gpu::gpu::params::{all, ParamsLayout};
use lafam_gpu::gpu::specialisations;
use std::collections::BTreeMap;

/// `(member, offset)` of the `struct Params` of a WGSL module, and its size.
fn wgsl_params(label: &str, source: &str) -> (Vec<(String, usize)>, usize) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{label}: {}", e.emit_to_string(source)));
    let found: Vec<_> = module
        .types
        .iter()
        .filter(|(_, t)| t.name.as_deref() == Some("Params"))
        .collect();
    assert_eq!(found.len(), 1, "{label}: one struct Params");
    match &found[0].1.inner {
        naga::TypeInner::Struct { members, span } => (
            members
                .iter()
                .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
                .collect(),
            *span as usize,
        ),
        other => panic!("{label}: Params is {other:?}"),
    }
}

/// Compares a Rust layout with a WGSL one; the first difference, named.
fn compare(rust: &ParamsLayout, wgsl: &(Vec<(String, usize)>, usize)) -> Result<(), String> {
    let (members, size) = wgsl;
    let who = format!("{} (shaders/{})", rust.name, rust.shader);
    for (i, (name, offset)) in members.iter().enumerate() {
        match rust.fields.get(i) {
            Some(&(f, o)) if f == name && o == *offset => {}
            Some(&(f, o)) => {
                return Err(format!(
                    "{who}: member {i} is `{name}` at byte {offset} in WGSL, `{f}` at byte {o} \
                     in Rust"
                ))
            }
            None => return Err(format!("{who}: Rust lacks WGSL member `{name}`")),
        }
    }
    if rust.fields.len() != members.len() {
        return Err(format!(
            "{who}: {} fields in Rust, {} members in WGSL",
            rust.fields.len(),
            members.len()
        ));
    }
    if rust.size != *size {
        return Err(format!(
            "{who}: {} bytes in Rust, {size} in WGSL",
            rust.size
        ));
    }
    Ok(())
}

/// The `Params` of every module, from the sources the pipelines compile (one per
/// specialisation; a module's specialisations share one source).
fn reflected() -> BTreeMap<String, (Vec<(String, usize)>, usize)> {
    let mut out = BTreeMap::new();
    for s in specialisations() {
        let file = format!("{}.wgsl", s.module);
        let layout = wgsl_params(&s.kernel, s.source);
        if let Some(seen) = out.get(&file) {
            assert_eq!(
                seen, &layout,
                "{}: Params differ between specialisations",
                s.kernel
            );
        }
        out.insert(file, layout);
    }
    out
}

#[test]
fn every_params_struct_matches_its_shader() {
    let wgsl = reflected();
    let rust = all();
    let mut failures = Vec::new();
    for r in &rust {
        match wgsl.get(r.shader) {
            Some(w) => failures.extend(compare(r, w).err()),
            None => failures.push(format!(
                "{}: no compiled module shaders/{}",
                r.name, r.shader
            )),
        }
    }
    for file in wgsl.keys() {
        if !rust.iter().any(|r| r.shader == file) {
            failures.push(format!("shaders/{file}: no Rust parameter struct"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} parameter structs match their shaders", rust.len());
}

/// The comparison catches a slipped field order: a layout with two members swapped (same
/// names, same size) fails, and names the member.
#[test]
fn a_swapped_field_is_caught() {
    let wgsl = reflected();
    let mut wrong = all()
        .into_iter()
        .find(|r| r.shader == "conv_backward.wgsl")
        .expect("the transposed conv's params");
    assert!(compare(&wrong, &wgsl["conv_backward.wgsl"]).is_ok());
    // `flags` and `scale` swapped, as a hand-written positional array could have them.
    let n = wrong.fields.len();
    let (a, b) = (wrong.fields[n - 2].0, wrong.fields[n - 1].0);
    wrong.fields[n - 2].0 = b;
    wrong.fields[n - 1].0 = a;
    let err = compare(&wrong, &wgsl["conv_backward.wgsl"]).expect_err("a swapped pair");
    assert!(err.contains("`flags`") && err.contains("`scale`"), "{err}");
    // A struct written with the last two fields in the wrong order.
    #[repr(C)]
    #[allow(dead_code)]
    struct Slipped {
        head: [u32; 14],
        scale: f32,
        flags: u32,
    }
    let mut slipped = all()
        .into_iter()
        .find(|r| r.shader == "conv_backward.wgsl")
        .unwrap();
    slipped.fields[n - 2] = ("scale", std::mem::offset_of!(Slipped, scale));
    slipped.fields[n - 1] = ("flags", std::mem::offset_of!(Slipped, flags));
    slipped.size = std::mem::size_of::<Slipped>();
    let err = compare(&slipped, &wgsl["conv_backward.wgsl"]).expect_err("a slipped struct");
    assert!(err.contains("member 14"), "{err}");
    // A dropped padding member changes the size.
    let mut short = all().into_iter().find(|r| r.shader == "pool.wgsl").unwrap();
    short.fields.pop();
    short.size -= 4;
    assert!(compare(&short, &wgsl["pool.wgsl"]).is_err());
}
