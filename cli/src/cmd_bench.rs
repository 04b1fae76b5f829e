//! `qie bench dit`: the real-size Qwen-Image DiT with random weights (no checkpoint needed):
//! median latency and TFLOP/s. PyTorch on the same inputs: benches/torch/dit.py.

use crate::cmd_forward::{make_backend, DTypeArg};
use crate::numeric_args::positive;
use clap::{Args, Subcommand};
use qie_models::qwen_image::dit::expected_weights_for;
use qie_models::qwen_image::img_shapes::MAX_IMAGE_TOKENS;
use qie_models::qwen_image::random::{random_inputs, random_weights, real_dit_config};
use qie_models::qwen_image::{DitOptions, QwenImageDit};
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// QwenImageTransformer2DModel at real width (3072, 24 heads) with random weights.
    Dit(BenchDitArgs),
    /// The whole edit pipeline (Plus) at real size with random weights.
    Edit(crate::cmd_bench_edit::BenchEditArgs),
    /// One LoRA training step of the real-size DiT with random weights.
    Train(crate::cmd_bench_train::BenchTrainArgs),
}

#[derive(Args)]
pub struct BenchDitArgs {
    /// Compute device: cpu, cuda or cuda:N (default: QIE_DEVICE, else cpu).
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Output image side in pixels: 512 or 1024 (any multiple of 16 works).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Reference images of the same size (the Edit models take at least one).
    #[arg(long, default_value_t = 1)]
    pub ref_images: usize,
    /// Transformer blocks (60 in the released models).
    #[arg(long, default_value_t = 60, value_parser = positive)]
    pub layers: usize,
    /// Text tokens.
    #[arg(long, default_value_t = 256, value_parser = positive)]
    pub txt: usize,
    /// Timed runs after one warm-up run.
    #[arg(long, default_value_t = 10, value_parser = positive)]
    pub runs: usize,
    /// After timing, run once more with every step timed and print where the time goes.
    #[arg(long)]
    pub profile: bool,
    /// Steps listed by --profile.
    #[arg(long, default_value_t = 30)]
    pub profile_top: usize,
    /// Storage precision on CUDA (the CPU computes in f32).
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DTypeArg,
}

pub fn run(cmd: BenchCommand) -> Result<(), String> {
    match cmd {
        BenchCommand::Dit(args) => run_dit(args),
        BenchCommand::Edit(args) => crate::cmd_bench_edit::run(args),
        BenchCommand::Train(args) => crate::cmd_bench_train::run(args),
    }
}

fn run_dit(args: BenchDitArgs) -> Result<(), String> {
    if args.size == 0 || !args.size.is_multiple_of(16) || args.layers == 0 || args.runs == 0 {
        return Err(
            "--size must be a positive multiple of 16; --layers and --runs must be positive".into(),
        );
    }
    let side = args.size / 16; // VAE 8x, then 2x2 patches
    let tokens = side
        .checked_mul(side)
        .and_then(|t| t.checked_mul(args.ref_images.saturating_add(1)));
    if !matches!(tokens, Some(t) if t <= MAX_IMAGE_TOKENS) {
        return Err(format!(
            "--size {} with --ref-images {}: more than {MAX_IMAGE_TOKENS} image tokens",
            args.size, args.ref_images
        ));
    }
    let config = real_dit_config(args.layers, false);
    let options = DitOptions {
        backend: make_backend(&args.device, args.dtype)?,
        ..DitOptions::default()
    };
    let start = Instant::now();
    let expected = expected_weights_for(&config, None).map_err(|e| e.to_string())?;
    let weights = random_weights(&expected);
    let dit =
        QwenImageDit::from_weights(config.clone(), weights, &options).map_err(|e| e.to_string())?;
    let inputs = random_inputs(&config, side, args.ref_images, args.txt);
    let flops = dit
        .lower(&inputs)
        .map_err(|e| e.to_string())?
        .matmul_flops();
    let setup = start.elapsed();
    let start = Instant::now();
    dit.forward(&inputs).map_err(|e| e.to_string())?;
    let first = start.elapsed();
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let start = Instant::now();
        dit.forward(&inputs).map_err(|e| e.to_string())?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let memory = dit
        .device_memory()
        .map(|m| format!("  device memory: {m}\n"))
        .unwrap_or_default();
    let profile = if args.profile {
        let p = dit.profile(&inputs).map_err(|e| e.to_string())?;
        format!(
            "profile (one run, each step timed):\n{}",
            p.summary(args.profile_top)
        )
    } else {
        String::new()
    };
    crate::write_stdout(&format!(
        "bench dit on {}: {} layers, {}x{} px + {} reference image(s) ({} image + {} text tokens), {:.3} TFLOP\n  setup {:.1} s, first run {:.3} s, median of {} {:.4} s ({:.3} TFLOP/s), min {:.4} s, max {:.4} s\n{memory}{profile}",
        dit.backend_name(),
        args.layers,
        args.size,
        args.size,
        args.ref_images,
        inputs.img_tokens(),
        args.txt,
        flops / 1e12,
        setup.as_secs_f64(),
        first.as_secs_f64(),
        args.runs,
        median,
        flops / median / 1e12,
        times[0],
        times[times.len() - 1],
    ))
}
