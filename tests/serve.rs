//! `lafam-gpu serve`: the viewer's HTTP API against a server started by the binary on
//! 127.0.0.1 with an ephemeral port, on the CPU backend (and one run on the GPU adapter,
//! lavapipe where there is no GPU). Requests are written by hand over TCP so that paths
//! reach the server exactly as written (`..`, `%2e%2e`, absolute paths).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_lafam-gpu");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

/// A running `serve`, killed when dropped.
struct Served {
    child: Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0", "--size", "64", "--weights"])
        .arg(fixtures().join("r50_tv.safetensors"))
        .args(extra)
        .env("NODEVICE_SELECT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start lafam-gpu serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Served { child, port }
}

struct Answer {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One HTTP/1.1 request (`Connection: close`), the path sent exactly as given.
fn request(port: u16, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|h| h.starts_with("Host:")) {
        head += "Host: 127.0.0.1\r\n";
    }
    if !headers.iter().any(|h| h.starts_with("Content-Length")) {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    for h in headers {
        head += h;
        head += "\r\n";
    }
    head += "\r\n";
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before it has read all of a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&raw)));
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

fn get(port: u16, path: &str) -> Answer {
    request(port, "GET", path, &[], b"")
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn decode_b64_png(s: &str) -> image::DynamicImage {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    image::load_from_memory(&bytes).unwrap()
}

#[test]
fn page_info_and_explain() {
    let s = serve(&["--backend", "cpu", "--method", "lafam,lrp"]);
    let page = get(s.port, "/");
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("lafam-gpu viewer"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    assert!(page.headers.contains("text/html"));

    let info = get(s.port, "/api/info").json();
    assert_eq!(info["weights"], "r50_tv.safetensors");
    assert!(info["backend"].as_str().unwrap().starts_with("cpu"));
    let ticked: Vec<&str> = info["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["default"] == true)
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(ticked, ["lafam", "lrp"]);

    let a = request(
        s.port,
        "POST",
        "/api/explain?methods=lafam,lrp,eigencam&layer=layer3&rule=epsilon-gamma-box&name=img.png",
        &[],
        &image_bytes("img_48x80.png"),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let j = a.json();
    assert_eq!(j["layer"], "layer3");
    assert_eq!(j["rule"], "epsilon-gamma-box");
    assert_eq!(j["image"]["width"], 80);
    assert_eq!(j["image"]["height"], 48);
    let maps = j["maps"].as_array().unwrap();
    let names: Vec<&str> = maps.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for m in maps {
        assert_eq!(m["height"], 48);
        assert_eq!(m["width"], 80);
        let (lo, hi) = (m["min"].as_f64().unwrap(), m["max"].as_f64().unwrap());
        assert!(lo < hi, "{m}");
        let png = decode_b64_png(m["png"].as_str().unwrap());
        assert_eq!((png.width(), png.height()), (80, 48));
        // The .npy download holds the map.
        let npy = get(s.port, m["npy_url"].as_str().unwrap());
        assert_eq!(npy.status, 200);
        let values: Vec<f32> = npyz::NpyFile::new(&npy.body[..])
            .unwrap()
            .into_vec()
            .unwrap();
        assert_eq!(values.len(), 48 * 80);
        let vmin = values.iter().copied().fold(f32::INFINITY, f32::min);
        let vmax = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!((vmin as f64 - lo).abs() < 1e-6 && (vmax as f64 - hi).abs() < 1e-6);
        // So does the PNG, with its text chunks.
        let p = get(s.port, m["png_url"].as_str().unwrap());
        assert_eq!(p.status, 200);
        assert!(p.headers.contains("attachment"));
        let dec = png::Decoder::new(std::io::Cursor::new(p.body))
            .read_info()
            .unwrap();
        let text: Vec<(String, String)> = dec
            .info()
            .uncompressed_latin1_text
            .iter()
            .map(|t| (t.keyword.clone(), t.text.clone()))
            .collect();
        assert!(
            text.contains(&("layer".into(), "layer3".into())),
            "{text:?}"
        );
        assert!(text.contains(&("weights".into(), "r50_tv.safetensors".into())));
    }
    // The LRP map under this rule equals the CLI's.
    let lrp = maps.iter().find(|m| m["name"] == "lrp").unwrap();
    assert_eq!(lrp["display"], "signed");
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["run", "--backend", "cpu", "--size", "64", "--method", "lrp"])
        .args([
            "--layer",
            "layer3",
            "--rule",
            "epsilon-gamma-box",
            "--no-png",
        ])
        .arg("--weights")
        .arg(fixtures().join("r50_tv.safetensors"))
        .arg("--out")
        .arg(out.path())
        .arg(fixtures().join("img_48x80.png"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let cli: Vec<f32> =
        npyz::NpyFile::new(std::fs::File::open(out.path().join("img_48x80.lrp.npy")).unwrap())
            .unwrap()
            .into_vec()
            .unwrap();
    let served: Vec<f32> =
        npyz::NpyFile::new(&get(s.port, lrp["npy_url"].as_str().unwrap()).body[..])
            .unwrap()
            .into_vec()
            .unwrap();
    assert_eq!(
        cli, served,
        "the warm engine's rule change gives the CLI's map"
    );

    // A click: the top channels at the point and their conditional maps.
    let id = j["id"].as_u64().unwrap();
    let p = request(
        s.port,
        "POST",
        &format!("/api/point?id={id}&x=40&y=20&top=5&concepts=2"),
        &[],
        b"",
    );
    assert_eq!(p.status, 200, "{}", String::from_utf8_lossy(&p.body));
    let p = p.json();
    assert_eq!(p["layer"], "layer3");
    let ch = p["channels"].as_array().unwrap();
    assert_eq!(ch.len(), 5);
    let acts: Vec<f64> = ch
        .iter()
        .map(|c| c["activation"].as_f64().unwrap())
        .collect();
    assert!(acts.windows(2).all(|w| w[0] >= w[1]), "{acts:?}");
    let concepts = p["concepts"].as_array().unwrap();
    assert_eq!(concepts.len(), 2);
    assert_eq!(concepts[0]["channel"], ch[0]["channel"]);
    assert!(concepts[0]["relevance"].as_f64().is_some());
    // Outside the image: a 400.
    let out = request(
        s.port,
        "POST",
        &format!("/api/point?id={id}&x=80&y=0"),
        &[],
        b"",
    );
    assert_eq!(out.status, 400);
    assert!(out.json()["error"]
        .as_str()
        .unwrap()
        .contains("outside the 80x48 image"));
}

#[test]
fn bad_uploads_get_4xx_with_the_clis_message() {
    let s = serve(&["--backend", "cpu", "--max-upload", "1"]);
    // Not an image: the message `run` prints for the same file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, b"this is not a PNG").unwrap();
    let o = Command::new(BIN)
        .args(["run", "--backend", "cpu", "--weights"])
        .arg(fixtures().join("r50_tv.safetensors"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .arg(&bad)
        .output()
        .unwrap();
    let cli_line = String::from_utf8_lossy(&o.stderr)
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap()
        .to_string();
    let problem = cli_line.split_once("notes.png: ").unwrap().1.to_string();
    let a = request(
        s.port,
        "POST",
        "/api/explain?name=notes.png",
        &[],
        b"this is not a PNG",
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], format!("notes.png: {problem}"));

    // Empty, truncated.
    let a = request(s.port, "POST", "/api/explain", &[], b"");
    assert_eq!(a.status, 400);
    assert!(a.json()["error"].as_str().unwrap().starts_with("upload: "));
    let png = image_bytes("img_64x64.png");
    let a = request(s.port, "POST", "/api/explain", &[], &png[..png.len() / 2]);
    assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));

    // Too large: by its Content-Length, before reading it, and by what arrives.
    let a = request(
        s.port,
        "POST",
        "/api/explain?name=big.png",
        &["Content-Length: 500000000"],
        b"",
    );
    assert_eq!(a.status, 413);
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("over the limit of 1048576 bytes"));
    let a = request(s.port, "POST", "/api/explain", &[], &vec![0u8; 1_200_000]);
    assert_eq!(a.status, 413);

    // An image over the network's pixel limit (1x5000 at --size 64 is 64x320000).
    let mut tall = Vec::new();
    image::RgbImage::new(1, 5000)
        .write_to(
            &mut std::io::Cursor::new(&mut tall),
            image::ImageFormat::Png,
        )
        .unwrap();
    let a = request(s.port, "POST", "/api/explain?name=tall.png", &[], &tall);
    assert_eq!(a.status, 413, "{}", String::from_utf8_lossy(&a.body));
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .starts_with("tall.png: "));

    // Bad parameters.
    for (q, needle) in [
        ("methods=lafam,nope", "unknown method 'nope'"),
        ("layer=layer9", "layer: "),
        ("rule=zplus", "rule: "),
        ("size=99999", "over the viewer's limit"),
        ("upsample=cubic", "upsample: "),
        ("colormap=jet", "unknown colormap"),
    ] {
        let a = request(s.port, "POST", &format!("/api/explain?{q}"), &[], &png);
        assert_eq!(a.status, 400, "{q}");
        let e = a.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains(needle), "{q}: {e}");
    }
    // A request addressed to another host name (DNS rebinding) is refused; loopback names
    // are not.
    let a = request(s.port, "GET", "/api/info", &["Host: evil.example:80"], b"");
    assert_eq!(a.status, 403);
    for host in ["localhost", "127.0.0.1:1", "[::1]:8080", "LOCALHOST:9"] {
        let mut s2 = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        let req = format!("GET /api/info HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s2.write_all(req.as_bytes()).unwrap();
        let mut raw = String::new();
        let _ = s2.read_to_string(&mut raw);
        assert!(raw.starts_with("HTTP/1.1 200"), "{host}: {raw}");
    }
    // Wrong method, unknown route, a result that does not exist.
    assert_eq!(get(s.port, "/api/explain").status, 405);
    assert_eq!(get(s.port, "/nope").status, 404);
    assert_eq!(get(s.port, "/api/result/999/lafam.npy").status, 404);
    // Still serving.
    let a = request(s.port, "POST", "/api/explain", &[], &png);
    assert_eq!(a.status, 200);
}

#[test]
fn nothing_outside_the_folders_is_served() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("images");
    let atlas = root.path().join("atlas");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::create_dir_all(atlas.join("crops")).unwrap();
    std::fs::write(root.path().join("secret.png"), b"secret").unwrap();
    std::fs::write(folder.join(".hidden.png"), b"hidden").unwrap();
    std::fs::copy(fixtures().join("img_64x64.png"), folder.join("a b.png")).unwrap();
    std::fs::write(folder.join("notes.txt"), b"not an image").unwrap();
    std::fs::write(atlas.join("crops/x.c7.y1x2.png"), b"crop").unwrap();
    std::fs::write(atlas.join("crops/x.c7.y1x2.heat.png"), b"heat").unwrap();
    std::fs::write(atlas.join("index.html"), b"<html>atlas</html>").unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(root.path().join("secret.png"), folder.join("link.png"))
            .unwrap();
        std::os::unix::fs::symlink("/etc", atlas.join("etc")).unwrap();
        std::os::unix::fs::symlink(folder.join("a b.png"), folder.join("inside.png")).unwrap();
    }
    let s = serve(&[
        "--backend",
        "cpu",
        "--folder",
        folder.to_str().unwrap(),
        "--atlas",
        atlas.to_str().unwrap(),
    ]);
    let listed = get(s.port, "/api/folder").json();
    let names: Vec<&str> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a b.png", "inside.png"],
        "no hidden file, no link out, no text"
    );
    let ok = get(s.port, "/folder/a%20b.png");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body, std::fs::read(folder.join("a b.png")).unwrap());
    assert_eq!(get(s.port, "/folder/inside.png").status, 200);
    assert_eq!(get(s.port, "/atlas/crops/x.c7.y1x2.png").body, b"crop");
    assert_eq!(get(s.port, "/atlas/index.html").status, 200);
    let secret = root.path().join("secret.png");
    for path in [
        "/folder/../secret.png".to_string(),
        "/folder/%2e%2e/secret.png".to_string(),
        "/folder/%2E%2E%2Fsecret.png".to_string(),
        "/folder/..%2fsecret.png".to_string(),
        "/folder/..%5csecret.png".to_string(),
        "/folder/.%2e/secret.png".to_string(),
        "/folder//etc/passwd".to_string(),
        format!("/folder/{}", secret.display()),
        format!(
            "/folder/%2F{}",
            secret.display().to_string().trim_start_matches('/')
        ),
        "/folder/link.png".to_string(),
        "/folder/.hidden.png".to_string(),
        "/folder/notes.txt".to_string(),
        "/folder/".to_string(),
        "/folder/a%00b.png".to_string(),
        "/atlas/etc/passwd".to_string(),
        "/atlas/../images/a%20b.png".to_string(),
        "/atlas/%2e%2e/secret.png".to_string(),
        "/atlas/crops/../../secret.png".to_string(),
        "/../secret.png".to_string(),
        "/api/result/1/..%2f..%2fsecret.png".to_string(),
    ] {
        let a = get(s.port, &path);
        assert!(
            (400..500).contains(&a.status),
            "{path}: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        assert!(
            !a.body.starts_with(b"secret") && !a.body.starts_with(b"root:"),
            "{path}"
        );
    }
    // The atlas's crops of a channel, without their heat maps.
    let c = get(s.port, "/api/atlas?channel=7").json();
    assert_eq!(
        c["crops"],
        serde_json::json!(["/atlas/crops/x.c7.y1x2.png"])
    );
    assert_eq!(c["atlas"]["index"], "/atlas/index.html");
    assert_eq!(
        get(s.port, "/api/atlas?channel=70").json()["crops"],
        serde_json::json!([])
    );
}

#[test]
fn concurrent_requests_are_queued_and_all_answered() {
    let s = serve(&["--backend", "cpu", "--method", "lafam,lrp"]);
    let port = s.port;
    let images = [
        "img_64x64.png",
        "img_48x80.png",
        "img_96x72.png",
        "img_64x64b.png",
    ];
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let name = images[i % images.len()];
            std::thread::spawn(move || {
                let layer = if i % 2 == 0 { "layer4" } else { "layer2" };
                let a = request(
                    port,
                    "POST",
                    &format!("/api/explain?layer={layer}&name={name}"),
                    &[],
                    &image_bytes(name),
                );
                assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
                let j = a.json();
                assert_eq!(j["layer"], layer);
                // Meanwhile the page and files are served.
                assert_eq!(get(port, "/api/info").status, 200);
                let lafam = j["maps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["name"] == "lafam")
                    .unwrap()
                    .clone();
                let npy = get(port, lafam["npy_url"].as_str().unwrap());
                let v: Vec<f32> = npyz::NpyFile::new(&npy.body[..])
                    .unwrap()
                    .into_vec()
                    .unwrap();
                (name, layer, v)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // The same image and layer give the same map, whatever ran in between.
    for (n1, l1, v1) in &results {
        for (n2, l2, v2) in &results {
            if n1 == n2 && l1 == l2 {
                assert_eq!(v1, v2, "{n1} {l1}");
            }
        }
    }
    // Each matches a fresh run of the CLI (the layer changes did not leak).
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args([
            "run",
            "--backend",
            "cpu",
            "--size",
            "64",
            "--layer",
            "layer2",
            "--no-png",
        ])
        .arg("--weights")
        .arg(fixtures().join("r50_tv.safetensors"))
        .arg("--out")
        .arg(out.path())
        .arg(fixtures().join("img_48x80.png"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let cli: Vec<f32> =
        npyz::NpyFile::new(std::fs::File::open(out.path().join("img_48x80.lafam.npy")).unwrap())
            .unwrap()
            .into_vec()
            .unwrap();
    let (_, _, served) = results
        .iter()
        .find(|(n, l, _)| *n == "img_48x80.png" && *l == "layer2")
        .unwrap();
    assert_eq!(&cli, served);
}

/// The same API on the GPU backend (lavapipe where there is no GPU): fails, not skips,
/// without an adapter.
#[test]
fn explain_on_the_gpu() {
    let s = serve(&["--backend", "gpu", "--method", "lafam,lrp"]);
    let info = get(s.port, "/api/info").json();
    assert!(
        info["backend"].as_str().unwrap().starts_with("gpu"),
        "{info}"
    );
    let a = request(
        s.port,
        "POST",
        "/api/explain?size=32&name=a.png",
        &[],
        &image_bytes("img_64x64.png"),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let j = a.json();
    assert_eq!(j["maps"].as_array().unwrap().len(), 2);
    let id = j["id"].as_u64().unwrap();
    let p = request(
        s.port,
        "POST",
        &format!("/api/point?id={id}&x=10&y=50&concepts=1"),
        &[],
        b"",
    );
    assert_eq!(p.status, 200, "{}", String::from_utf8_lossy(&p.body));
    assert_eq!(p.json()["concepts"].as_array().unwrap().len(), 1);
}

/// With an atlas.json, a channel's crops come in the atlas's ranking (RelMax, then ActMax,
/// each crop once), and none for the channels of another layer than the atlas's.
#[test]
fn atlas_crops_follow_the_atlas_ranking_and_layer() {
    let root = tempfile::tempdir().unwrap();
    let atlas = root.path().join("atlas");
    std::fs::create_dir_all(atlas.join("crops")).unwrap();
    for n in ["a.c3.y0x0", "b.c3.y1x1", "c.c3.y2x2"] {
        std::fs::write(atlas.join(format!("crops/{n}.png")), n).unwrap();
    }
    let sample =
        |stem: &str| serde_json::json!({"stem": stem, "crop": format!("crops/{stem}.c3.y0x0.png")});
    let doc = serde_json::json!({
        "settings": {"concept_layer": "layer3"},
        "atlas": {"channels": [
            {"channel": 2, "relmax": {"samples": []}, "actmax": {"samples": []}},
            {"channel": 3,
             "relmax": {"samples": [{"crop": "crops/b.c3.y1x1.png"}, {"crop": "crops/a.c3.y0x0.png"}]},
             "actmax": {"samples": [sample("a"), {"crop": "crops/c.c3.y2x2.png"}, {"crop": "crops/../../x.png"}]}}
        ]}
    });
    std::fs::write(atlas.join("atlas.json"), doc.to_string()).unwrap();
    let s = serve(&["--backend", "cpu", "--atlas", atlas.to_str().unwrap()]);
    let want = serde_json::json!([
        "/atlas/crops/b.c3.y1x1.png",
        "/atlas/crops/a.c3.y0x0.png",
        "/atlas/crops/c.c3.y2x2.png"
    ]);
    let c = get(s.port, "/api/atlas?channel=3").json();
    assert_eq!(c["crops"], want);
    assert_eq!(c["atlas"]["concept_layer"], "layer3");
    assert_eq!(
        get(s.port, "/api/atlas?channel=3&layer=layer3").json()["crops"],
        want
    );
    assert_eq!(
        get(s.port, "/api/atlas?channel=3&layer=layer4").json()["crops"],
        serde_json::json!([])
    );
    assert_eq!(
        get(s.port, "/api/atlas?channel=2").json()["crops"],
        serde_json::json!([])
    );
}
