//! `qie data check`'s image-level checks and the dataset summary: decode every image, compare
//! target and inputs, flag extreme aspects and images far below the training area. Rows are
//! checked in parallel; the report keeps file order.

use super::problem::ProblemKind;
use super::rows::BadRow;
use super::sizing::SizeRule;
use super::training::{read_training_rows, TrainRow};
use crate::preprocess::load_rgb;
use crate::ModelError;
use image::RgbImage;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Wider or taller than this (width:height or height:width) is a warning.
pub const MAX_ASPECT: f64 = 4.0;
/// An image with fewer pixels than the training area / this is an error (enlarged > 8x per side).
pub const TOO_SMALL_FACTOR: usize = 64;
/// Fewer pixels than the training area / this is a warning (enlarged > 2x per side).
pub const UPSCALE_FACTOR: usize = 4;
/// Any side shorter than this many pixels is an error whatever the area.
pub const MIN_SIDE: u32 = 8;

/// What one good row looks like, for the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct RowShape {
    pub target: (u32, u32),
    /// Target size after the training resize.
    pub target_train: (u32, u32),
    pub inputs: usize,
    pub prompt_chars: usize,
}

/// Everything `qie data check` reports.
#[derive(Clone, Debug, Default)]
pub struct DataReport {
    pub rows: usize,
    /// Rows with at least one error, one entry per problem.
    pub errors: Vec<BadRow>,
    /// Problems that do not make a row bad.
    pub warnings: Vec<BadRow>,
    /// Rows without errors.
    pub good: Vec<RowShape>,
}

impl DataReport {
    pub fn bad_rows(&self) -> usize {
        let mut rows: Vec<usize> = self.errors.iter().map(|b| b.index).collect();
        rows.dedup();
        rows.len()
    }

    /// The summary `qie data check` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "rows: {} ({} good, {} bad)",
            self.rows,
            self.good.len(),
            self.bad_rows()
        ));
        for (title, list) in [("errors", &self.errors), ("warnings", &self.warnings)] {
            if list.is_empty() {
                continue;
            }
            let mut by_kind: BTreeMap<ProblemKind, usize> = BTreeMap::new();
            for b in list {
                *by_kind.entry(b.kind).or_default() += 1;
            }
            let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
            line(format!("{title}: {}", counts.join(", ")));
            for b in list {
                line(format!("  {b}"));
            }
        }
        if self.good.is_empty() {
            return out;
        }
        line(format!(
            "target sizes: {}",
            histogram(self.good.iter().map(|r| size(r.target)))
        ));
        line(format!(
            "training sizes: {}",
            histogram(self.good.iter().map(|r| size(r.target_train)))
        ));
        line(format!(
            "inputs per row: {}",
            histogram(self.good.iter().map(|r| r.inputs.to_string()))
        ));
        let chars = self.good.iter().map(|r| r.prompt_chars);
        line(format!(
            "prompt length: {}..{} characters",
            chars.clone().min().unwrap_or(0),
            chars.max().unwrap_or(0)
        ));
        out
    }
}

fn size((w, h): (u32, u32)) -> String {
    format!("{w}x{h}")
}

/// "1024x1024 x3, 832x1248 x1": most frequent first, at most 8 entries.
fn histogram(items: impl Iterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in items {
        *counts.entry(i).or_default() += 1;
    }
    let mut sorted: Vec<(String, usize)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let more = sorted.len().saturating_sub(8);
    let mut parts: Vec<String> = sorted
        .into_iter()
        .take(8)
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    if more > 0 {
        parts.push(format!("{more} more"));
    }
    parts.join(", ")
}

/// Reads and checks every row of `path`.
pub fn check_dataset(path: &Path, rule: &SizeRule) -> Result<DataReport, ModelError> {
    let (rows, bad) = read_training_rows(path)?;
    let mut report = DataReport {
        rows: rows.len() + bad.len(),
        ..Default::default()
    };
    report.errors.extend(bad);
    let checked: Vec<(Vec<BadRow>, Option<RowShape>)> =
        rows.par_iter().map(|r| check_row(r, path, rule)).collect();
    for (problems, shape) in checked {
        for p in problems {
            if p.kind.is_error() {
                report.errors.push(p);
            } else {
                report.warnings.push(p);
            }
        }
        report.good.extend(shape);
    }
    report.errors.sort_by_key(|b| b.index);
    Ok(report)
}

/// The image checks of one row; the shape is `None` when the row has an error.
pub fn check_row(
    row: &TrainRow,
    dataset: &Path,
    rule: &SizeRule,
) -> (Vec<BadRow>, Option<RowShape>) {
    let location = match dataset.extension().and_then(|e| e.to_str()) {
        Some("json") => format!("{}[{}]", dataset.display(), row.index),
        _ => format!("{}:{}", dataset.display(), row.line),
    };
    let problem = |kind: ProblemKind, message: String| BadRow {
        index: row.index,
        location: location.clone(),
        line: row.line,
        kind,
        message,
    };
    let mut problems = Vec::new();
    let mut images = Vec::new();
    for (i, path) in row.images().enumerate() {
        let key = if i == 0 {
            "image".to_string()
        } else {
            format!("edit_image {}", i - 1)
        };
        match load_rgb(path) {
            Ok(img) => {
                problems.extend(
                    size_problems(&key, path, &img, rule)
                        .into_iter()
                        .map(|(k, m)| problem(k, m)),
                );
                images.push(Some(img));
            }
            Err(e) => {
                problems.push(problem(
                    ProblemKind::UnreadableImage,
                    format!("`{key}`: {e}"),
                ));
                images.push(None);
            }
        }
    }
    if let Some(Some(target)) = images.first() {
        for (i, input) in images.iter().enumerate().skip(1) {
            let input_path = &row.inputs[i - 1];
            let why = if same_file(&row.target, input_path) {
                Some("is the same file as")
            } else if input.as_ref().is_some_and(|img| img == target) {
                Some("has the same pixels as")
            } else {
                None
            };
            if let Some(why) = why {
                problems.push(problem(
                    ProblemKind::IdenticalInput,
                    format!(
                        "the target {} {why} input {} ({}): were `image` and `edit_image` copied or swapped?",
                        row.target.display(),
                        i - 1,
                        input_path.display()
                    ),
                ));
            }
        }
    }
    let shape = match (problems.iter().any(|p| p.kind.is_error()), images.first()) {
        (false, Some(Some(t))) => Some(RowShape {
            target: t.dimensions(),
            target_train: rule.size_for(t.width(), t.height()),
            inputs: row.inputs.len(),
            prompt_chars: row.prompt.chars().count(),
        }),
        _ => None,
    };
    (problems, shape)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn size_problems(
    key: &str,
    path: &Path,
    img: &RgbImage,
    rule: &SizeRule,
) -> Vec<(ProblemKind, String)> {
    let (w, h) = img.dimensions();
    let pixels = w as usize * h as usize;
    let area = rule.effective_area();
    let name = format!("`{key}` {} ({w}x{h})", path.display());
    let mut out = Vec::new();
    if w.min(h) < MIN_SIDE || pixels * TOO_SMALL_FACTOR < area {
        out.push((
            ProblemKind::TooSmall,
            format!(
                "{name} is too small: training resizes it to {} (more than 8x per side)",
                size(rule.size_for(w, h))
            ),
        ));
    } else if pixels * UPSCALE_FACTOR < area {
        out.push((
            ProblemKind::Upscaled,
            format!(
                "{name} is enlarged to {} for training (more than 2x per side)",
                size(rule.size_for(w, h))
            ),
        ));
    }
    let aspect = w.max(h) as f64 / w.min(h).max(1) as f64;
    if aspect > MAX_ASPECT {
        out.push((
            ProblemKind::ExtremeAspect,
            format!(
                "{name} has an aspect ratio of {aspect:.1}:1 (more than {MAX_ASPECT}:1); trained at {}",
                size(rule.size_for(w, h))
            ),
        ));
    }
    out
}
