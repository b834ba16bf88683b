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
    pub scores: Scores,
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
    /// Settings the scores depend on (top_k, ties, void); merge refuses to mix them.
    pub settings: Value,
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
        json!({
            "method": self.method,
            "settings": self.settings,
            "images": images,
            "mean": per(&s.mean),
            "std": per(&s.std),
            "count": self.images.len(),
            "n": n,
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
                Ok(ImageScore { stem, scores })
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
        Ok(Report {
            method: v["method"].as_str().map(str::to_string),
            images,
            skipped,
            settings: v.get("settings").cloned().unwrap_or(Value::Null),
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

/// Recombines shard reports: per method, images and skipped entries are pooled (an image in
/// two shards is an error), then sorted by stem, so the means equal those of one run.
pub fn merge(parts: Vec<(String, Vec<Report>)>) -> Result<Vec<Report>> {
    let mut by_method: BTreeMap<Option<String>, Report> = BTreeMap::new();
    let mut seen: BTreeMap<(Option<String>, String), String> = BTreeMap::new();
    for (file, reports) in parts {
        for r in reports {
            let entry = by_method
                .entry(r.method.clone())
                .or_insert_with(|| Report::new(r.method.clone(), r.settings.clone()));
            ensure!(
                entry.settings == r.settings,
                "{file}: settings {} differ from another part's {}",
                r.settings,
                entry.settings
            );
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
    let mut out: Vec<Report> = by_method.into_values().collect();
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
    let mut text = format!("method,stem,{},skipped\n", METRICS.join(","));
    for r in reports {
        let method = csv_field(r.method.as_deref().unwrap_or(""));
        for i in &r.images {
            let vals: Vec<String> = i
                .scores
                .iter()
                .map(|v| v.map_or(String::new(), |x| format!("{x}")))
                .collect();
            text += &format!("{method},{},{},\n", csv_field(&i.stem), vals.join(","));
        }
        for s in &r.skipped {
            text += &format!(
                "{method},{},{},{}\n",
                csv_field(&s.stem),
                ",".repeat(5),
                csv_field(&s.reason)
            );
        }
    }
    write_atomic(path, |w| {
        w.write_all(text.as_bytes())?;
        Ok(())
    })
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
    for (m, name) in METRICS.iter().enumerate() {
        let mut row = vec![name.to_string()];
        for s in &sums {
            row.push(match (s.mean[m], s.std[m]) {
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
