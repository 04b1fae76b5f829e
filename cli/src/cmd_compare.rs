//! `qie compare --run NAME=DIR ... --dataset DATA --out REPORT/`: evaluates every run (or reuses
//! its `eval.json`), then writes `index.html` (tables, plots, gallery), `summary.md`,
//! `summary.csv`, the plots under `plots/`, the thumbnails under `images/` and each run's
//! evaluation under `runs/<name>.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;
use qie_models::data::read_eval_rows;
use qie_models::dataset::DatasetRow;
use qie_models::eval::naming::ground_truth;
use qie_models::eval::{EvalSettings, MaskMode, NameTemplate};
use serde_json::Value;

use crate::eval_run::{
    chosen_metrics, evaluate, load_encoders, read_eval_json, ModelArgs, ModelFlags, Reuse,
};
use crate::report::html::{page, GalleryRow};
use crate::report::{gallery, plots, tables, Comparison, ReportRow, RunScores};

#[derive(Args)]
pub struct CompareArgs {
    /// A run to compare: NAME=DIR (DIR holds its predictions); give two or more.
    #[arg(long = "run", required = true)]
    pub runs: Vec<String>,
    /// The dataset every run was made from (JSON array, JSONL or metadata.csv).
    #[arg(long)]
    pub dataset: PathBuf,
    /// Report folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Metrics (as `qie eval --metrics`).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Prediction file name template of every run (as `qie eval --pred-name`).
    #[arg(long)]
    pub pred_name: Option<String>,
    /// Break the tables down by this row field (e.g. `edit_type`).
    #[arg(long)]
    pub group_by: Option<String>,
    /// Rows shown in the gallery (the first N by index; the page sorts them).
    #[arg(long, default_value_t = 100)]
    pub gallery_rows: usize,
    /// Score every run again even where its folder has a matching eval.json.
    #[arg(long)]
    pub recompute: bool,
    #[command(flatten)]
    pub models: ModelFlags,
    /// Background = mask pixels < 128.
    #[arg(long)]
    pub mask_invert: bool,
}

fn parse_run(text: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = text
        .split_once('=')
        .filter(|(n, d)| !n.is_empty() && !d.is_empty())
        .ok_or_else(|| format!("--run {text:?}: expected NAME=DIR"))?;
    let dir = PathBuf::from(dir);
    if !dir.is_dir() {
        return Err(format!("--run {name}: {} is not a folder", dir.display()));
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || "-_.+".contains(c))
    {
        return Err(format!(
            "--run {name:?}: a run name may hold letters, digits and - _ . +"
        ));
    }
    Ok((name.to_string(), dir))
}

pub fn run(args: CompareArgs) -> Result<(), String> {
    let runs: Vec<(String, PathBuf)> = args
        .runs
        .iter()
        .map(|r| parse_run(r))
        .collect::<Result<_, _>>()?;
    for (i, (name, _)) in runs.iter().enumerate() {
        if runs[..i].iter().any(|(n, _)| n == name) {
            return Err(format!("--run {name}: the name is given twice"));
        }
    }
    let metrics = chosen_metrics(args.metrics.as_deref(), &args.models)?;
    let model_args = ModelArgs::resolve(&args.models, &metrics)?;
    let pred_name = match &args.pred_name {
        Some(t) => Some(NameTemplate::parse(t).map_err(|e| e.to_string())?),
        None => None,
    };
    let (rows, bad_rows) = read_eval_rows(&args.dataset).map_err(|e| e.to_string())?;
    for b in &bad_rows {
        eprintln!("skipping bad row: {b}");
    }
    if rows.is_empty() {
        return Err(format!("{}: no usable rows", args.dataset.display()));
    }
    let groups = match &args.group_by {
        Some(field) => Some(group_values(&args.dataset, field)?),
        None => None,
    };
    let mut encoders = None;
    let mut scores = Vec::new();
    let mut notes = Vec::new();
    for (name, dir) in &runs {
        let reuse = Reuse {
            dataset: &args.dataset,
            pred_dir: dir,
            metrics: &metrics,
            mask_invert: args.mask_invert,
            models: &model_args,
        };
        let existing = (!args.recompute && args.pred_name.is_none())
            .then(|| read_eval_json(&dir.join("eval.json"), &reuse))
            .flatten();
        let (scored, missing) = match existing {
            Some(found) => {
                notes.push(format!(
                    "{name}: scores read from {}",
                    dir.join("eval.json").display()
                ));
                found
            }
            None => {
                if encoders.is_none() {
                    encoders = Some(load_encoders(&model_args, &metrics)?);
                }
                let settings = EvalSettings {
                    metrics: metrics.clone(),
                    pred_dir: dir.clone(),
                    gt_dir: None,
                    pred_name: pred_name.clone(),
                    mask_invert: args.mask_invert,
                    mask_mode: MaskMode::Select,
                };
                let models = encoders.as_ref().expect("loaded above");
                let e = evaluate(&rows, &settings, models, args.models.batch_size, name)?;
                let unscored = rows.len() - e.scored.len();
                (e.scored, unscored)
            }
        };
        if missing > 0 {
            notes.push(format!(
                "{name}: {missing} of {} rows not scored",
                rows.len()
            ));
        }
        scores.push(RunScores {
            name: name.clone(),
            rows: scored.into_iter().map(|r| (r.index, r)).collect(),
            missing,
        });
    }
    let comparison = Comparison {
        runs: scores,
        metrics,
        rows: rows
            .iter()
            .map(|r| report_row(r, groups.as_ref()))
            .collect(),
        group_by: args.group_by.clone(),
    };
    for n in &notes {
        eprintln!("{n}");
    }
    write_report(&args, &comparison, &notes)?;
    eprintln!("wrote {}", args.out.join("index.html").display());
    Ok(())
}

fn report_row(r: &DatasetRow, groups: Option<&BTreeMap<usize, String>>) -> ReportRow {
    ReportRow {
        index: r.index,
        prompt: r.prompt.clone(),
        inputs: r.edit_images.clone(),
        gt: ground_truth(r, None),
        group: groups.and_then(|g| g.get(&r.index).cloned()),
    }
}

/// The value of `field` in every row (strings as they are, numbers and booleans as text).
fn group_values(dataset: &std::path::Path, field: &str) -> Result<BTreeMap<usize, String>, String> {
    let records = qie_models::data::read_records(dataset).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for r in records {
        let Ok(v) = &r.value else { continue };
        let text = match v.get(field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => continue,
            Some(Value::Array(_) | Value::Object(_)) => {
                return Err(format!(
                    "{}: --group-by {field}: the field must be a string, number or boolean",
                    r.location
                ))
            }
            Some(other) => other.to_string(),
        };
        out.insert(r.index, text);
    }
    if out.is_empty() {
        return Err(format!(
            "{}: --group-by {field}: no row has that field",
            dataset.display()
        ));
    }
    Ok(out)
}

fn write_report(args: &CompareArgs, c: &Comparison, notes: &[String]) -> Result<(), String> {
    let out = &args.out;
    std::fs::create_dir_all(out.join("plots")).map_err(|e| format!("{}: {e}", out.display()))?;
    let all = tables::all_tables(c);
    crate::atomic::write_bytes(
        &out.join("summary.md"),
        tables::markdown(c, &all).as_bytes(),
    )?;
    crate::atomic::write_bytes(&out.join("summary.csv"), tables::csv(c, &all).as_bytes())?;
    for run in &c.runs {
        let rows: Vec<Value> = run
            .rows
            .values()
            .map(|r| {
                let mut o = serde_json::Map::new();
                o.insert("index".into(), r.index.into());
                o.insert("pred".into(), r.pred.display().to_string().into());
                o.insert("gt".into(), r.gt.display().to_string().into());
                for (m, v) in &r.values {
                    let v = v.filter(|x| x.is_finite()).map_or(Value::Null, Value::from);
                    o.insert(m.name().into(), v);
                }
                Value::Object(o)
            })
            .collect();
        let text = serde_json::to_string_pretty(
            &serde_json::json!({"rows": rows, "missing": run.missing}),
        )
        .map_err(|e| e.to_string())?;
        crate::atomic::write_bytes(
            &out.join(format!("runs/{}.json", run.name)),
            text.as_bytes(),
        )?;
    }
    let mut plot_files = Vec::new();
    for (j, m) in c.metrics.iter().enumerate() {
        let means = format!("plots/{m}.png");
        let rows = format!("plots/{m}_rows.png");
        plots::means_plot(c, &all[0], j, *m, &out.join(&means))?;
        plots::rows_plot(c, *m, &out.join(&rows))?;
        plot_files.push((*m, means, rows));
    }
    let mut shown = Vec::new();
    for r in c.rows.iter().take(args.gallery_rows) {
        let mut inputs = Vec::new();
        for (k, p) in r.inputs.iter().enumerate() {
            inputs.push(gallery::thumbnail(p, out, &format!("{}_in{k}", r.index))?);
        }
        let gt = match &r.gt {
            Some(p) => gallery::thumbnail(p, out, &format!("{}_gt", r.index))?,
            None => None,
        };
        let mut per_run = Vec::new();
        for (k, run) in c.runs.iter().enumerate() {
            let score = run.rows.get(&r.index);
            let img = match score {
                Some(s) => gallery::thumbnail(&s.pred, out, &format!("{}_run{k}", r.index))?,
                None => None,
            };
            let values = c
                .metrics
                .iter()
                .map(|m| score.and_then(|s| s.values.get(m).copied().flatten()))
                .collect();
            per_run.push((img, values));
        }
        shown.push(GalleryRow {
            index: r.index,
            prompt: r.prompt.clone(),
            inputs,
            gt,
            runs: per_run,
        });
    }
    let html = page(c, &all, &plot_files, &shown, notes);
    crate::atomic::write_bytes(&out.join("index.html"), html.as_bytes())
}
