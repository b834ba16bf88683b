//! Per-image results, summaries (mean ± population std), JSON / CSV / table outputs and the
//! merge of shard reports.

use super::metrics::{Scores, METRICS};
use crate::io::write_atomic;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct ImageScore {
    pub stem: String,
    /// The six localisation metrics (None where undefined or not computed).
    pub scores: Scores,
    /// Faithfulness values and curves (empty unless `eval --faithfulness`).
    pub faith: Faith,
}

impl ImageScore {
    pub fn new(stem: String, scores: Scores) -> Self {
        ImageScore {
            stem,
            scores,
            faith: Faith::default(),
        }
    }
}

/// One image's faithfulness results: named values (`pixel_flipping_auc`,
/// `region_perturbation_aopc`, `faithfulness_correlation`, `road_morf`, `road_lerf`) and
/// named curves (`pixel_flipping`, `region_perturbation`, `road_morf`, `road_lerf`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faith {
    pub values: BTreeMap<String, f64>,
    pub curves: BTreeMap<String, Vec<f64>>,
}

/// Mean, population std and count of each faithfulness value over a report's images, and
/// the pointwise mean of each curve (point `i` over the images whose curve has one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaithSummary {
    pub mean: BTreeMap<String, f64>,
    pub std: BTreeMap<String, f64>,
    pub n: BTreeMap<String, usize>,
    pub curves: BTreeMap<String, Vec<f64>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub stem: String,
    pub reason: String,
}

/// The results of one method (or of one map suffix in `--maps` mode).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// `lafam`, `lrp`, or the maps' middle name (`x.<this>.npy`); None for `<stem>.npy`.
    pub method: Option<String>,
    pub images: Vec<ImageScore>,
    pub skipped: Vec<Skipped>,
    /// Settings the scores depend on (top_k, ties, void; with --weights the weights' size and
    /// sha256, architecture, layer, rule, size, upsample, backend...; the tool version); merge
    /// refuses to mix them.
    pub settings: Value,
    /// Where the run's inputs were (weights path, adapter, dataset root or maps/masks
    /// directories): recorded, not compared (shards run on different machines).
    pub provenance: Value,
    /// The `--shard` of the run (None: the whole set, or a merged report).
    pub shard: Option<super::Shard>,
}

/// Mean and population standard deviation of each metric over the images where it is
/// defined, and how many those are.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub mean: [Option<f64>; 6],
    pub std: [Option<f64>; 6],
    pub n: [usize; 6],
}

impl Report {
    pub fn new(method: Option<String>, settings: Value) -> Self {
        Report {
            method,
            settings,
            ..Default::default()
        }
    }

    /// Sorts by stem, so that a report's numbers do not depend on processing order (shards
    /// merged give bit-identical means).
    pub fn sort(&mut self) {
        self.images.sort_by(|a, b| a.stem.cmp(&b.stem));
        self.skipped.sort_by(|a, b| a.stem.cmp(&b.stem));
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            mean: [None; 6],
            std: [None; 6],
            n: [0; 6],
        };
        for m in 0..6 {
            let vals: Vec<f64> = self.images.iter().filter_map(|i| i.scores[m]).collect();
            s.n[m] = vals.len();
            if vals.is_empty() {
                continue;
            }
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
            s.mean[m] = Some(mean);
            s.std[m] = Some(var.sqrt());
        }
        s
    }

    /// Whether any image has faithfulness results.
    pub fn has_faith(&self) -> bool {
        self.images
            .iter()
            .any(|i| !i.faith.values.is_empty() || !i.faith.curves.is_empty())
    }

    pub fn faith_summary(&self) -> FaithSummary {
        let mut vals: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut curves: BTreeMap<String, Vec<(f64, usize)>> = BTreeMap::new();
        for i in &self.images {
            for (k, v) in &i.faith.values {
                vals.entry(k.clone()).or_default().push(*v);
            }
            for (k, c) in &i.faith.curves {
                let acc = curves.entry(k.clone()).or_default();
                if acc.len() < c.len() {
                    acc.resize(c.len(), (0.0, 0));
                }
                for (a, v) in acc.iter_mut().zip(c) {
                    a.0 += v;
                    a.1 += 1;
                }
            }
        }
        let mut s = FaithSummary::default();
        for (k, v) in vals {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            s.mean.insert(k.clone(), mean);
            s.std.insert(k.clone(), var.sqrt());
            s.n.insert(k, v.len());
        }
        for (k, c) in curves {
            s.curves
                .insert(k, c.iter().map(|(sum, n)| sum / *n as f64).collect());
        }
        s
    }

    pub fn to_json(&self) -> Value {
        let num = |v: Option<f64>| v.map_or(Value::Null, |x| json!(x));
        let images: Vec<Value> = self
            .images
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("stem".into(), json!(i.stem));
                for (name, v) in METRICS.iter().zip(i.scores) {
                    o.insert((*name).into(), num(v));
                }
                if !i.faith.values.is_empty() {
                    o.insert("faithfulness".into(), json!(i.faith.values));
                }
                if !i.faith.curves.is_empty() {
                    o.insert("curves".into(), json!(i.faith.curves));
                }
                Value::Object(o)
            })
            .collect();
        let s = self.summary();
        let per = |a: &[Option<f64>; 6]| {
            Value::Object(
                METRICS
                    .iter()
                    .zip(a)
                    .map(|(k, v)| ((*k).to_string(), num(*v)))
                    .collect(),
            )
        };
        let n: Map<String, Value> = METRICS
            .iter()
            .zip(s.n)
            .map(|(k, v)| ((*k).to_string(), json!(v)))
            .collect();
        let faith = self.has_faith().then(|| {
            let f = self.faith_summary();
            json!({ "mean": f.mean, "std": f.std, "n": f.n, "mean_curves": f.curves })
        });
        json!({
            "method": self.method,
            "settings": self.settings,
            "provenance": self.provenance,
            "shard": self.shard.map(|s| format!("{}/{}", s.index, s.count)),
            "images": images,
            "mean": per(&s.mean),
            "std": per(&s.std),
            "count": self.images.len(),
            "n": n,
            "faithfulness": faith,
            "skipped": self.skipped.iter().map(|k| json!({"stem": k.stem, "reason": k.reason})).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> Result<Report> {
        let images = v["images"]
            .as_array()
            .context("no \"images\" array")?
            .iter()
            .map(|i| {
                let stem = i["stem"]
                    .as_str()
                    .context("image without \"stem\"")?
                    .to_string();
                let mut scores = [None; 6];
                for (s, name) in scores.iter_mut().zip(METRICS) {
                    *s = match &i[name] {
                        Value::Null => None,
                        x => Some(
                            x.as_f64()
                                .with_context(|| format!("{stem}: {name} is not a number"))?,
                        ),
                    };
                }
                let mut faith = Faith::default();
                if let Some(f) = i.get("faithfulness").filter(|v| !v.is_null()) {
                    for (k, v) in f.as_object().context("\"faithfulness\" is not an object")? {
                        let x = v
                            .as_f64()
                            .with_context(|| format!("{stem}: {k} is not a number"))?;
                        faith.values.insert(k.clone(), x);
                    }
                }
                if let Some(c) = i.get("curves").filter(|v| !v.is_null()) {
                    for (k, v) in c.as_object().context("\"curves\" is not an object")? {
                        let pts = v
                            .as_array()
                            .with_context(|| format!("{stem}: curve {k} is not an array"))?
                            .iter()
                            .map(|x| match x {
                                // A non-finite point is written as null.
                                Value::Null => Ok(f64::NAN),
                                x => x
                                    .as_f64()
                                    .with_context(|| format!("{stem}: curve {k}: not a number")),
                            })
                            .collect::<Result<Vec<f64>>>()?;
                        faith.curves.insert(k.clone(), pts);
                    }
                }
                Ok(ImageScore {
                    stem,
                    scores,
                    faith,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let skipped = match v.get("skipped") {
            None | Some(Value::Null) => Vec::new(),
            Some(s) => s
                .as_array()
                .context("\"skipped\" is not an array")?
                .iter()
                .map(|k| Skipped {
                    stem: k["stem"].as_str().unwrap_or_default().to_string(),
                    reason: k["reason"].as_str().unwrap_or_default().to_string(),
                })
                .collect(),
        };
        let shard = match v.get("shard") {
            None | Some(Value::Null) => None,
            Some(s) => Some(
                s.as_str()
                    .context("\"shard\" is not a string")?
                    .parse::<super::Shard>()
                    .map_err(|e| anyhow::anyhow!("\"shard\": {e}"))?,
            ),
        };
        Ok(Report {
            method: v["method"].as_str().map(str::to_string),
            images,
            skipped,
            settings: v.get("settings").cloned().unwrap_or(Value::Null),
            provenance: v.get("provenance").cloned().unwrap_or(Value::Null),
            shard,
        })
    }
}

/// One report as the schema; several as `{"reports": [...]}`.
pub fn reports_to_json(reports: &[Report]) -> Value {
    match reports {
        [one] => one.to_json(),
        many => json!({ "reports": many.iter().map(Report::to_json).collect::<Vec<_>>() }),
    }
}

pub fn reports_from_json(v: &Value) -> Result<Vec<Report>> {
    match v.get("reports") {
        Some(list) => list
            .as_array()
            .context("\"reports\" is not an array")?
            .iter()
            .map(Report::from_json)
            .collect(),
        None => Ok(vec![Report::from_json(v)?]),
    }
}

/// Reads one `eval --merge` part: JSON holding one report or `{"reports": [...]}`, whose
/// stated means are in range ([`check_means`]). The caller adds the file name.
pub fn parse_part(text: &[u8]) -> Result<Vec<Report>> {
    let v: Value = serde_json::from_slice(text).context("not JSON")?;
    let reports = reports_from_json(&v).context("not an eval report")?;
    check_means(&v)?;
    Ok(reports)
}

/// Whether `v` lies in metric `m`'s range, and that range in words. Pointing game: 0 or 1;
/// top-k intersection, relevance rank accuracy, AUC, sparseness (Gini index): [0, 1].
/// Relevance mass accuracy is `Σ_S a / Σ a`, outside [0, 1] for signed maps (LRP): finite.
pub fn in_range(m: usize, v: f64) -> (bool, &'static str) {
    const EPS: f64 = 1e-9;
    match m {
        0 => (v == 0.0 || v == 1.0, "0 or 1"),
        2 => (v.is_finite(), "a finite number"),
        _ => ((-EPS..=1.0 + EPS).contains(&v), "in [0, 1]"),
    }
}

/// Refuses a report file whose `mean` values are out of range (the pointing game's mean in
/// [0, 1], the others as [`in_range`]); the means are recomputed on merge, but a part that
/// states impossible ones is not trusted.
pub fn check_means(v: &Value) -> Result<()> {
    let reports: Vec<&Value> = match v.get("reports").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![v],
    };
    for r in reports {
        for (m, name) in METRICS.iter().enumerate() {
            let Some(x) = r
                .get("mean")
                .and_then(|mean| mean.get(*name))
                .and_then(Value::as_f64)
            else {
                continue;
            };
            let (ok, range) = match m {
                0 => ((0.0..=1.0).contains(&x), "in [0, 1]"),
                _ => in_range(m, x),
            };
            ensure!(
                ok,
                "mean {name} = {x} ({}) is not {range}",
                r["method"].as_str().unwrap_or("maps")
            );
        }
    }
    Ok(())
}

/// The first setting (a dotted key) where `a` and `b` differ, with both values.
fn first_difference(a: &Value, b: &Value, key: &str) -> Option<(String, String, String)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let sub = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &sub,
                )
            })
        }
        _ if a == b => None,
        _ => {
            let name = if key.is_empty() { "settings" } else { key };
            Some((name.to_string(), a.to_string(), b.to_string()))
        }
    }
}

/// Refuses a set of parts whose shards do not make one whole: a part without a shard among
/// sharded ones, different shard counts, an index twice, or missing indices. Parts that all
/// lack a shard (older reports, unsharded runs) are not checked.
fn check_shards(parts: &[(String, Option<super::Shard>)]) -> Result<()> {
    let Some((first, s0)) = parts.iter().find_map(|(f, s)| s.map(|s| (f.as_str(), s))) else {
        return Ok(());
    };
    let mut by_index: BTreeMap<usize, &str> = BTreeMap::new();
    for (file, s) in parts {
        let Some(s) = s else {
            bail!(
                "{file} has no shard, but {first} is shard {}/{}",
                s0.index,
                s0.count
            );
        };
        ensure!(
            s.count == s0.count,
            "{file} is shard {}/{} but {first} is shard {}/{} (different shard counts)",
            s.index,
            s.count,
            s0.index,
            s0.count
        );
        if let Some(prev) = by_index.insert(s.index, file) {
            bail!(
                "{file} and {prev} are both shard {}/{} (duplicated shard)",
                s.index,
                s.count
            );
        }
    }
    let missing: Vec<String> = (0..s0.count)
        .filter(|i| !by_index.contains_key(i))
        .map(|i| format!("{i}/{}", s0.count))
        .collect();
    ensure!(
        missing.is_empty(),
        "shard{} {} missing (merging {} of {} parts)",
        if missing.len() > 1 { "s" } else { "" },
        missing.join(", "),
        by_index.len(),
        s0.count
    );
    Ok(())
}

/// Recombines shard reports: per method, images and skipped entries are pooled (an image in
/// two shards is an error), then sorted by stem, so the means equal those of one run.
/// Refused (naming the files): parts whose settings differ, shards missing or duplicated,
/// metric values out of their range ([`in_range`]).
pub fn merge(parts: Vec<(String, Vec<Report>)>) -> Result<Vec<Report>> {
    let shards: Vec<(String, Option<super::Shard>)> = parts
        .iter()
        .map(|(f, r)| (f.clone(), r.first().and_then(|r| r.shard)))
        .collect();
    for (file, reports) in &parts {
        for r in reports {
            for i in &r.images {
                for (m, v) in i.scores.iter().enumerate() {
                    let Some(v) = *v else { continue };
                    let (ok, range) = in_range(m, v);
                    ensure!(
                        ok,
                        "{file}: image '{}' ({}): {} = {v} is not {range}",
                        crate::io::escape_controls(&i.stem),
                        r.method.as_deref().unwrap_or("maps"),
                        super::METRICS[m]
                    );
                }
            }
        }
    }
    check_shards(&shards)?;
    let mut by_method: BTreeMap<Option<String>, (String, Report)> = BTreeMap::new();
    let mut seen: BTreeMap<(Option<String>, String), String> = BTreeMap::new();
    for (file, reports) in parts {
        for r in reports {
            let (owner, entry) = by_method.entry(r.method.clone()).or_insert_with(|| {
                let mut e = Report::new(r.method.clone(), r.settings.clone());
                e.provenance = r.provenance.clone();
                (file.clone(), e)
            });
            if let Some((key, mine, theirs)) = first_difference(&r.settings, &entry.settings, "") {
                bail!(
                    "{file} and {owner} differ in setting '{key}' ({mine} vs {theirs}): \
                     parts of different runs cannot be merged"
                );
            }
            for stem in r
                .images
                .iter()
                .map(|i| &i.stem)
                .chain(r.skipped.iter().map(|s| &s.stem))
            {
                if let Some(prev) = seen.insert((r.method.clone(), stem.clone()), file.clone()) {
                    bail!(
                        "{file}: image '{}' ({}) is also in {prev} (overlapping shards?)",
                        crate::io::escape_controls(stem),
                        r.method.as_deref().unwrap_or("maps")
                    );
                }
            }
            entry.images.extend(r.images);
            entry.skipped.extend(r.skipped);
        }
    }
    let mut out: Vec<Report> = by_method.into_values().map(|(_, r)| r).collect();
    out.iter_mut().for_each(Report::sort);
    Ok(out)
}

pub fn write_json(path: &Path, reports: &[Report]) -> Result<()> {
    let text = serde_json::to_string_pretty(&reports_to_json(reports))?;
    write_atomic(path, |w| {
        w.write_all(text.as_bytes())?;
        w.write_all(b"\n")?;
        Ok(())
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One row per image and method; skipped images have empty scores and a reason.
pub fn write_csv(path: &Path, reports: &[Report]) -> Result<()> {
    let text = csv_text(reports);
    write_atomic(path, |w| {
        w.write_all(text.as_bytes())?;
        Ok(())
    })
}

/// The CSV that [`write_csv`] writes.
pub fn csv_text(reports: &[Report]) -> String {
    let faith = faith_names(reports);
    let extra: String = faith.iter().map(|k| format!(",{k}")).collect();
    let mut text = format!("method,stem,{}{extra},skipped\n", METRICS.join(","));
    for r in reports {
        let method = csv_field(r.method.as_deref().unwrap_or(""));
        for i in &r.images {
            let vals: Vec<String> = i
                .scores
                .iter()
                .map(|v| v.map_or(String::new(), |x| format!("{x}")))
                .chain(faith.iter().map(|k| {
                    i.faith
                        .values
                        .get(k)
                        .map_or(String::new(), |x| format!("{x}"))
                }))
                .collect();
            text += &format!("{method},{},{},\n", csv_field(&i.stem), vals.join(","));
        }
        for s in &r.skipped {
            text += &format!(
                "{method},{},{},{}\n",
                csv_field(&s.stem),
                ",".repeat(5 + faith.len()),
                csv_field(&s.reason)
            );
        }
    }
    text
}

/// The faithfulness value names present in any report, sorted.
pub fn faith_names(reports: &[Report]) -> Vec<String> {
    let mut names: Vec<String> = reports
        .iter()
        .flat_map(|r| r.images.iter().flat_map(|i| i.faith.values.keys().cloned()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Means ± std, one column per method.
pub fn table(reports: &[Report]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["metric".to_string()];
    head.extend(
        reports
            .iter()
            .map(|r| r.method.clone().unwrap_or_else(|| "maps".into())),
    );
    rows.push(head);
    let sums: Vec<Summary> = reports.iter().map(Report::summary).collect();
    let faith = faith_names(reports);
    for (m, name) in METRICS.iter().enumerate() {
        // With faithfulness results, localisation rows nobody has are left out.
        if !faith.is_empty() && sums.iter().all(|s| s.n[m] == 0) {
            continue;
        }
        let mut row = vec![name.to_string()];
        for s in &sums {
            row.push(match (s.mean[m], s.std[m]) {
                (Some(a), Some(b)) => format!("{a:.4} ± {b:.4}"),
                _ => "-".into(),
            });
        }
        rows.push(row);
    }
    let fsums: Vec<FaithSummary> = reports.iter().map(Report::faith_summary).collect();
    for name in &faith {
        let mut row = vec![name.clone()];
        for s in &fsums {
            row.push(match (s.mean.get(name), s.std.get(name)) {
                (Some(a), Some(b)) => format!("{a:.4} ± {b:.4}"),
                _ => "-".into(),
            });
        }
        rows.push(row);
    }
    let mut row = vec!["images scored".to_string()];
    row.extend(reports.iter().map(|r| r.images.len().to_string()));
    rows.push(row);
    let mut row = vec!["skipped".to_string()];
    row.extend(reports.iter().map(|r| r.skipped.len().to_string()));
    rows.push(row);
    let ncol = rows[0].len();
    let widths: Vec<usize> = (0..ncol)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}
