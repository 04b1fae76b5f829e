//! `qie bench train`: one optimizer step of `qie train` (forward, flow-matching loss, backward,
//! global-norm clipping, the fused AdamW update and the new LoRA values written into the model)
//! of the real-size DiT with random weights and a LoRA adapter on the default targets: median
//! step time and peak device memory. PyTorch (diffusers + peft, with its fused AdamW) on the
//! same shapes: benches/torch/train_lora.py.

use crate::cmd_forward::{make_backend, DTypeArg};
use crate::numeric_args::positive;
use clap::Args;
use qie_models::qwen_image::dit::expected_weights_for;
use qie_models::qwen_image::img_shapes::MAX_IMAGE_TOKENS;
use qie_models::qwen_image::random::{random_inputs, random_weights, real_dit_config};
use qie_models::qwen_image::{DitOptions, QwenImageDit};
use qie_models::train::{
    InMemoryData, LoopSettings, TimestepScheme, TrainSample, Trainer, DEFAULT_LORA_TARGETS,
};
use qie_runtime::Tensor;
use serde_json::json;
use std::time::Instant;

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Compute device: cpu, cuda or cuda:N (default: QIE_DEVICE, else cpu).
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Target image side in pixels (a multiple of 16).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Reference images of the same size.
    #[arg(long, default_value_t = 1)]
    pub ref_images: usize,
    /// Transformer blocks (60 in the released models).
    #[arg(long, default_value_t = 60, value_parser = positive)]
    pub layers: usize,
    /// Text tokens.
    #[arg(long, default_value_t = 256, value_parser = positive)]
    pub txt: usize,
    /// LoRA rank on the default targets (alpha = rank).
    #[arg(long, default_value_t = 32, value_parser = positive)]
    pub lora_rank: usize,
    /// A `.qie` architecture variant of the DiT (e.g. models/qie/variants/*.qie); its new
    /// parameters train along with the LoRA.
    #[arg(long)]
    pub variant: Option<std::path::PathBuf>,
    /// Recompute each transformer block in the backward pass.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 5, value_parser = positive)]
    pub runs: usize,
    /// After timing, run once more with every step timed and print where the time goes.
    #[arg(long)]
    pub profile: bool,
    /// Steps listed by --profile.
    #[arg(long, default_value_t = 30)]
    pub profile_top: usize,
    /// Storage precision of the frozen base on CUDA.
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DTypeArg,
}

pub fn run(args: BenchTrainArgs) -> Result<(), String> {
    if args.size == 0 || !args.size.is_multiple_of(16) {
        return Err("--size must be a positive multiple of 16".into());
    }
    let side = args.size / 16;
    let target_tokens = side * side;
    let tokens = target_tokens.checked_mul(args.ref_images.saturating_add(1));
    if !matches!(tokens, Some(t) if t <= MAX_IMAGE_TOKENS) {
        return Err(format!(
            "--size {} with --ref-images {}: more than {MAX_IMAGE_TOKENS} image tokens",
            args.size, args.ref_images
        ));
    }
    let config = real_dit_config(args.layers, false);
    let options = DitOptions {
        backend: make_backend(&args.device, args.dtype)?,
        source: args.variant.clone(),
        ..DitOptions::default()
    };
    let start = Instant::now();
    let expected = expected_weights_for(&config, None).map_err(|e| e.to_string())?;
    let adapter = json!({
        "rank": args.lora_rank,
        "alpha": args.lora_rank,
        "targets": DEFAULT_LORA_TARGETS,
    });
    let mut dit = QwenImageDit::from_weights_with_adapter(
        config.clone(),
        random_weights(&expected),
        &options,
        Some(&adapter),
    )
    .map_err(|e| e.to_string())?;
    dit.set_gradient_checkpointing(args.gradient_checkpointing);
    let trainable: Vec<String> = dit.created_weights().to_vec();
    let inputs = random_inputs(&config, side, args.ref_images, args.txt);
    let channels = config.patch_size * config.patch_size * config.out_channels;
    let target = Tensor::from_f32(
        &[1, target_tokens, channels],
        (0..target_tokens * channels)
            .map(|i| ((i * 7919) % 2003) as f32 / 1001.5 - 1.0)
            .collect(),
    )
    .map_err(|e| e.to_string())?;
    let weight = Tensor::from_f32(&[1], vec![1.0]).map_err(|e| e.to_string())?;
    // One row as `qie cache` writes it: the target's and the references' latents, the prompt.
    let ref_tokens = args.ref_images * target_tokens;
    let row = TrainSample {
        target: target.clone(),
        target_grid: [1, side, side],
        references: (args.ref_images > 0).then(|| {
            let hs = inputs.hidden_states.to_f32_vec();
            Tensor::from_f32(
                &[1, ref_tokens, channels],
                hs[target_tokens * channels..].to_vec(),
            )
            .expect("the reference tokens of the inputs")
        }),
        reference_grids: vec![[1, side, side]; args.ref_images],
        prompt_embeds: inputs.encoder_hidden_states.clone(),
        prompt_mask: vec![true; args.txt],
        source: "random row".to_string(),
    };
    let data = InMemoryData(vec![row]);
    let settings = LoopSettings {
        steps: args.runs as u64 + 1,
        batch_size: 1,
        grad_accum: 1,
        lr: 1e-4,
        schedule: Default::default(),
        optimizer: Default::default(),
        max_grad_norm: Some(1.0),
        seed: 0,
        timesteps: TimestepScheme::default(),
    };
    let mut trainer = Trainer::new(&dit, trainable.clone(), settings).map_err(|e| e.to_string())?;
    let setup = start.elapsed();
    let mut step = || {
        let r = trainer
            .train_step(&mut dit, &data)
            .map_err(|e| e.to_string())?;
        Ok::<f64, String>(r.step_s)
    };
    let first = step()?;
    let mut times = (0..args.runs)
        .map(|_| step())
        .collect::<Result<Vec<_>, _>>()?;
    times.sort_by(f64::total_cmp);
    let memory = dit
        .device_memory()
        .map(|m| format!("  device memory: {m}\n"))
        .unwrap_or_default();
    let profile = if args.profile {
        let p = dit
            .profile_training(&inputs, &target, &weight, &trainable)
            .map_err(|e| e.to_string())?;
        format!(
            "profile (one step, each plan step timed):\n{}",
            p.summary(args.profile_top)
        )
    } else {
        String::new()
    };
    crate::write_stdout(&format!(
        "bench train on {}: {} layers, {}x{} px + {} reference image(s), {} text tokens, LoRA rank {} + new parameters: {} tensors{}, gradient checkpointing {}\n  setup {:.1} s, first step {:.3} s, median of {} {:.4} s, min {:.4} s, max {:.4} s\n{memory}{profile}",
        dit.backend_name(),
        args.layers,
        args.size,
        args.size,
        args.ref_images,
        args.txt,
        args.lora_rank,
        trainable.len(),
        args.variant
            .as_ref()
            .map(|v| format!(", variant {}", v.display()))
            .unwrap_or_default(),
        if args.gradient_checkpointing { "on" } else { "off" },
        setup.as_secs_f64(),
        first,
        args.runs,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
    ))
}
