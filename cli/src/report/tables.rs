//! The summary table (mean with a 95% bootstrap interval per run and metric, the best run per
//! metric marked) and its breakdown by a row field, as data and as Markdown / CSV.

use std::collections::BTreeMap;

use qie_models::eval::bootstrap::{bootstrap_mean, Interval, RESAMPLES};
use qie_models::eval::Metric;

use super::Comparison;

/// Bootstrap seed: fixed, so the same inputs give the same report.
const SEED: u64 = 0x5eed_2026;

/// One table: a cell per (run, metric), `None` where the run has no value of the metric.
pub struct Table {
    /// The group value this table covers (`None`: every row).
    pub group: Option<String>,
    pub rows: usize,
    pub cells: Vec<Vec<Option<Interval>>>,
    /// Per metric, the index of the best run (ties: the first).
    pub best: Vec<Option<usize>>,
}

pub fn summary(c: &Comparison, indices: Option<&[usize]>, group: Option<String>) -> Table {
    let cells: Vec<Vec<Option<Interval>>> = c
        .runs
        .iter()
        .map(|run| {
            c.metrics
                .iter()
                .map(|&m| bootstrap_mean(&run.values(m, indices), RESAMPLES, SEED))
                .collect()
        })
        .collect();
    let best = c
        .metrics
        .iter()
        .enumerate()
        .map(|(j, m)| best_run(cells.iter().map(|r| r[j].map(|i| i.mean)), *m))
        .collect();
    Table {
        group,
        rows: indices.map_or(c.rows.len(), <[usize]>::len),
        cells,
        best,
    }
}

fn best_run(means: impl Iterator<Item = Option<f64>>, m: Metric) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, v) in means.enumerate() {
        let Some(v) = v.filter(|v| v.is_finite()) else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, b)) if m.higher_is_better() => v > b,
            Some((_, b)) => v < b,
        };
        if better {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// The overall table, then one per value of the group field (in sorted order).
pub fn all_tables(c: &Comparison) -> Vec<Table> {
    let mut tables = vec![summary(c, None, None)];
    if c.group_by.is_some() {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for r in &c.rows {
            let g = r.group.clone().unwrap_or_else(|| "(none)".into());
            groups.entry(g).or_default().push(r.index);
        }
        for (g, ix) in groups {
            tables.push(summary(c, Some(&ix), Some(g)));
        }
    }
    tables
}

pub fn cell_text(i: &Option<Interval>) -> String {
    match i {
        Some(i) => format!("{:.4} [{:.4}, {:.4}]", i.mean, i.low, i.high),
        None => "—".into(),
    }
}

pub fn markdown(c: &Comparison, tables: &[Table]) -> String {
    let mut out = String::from("# qie compare\n\n");
    out.push_str("Mean [95% bootstrap interval]; **bold** = best run per metric.\n");
    for t in tables {
        match &t.group {
            None => out.push_str(&format!("\n## All rows ({})\n\n", t.rows)),
            Some(g) => out.push_str(&format!(
                "\n## {} = {g} ({} rows)\n\n",
                c.group_by.as_deref().unwrap_or(""),
                t.rows
            )),
        }
        out.push_str("| run |");
        for m in &c.metrics {
            out.push_str(&format!(" {m} |"));
        }
        out.push_str("\n| --- |");
        out.push_str(&" --- |".repeat(c.metrics.len()));
        out.push('\n');
        for (i, run) in c.runs.iter().enumerate() {
            out.push_str(&format!("| {} |", run.name));
            for (j, cell) in t.cells[i].iter().enumerate() {
                let text = cell_text(cell);
                if t.best[j] == Some(i) {
                    out.push_str(&format!(" **{text}** |"));
                } else {
                    out.push_str(&format!(" {text} |"));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// One line per (group, run, metric): group,run,metric,mean,low,high,n,best.
pub fn csv(c: &Comparison, tables: &[Table]) -> String {
    let mut out = String::from("group,run,metric,mean,low,high,n,best\n");
    for t in tables {
        for (i, run) in c.runs.iter().enumerate() {
            for (j, m) in c.metrics.iter().enumerate() {
                let Some(cell) = t.cells[i][j] else { continue };
                out.push_str(&format!(
                    "{},{},{m},{},{},{},{},{}\n",
                    csv_field(t.group.as_deref().unwrap_or("all")),
                    csv_field(&run.name),
                    cell.mean,
                    cell.low,
                    cell.high,
                    cell.n,
                    t.best[j] == Some(i)
                ));
            }
        }
    }
    out
}

pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
