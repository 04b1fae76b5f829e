//! Scoring one dataset row: find its files, load them, and compute the requested metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::mask::load_background;
use super::metric::Metric;
use super::naming::{ground_truth, prediction_candidates, NameTemplate};
use super::pixels::{match_size, pixel_scores, PixelScores, Region, WholeSsim};
use crate::data::rows::DatasetRow;
use crate::preprocess::image_io::load_rgb;

/// How background metrics use the mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskMode {
    /// Only background pixels count (the default).
    Select,
    /// PIE-Bench: both images times the 0/1 mask, averaged over the whole image.
    Multiply,
}

impl MaskMode {
    pub fn name(self) -> &'static str {
        match self {
            MaskMode::Select => "select",
            MaskMode::Multiply => "multiply",
        }
    }
}

#[derive(Clone, Debug)]
pub struct EvalSettings {
    pub metrics: Vec<Metric>,
    pub pred_dir: PathBuf,
    pub gt_dir: Option<PathBuf>,
    pub pred_name: Option<NameTemplate>,
    pub mask_invert: bool,
    pub mask_mode: MaskMode,
}

/// The scores of one row. A metric maps to `None` where it is undefined for this pair (PSNR of
/// identical images, SSIM below the window size, an empty background); background metrics are
/// absent for rows without `back_mask`.
#[derive(Clone, Debug, PartialEq)]
pub struct RowScore {
    pub index: usize,
    pub pred: PathBuf,
    pub gt: PathBuf,
    pub values: BTreeMap<Metric, Option<f64>>,
}

/// A row that could not be scored, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct RowProblem {
    pub index: usize,
    /// "prediction", "ground truth" or "mask".
    pub what: &'static str,
    pub path: PathBuf,
    pub message: String,
}

pub fn score_row(row: &DatasetRow, s: &EvalSettings) -> Result<RowScore, RowProblem> {
    let problem = |what, path: &PathBuf, message: String| RowProblem {
        index: row.index,
        what,
        path: path.clone(),
        message,
    };
    let gt_path = ground_truth(row, s.gt_dir.as_deref()).ok_or_else(|| RowProblem {
        index: row.index,
        what: "ground truth",
        path: PathBuf::new(),
        message: "the row names no ground truth (`ref_gt` or `image`)".into(),
    })?;
    let tried = prediction_candidates(row, &gt_path, &s.pred_dir, s.pred_name.as_ref());
    let pred_path = tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        problem(
            "prediction",
            &tried[0],
            format!("no prediction file (tried {})", list.join(", ")),
        )
    })?;
    let gt = load_rgb(&gt_path).map_err(|e| problem("ground truth", &gt_path, e.to_string()))?;
    let pred =
        load_rgb(&pred_path).map_err(|e| problem("prediction", &pred_path, e.to_string()))?;
    let pred = match_size(&pred, &gt);
    let mut values = BTreeMap::new();
    let wants_ssim = s.metrics.contains(&Metric::Ssim) || s.metrics.contains(&Metric::BgSsim);
    let ssim = WholeSsim::new(&pred, &gt);
    let ssim = wants_ssim.then_some(&ssim);
    if s.metrics
        .iter()
        .any(|m| !m.is_background() && !m.needs_model())
    {
        let whole = pixel_scores(&pred, &gt, Region::Whole, ssim);
        put(&mut values, &s.metrics, whole, false);
    }
    if let Some(mask_path) = row
        .back_mask
        .as_ref()
        .filter(|_| s.metrics.iter().any(|m| m.is_background()))
    {
        let bg = load_background(mask_path, gt.width(), gt.height(), s.mask_invert)
            .map_err(|e| problem("mask", mask_path, e.to_string()))?;
        let region = match s.mask_mode {
            MaskMode::Select => Region::Select(&bg),
            MaskMode::Multiply => Region::Multiply(&bg),
        };
        put(
            &mut values,
            &s.metrics,
            pixel_scores(&pred, &gt, region, ssim),
            true,
        );
    }
    Ok(RowScore {
        index: row.index,
        pred: pred_path,
        gt: gt_path,
        values,
    })
}

fn put(out: &mut BTreeMap<Metric, Option<f64>>, wanted: &[Metric], p: PixelScores, bg: bool) {
    let pairs = if bg {
        [
            (Metric::BgL1, p.l1),
            (Metric::BgL2, p.l2),
            (Metric::BgPsnr, p.psnr),
            (Metric::BgSsim, p.ssim),
        ]
    } else {
        [
            (Metric::L1, p.l1),
            (Metric::L2, p.l2),
            (Metric::Psnr, p.psnr),
            (Metric::Ssim, p.ssim),
        ]
    };
    for (m, v) in pairs {
        if wanted.contains(&m) {
            out.insert(m, v);
        }
    }
}
