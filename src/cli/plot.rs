//! `eval --plot DIR`: the mean faithfulness curves of every method as PNG line plots
//! (plotters, text in the bundled DejaVu Sans): `pixel_flipping.png`,
//! `region_perturbation.png`, `road.png` (MoRF and LeRF), `mprt_spearman.png`,
//! `mprt_ssim.png`, each written atomically.

use crate::eval::faithfulness::Road;
use crate::eval::report::Report;
use crate::io::{write_png, RgbImage, Shown};
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../io/font/DejaVuSans.ttf");
static REGISTER: Once = Once::new();
const SIZE: (u32, u32) = (800, 520);

fn register_font() {
    REGISTER.call_once(|| {
        // The font is bundled and known to parse; a failure would only lose the text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// One line of a plot.
pub(crate) struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// Palette index (one per method).
    pub color: usize,
    pub dashed: bool,
}

/// Writes the mean curves of `reports` into `dir` (created if needed). Plots with no data
/// are not written.
pub(crate) fn write_plots(dir: &Path, reports: &[Report], score: &str) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the plot directory", dir.shown()))?;
    let summaries: Vec<(String, _)> = reports
        .iter()
        .map(|r| {
            (
                r.method.clone().unwrap_or_else(|| "maps".into()),
                r.faith_summary(),
            )
        })
        .collect();
    let score = format!("score ({score})");
    let pct = Road::default().percentages;
    let step = |c: &[f64]| -> Vec<(f64, f64)> {
        c.iter()
            .enumerate()
            .map(|(i, &v)| ((i + 1) as f64, v))
            .collect()
    };
    // (file, title, x label, y label, [(curve, label suffix)])
    type Plot<'a> = (&'a str, &'a str, &'a str, String, Vec<(&'a str, &'a str)>);
    let plots: [Plot; 5] = [
        (
            "pixel_flipping",
            "Pixel-Flipping (mean curve)",
            "step (most relevant features replaced first)",
            score.clone(),
            vec![("pixel_flipping", "")],
        ),
        (
            "region_perturbation",
            "Region Perturbation (mean curve)",
            "patches replaced",
            format!("{score} drop f(x) - f(x_k)"),
            vec![("region_perturbation", "")],
        ),
        (
            "road",
            "ROAD: noisy linear imputation (mean curves)",
            "% of pixels imputed",
            score.clone(),
            vec![("road_morf", " MoRF"), ("road_lerf", " LeRF")],
        ),
        (
            "mprt_spearman",
            "MPRT: Spearman rank correlation with the original map",
            "convs randomised (top-down from the explained stage to the stem)",
            "Spearman r".into(),
            vec![("mprt_spearman", "")],
        ),
        (
            "mprt_ssim",
            "MPRT: SSIM with the original map",
            "convs randomised (top-down from the explained stage to the stem)",
            "SSIM".into(),
            vec![("mprt_ssim", "")],
        ),
    ];
    for (file, title, xlabel, ylabel, curves) in plots {
        let mut series = Vec::new();
        for (color, (method, s)) in summaries.iter().enumerate() {
            for (k, (key, suffix)) in curves.iter().enumerate() {
                let Some(c) = s.curves.get(*key) else {
                    continue;
                };
                let points = if file == "road" {
                    pct.iter().copied().zip(c.iter().copied()).collect()
                } else {
                    step(c)
                };
                series.push(Series {
                    label: format!("{method}{suffix}"),
                    points,
                    color,
                    dashed: k == 1,
                });
            }
        }
        if series.is_empty() {
            continue;
        }
        let path = dir.join(format!("{file}.png"));
        line_plot(&path, title, xlabel, &ylabel, &series)
            .with_context(|| format!("{}: cannot write the plot", path.shown()))?;
    }
    Ok(())
}

/// A line plot of `series` as a PNG.
pub(crate) fn line_plot(
    path: &Path,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[Series],
) -> Result<()> {
    register_font();
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 <= 0.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let (y0, y1) = (y0 - pad, y1 + pad);
    let mut buf = vec![255u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let err = |e: &dyn std::fmt::Debug| anyhow!("plotting: {e:?}");
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(xlabel)
            .y_desc(ylabel)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| err(&e))?;
        for s in series {
            let color = Palette99::pick(s.color).to_rgba();
            let pts = s.points.iter().copied();
            let drawn = if s.dashed {
                chart.draw_series(DashedLineSeries::new(pts, 6, 4, color.stroke_width(2)))
            } else {
                chart.draw_series(LineSeries::new(pts, color.stroke_width(2)))
            };
            let dashed = s.dashed;
            drawn
                .map_err(|e| err(&e))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    let end = if dashed { x + 10 } else { x + 22 };
                    PathElement::new(vec![(x, y), (end, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    let img = RgbImage::from_raw(SIZE.0, SIZE.1, buf).context("plot buffer size")?;
    write_png(path, &img)
}
