//! `qie bench edit`: the whole Plus pipeline at real size with random weights (DiT, Qwen2.5-VL-7B,
//! VAE): time per stage and device memory. diffusers on the same card: benches/torch/edit_pipeline.py.

use crate::cmd_forward::{make_backend, DTypeArg};
use crate::numeric_args::{non_negative_f32, positive, steps};
use clap::Args;
use qie_models::pipeline::random::random_plus_pipeline;
use qie_models::pipeline::EditSettings;
use qie_models::preprocess::RgbImage;
use qie_models::{ModelOptions, WeightPrecision};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchEditArgs {
    /// Compute device: cpu, cuda or cuda:N.
    #[arg(long, env = "QIE_DEVICE", default_value = "cuda")]
    pub device: String,
    /// A model folder whose tokenizer/, processor/ and scheduler/ are used (weights are random).
    #[arg(long, default_value = "tests/fixtures/edit/plus/model")]
    pub assets: PathBuf,
    /// Input and output image side in pixels (a multiple of 16, at most 4096).
    #[arg(long, default_value_t = 1024, value_parser = positive)]
    pub size: usize,
    #[arg(long, default_value_t = 40, value_parser = steps)]
    pub steps: usize,
    /// true_cfg_scale (1 = no CFG).
    #[arg(long, default_value_t = 4.0, value_parser = non_negative_f32)]
    pub cfg: f32,
    /// DiT blocks (60 in the released models).
    #[arg(long, default_value_t = 60, value_parser = positive)]
    pub layers: usize,
    /// Timed runs after one warm-up run (which compiles every plan).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DTypeArg,
}

pub fn run(args: BenchEditArgs) -> Result<(), String> {
    let max_pixels = EditSettings::DEFAULT_MAX_PIXELS;
    if !args.size.is_multiple_of(16) || args.size.saturating_mul(args.size) > max_pixels {
        return Err(format!(
            "--size {}: must be a multiple of 16 with at most {max_pixels} pixels",
            args.size
        ));
    }
    let start = Instant::now();
    let options = ModelOptions {
        backend: make_backend(&args.device, args.dtype)?,
        precision: match args.dtype {
            DTypeArg::F32 => WeightPrecision::F32,
            DTypeArg::Bf16 => WeightPrecision::Bf16,
        },
        ..ModelOptions::default()
    };
    let pipeline =
        random_plus_pipeline(&args.assets, &options, args.layers).map_err(|e| e.to_string())?;
    eprintln!(
        "random weights ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let side = args.size as u32;
    let image = RgbImage::from_fn(side, side, |x, y| {
        let v = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)) as u8;
        image::Rgb([v, v.wrapping_add(85), v.wrapping_add(170)])
    });
    let settings = EditSettings {
        prompt: "把背景换成海边的日落，保持人物不变".into(),
        negative_prompt: Some(" ".into()),
        steps: args.steps,
        cfg: args.cfg,
        width: Some(args.size),
        height: Some(args.size),
        ..EditSettings::default()
    };
    for run in 0..=args.runs {
        let out = pipeline
            .edit(
                std::slice::from_ref(&image),
                &settings,
                None,
                &mut |_, _| {},
            )
            .map_err(|e| e.to_string())?;
        let label = if run == 0 {
            "warm-up".to_string()
        } else {
            format!("run {run}")
        };
        println!(
            "qie {label} ({}x{}, {} steps, cfg {}, {} DiT layers): {}",
            out.width,
            out.height,
            args.steps,
            args.cfg,
            args.layers,
            out.times.report()
        );
    }
    if let Some(mem) = pipeline.device_memory() {
        println!("device memory: {mem}");
    }
    Ok(())
}
