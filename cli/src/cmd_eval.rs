//! `qie eval`: scores a folder of predictions against a dataset's ground truth and writes
//! `eval.json` + `eval.csv`, printing the summary table. A row whose prediction (or ground
//! truth, or mask) is missing or unreadable is listed under `missing` and counted; the run goes
//! on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use qie_models::data::read_eval_rows;
use qie_models::eval::{
    summarize, EvalSettings, MaskMode, Metric, NameTemplate, RowProblem, RowScore, Stats,
};

use crate::eval_run::{
    chosen_metrics, evaluate, load_encoders, settings_key, Evaluation, ModelArgs, ModelFlags,
};
use crate::report::tables::csv_field;
use serde_json::{json, Map, Value};

#[derive(Args)]
pub struct EvalArgs {
    /// Folder of predicted images (e.g. the `--out-dir` of `qie infer`).
    #[arg(long, required_unless_present = "runs", conflicts_with = "runs")]
    pub pred_dir: Option<PathBuf>,
    /// A sweep: every folder matching this pattern (`*`, `?`, `[..]`; quote it) is one run,
    /// scored into its own `eval.json`; `--out` (default `sweep.json`) gets one table over all
    /// runs, with the settings from each run's `run.json` (written by `qie infer`) that differ.
    #[arg(long)]
    pub runs: Option<String>,
    /// The dataset (JSON array, JSONL or metadata.csv); ground truth = `ref_gt`, else `image`.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Take each ground truth's file name from this folder instead of the dataset's path.
    #[arg(long)]
    pub gt_dir: Option<PathBuf>,
    /// Prediction file name: `{index}`, `{index:06}`, `{stem}` (ground truth's stem), `{name}`.
    /// Default: `qie infer`'s `<index:06>_<stem>.png`, then `{stem}.png`, then `{stem}.jpg`.
    #[arg(long)]
    pub pred_name: Option<String>,
    /// Comma-separated metrics: l1, l2, psnr, ssim, bg_l1, bg_l2, bg_psnr, bg_ssim, dino,
    /// dinov2, clip_i, clip_t, siglip, dreamsim; `all` for every one; default: the pixel metrics, plus
    /// those whose model is given.
    #[arg(long)]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub models: ModelFlags,
    /// Background = mask pixels < 128 instead of >= 128.
    #[arg(long)]
    pub mask_invert: bool,
    /// Background metrics over background pixels only (`select`), or PIE-Bench's convention
    /// (`multiply`: both images times the mask, averaged over the whole image).
    #[arg(long, value_enum, default_value = "select")]
    pub mask_mode: MaskModeArg,
    /// The JSON report (a `.csv` is written next to it); default `eval.json`, or `sweep.json`
    /// with `--runs`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum MaskModeArg {
    Select,
    Multiply,
}

pub fn run(args: EvalArgs) -> Result<(), String> {
    let metrics = chosen_metrics(args.metrics.as_deref(), &args.models)?;
    let pred_name = match &args.pred_name {
        Some(t) => Some(NameTemplate::parse(t).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some(out) = &args.out {
        if out
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
        {
            return Err(format!(
                "--out {}: name the JSON report (the .csv is written next to it)",
                out.display()
            ));
        }
    }
    let run_dirs = match (&args.runs, &args.pred_dir) {
        (Some(pattern), _) => crate::sweep::run_folders(pattern)?,
        (None, Some(dir)) => {
            if !dir.is_dir() {
                return Err(format!("--pred-dir {}: not a folder", dir.display()));
            }
            vec![dir.clone()]
        }
        (None, None) => return Err("give --pred-dir DIR or --runs PATTERN".into()),
    };
    if let Some(dir) = &args.gt_dir {
        if !dir.is_dir() {
            return Err(format!("--gt-dir {}: not a folder", dir.display()));
        }
    }
    let model_args = ModelArgs::resolve(&args.models, &metrics)?;
    let encoders = load_encoders(&model_args, &metrics)?;
    let (rows, bad_rows) = read_eval_rows(&args.dataset).map_err(|e| e.to_string())?;
    for b in &bad_rows {
        eprintln!("skipping bad row: {b}");
    }
    if rows.is_empty() {
        return Err(format!("{}: no usable rows", args.dataset.display()));
    }
    let job = Job {
        args: &args,
        metrics: &metrics,
        pred_name: &pred_name,
        encoders: &encoders,
        models: &model_args,
        rows: &rows,
        bad_rows: &bad_rows,
    };
    if args.runs.is_none() {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("eval.json"));
        let result = job.evaluate_run(&run_dirs[0], &out)?;
        crate::write_stdout(&summary_table(&result.summary, result.scored, rows.len()))?;
        if result.scored == 0 {
            return Err("no row could be scored".into());
        }
        return Ok(());
    }
    let mut results = Vec::new();
    for dir in &run_dirs {
        results.push((dir.clone(), job.evaluate_run(dir, &dir.join("eval.json"))?));
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("sweep.json"));
    let sweep = crate::sweep::table(&results, &metrics, rows.len());
    crate::atomic::write_bytes(&out, sweep.json.as_bytes())?;
    let csv_path = out.with_extension("csv");
    crate::atomic::write_bytes(&csv_path, sweep.csv.as_bytes())?;
    crate::write_stdout(&sweep.text)?;
    eprintln!("wrote {} and {}", out.display(), csv_path.display());
    if results.iter().all(|(_, r)| r.scored == 0) {
        return Err("no row of any run could be scored".into());
    }
    Ok(())
}

/// What every run of one `qie eval` call shares.
struct Job<'a> {
    args: &'a EvalArgs,
    metrics: &'a [Metric],
    pred_name: &'a Option<NameTemplate>,
    encoders: &'a crate::eval_run::Models,
    models: &'a ModelArgs,
    rows: &'a [qie_models::data::DatasetRow],
    bad_rows: &'a [qie_models::data::BadRow],
}

/// One run's outcome, for the sweep table.
pub struct RunResult {
    pub summary: BTreeMap<Metric, Stats>,
    pub scored: usize,
    pub missing: usize,
}

impl Job<'_> {
    /// Scores the predictions in `pred_dir` and writes `out` (JSON) and its `.csv`.
    fn evaluate_run(&self, pred_dir: &Path, out: &Path) -> Result<RunResult, String> {
        let args = self.args;
        let settings = EvalSettings {
            metrics: self.metrics.to_vec(),
            pred_dir: pred_dir.to_path_buf(),
            gt_dir: args.gt_dir.clone(),
            pred_name: self.pred_name.clone(),
            mask_invert: args.mask_invert,
            mask_mode: match args.mask_mode {
                MaskModeArg::Select => MaskMode::Select,
                MaskModeArg::Multiply => MaskMode::Multiply,
            },
        };
        let label = if args.runs.is_some() {
            pred_dir.display().to_string()
        } else {
            String::new()
        };
        let Evaluation { scored, problems } = evaluate(
            self.rows,
            &settings,
            self.encoders,
            args.models.batch_size,
            &label,
        )?;
        let summary = summarize(self.metrics, &scored);
        let report = report_json(
            args,
            self.models,
            &settings,
            &scored,
            &problems,
            self.bad_rows,
            &summary,
        );
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        crate::atomic::write_bytes(out, text.as_bytes())?;
        let csv_path = out.with_extension("csv");
        crate::atomic::write_bytes(&csv_path, rows_csv(self.metrics, &scored).as_bytes())?;
        for p in &problems {
            eprintln!(
                "row {}: {} {}: {}",
                p.index,
                p.what,
                p.path.display(),
                p.message
            );
        }
        let unscored = self.rows.len() - scored.len();
        if unscored > 0 {
            eprintln!(
                "{unscored} of {} rows not scored (listed under \"missing\" in {})",
                self.rows.len(),
                out.display()
            );
        }
        let partial = problems.len() - unscored;
        if partial > 0 {
            eprintln!("{partial} scored rows lack a model metric (also listed under \"missing\")");
        }
        eprintln!("wrote {} and {}", out.display(), csv_path.display());
        Ok(RunResult {
            summary,
            scored: scored.len(),
            missing: unscored,
        })
    }
}

fn path_text(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

/// A finite number, or null (JSON has no NaN / infinity).
fn number(v: Option<f64>) -> Value {
    match v.filter(|x| x.is_finite()) {
        Some(x) => json!(x),
        None => Value::Null,
    }
}

fn report_json(
    args: &EvalArgs,
    models: &ModelArgs,
    s: &EvalSettings,
    scored: &[RowScore],
    problems: &[RowProblem],
    bad_rows: &[qie_models::data::BadRow],
    summary: &BTreeMap<Metric, Stats>,
) -> Value {
    let rows: Vec<Value> = scored
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("index".into(), json!(r.index));
            o.insert("pred".into(), path_text(&r.pred));
            o.insert("gt".into(), path_text(&r.gt));
            for (m, v) in &r.values {
                o.insert(m.name().into(), number(*v));
            }
            Value::Object(o)
        })
        .collect();
    let mut sum = Map::new();
    for m in &s.metrics {
        let st = summary[m];
        sum.insert(
            m.name().into(),
            json!({"mean": number(Some(st.mean)), "std": number(Some(st.std)), "n": st.n,
                   "undefined": st.undefined}),
        );
    }
    let mut missing: Vec<Value> = problems
        .iter()
        .map(|p| json!({"index": p.index, "what": p.what, "path": path_text(&p.path), "message": p.message}))
        .collect();
    missing.extend(bad_rows.iter().map(|b| {
        json!({"index": b.index, "what": "dataset row", "path": b.place(), "message": b.message})
    }));
    let metric_names: Vec<&str> = s.metrics.iter().map(|m| m.name()).collect();
    let mut settings = json!({
        "pred_dir": path_text(&s.pred_dir),
        "dataset": path_text(&args.dataset),
        "gt_dir": args.gt_dir.as_deref().map(path_text),
        "pred_name": args.pred_name,
        "metrics": metric_names,
        "mask_invert": s.mask_invert,
        "mask_mode": s.mask_mode.name(),
        "device": models.device,
        "qie_version": env!("CARGO_PKG_VERSION"),
    });
    for (&kind, dir) in &models.dirs {
        settings[settings_key(kind)] = path_text(dir);
    }
    json!({
        "rows": rows,
        "summary": sum,
        "missing": missing,
        "settings": settings,
    })
}

/// One line per scored row; an empty cell where a value is undefined or absent.
fn rows_csv(metrics: &[Metric], scored: &[RowScore]) -> String {
    let quote = |s: String| csv_field(&s);
    let mut out = String::from("index,pred,gt");
    for m in metrics {
        out.push(',');
        out.push_str(m.name());
    }
    out.push('\n');
    for r in scored {
        out.push_str(&format!(
            "{},{},{}",
            r.index,
            quote(r.pred.display().to_string()),
            quote(r.gt.display().to_string())
        ));
        for m in metrics {
            out.push(',');
            if let Some(Some(v)) = r.values.get(m).filter(|v| v.is_some_and(f64::is_finite)) {
                out.push_str(&format!("{v}"));
            }
        }
        out.push('\n');
    }
    out
}

pub fn summary_table(summary: &BTreeMap<Metric, Stats>, scored: usize, rows: usize) -> String {
    let mut out = format!("{scored} of {rows} rows scored\n");
    out.push_str(&format!(
        "{:<10} {:>12} {:>12} {:>6} {:>10}\n",
        "metric", "mean", "std", "n", "undefined"
    ));
    for (m, s) in summary {
        out.push_str(&format!(
            "{:<10} {:>12.6} {:>12.6} {:>6} {:>10}\n",
            m.name(),
            s.mean,
            s.std,
            s.n,
            s.undefined
        ));
    }
    out
}
