//! Image IO: decoding of every supported format and pixel type, hostile inputs, resizing,
//! input collection, atomic .npy/PNG writes, colormaps.

use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, RgbImage, Rgba};
use lafam_gpu::io::{
    collect_inputs, heatmap, heatmap_diverging, load_image, overlay, resize_shorter_side,
    shorter_side_dims, write_atomic, write_npy_f32, write_png,
};
use std::fs;
use std::path::{Path, PathBuf};

fn noisy_rgb(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    RgbImage::from_fn(w, h, |x, y| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        Rgb([(x * 7 + y) as u8, (s & 0xff) as u8, (y * 5) as u8])
    })
}

fn save(dir: &Path, name: &str, img: &DynamicImage, fmt: ImageFormat) -> PathBuf {
    let p = dir.join(name);
    img.save_with_format(&p, fmt).unwrap();
    p
}

fn err_of(p: &Path) -> String {
    format!("{:#}", load_image(p).expect_err("should fail"))
}

#[test]
fn decodes_rgb8_in_every_format_losslessly_where_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let img = noisy_rgb(37, 23, 1);
    let dy = DynamicImage::ImageRgb8(img.clone());
    for (name, fmt) in [
        ("a.png", ImageFormat::Png),
        ("a.bmp", ImageFormat::Bmp),
        ("a.tiff", ImageFormat::Tiff),
        ("a.webp", ImageFormat::WebP),
    ] {
        let p = save(dir.path(), name, &dy, fmt);
        let got = load_image(&p).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(got, img, "{name} not decoded exactly");
    }
    let p = save(dir.path(), "a.jpg", &dy, ImageFormat::Jpeg);
    let got = load_image(&p).unwrap();
    assert_eq!(got.dimensions(), (37, 23));
}

#[test]
fn format_is_sniffed_from_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    let img = noisy_rgb(16, 9, 2);
    // A PNG named .jpg, and one with no extension at all.
    let p = dir.path().join("really_png.jpg");
    img.save_with_format(&p, ImageFormat::Png).unwrap();
    assert_eq!(load_image(&p).unwrap(), img);
    let q = dir.path().join("noext");
    img.save_with_format(&q, ImageFormat::Bmp).unwrap();
    assert_eq!(load_image(&q).unwrap(), img);
}

#[test]
fn grey_alpha_and_16bit_become_rgb8() {
    let dir = tempfile::tempdir().unwrap();
    // Grey 8-bit: replicated.
    let grey = ImageBuffer::from_fn(5, 4, |x, y| Luma([(x * 40 + y) as u8]));
    let p = save(
        dir.path(),
        "g.png",
        &DynamicImage::ImageLuma8(grey.clone()),
        ImageFormat::Png,
    );
    let got = load_image(&p).unwrap();
    assert_eq!(got.get_pixel(3, 2), &Rgb([122, 122, 122]));
    // Grey + alpha: alpha dropped.
    let la = ImageBuffer::from_fn(5, 4, |x, _| LumaA([x as u8 * 10, 7]));
    let p = save(
        dir.path(),
        "la.png",
        &DynamicImage::ImageLumaA8(la),
        ImageFormat::Png,
    );
    assert_eq!(load_image(&p).unwrap().get_pixel(4, 0), &Rgb([40, 40, 40]));
    // RGBA: alpha dropped (as PIL's convert("RGB")), colour kept even where transparent.
    let rgba = ImageBuffer::from_fn(6, 3, |x, y| {
        Rgba([
            x as u8 * 20,
            y as u8 * 30,
            200,
            if x == 0 { 0 } else { 255 },
        ])
    });
    let p = save(
        dir.path(),
        "rgba.png",
        &DynamicImage::ImageRgba8(rgba),
        ImageFormat::Png,
    );
    let got = load_image(&p).unwrap();
    assert_eq!(got.get_pixel(0, 2), &Rgb([0, 60, 200]));
    assert_eq!(got.get_pixel(5, 1), &Rgb([100, 30, 200]));
    // RGBA WebP too.
    let rgba = ImageBuffer::from_fn(6, 3, |x, _| Rgba([x as u8 * 20, 1, 2, 128]));
    let p = save(
        dir.path(),
        "rgba.webp",
        &DynamicImage::ImageRgba8(rgba),
        ImageFormat::WebP,
    );
    assert_eq!(load_image(&p).unwrap().get_pixel(5, 0), &Rgb([100, 1, 2]));
    // 16-bit RGB (PNG and TIFF): scaled to 8 bits.
    let rgb16 = ImageBuffer::from_fn(4, 4, |x, _| Rgb([x as u16 * 0x4000, 0xffff, 0x0101]));
    for (name, fmt) in [
        ("c16.png", ImageFormat::Png),
        ("c16.tiff", ImageFormat::Tiff),
    ] {
        let p = save(
            dir.path(),
            name,
            &DynamicImage::ImageRgb16(rgb16.clone()),
            fmt,
        );
        let got = load_image(&p).unwrap();
        assert_eq!(got.get_pixel(2, 1), &Rgb([128, 255, 1]), "{name}");
    }
    // 16-bit grey.
    let g16 = ImageBuffer::from_fn(3, 3, |_, _| Luma([0x8080u16]));
    let p = save(
        dir.path(),
        "g16.png",
        &DynamicImage::ImageLuma16(g16),
        ImageFormat::Png,
    );
    assert_eq!(
        load_image(&p).unwrap().get_pixel(1, 1),
        &Rgb([128, 128, 128])
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG with a valid header claiming `w`x`h` (bit depth, colour type) and a tiny IDAT.
fn png_claiming(w: u32, h: u32, depth: u8, colour: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A 24-bit BMP header claiming `w`x`h` with almost no pixel data.
fn bmp_claiming(w: i32, h: i32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend_from_slice(&(54u32 + 16).to_le_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0u8; 24]);
    b.extend_from_slice(&[0u8; 16]);
    b
}

#[test]
fn absurd_dimensions_are_rejected_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.png");
    fs::write(&p, png_claiming(100_000, 100_000, 8, 2)).unwrap();
    let e = err_of(&p);
    assert!(
        e.contains("huge.png") && e.contains("100000x100000") && e.contains("16384"),
        "{e}"
    );

    let p = dir.path().join("huge.bmp");
    fs::write(&p, bmp_claiming(100_000, 100_000)).unwrap();
    let e = err_of(&p);
    assert!(
        e.contains("huge.bmp") && (e.contains("100000") || e.contains("limit")),
        "{e}"
    );

    // Under the side limit but over the decoded-size limit (16000^2 RGBA16 = 2 GB).
    let p = dir.path().join("fat.png");
    fs::write(&p, png_claiming(16_000, 16_000, 16, 6)).unwrap();
    let e = err_of(&p);
    assert!(e.contains("fat.png") && e.contains("MiB"), "{e}");
}

#[test]
fn empty_truncated_and_non_image_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.png");
    fs::write(&empty, b"").unwrap();
    let e = err_of(&empty);
    assert!(e.contains("empty.png") && e.contains("empty"), "{e}");

    let text = dir.path().join("notes.jpg");
    fs::write(&text, "this is not a picture\n").unwrap();
    let e = err_of(&text);
    assert!(
        e.contains("notes.jpg") && e.contains("not a recognised image"),
        "{e}"
    );

    let full = dir.path().join("full.png");
    noisy_rgb(64, 64, 3)
        .save_with_format(&full, ImageFormat::Png)
        .unwrap();
    let bytes = fs::read(&full).unwrap();
    for (name, fmt) in [
        ("trunc.png", ImageFormat::Png),
        ("trunc.jpg", ImageFormat::Jpeg),
        ("trunc.bmp", ImageFormat::Bmp),
    ] {
        let whole = dir.path().join(format!("whole_{name}"));
        noisy_rgb(64, 64, 3).save_with_format(&whole, fmt).unwrap();
        let b = fs::read(&whole).unwrap();
        let t = dir.path().join(name);
        fs::write(&t, &b[..b.len() / 2]).unwrap();
        let r = load_image(&t);
        // Every format fails, JPEG included (its decoder would fill the scan with grey).
        let e = format!("{:#}", r.expect_err(name));
        assert!(e.contains(name), "{e}");
    }
    // The bundled JPEGs (EXIF, baseline and progressive as found) load whole and fail cut
    // anywhere from 30% to 95% of their length.
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    for name in ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"] {
        let b = fs::read(assets.join(name)).unwrap();
        load_image(&assets.join(name)).unwrap();
        for pct in [30, 60, 95] {
            let t = dir.path().join(format!("{pct}_{name}"));
            fs::write(&t, &b[..b.len() * pct / 100]).unwrap();
            let e = format!("{:#}", load_image(&t).expect_err(name));
            assert!(e.contains("truncated"), "{pct}% of {name}: {e}");
        }
    }
    let t = dir.path().join("header_only.png");
    fs::write(&t, &bytes[..20]).unwrap();
    assert!(err_of(&t).contains("header_only.png"));

    let missing = dir.path().join("missing.png");
    let e = err_of(&missing);
    assert!(
        e.contains("missing.png") && e.contains("no such file"),
        "{e}"
    );
    assert!(err_of(dir.path()).contains("directory"));
}

#[test]
fn garbage_after_magic_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let magics: [&[u8]; 6] = [
        b"\x89PNG\r\n\x1a\n",
        b"\xff\xd8\xff",
        b"RIFF\x10\x00\x00\x00WEBPVP8 ",
        b"BM",
        b"II*\x00",
        b"MM\x00*",
    ];
    for (i, m) in magics.iter().enumerate() {
        for len in [0usize, 3, 17, 64, 300] {
            let mut b = m.to_vec();
            b.extend((0..len).map(|k| (k * 31 + i * 7) as u8));
            let p = dir.path().join(format!("g{i}_{len}"));
            fs::write(&p, &b).unwrap();
            let _ = load_image(&p); // an error is fine; a panic fails the test
        }
    }
}

#[test]
fn resize_shorter_side_rules() {
    assert_eq!(shorter_side_dims(300, 200, 100), (150, 100));
    assert_eq!(shorter_side_dims(200, 300, 100), (100, 150));
    assert_eq!(shorter_side_dims(451, 300, 224), (337, 224)); // 336.77 rounds to 337
    assert_eq!(shorter_side_dims(1000, 3, 1), (333, 1));
    assert_eq!(shorter_side_dims(50, 40, 0), (50, 40));
    assert_eq!(shorter_side_dims(64, 64, 224), (224, 224)); // upscaling too

    let img = noisy_rgb(90, 60, 4);
    let r = resize_shorter_side(&img, 30);
    assert_eq!(r.dimensions(), (45, 30));
    // Already the right size: returned untouched (bit-identical, not resampled).
    assert_eq!(resize_shorter_side(&img, 60), img);
    assert_eq!(resize_shorter_side(&img, 0), img);
    // A flat image stays flat (the filter is normalised, no ringing at this scale).
    let flat = RgbImage::from_pixel(100, 70, Rgb([10, 200, 99]));
    let r = resize_shorter_side(&flat, 33);
    assert_eq!(r.dimensions(), (47, 33));
    assert!(r.pixels().all(|p| p == &Rgb([10, 200, 99])));
    // Antialiased downscale of a 1-px checkerboard: grey, not aliased black/white.
    let checker = RgbImage::from_fn(64, 64, |x, y| {
        if (x + y) % 2 == 0 {
            Rgb([255; 3])
        } else {
            Rgb([0; 3])
        }
    });
    let r = resize_shorter_side(&checker, 16);
    assert!(
        r.pixels().all(|p| (100..=155).contains(&p[0])),
        "{:?}",
        r.get_pixel(5, 5)
    );
}

#[test]
fn collect_inputs_expands_directories_sorted_non_recursive() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Our own outputs (a.lrp.png, a.lafam.overlay.png, a.relax-uncertainty.png) are skipped:
    // `--out` may be an input directory. A name that only looks similar is not.
    for n in [
        "b.JPG",
        "a.png",
        "c.txt",
        ".hidden.png",
        "z.webp",
        "a.lrp.png",
        "a.lafam.overlay.png",
        "a.relax-uncertainty.png",
        "lrp.png",
    ] {
        fs::write(d.join(n), b"x").unwrap();
    }
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/d.png"), b"x").unwrap();
    fs::create_dir(d.join("none")).unwrap();
    let explicit = d.join("c.txt");
    let (files, errors) = collect_inputs(&[
        d.to_path_buf(),
        explicit.clone(),
        d.join("missing.png"),
        d.join("none"),
        d.join("a.png"),
    ]);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(d).unwrap().display().to_string())
        .collect();
    // Directory first (sorted, image extensions only, no hidden, no recursion), then the
    // explicit non-image file (always tried); a.png given twice is kept once.
    assert_eq!(names, ["a.png", "b.JPG", "lrp.png", "z.webp", "c.txt"]);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].contains("missing.png") && errors[0].contains("no such file"));
    assert!(errors[1].contains("none") && errors[1].contains("no image files"));
}

#[test]
fn npy_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.npy");
    let data: Vec<f32> = (0..6 * 7).map(|i| i as f32 * 0.25 - 3.0).collect();
    write_npy_f32(&p, 6, 7, &data).unwrap();
    let npy = npyz::NpyFile::new(fs::File::open(&p).unwrap()).unwrap();
    assert_eq!(npy.shape(), &[6, 7]);
    assert_eq!(npy.order(), npyz::Order::C);
    assert_eq!(npy.dtype(), npyz::DType::Plain("<f4".parse().unwrap()));
    assert_eq!(npy.into_vec::<f32>().unwrap(), data);
    // Wrong length: an error, and nothing created.
    let q = dir.path().join("bad.npy");
    assert!(write_npy_f32(&q, 3, 3, &data).is_err());
    assert!(!q.exists());
}

fn dir_names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn writes_are_atomic_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let png = d.join("h.png");
    let img = noisy_rgb(20, 10, 5);
    write_png(&png, &img).unwrap();
    assert_eq!(image::open(&png).unwrap().to_rgb8(), img);
    write_npy_f32(&d.join("m.npy"), 1, 2, &[1.0, 2.0]).unwrap();
    assert_eq!(dir_names(d), ["h.png", "m.npy"]);

    // A failing writer: the previous file is untouched and no temp file remains.
    fs::write(d.join("keep.txt"), b"old").unwrap();
    let r = write_atomic(&d.join("keep.txt"), |w| {
        w.write_all(b"partial")?;
        anyhow::bail!("simulated failure")
    });
    assert!(r.is_err());
    assert_eq!(fs::read(d.join("keep.txt")).unwrap(), b"old");
    assert_eq!(dir_names(d), ["h.png", "keep.txt", "m.npy"]);
    // An unwritable destination directory is an error naming the file.
    let e = write_png(&d.join("no/such/dir/x.png"), &img).unwrap_err();
    assert!(format!("{e:#}").contains("x.png"));
}

#[test]
fn colormaps_and_overlay() {
    let h = heatmap(&[0.0, 1.0, -5.0, 7.0, f32::NAN, 0.5], 2, 3);
    assert_eq!(h.dimensions(), (3, 2));
    let lo = *h.get_pixel(0, 0);
    let hi = *h.get_pixel(1, 0);
    assert_eq!(h.get_pixel(2, 0), &lo, "clamped below");
    assert_eq!(h.get_pixel(0, 1), &hi, "clamped above");
    assert_eq!(h.get_pixel(1, 1), &lo, "NaN painted as 0");
    // INFERNO: near-black at 0, bright yellow at 1; luminance increases monotonically.
    assert!(lo.0.iter().all(|&c| c < 20), "{lo:?}");
    assert!(hi[0] > 200 && hi[1] > 200, "{hi:?}");
    let ramp: Vec<f32> = (0..=10).map(|i| i as f32 / 10.0).collect();
    let r = heatmap(&ramp, 1, 11);
    let lum: Vec<f32> = r
        .pixels()
        .map(|p| 0.2126 * p[0] as f32 + 0.7152 * p[1] as f32 + 0.0722 * p[2] as f32)
        .collect();
    assert!(lum.windows(2).all(|w| w[1] > w[0]), "{lum:?}");

    let d = heatmap_diverging(&[-2.0, 0.0, 2.0, 1.0], 1, 4);
    let (neg, zero, pos, half) = (
        d.get_pixel(0, 0),
        d.get_pixel(1, 0),
        d.get_pixel(2, 0),
        d.get_pixel(3, 0),
    );
    assert!(neg[2] > neg[0] + 50, "negative is blue: {neg:?}");
    assert!(pos[0] > pos[2] + 50, "positive is red: {pos:?}");
    assert!(zero.0.iter().all(|&c| c > 230), "zero is white: {zero:?}");
    assert!(
        half[1] > pos[1],
        "half-scale is lighter than max: {half:?} {pos:?}"
    );
    // All zeros: white, no NaN.
    assert!(heatmap_diverging(&[0.0; 4], 2, 2)
        .pixels()
        .all(|p| p.0.iter().all(|&c| c > 230)));

    let a = RgbImage::from_pixel(2, 2, Rgb([0, 100, 200]));
    let b = RgbImage::from_pixel(2, 2, Rgb([200, 100, 0]));
    assert_eq!(overlay(&a, &b, 0.5).get_pixel(1, 1), &Rgb([100, 100, 100]));
    assert_eq!(overlay(&a, &b, 0.0), a);
    assert_eq!(overlay(&a, &b, 1.0), b);
}

/// A FIFO with no writer, given as an image, is refused at once (opening it would block
/// forever), and so is a character device.
#[cfg(unix)]
#[test]
fn non_regular_files_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.png");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(ok.success());
    let e = err_of(&fifo);
    assert!(e.contains("pipe.png") && e.contains("FIFO"), "{e}");
    let e = err_of(Path::new("/dev/zero"));
    assert!(e.contains("character device"), "{e}");
}

#[test]
fn names_in_messages_have_control_characters_escaped() {
    use lafam_gpu::io::{escape_controls, Shown};
    assert_eq!(escape_controls("plain é.png"), "plain é.png");
    assert_eq!(
        escape_controls("a\nerror: b\r\tc\u{1b}[31m\u{7f}.png"),
        "a\\nerror: b\\r\\tc\\u{1b}[31m\\u{7f}.png"
    );
    // Bidirectional overrides cannot reorder the line either.
    assert_eq!(escape_controls("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
    let p = Path::new("dir/a\nerror: forged.png");
    assert_eq!(p.shown().to_string(), "dir/a\\nerror: forged.png");
    assert_eq!(Path::new("ok/name.png").shown().to_string(), "ok/name.png");
}
