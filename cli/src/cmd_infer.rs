//! `qie infer`: batch edits over a dataset file. One image and one JSON record per row; bad rows
//! (malformed, missing images, failed edits) are reported and skipped, never aborting the run;
//! `--resume` skips rows whose outputs already exist.

use crate::cmd_edit::{run_edit, save_output};
use crate::pipeline_args::{PipelineArgs, SamplingArgs};
use clap::Args;
use qie_models::dataset::{read_dataset, BadRow, DatasetRow};
use qie_models::preprocess::load_rgb;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct InferArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Dataset: JSON array, JSONL or metadata.csv rows with `prompt`, `edit_image` (path or list), optional
    /// `image`, `ref_gt`, `back_mask`; paths relative to the dataset file.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Folder for `<index>_<stem>.png` + `.json` per row, `errors.jsonl` and `run.json`.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Only the first N rows of the dataset.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip rows whose image and record already exist.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(args: InferArgs) -> Result<(), String> {
    args.sampling.checked_settings("")?;
    let (rows, bad) = read_dataset(&args.dataset).map_err(|e| e.to_string())?;
    let limit = args.limit.unwrap_or(usize::MAX);
    let rows: Vec<DatasetRow> = rows.into_iter().filter(|r| r.index < limit).collect();
    let bad: Vec<BadRow> = bad.into_iter().filter(|b| b.index < limit).collect();
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("{}: {e}", args.out_dir.display()))?;
    let mut errors = ErrorLog::open(&args.out_dir.join("errors.jsonl"))?;
    for b in &bad {
        errors.report(b.index, &b.location, &b.message)?;
    }
    let todo: Vec<&DatasetRow> = rows
        .iter()
        .filter(|r| !(args.resume && is_done(&args.out_dir, r)))
        .collect();
    let skipped = rows.len() - todo.len();
    eprintln!(
        "{}: {} rows ({} malformed{}), {} to run",
        args.dataset.display(),
        rows.len() + bad.len(),
        bad.len(),
        if args.resume {
            format!(", {skipped} already done")
        } else {
            String::new()
        },
        todo.len()
    );
    if todo.is_empty() {
        return finish(bad.len(), 0, 0, skipped);
    }
    let pipeline = args.pipeline.load()?;
    write_run_record(&args)?;
    let (mut done, mut failed) = (0, 0);
    for (n, row) in todo.iter().enumerate() {
        let location = format!("{} row {}", args.dataset.display(), row.index);
        eprintln!("[{}/{}] {location}: {}", n + 1, todo.len(), row.prompt);
        match run_row(&pipeline, &args, row) {
            Ok(()) => done += 1,
            Err(message) => {
                failed += 1;
                errors.report(row.index, &location, &message)?;
            }
        }
    }
    finish(bad.len(), done, failed, skipped)
}

fn run_row(
    pipeline: &qie_models::pipeline::EditPipeline,
    args: &InferArgs,
    row: &DatasetRow,
) -> Result<(), String> {
    let missing = row.missing_files();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("missing image(s): {}", names.join(", ")));
    }
    let images = row
        .edit_images
        .iter()
        .map(|p| load_rgb(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let settings = args.sampling.settings(&row.prompt);
    crate::cmd_edit::check_image_sizes(&settings, &images, args.sampling.max_pixels)?;
    let output = run_edit(pipeline, &images, &settings, None)?;
    save_output(
        &output_path(&args.out_dir, row),
        &output,
        &settings,
        &row.edit_images,
    )
}

fn output_path(out_dir: &Path, row: &DatasetRow) -> PathBuf {
    out_dir.join(format!("{}.png", row.output_stem()))
}

fn is_done(out_dir: &Path, row: &DatasetRow) -> bool {
    let png = output_path(out_dir, row);
    png.exists() && png.with_extension("json").exists()
}

fn finish(malformed: usize, done: usize, failed: usize, skipped: usize) -> Result<(), String> {
    eprintln!("done {done}, failed {failed}, malformed {malformed}, skipped (resume) {skipped}");
    Ok(())
}

fn write_run_record(args: &InferArgs) -> Result<(), String> {
    let record = serde_json::json!({
        "model": args.pipeline.model,
        "device": args.pipeline.device,
        "loras": args.pipeline.loras,
        "dataset": args.dataset,
        "settings": args.sampling.settings(""),
    });
    let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
    crate::atomic::write_bytes(&args.out_dir.join("run.json"), text.as_bytes())
}

/// `errors.jsonl`: one line per bad row, appended (earlier runs' lines are kept).
struct ErrorLog {
    file: std::fs::File,
    path: PathBuf,
}

impl ErrorLog {
    fn open(path: &Path) -> Result<ErrorLog, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(ErrorLog {
            file,
            path: path.to_path_buf(),
        })
    }

    fn report(&mut self, index: usize, location: &str, message: &str) -> Result<(), String> {
        eprintln!("skipping {location}: {message}");
        let line = serde_json::json!({"row": index, "location": location, "error": message});
        writeln!(self.file, "{line}").map_err(|e| format!("{}: {e}", self.path.display()))
    }
}
