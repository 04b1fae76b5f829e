//! `qie data check DATA`: reads a training dataset, decodes every image and prints a summary;
//! exits non-zero when any row has an error (warnings are listed but do not fail).

use clap::{Args, Subcommand};
use qie_models::data::{check_dataset, SizeRule};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Check a training dataset (JSON array, JSONL or metadata.csv) and summarise it.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// The dataset file: rows with `prompt`, `image` (target), optional `edit_image` (path or
    /// list), `ref_gt`, `back_mask`; paths relative to the file.
    pub dataset: PathBuf,
    /// The most pixels a training image may have after resizing (default: the VAE area).
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Pixel area images are trained at (default 1024², the checkpoints' VAE area).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub vae_area: usize,
    /// Report sizes after snapping to aspect-ratio buckets (as `qie cache --buckets`).
    #[arg(long)]
    pub buckets: bool,
}

pub fn run(cmd: DataCommand) -> Result<(), String> {
    match cmd {
        DataCommand::Check(args) => check(args),
    }
}

fn check(args: CheckArgs) -> Result<(), String> {
    if args.vae_area == 0 || args.max_pixels == Some(0) {
        return Err("--vae-area and --max-pixels must be positive".into());
    }
    let rule = SizeRule {
        area: args.vae_area,
        max_pixels: args.max_pixels,
        buckets: args.buckets,
    };
    let report = check_dataset(&args.dataset, &rule).map_err(|e| e.to_string())?;
    crate::write_stdout(&report.render())?;
    match report.bad_rows() {
        0 => Ok(()),
        n => Err(format!(
            "{}: {n} of {} rows have errors (listed above)",
            args.dataset.display(),
            report.rows
        )),
    }
}
