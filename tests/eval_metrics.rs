//! Metrics: parity with Quantus 0.6.0 (fixtures from tests/fixtures/gen_quantus.py) and
//! hand-checkable cases.

use lafam_gpu::eval::metrics::{radix_sort, score, MetricOptions, Skip, Ties, METRICS};
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quantus")
}

fn read<T: npyz::Deserialize>(name: &str) -> Vec<T> {
    let f = std::fs::File::open(dir().join(name)).unwrap();
    npyz::NpyFile::new(std::io::BufReader::new(f))
        .unwrap()
        .into_vec()
        .unwrap()
}

fn opts(k: usize, ties: Ties) -> MetricOptions {
    MetricOptions { top_k: k, ties }
}

/// Max |rust - reference| per metric over the cases, for `key` in the manifest; with
/// `only_untied`, cases with a tie straddling a cut are left out.
fn parity(key: &str, ties: Ties, only_untied: bool, expected_overrides: bool) -> [f64; 6] {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    let maps: Vec<f32> = read("maps.npy");
    let masks: Vec<u8> = read("masks.npy");
    let mut worst = [0f64; 6];
    let mut checked = 0;
    for c in manifest["cases"].as_array().unwrap() {
        if only_untied && c["boundary_tie"].as_bool().unwrap() {
            continue;
        }
        let (h, w, k, off) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
            c["k"].as_u64().unwrap() as usize,
            c["offset"].as_u64().unwrap() as usize,
        );
        let a = &maps[off..off + h * w];
        let s: Vec<bool> = masks[off..off + h * w].iter().map(|&m| m != 0).collect();
        let got = score(a, &s, &opts(k, ties));
        let want = &c[key];
        if s.iter().all(|&m| !m) {
            assert_eq!(got, Err(Skip::EmptyMask), "{}", c["name"]);
            assert!(METRICS.iter().all(|m| want[m].is_null()));
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{}: {e}", c["name"]));
        for (i, m) in METRICS.iter().enumerate() {
            let mut want = want[m].as_f64();
            if expected_overrides {
                if let Some(v) = c["expected_ties"][m].as_f64() {
                    want = Some(v);
                }
            }
            match (got[i], want) {
                (Some(g), Some(w)) => {
                    let d = (g - w).abs();
                    assert!(d < 1e-5, "{} {m} ({key}): rust {g} quantus {w}", c["name"]);
                    worst[i] = worst[i].max(d);
                }
                (None, None) => {}
                (g, w) => panic!("{} {m} ({key}): rust {g:?} quantus {w:?}", c["name"]),
            }
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases checked");
    eprintln!("{key} ({ties:?}, untied only: {only_untied}): max |err| per metric {worst:?}");
    worst
}

#[test]
fn quantus_parity_index_ties_equal_stable_argsort() {
    parity("quantus_stable", Ties::Index, false, false);
}

#[test]
fn quantus_parity_expected_ties() {
    // Everything but the tied cuts is Quantus itself; the tied cuts are the mean over tie
    // orders (computed with numpy by the generator).
    parity("quantus", Ties::Expected, false, true);
}

#[test]
fn quantus_parity_default_argsort_without_boundary_ties() {
    parity("quantus", Ties::Expected, true, false);
    parity("quantus", Ties::Index, true, false);
    parity("quantus_f32", Ties::Expected, true, false);
}

const MAP: [f32; 8] = [0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4];
const OBJ: [bool; 8] = [true, true, true, true, false, false, false, false];

#[test]
fn perfect_map() {
    let s = score(&MAP, &OBJ, &opts(2, Ties::Expected)).unwrap();
    assert_eq!(s[0], Some(1.0)); // pointing game
    assert_eq!(s[1], Some(1.0)); // top-2 both inside
    let rma = (0.9 + 0.8 + 0.7 + 0.6) / (0.9 + 0.8 + 0.7 + 0.6 + 0.1 + 0.2 + 0.3 + 0.4);
    assert!((s[2].unwrap() - rma).abs() < 1e-6);
    assert_eq!(s[3], Some(1.0));
    assert_eq!(s[4], Some(1.0));
}

#[test]
fn inverted_map() {
    let inv: Vec<f32> = MAP.iter().map(|x| 1.0 - x).collect();
    let s = score(&inv, &OBJ, &opts(2, Ties::Expected)).unwrap();
    assert_eq!(s[0], Some(0.0));
    assert_eq!(s[1], Some(0.0));
    assert_eq!(s[3], Some(0.0));
    assert_eq!(s[4], Some(0.0));
}

#[test]
fn uniform_map() {
    let u = [0.5f32; 8];
    for ties in [Ties::Expected, Ties::Index] {
        let s = score(&u, &OBJ, &opts(2, ties)).unwrap();
        assert_eq!(s[0], Some(1.0), "every pixel is tied for the max");
        assert_eq!(s[2], Some(0.5));
        assert_eq!(s[4], Some(0.5), "all pairs tied: AUC ½");
        assert!(s[5].unwrap().abs() < 1e-12, "equal values: Gini 0");
    }
    // Expected: half of any cut is inside; index: the first pixels are the object.
    let e = score(&u, &OBJ, &opts(2, Ties::Expected)).unwrap();
    assert_eq!((e[1], e[3]), (Some(0.5), Some(0.5)));
    let i = score(&u, &OBJ, &opts(2, Ties::Index)).unwrap();
    assert_eq!((i[1], i[3]), (Some(1.0), Some(1.0)));
    // All zero: nothing to normalise, no mass.
    let z = score(&[0.0; 8], &OBJ, &opts(2, Ties::Expected)).unwrap();
    assert_eq!(z[2], None);
    assert!(z[5].unwrap().abs() < 1e-12);
}

#[test]
fn ties() {
    // Max tied at pixels 1 (background) and 2 (object): pointing game hits.
    let a = [0.1f32, 1.0, 1.0, 0.5];
    let s = [false, false, true, true];
    let r = score(&a, &s, &opts(1, Ties::Expected)).unwrap();
    assert_eq!(r[0], Some(1.0));
    assert_eq!(r[1], Some(0.5)); // top-1 is pixel 1 or 2
    assert_eq!(score(&a, &s, &opts(1, Ties::Index)).unwrap()[1], Some(0.0));
    // |S| = 2 cut = the two 1.0s: one hit.
    assert_eq!(r[3], Some(0.5));
    // AUC: pairs (obj, bg): (1.0 vs 0.1) 1, (1.0 vs 1.0) ½, (0.5 vs 0.1) 1, (0.5 vs 1.0) 0.
    assert_eq!(r[4], Some(2.5 / 4.0));
    // -0.0 and 0.0 are equal.
    let r = score(&[-0.0, 0.0], &[true, false], &opts(1, Ties::Expected)).unwrap();
    assert_eq!((r[0], r[4]), (Some(1.0), Some(0.5)));
}

#[test]
fn sparseness_single_spike() {
    // One 1 among n zeros: v = [1e-7.., 1+1e-7]; Gini close to (n-1)/n.
    let mut a = vec![0f32; 100];
    a[37] = 3.0;
    let mut s = vec![false; 100];
    s[0] = true;
    let g = score(&a, &s, &opts(5, Ties::Expected)).unwrap()[5].unwrap();
    assert!((g - 0.99).abs() < 1e-4, "{g}");
}

#[test]
fn skips_and_undefined() {
    assert_eq!(
        score(&MAP, &[false; 8], &opts(2, Ties::Expected)),
        Err(Skip::EmptyMask)
    );
    assert!(matches!(
        score(&MAP, &[true; 7], &opts(2, Ties::Expected)),
        Err(Skip::SizeMismatch { .. })
    ));
    assert_eq!(
        score(&[f32::NAN, 1.0], &[true, false], &opts(1, Ties::Expected)),
        Err(Skip::NonFinite)
    );
    let full = score(&MAP, &[true; 8], &opts(20, Ties::Expected)).unwrap();
    assert_eq!(full[4], None, "no background: AUC undefined");
    assert_eq!(full[1], None, "k larger than the image");
    assert_eq!(full[3], Some(1.0));
}

#[test]
fn radix_sort_sorts() {
    let mut x: u64 = 88172645463325252;
    let mut v: Vec<u32> = (0..10_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as u32 & if x.is_multiple_of(3) { 0xff } else { u32::MAX }
        })
        .collect();
    let mut want = v.clone();
    want.sort_unstable();
    radix_sort(&mut v, &mut Vec::new());
    assert_eq!(v, want);
}

/// Metric throughput on 224x224 maps (LaFAM-like 7x7 plateaus and continuous), printed.
#[test]
fn throughput_224() {
    use rayon::prelude::*;
    let n = 224 * 224;
    let mut x: u64 = 1;
    let mut rnd = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    let images = 256;
    let data: Vec<(Vec<f32>, Vec<bool>)> = (0..images)
        .map(|i| {
            let cells: Vec<f32> = (0..49).map(|_| rnd()).collect();
            let a: Vec<f32> = (0..n)
                .map(|p| {
                    let (y, xx) = (p / 224, p % 224);
                    if i % 2 == 0 {
                        cells[(y / 32) * 7 + xx / 32]
                    } else {
                        rnd()
                    }
                })
                .collect();
            let s: Vec<bool> = (0..n)
                .map(|p| (p / 224).abs_diff(112) < 60 && (p % 224).abs_diff(100) < 70)
                .collect();
            (a, s)
        })
        .collect();
    let o = MetricOptions::default();
    let t = std::time::Instant::now();
    let single: usize = data[..64]
        .iter()
        .map(|(a, s)| score(a, s, &o).is_ok() as usize)
        .sum();
    let t1 = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let par: usize = data
        .par_iter()
        .map(|(a, s)| score(a, s, &o).is_ok() as usize)
        .sum();
    let tp = t.elapsed().as_secs_f64();
    assert_eq!((single, par), (64, images));
    eprintln!(
        "metric throughput on 224x224 maps: {:.0} images/s on one thread, {:.0} images/s on {} threads",
        64.0 / t1,
        images as f64 / tp,
        rayon::current_num_threads()
    );
}
