//! The `qie compare` report: one evaluation per run, aligned by dataset row, written as
//! `index.html` (self-contained and offline: inline CSS / JS, images and plots next to it),
//! `summary.md` and `summary.csv`.

pub mod gallery;
pub mod html;
pub mod plots;
pub mod tables;

use std::collections::BTreeMap;

use qie_models::eval::{Metric, RowScore};

/// One compared run: its name and its scored rows (by dataset row index).
pub struct RunScores {
    pub name: String,
    pub rows: BTreeMap<usize, RowScore>,
    /// Rows this run could not score (missing predictions, ...).
    pub missing: usize,
}

impl RunScores {
    /// The defined values of `metric`, over `indices` where given.
    pub fn values(&self, metric: Metric, indices: Option<&[usize]>) -> Vec<f64> {
        let get = |r: &RowScore| r.values.get(&metric).copied().flatten();
        match indices {
            None => self.rows.values().filter_map(get).collect(),
            Some(ix) => ix
                .iter()
                .filter_map(|i| self.rows.get(i).and_then(get))
                .collect(),
        }
    }
}

/// Everything the report shows.
pub struct Comparison {
    pub runs: Vec<RunScores>,
    pub metrics: Vec<Metric>,
    /// Per dataset row: index, prompt, input images, ground truth, and the group value.
    pub rows: Vec<ReportRow>,
    /// The field the breakdown groups by, if any.
    pub group_by: Option<String>,
}

pub struct ReportRow {
    pub index: usize,
    pub prompt: String,
    pub inputs: Vec<std::path::PathBuf>,
    pub gt: Option<std::path::PathBuf>,
    pub group: Option<String>,
}
