//! `qie edit`: one edit of one or more input images, with a progress bar and the time of each stage.
//! `--interactive` hands over to the multi-turn session (`cmd_chat`).

use crate::image_out::{output_format, write_image};
use crate::pipeline_args::{PipelineArgs, SamplingArgs};
use crate::progress::StepBar;
use clap::Args;
use qie_models::pipeline::{EditOutput, EditPipeline, EditSettings};
use qie_models::preprocess::load_rgb;
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_runtime::Tensor;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct EditArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Input image (PNG/JPEG/WebP). Repeat for multi-image edits (2509/2511); the output takes the
    /// last image's aspect ratio.
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// The edit instruction (not needed with --interactive).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Output image: .png, .jpg/.jpeg or .webp (the extension picks the format); a JSON record
    /// of the settings is written next to it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Initial noise instead of the seed's: safetensors with `latents` [1, S, 64] (diffusers'
    /// packed layout), for parity checks.
    #[arg(long)]
    pub init_noise: Option<PathBuf>,
    /// Also write the final packed latents (before VAE decoding) as `latents` to this safetensors.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// Multi-turn editing: each turn edits the previous result (type /help in the session).
    #[arg(long)]
    pub interactive: bool,
    /// Session folder for --interactive (created, or reopened to continue).
    #[arg(long)]
    pub session: Option<PathBuf>,
    /// Re-run every turn of a saved session folder and check the results are identical.
    #[arg(long)]
    pub replay: Option<PathBuf>,
}

pub fn run(args: EditArgs) -> Result<(), String> {
    if args.interactive {
        return crate::cmd_chat::run_interactive(args);
    }
    if let Some(dir) = &args.replay {
        return crate::cmd_chat::replay(dir, &args);
    }
    let prompt = args
        .prompt
        .clone()
        .ok_or("--prompt is required (or use --interactive)")?;
    let out = args.out.clone().ok_or("--out is required")?;
    output_format("--out", &out)?;
    if args.images.is_empty() {
        return Err("give at least one --image".into());
    }
    let settings = args.sampling.checked_settings(&prompt)?;
    let images = args
        .images
        .iter()
        .map(|p| load_rgb(p).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    check_image_sizes(&settings, &images, args.sampling.max_pixels)?;
    let init_noise = match &args.init_noise {
        Some(path) => Some(read_latents(path)?),
        None => None,
    };
    let pipeline = args.pipeline.load()?;
    let output = run_edit(&pipeline, &images, &settings, init_noise.as_ref())?;
    save_output(&out, &output, &settings, &args.images)?;
    if let Some(path) = &args.save_latents {
        let values = output.latents.to_f32_vec();
        save_safetensors(
            path,
            &[("latents", output.latents.shape().to_vec(), &values)],
        )
        .map_err(|e| e.to_string())?;
    }
    eprintln!("{}", output.times.report());
    eprintln!(
        "wrote {} ({}x{})",
        out.display(),
        output.width,
        output.height
    );
    Ok(())
}

/// Checks the output and input sizes these images lead to (see
/// `EditSettings::check_image_sizes`) before anything is allocated for them.
pub fn check_image_sizes(
    settings: &EditSettings,
    images: &[image::RgbImage],
    max_pixels: usize,
) -> Result<(), String> {
    let dims: Vec<(u32, u32)> = images.iter().map(|i| i.dimensions()).collect();
    settings.check_image_sizes(&dims, max_pixels).map(|_| ())
}

/// One edit with a per-step progress bar.
pub fn run_edit(
    pipeline: &EditPipeline,
    images: &[image::RgbImage],
    settings: &EditSettings,
    init_noise: Option<&Tensor>,
) -> Result<EditOutput, String> {
    let mut bar = StepBar::new(settings.steps);
    let output = pipeline
        .edit(images, settings, init_noise, &mut |step, total| {
            bar.step(step, total)
        })
        .map_err(|e| e.to_string());
    bar.finish();
    output
}

/// Writes the image (atomically) and `<out>.json` with the settings and timings.
pub fn save_output(
    out: &Path,
    output: &EditOutput,
    settings: &EditSettings,
    inputs: &[PathBuf],
) -> Result<(), String> {
    write_image("--out", out, &output.image)?;
    let record = serde_json::json!({
        "settings": settings,
        "inputs": inputs,
        "width": output.width,
        "height": output.height,
        "times": output.times,
    });
    let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
    crate::atomic::write_bytes(&out.with_extension("json"), text.as_bytes())
}

fn read_latents(path: &Path) -> Result<Tensor, String> {
    let store = WeightStore::open(path).map_err(|e| e.to_string())?;
    let info = store.info("latents").ok_or_else(|| {
        format!(
            "{}: no tensor `latents` (expected [1, S, 64], diffusers' packed layout)",
            path.display()
        )
    })?;
    let values = store.load_f32("latents").map_err(|e| e.to_string())?;
    Tensor::from_f32(&info.shape, values).map_err(|e| format!("{}: {e}", path.display()))
}
