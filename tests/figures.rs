//! `run`'s figures: `--colormap`, `--alpha`, `--no-png`, PNG text chunks and `--montage`, end
//! to end through the binary on the CPU backend with the narrow ResNet-50 fixture.

use lafam_gpu::io::figure::{montage_layout, CAPTION_LINES, LINE, MARGIN};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_lafam-gpu");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn weights() -> PathBuf {
    fixtures().join("r50_tv.safetensors")
}

fn run(out: &Path, extra: &[&str], image: &Path) -> Output {
    let o = Command::new(BIN)
        .args(["run", "--backend", "cpu", "--size", "64", "--weights"])
        .arg(weights())
        .arg("--out")
        .arg(out)
        .args(extra)
        .arg(image)
        .env("NODEVICE_SELECT", "1")
        .output()
        .expect("run lafam-gpu");
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A PNG's pixels (RGB8) and its text chunks (tEXt and iTXt).
fn read_png(p: &Path) -> (image::RgbImage, HashMap<String, String>) {
    let dec = png::Decoder::new(std::io::BufReader::new(fs::File::open(p).unwrap()));
    let reader = dec.read_info().unwrap();
    let info = reader.info();
    let mut text = HashMap::new();
    for t in &info.uncompressed_latin1_text {
        text.insert(t.keyword.clone(), t.text.clone());
    }
    for t in &info.utf8_text {
        text.insert(t.keyword.clone(), t.get_text().unwrap());
    }
    let img = image::open(p).unwrap().to_rgb8();
    (img, text)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn image() -> PathBuf {
    fixtures().join("img_48x80.png")
}

#[test]
fn pngs_carry_method_layer_rule_and_weights() {
    let d = tempfile::tempdir().unwrap();
    let o = run(
        d.path(),
        &["--method", "lafam,lrp", "--layer", "layer3"],
        &image(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for (file, method, rule, kind) in [
        (
            "img_48x80.lafam.png",
            "lafam",
            "none (not an LRP method)",
            "heatmap",
        ),
        (
            "img_48x80.lafam.overlay.png",
            "lafam",
            "none (not an LRP method)",
            "overlay",
        ),
        ("img_48x80.lrp.png", "lrp", "epsilon-plus-flat", "heatmap"),
        (
            "img_48x80.lrp.overlay.png",
            "lrp",
            "epsilon-plus-flat",
            "overlay",
        ),
    ] {
        let (_, t) = read_png(&d.path().join(file));
        assert_eq!(t["method"], method, "{file}: {t:?}");
        assert_eq!(t["layer"], "layer3", "{file}");
        assert_eq!(t["rule"], rule, "{file}");
        assert_eq!(t["weights"], "r50_tv.safetensors", "{file}");
        assert_eq!(t["kind"], kind, "{file}");
        assert!(t["Software"].starts_with("lafam-gpu "), "{file}");
    }
    let (_, t) = read_png(&d.path().join("img_48x80.lafam.png"));
    assert_eq!(t["colormap"], "inferno");
    let (_, t) = read_png(&d.path().join("img_48x80.lrp.png"));
    assert_eq!(t["colormap"], "blue-white-red");
}

#[test]
fn montage_has_every_map_with_caption_and_colour_bar() {
    let d = tempfile::tempdir().unwrap();
    let o = run(
        d.path(),
        &[
            "--method",
            "lafam,lrp,eigencam",
            "--montage",
            "--rule",
            "epsilon-gamma-box",
        ],
        &image(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, t) = read_png(&d.path().join("img_48x80.montage.png"));
    // The image and three maps; the 80x48 image scaled to 256 px high is 427 px wide.
    let layout = montage_layout(80, 48, 4);
    assert_eq!(layout.panel, (427, 256));
    assert_eq!((layout.width, layout.height), (8 + 4 * (427 + 8), 366));
    assert_eq!(m.dimensions(), (layout.width, layout.height));
    assert_eq!(t["kind"], "montage");
    assert_eq!(t["weights"], "r50_tv.safetensors");
    assert_eq!(t["rule"], "epsilon-gamma-box");
    assert_eq!(t["layer"], "layer4");
    let maps: Vec<&str> = t["maps"].split(',').collect();
    assert_eq!(maps.len(), 3, "{maps:?}");
    for name in ["lafam", "lrp", "eigencam"] {
        assert!(maps.contains(&name), "{maps:?}");
    }

    let (pw, ph) = layout.panel;
    for (i, &x0) in layout.panel_x.iter().enumerate() {
        // Text in the caption band: dark pixels on the white background.
        let col_x = MARGIN + i as u32 * (layout.column_w + MARGIN);
        let mut dark = 0;
        for y in MARGIN..MARGIN + CAPTION_LINES * LINE {
            for x in col_x..col_x + layout.column_w {
                if m.get_pixel(x, y).0.iter().all(|&c| c < 128) {
                    dark += 1;
                }
            }
        }
        assert!(dark > 50, "column {i}: caption has {dark} dark pixels");
        // Non-constant content under every caption.
        let mut seen = std::collections::HashSet::new();
        for y in (layout.panel_y..layout.panel_y + ph).step_by(7) {
            for x in (x0..x0 + pw).step_by(7) {
                seen.insert(m.get_pixel(x, y).0);
            }
        }
        assert!(seen.len() > 20, "column {i}: {} colours", seen.len());
        // A colour bar under every map (not under the image): many colours in one row.
        let bar_y = layout.panel_y + ph + 4 + 6;
        let row: std::collections::HashSet<[u8; 3]> = (col_x..col_x + layout.column_w)
            .map(|x| m.get_pixel(x, bar_y).0)
            .collect();
        if i == 0 {
            assert_eq!(row.len(), 1, "no colour bar under the image");
        } else {
            assert!(
                row.len() > 50,
                "column {i}: colour bar of {} colours",
                row.len()
            );
        }
    }
}

#[test]
fn no_png_writes_only_arrays_and_montage_still_comes() {
    let d = tempfile::tempdir().unwrap();
    let o = run(d.path(), &["--method", "lafam,lrp", "--no-png"], &image());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        names(d.path()),
        ["img_48x80.lafam.npy", "img_48x80.lrp.npy"]
    );
    let d2 = tempfile::tempdir().unwrap();
    let o = run(d2.path(), &["--no-png", "--montage"], &image());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        names(d2.path()),
        ["img_48x80.lafam.npy", "img_48x80.montage.png"]
    );
}

#[test]
fn colormap_and_alpha_change_the_pictures() {
    let base = tempfile::tempdir().unwrap();
    assert!(run(base.path(), &[], &image()).status.success());
    let v = tempfile::tempdir().unwrap();
    let o = run(
        v.path(),
        &["--colormap", "viridis", "--alpha", "1"],
        &image(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let map: Vec<f32> =
        npyz::NpyFile::new(fs::File::open(v.path().join("img_48x80.lafam.npy")).unwrap())
            .unwrap()
            .into_vec()
            .unwrap();
    let (heat, t) = read_png(&v.path().join("img_48x80.lafam.png"));
    assert_eq!(t["colormap"], "viridis");
    // The maximum (1.0) is viridis's last colour, the minimum (0.0) its first.
    let at = |i: usize| *heat.get_pixel((i % 80) as u32, (i / 80) as u32);
    let imax = (0..map.len())
        .max_by(|&a, &b| map[a].total_cmp(&map[b]))
        .unwrap();
    let imin = (0..map.len())
        .min_by(|&a, &b| map[a].total_cmp(&map[b]))
        .unwrap();
    let end = colorous::VIRIDIS.eval_continuous(1.0);
    let start = colorous::VIRIDIS.eval_continuous(0.0);
    assert_eq!(at(imax).0, [end.r, end.g, end.b]);
    assert_eq!(at(imin).0, [start.r, start.g, start.b]);
    // --alpha 1: the overlay is the heatmap.
    let (over, _) = read_png(&v.path().join("img_48x80.lafam.overlay.png"));
    assert_eq!(over, heat);
    // --alpha 0: the overlay is the image.
    let z = tempfile::tempdir().unwrap();
    assert!(run(z.path(), &["--alpha", "0"], &image()).status.success());
    let (over0, _) = read_png(&z.path().join("img_48x80.lafam.overlay.png"));
    assert_eq!(over0, image::open(image()).unwrap().to_rgb8());
    // The default colours differ from viridis.
    let (heat_default, _) = read_png(&base.path().join("img_48x80.lafam.png"));
    assert_ne!(heat_default, heat);
}

#[test]
fn bad_figure_flags_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (vec!["--alpha", "1.5"], "outside 0 to 1"),
        (vec!["--alpha=-0.1"], "outside 0 to 1"),
        (vec!["--alpha", "NaN"], "outside 0 to 1"),
        (vec!["--alpha", "half"], "is not a number"),
        (vec!["--colormap", "jet"], "known: auto, inferno, viridis"),
    ] {
        let o = run(d.path(), &args, &image());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(names(d.path()).is_empty(), "{args:?}: nothing written");
    }
}

/// The default style draws exactly what `render_map` (the CLI before `--colormap`, and the
/// Python package's `overlay`) draws, for every kind of map, non-finite values included.
#[test]
fn default_style_draws_as_before() {
    use lafam_gpu::io::{render_map, render_map_styled, Display, Style, OVERLAY_ALPHA};
    let (w, h) = (7u32, 5u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 50) as u8, 99])
    });
    let mut map: Vec<f32> = (0..w * h)
        .map(|i| ((i as f32) * 0.37).sin() * 2.0)
        .collect();
    map[3] = f32::NAN;
    map[4] = f32::INFINITY;
    map[5] = f32::NEG_INFINITY;
    for display in [Display::Unit, Display::Scaled, Display::Signed] {
        assert_eq!(
            render_map(&map, &img, display, OVERLAY_ALPHA),
            render_map_styled(&map, &img, display, Style::default()),
            "{display:?}"
        );
    }
}
