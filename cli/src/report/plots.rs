//! The report's PNG plots (plotters, bitmap backend, the bundled DejaVu Sans Mono font so no
//! system font is needed): per metric, the runs' means with their 95% intervals, and the per-row
//! distribution of each run.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use qie_models::eval::Metric;

use super::tables::Table;
use super::Comparison;

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn register_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| "the bundled plot font does not load".to_string());
    });
    result
}

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// The value range of a plot, padded a little; never empty.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(1e-6);
    (lo - pad, hi + pad)
}

/// `<metric>.png`: one bar per run (the mean) with its 95% interval.
pub fn means_plot(
    c: &Comparison,
    t: &Table,
    j: usize,
    m: Metric,
    path: &Path,
) -> Result<(), String> {
    register_font()?;
    let cells: Vec<_> = t.cells.iter().map(|r| r[j]).collect();
    let (lo, hi) = range(cells.iter().flatten().flat_map(|i| [i.low, i.high, 0.0]));
    let root = BitMapBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = c.runs.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{m}: mean and 95% interval"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0..n).into_segmented(), lo.min(0.0)..hi)
        .map_err(err)?;
    let names: Vec<String> = c.runs.iter().map(|r| r.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, cell) in cells.iter().enumerate() {
        let Some(iv) = cell else { continue };
        let color = COLORS[i % COLORS.len()];
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), iv.mean),
            ],
            color.mix(0.8).filled(),
        );
        bar.set_margin(0, 0, 18, 18);
        chart.draw_series([bar]).map_err(err)?;
        chart
            .draw_series([ErrorBar::new_vertical(
                SegmentValue::CenterOf(i),
                iv.low,
                iv.mean,
                iv.high,
                BLACK.filled(),
                12,
            )])
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// `<metric>_rows.png`: every row's value per run (jittered points) and the run's mean.
pub fn rows_plot(c: &Comparison, m: Metric, path: &Path) -> Result<(), String> {
    register_font()?;
    let per_run: Vec<Vec<f64>> = c.runs.iter().map(|r| r.values(m, None)).collect();
    let (lo, hi) = range(per_run.iter().flatten().copied());
    let root = BitMapBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = c.runs.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{m}: per-row values"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), lo..hi)
        .map_err(err)?;
    let names: Vec<String> = c.runs.iter().map(|r| r.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    for (i, values) in per_run.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // deterministic jitter so identical values stay visible
        let points = values.iter().enumerate().map(|(k, &v)| {
            let jitter = ((k * 2654435761) % 1000) as f64 / 1000.0 * 0.5 - 0.25;
            Circle::new((i as f64 + jitter, v), 2, color.mix(0.6).filled())
        });
        chart.draw_series(points).map_err(err)?;
        if !values.is_empty() {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            chart
                .draw_series([PathElement::new(
                    vec![(i as f64 - 0.35, mean), (i as f64 + 0.35, mean)],
                    BLACK.stroke_width(2),
                )])
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}
