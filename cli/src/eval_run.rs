//! What `qie eval` and `qie compare` share: choosing the metrics, loading their models once,
//! scoring every row of a run with a progress bar, and reading a run's eval.json back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qie_models::data::DatasetRow;
use qie_models::eval::{
    add_embedding_metric, add_text_metric, score_row, EncoderKind, EvalSettings, ImageEncoder,
    Metric, PredEmbeddings, RowProblem, RowScore, TextEncoder,
};
use qie_models::hub::resolve_transformers_folder;
use qie_models::{ModelOptions, WeightPrecision};
use rayon::prelude::*;
use serde_json::Value;

/// The model flags `qie eval` and `qie compare` share: a transformers folder or a hub id each.
#[derive(Args, Clone, Debug)]
pub struct ModelFlags {
    /// DINO model for `dino`: a transformers ViTModel folder or hub id (e.g.
    /// facebook/dino-vits16).
    #[arg(long)]
    pub dino_model: Option<String>,
    /// DINOv2 model for `dinov2`: a Dinov2Model folder or hub id (e.g. facebook/dinov2-base).
    #[arg(long)]
    pub dinov2_model: Option<String>,
    /// CLIP model for `clip_i` and `clip_t`: a CLIPModel folder or hub id (e.g.
    /// openai/clip-vit-base-patch32).
    #[arg(long)]
    pub clip_model: Option<String>,
    /// SigLIP model for `siglip`: a SiglipModel folder or hub id (e.g.
    /// google/siglip-so400m-patch14-384).
    #[arg(long)]
    pub siglip_model: Option<String>,
    /// DreamSim ensemble for `dreamsim`: the folder `dreamsim(cache_dir=...)` downloads
    /// (ensemble_lora/, the three ViT-B/16 checkpoints), read as it is.
    #[arg(long)]
    pub dreamsim_model: Option<String>,
    /// Device the models run on: cpu, cuda or cuda:N (f32).
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Images per forward pass of a model.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

/// Every encoder, in the order the metrics run.
const KINDS: [EncoderKind; 5] = [
    EncoderKind::Dino,
    EncoderKind::Dinov2,
    EncoderKind::Clip,
    EncoderKind::Siglip,
    EncoderKind::DreamSim,
];

/// The command-line flag naming `kind`'s model.
pub fn flag(kind: EncoderKind) -> &'static str {
    match kind {
        EncoderKind::Dino => "--dino-model",
        EncoderKind::Dinov2 => "--dinov2-model",
        EncoderKind::Clip => "--clip-model",
        EncoderKind::Siglip => "--siglip-model",
        EncoderKind::DreamSim => "--dreamsim-model",
    }
}

/// The eval.json settings key of `kind`'s model folder.
pub fn settings_key(kind: EncoderKind) -> &'static str {
    match kind {
        EncoderKind::Dino => "dino_model",
        EncoderKind::Dinov2 => "dinov2_model",
        EncoderKind::Clip => "clip_model",
        EncoderKind::Siglip => "siglip_model",
        EncoderKind::DreamSim => "dreamsim_model",
    }
}

impl ModelFlags {
    fn given(&self, kind: EncoderKind) -> Option<&str> {
        match kind {
            EncoderKind::Dino => self.dino_model.as_deref(),
            EncoderKind::Dinov2 => self.dinov2_model.as_deref(),
            EncoderKind::Clip => self.clip_model.as_deref(),
            EncoderKind::Siglip => self.siglip_model.as_deref(),
            EncoderKind::DreamSim => self.dreamsim_model.as_deref(),
        }
    }
}

/// The model folders (hub ids resolved) of the chosen metrics, and where they run.
pub struct ModelArgs {
    pub dirs: BTreeMap<EncoderKind, PathBuf>,
    pub device: String,
}

impl ModelArgs {
    /// Resolves the folders of the encoders `metrics` use (hub ids through the HF cache).
    pub fn resolve(flags: &ModelFlags, metrics: &[Metric]) -> Result<ModelArgs, String> {
        let mut dirs = BTreeMap::new();
        for kind in KINDS {
            if !metrics.iter().any(|m| m.encoder() == Some(kind)) {
                continue;
            }
            if let Some(spec) = flags.given(kind) {
                let dir = match kind {
                    // DreamSim's checkpoints are GitHub release files, not a hub repository
                    EncoderKind::DreamSim => PathBuf::from(spec),
                    _ => {
                        resolve_transformers_folder(flag(kind), spec).map_err(|e| e.to_string())?
                    }
                };
                dirs.insert(kind, dir);
            }
        }
        Ok(ModelArgs {
            dirs,
            device: flags.device.clone(),
        })
    }

    pub fn dir(&self, kind: EncoderKind) -> Option<&Path> {
        self.dirs.get(&kind).map(PathBuf::as_path)
    }
}

/// `--metrics`, or the pixel metrics plus those whose model is given; a model metric without
/// its model is an error.
pub fn chosen_metrics(list: Option<&str>, flags: &ModelFlags) -> Result<Vec<Metric>, String> {
    let metrics = match list {
        Some(list) => Metric::parse_list(list).map_err(|e| e.to_string())?,
        None => Metric::ALL
            .into_iter()
            .filter(|m| m.encoder().is_none_or(|k| flags.given(k).is_some()))
            .collect(),
    };
    for metric in &metrics {
        if let Some(kind) = metric.encoder() {
            if flags.given(kind).is_none() {
                return Err(format!("metric {metric} needs {} DIR", flag(kind)));
            }
        }
    }
    if flags.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    Ok(metrics)
}

/// The models of the model metrics, loaded once.
#[derive(Default)]
pub struct Models {
    /// The image encoders (CLIP's vision tower serves clip_i and clip_t).
    pub image: BTreeMap<EncoderKind, ImageEncoder>,
    /// CLIP's text tower (clip_t).
    pub clip_text: Option<TextEncoder>,
}

/// Loads the models the metrics need, once, on the device (f32).
pub fn load_encoders(m: &ModelArgs, metrics: &[Metric]) -> Result<Models, String> {
    if !metrics.iter().any(|x| x.needs_model()) {
        return Ok(Models::default());
    }
    let backend = crate::cmd_forward::make_backend(&m.device, crate::cmd_forward::DTypeArg::F32)?;
    let options = ModelOptions {
        precision: WeightPrecision::F32,
        backend,
        ..ModelOptions::default()
    };
    let mut models = Models::default();
    for (&kind, dir) in &m.dirs {
        let encoder =
            ImageEncoder::load(dir, kind, &options).map_err(|e| format!("{}: {e}", flag(kind)))?;
        models.image.insert(kind, encoder);
    }
    if let (true, Some(dir)) = (metrics.contains(&Metric::ClipT), m.dir(EncoderKind::Clip)) {
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
    // rows are independent: decode and score them on every core (order kept)
    let results: Vec<_> = rows
        .par_iter()
        .map(|row| {
            let r = score_row(row, settings);
            bar.inc(1);
            r
        })
        .collect();
    for r in results {
        match r {
            Ok(s) => scored.push(s),
            Err(p) => problems.push(p),
        }
    }
    warn_shared_files(&scored);
    // every image-embedding metric; clip_t follows, with the text tower
    let image_metrics = Metric::ALL
        .into_iter()
        .filter(|m| m.needs_model() && *m != Metric::ClipT);
    let mut clip_preds = PredEmbeddings::new();
    for metric in image_metrics {
        let Some(encoder) = metric
            .encoder()
            .and_then(|k| models.image.get(&k))
            .filter(|_| settings.metrics.contains(&metric))
        else {
            continue;
        };
        bar.set_position(0);
        bar.set_length(scored.len() as u64);
        bar.set_message(format!("{label} {metric} on {}", encoder.backend_name()));
        let (failed, preds) =
            add_embedding_metric(&mut scored, metric, encoder, batch_size, &mut |n| {
                bar.inc(n as u64)
            })
            .map_err(|e| format!("{metric}: {e}"))?;
        problems.extend(failed);
        if metric == Metric::ClipI {
            clip_preds = preds;
        }
    }
    if let (Some(image), Some(text), true) = (
        models.image.get(&EncoderKind::Clip),
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
        let known = &clip_preds;
        let failed = add_text_metric(
            &mut scored,
            &texts,
            image,
            text,
            known,
            batch_size,
            &mut |n| bar.inc(n as u64),
        )
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
    pub models: &'a ModelArgs,
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
    let matches = same_file(&s["dataset"], Some(r.dataset))
        && same_file(&s["pred_dir"], Some(r.pred_dir))
        && s["gt_dir"].is_null()
        && s["pred_name"].is_null()
        && s["mask_invert"].as_bool() == Some(r.mask_invert)
        && s["mask_mode"].as_str() == Some("select")
        && KINDS.iter().all(|&k| {
            !r.metrics.iter().any(|m| m.encoder() == Some(k))
                || same_file(&s[settings_key(k)], r.models.dir(k))
        })
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
