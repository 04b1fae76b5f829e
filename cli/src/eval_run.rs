//! What `qie eval` and `qie compare` share: choosing the metrics, loading their models once,
//! scoring every row of a run with a progress bar, and reading a run's eval.json back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use qie_models::data::DatasetRow;
use qie_models::eval::{
    add_embedding_metric, add_text_metric, score_row, EncoderKind, EvalSettings, ImageEncoder,
    Metric, RowProblem, RowScore, TextEncoder,
};
use qie_models::{ModelOptions, WeightPrecision};
use serde_json::Value;

/// The model folders and device of the model metrics.
pub struct ModelArgs<'a> {
    pub dino: Option<&'a Path>,
    pub clip: Option<&'a Path>,
    pub device: &'a str,
    pub batch_size: usize,
}

/// `--metrics`, or the pixel metrics plus those whose model is given; a model metric without
/// its model is an error.
pub fn chosen_metrics(list: Option<&str>, m: &ModelArgs) -> Result<Vec<Metric>, String> {
    let metrics = match list {
        Some(list) => Metric::parse_list(list).map_err(|e| e.to_string())?,
        None => {
            let mut v = Metric::PIXEL.to_vec();
            if m.dino.is_some() {
                v.push(Metric::Dino);
            }
            if m.clip.is_some() {
                v.push(Metric::ClipI);
                v.push(Metric::ClipT);
            }
            v
        }
    };
    for metric in &metrics {
        let (given, flag) = match metric {
            Metric::Dino => (m.dino.is_some(), "--dino-model"),
            Metric::ClipI | Metric::ClipT => (m.clip.is_some(), "--clip-model"),
            _ => continue,
        };
        if !given {
            return Err(format!("metric {metric} needs {flag} DIR"));
        }
    }
    if m.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    Ok(metrics)
}

/// The models of the model metrics, loaded once.
#[derive(Default)]
pub struct Models {
    pub dino: Option<ImageEncoder>,
    /// CLIP's vision tower (clip_i, clip_t).
    pub clip: Option<ImageEncoder>,
    /// CLIP's text tower (clip_t).
    pub clip_text: Option<TextEncoder>,
}

/// Loads the models the metrics need, once, on the device (f32).
pub fn load_encoders(m: &ModelArgs, metrics: &[Metric]) -> Result<Models, String> {
    let wants = |x: Metric| metrics.contains(&x);
    if !metrics.iter().any(|x| x.needs_model()) {
        return Ok(Models::default());
    }
    let backend = crate::cmd_forward::make_backend(m.device, crate::cmd_forward::DTypeArg::F32)?;
    let options = ModelOptions {
        precision: WeightPrecision::F32,
        backend,
        ..ModelOptions::default()
    };
    let mut models = Models::default();
    if let (true, Some(dir)) = (wants(Metric::Dino), m.dino) {
        models.dino = Some(
            ImageEncoder::load(dir, EncoderKind::Dino, &options)
                .map_err(|e| format!("--dino-model: {e}"))?,
        );
    }
    if let (true, Some(dir)) = (wants(Metric::ClipI) || wants(Metric::ClipT), m.clip) {
        models.clip = Some(
            ImageEncoder::load(dir, EncoderKind::Clip, &options)
                .map_err(|e| format!("--clip-model: {e}"))?,
        );
    }
    if let (true, Some(dir)) = (wants(Metric::ClipT), m.clip) {
        models.clip_text =
            Some(TextEncoder::load(dir, &options).map_err(|e| format!("--clip-model: {e}"))?);
    }
    Ok(models)
}

pub struct Evaluation {
    pub scored: Vec<RowScore>,
    pub problems: Vec<RowProblem>,
}

/// Scores every row (pixel metrics), then adds each encoder's metric; `label` names the run on
/// the progress bar.
pub fn evaluate(
    rows: &[DatasetRow],
    settings: &EvalSettings,
    models: &Models,
    batch_size: usize,
    label: &str,
) -> Result<Evaluation, String> {
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows {msg} [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    bar.set_message(label.to_string());
    let mut scored = Vec::new();
    let mut problems = Vec::new();
    for row in rows {
        match score_row(row, settings) {
            Ok(s) => scored.push(s),
            Err(p) => problems.push(p),
        }
        bar.inc(1);
    }
    warn_shared_files(&scored);
    let image_metrics = [(Metric::Dino, &models.dino), (Metric::ClipI, &models.clip)];
    for (metric, encoder) in image_metrics {
        let Some(encoder) = encoder
            .as_ref()
            .filter(|_| settings.metrics.contains(&metric))
        else {
            continue;
        };
        bar.set_position(0);
        bar.set_length(scored.len() as u64);
        bar.set_message(format!("{label} {metric} on {}", encoder.backend_name()));
        let failed = add_embedding_metric(&mut scored, metric, encoder, batch_size, &mut |n| {
            bar.inc(n as u64)
        })
        .map_err(|e| format!("{metric}: {e}"))?;
        problems.extend(failed);
    }
    if let (Some(image), Some(text), true) = (
        &models.clip,
        &models.clip_text,
        settings.metrics.contains(&Metric::ClipT),
    ) {
        // MagicBrush scores the result against its caption; without one, the instruction
        let texts: HashMap<usize, String> = rows
            .iter()
            .map(|r| {
                (
                    r.index,
                    r.output_caption.clone().unwrap_or_else(|| r.prompt.clone()),
                )
            })
            .filter(|(_, t)| !t.is_empty())
            .collect();
        bar.set_position(0);
        bar.set_length(scored.len() as u64);
        bar.set_message(format!("{label} clip_t on {}", image.backend_name()));
        let failed = add_text_metric(&mut scored, &texts, image, text, batch_size, &mut |n| {
            bar.inc(n as u64)
        })
        .map_err(|e| format!("clip_t: {e}"))?;
        problems.extend(failed);
    }
    bar.finish_and_clear();
    Ok(Evaluation { scored, problems })
}

/// Two rows scored with the same prediction (or ground truth) file usually means a name
/// template or `--gt-dir` that drops what tells them apart: say so.
fn warn_shared_files(scored: &[RowScore]) {
    for (what, path) in [("prediction", 0), ("ground truth", 1)] {
        let mut seen: BTreeMap<&Path, usize> = BTreeMap::new();
        for r in scored {
            let p = if path == 0 { &r.pred } else { &r.gt };
            if let Some(first) = seen.insert(p.as_path(), r.index) {
                eprintln!(
                    "warning: rows {first} and {} are scored with the same {what} file {}",
                    r.index,
                    p.display()
                );
            }
        }
    }
}

/// What an existing eval.json must have been made with to be reused.
pub struct Reuse<'a> {
    pub dataset: &'a Path,
    pub pred_dir: &'a Path,
    pub metrics: &'a [Metric],
    pub mask_invert: bool,
    pub models: &'a ModelArgs<'a>,
}

/// Whether a settings path names the same file as `want` (both resolved; relative paths of the
/// report are relative to the directory `qie eval` ran in, so an unresolvable one never matches).
fn same_file(setting: &Value, want: Option<&Path>) -> bool {
    match (setting.as_str(), want) {
        (None, None) => true,
        (Some(s), Some(w)) => std::fs::canonicalize(s)
            .ok()
            .zip(std::fs::canonicalize(w).ok())
            .is_some_and(|(a, b)| a == b),
        _ => false,
    }
}

/// The rows of an eval.json written by `qie eval` with the settings `r` asks for (dataset,
/// predictions folder, mask handling, models, every metric); `None` when the file is absent,
/// unreadable or was made otherwise.
pub fn read_eval_json(path: &Path, r: &Reuse) -> Option<(Vec<RowScore>, usize)> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let s = &v["settings"];
    let has: Vec<&str> = s["metrics"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let uses = |m: Metric| r.metrics.contains(&m);
    let matches = same_file(&s["dataset"], Some(r.dataset))
        && same_file(&s["pred_dir"], Some(r.pred_dir))
        && s["gt_dir"].is_null()
        && s["pred_name"].is_null()
        && s["mask_invert"].as_bool() == Some(r.mask_invert)
        && s["mask_mode"].as_str() == Some("select")
        && (!uses(Metric::Dino) || same_file(&s["dino_model"], r.models.dino))
        && (!(uses(Metric::ClipI) || uses(Metric::ClipT))
            || same_file(&s["clip_model"], r.models.clip))
        && r.metrics.iter().all(|m| has.contains(&m.name()));
    if !matches {
        return None;
    }
    let r_metrics = r.metrics;
    let mut rows = Vec::new();
    for row in v["rows"].as_array()? {
        let mut values = BTreeMap::new();
        for m in r_metrics {
            if let Some(x) = row.get(m.name()) {
                values.insert(*m, x.as_f64());
            }
        }
        rows.push(RowScore {
            index: row["index"].as_u64()? as usize,
            pred: PathBuf::from(row["pred"].as_str()?),
            gt: PathBuf::from(row["gt"].as_str()?),
            values,
        });
    }
    // rows without a score (missing files, bad dataset rows), as a fresh evaluation counts them
    let unscored = ["prediction", "ground truth", "mask"];
    let missing = v["missing"].as_array().map_or(0, |m| {
        m.iter()
            .filter(|p| unscored.iter().any(|w| p["what"] == *w))
            .count()
    });
    Some((rows, missing))
}
