//! `qie forward text-encoder`: the Qwen2.5-VL language model of a Qwen-Image-Edit text_encoder/
//! folder on token ids (+ the vision tower's image embeddings), for parity checks.

use crate::cmd_forward::{make_backend, DTypeArg};
use clap::Args;
use qie_models::qwen25vl::{PositionMode, QwenVlLanguageModel, TextEncoderInputs};
use qie_models::{ModelOptions, WeightPrecision};
use qie_runtime::weights::{save_safetensors, WeightStore};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct TextEncoderArgs {
    /// A Qwen-Image-Edit `text_encoder/` folder (Qwen2_5_VLForConditionalGeneration checkpoint).
    #[arg(long)]
    pub weights: PathBuf,
    /// safetensors with input_ids [B, S] and optionally attention_mask [B, S], image_embeds
    /// [N, hidden] + image_grid_thw [n_images, 3].
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `hidden_states` [B, S, hidden] (safetensors, f32).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute device: cpu, cuda or cuda:N; `QIE_DEVICE` sets the default.
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Precision of weights and (on CUDA) storage; f32 compute either way.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// RoPE positions 0..S-1 on every axis, as transformers 5.x computes them under diffusers
    /// 0.42.1 (no mm_token_type_ids), instead of the multimodal get_rope_index positions.
    #[arg(long)]
    pub sequential_positions: bool,
    /// A .qie source to use instead of the bundled one.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// A safetensors file with the reference `hidden_states` (`hidden_states_sequential` with
    /// --sequential-positions): prints rel-L2 over the valid tokens and fails above --tolerance.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// rel-L2 limit for --compare (default 1e-4 for f32, 2e-2 for bf16).
    #[arg(long, value_parser = crate::numeric_args::non_negative_f64)]
    pub tolerance: Option<f64>,
}

pub fn run(args: TextEncoderArgs) -> Result<(), String> {
    let options = ModelOptions {
        precision: match args.dtype {
            DTypeArg::F32 => WeightPrecision::F32,
            DTypeArg::Bf16 => WeightPrecision::Bf16,
        },
        source: args.model_file.clone(),
        backend: make_backend(&args.device, args.dtype)?,
        ..ModelOptions::default()
    };
    let start = Instant::now();
    let mut model =
        QwenVlLanguageModel::load(&args.weights, &options).map_err(|e| e.to_string())?;
    if args.sequential_positions {
        model.position_mode = PositionMode::Sequential;
    }
    let loaded = start.elapsed();
    let inputs = TextEncoderInputs::load(&args.inputs).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let hidden = model
        .forward(
            &inputs.input_ids,
            &inputs.attention_mask,
            inputs.image_embeds.as_ref(),
            &inputs.grid_thw,
        )
        .map_err(|e| e.to_string())?;
    let ran = start.elapsed();
    let values = hidden.to_f32_vec();
    save_safetensors(
        &args.out,
        &[("hidden_states", hidden.shape().to_vec(), values.as_slice())],
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "text encoder on {}: {} layers, batch {}, {} tokens, {} images: load {:.2} s, forward {:.3} s; wrote hidden_states {:?} to {}",
        model.backend_name(),
        model.config.num_hidden_layers,
        inputs.batch(),
        inputs.seq_len(),
        inputs.grid_thw.len(),
        loaded.as_secs_f64(),
        ran.as_secs_f64(),
        hidden.shape(),
        args.out.display()
    );
    if let Some(reference) = &args.compare {
        let name = if args.sequential_positions {
            "hidden_states_sequential"
        } else {
            "hidden_states"
        };
        let store = WeightStore::open(reference).map_err(|e| e.to_string())?;
        let expected = store.load_f32(name).map_err(|e| e.to_string())?;
        if expected.len() != values.len() {
            return Err(format!(
                "--compare: `{name}` in {} has {} elements, the output has {}",
                reference.display(),
                expected.len(),
                values.len()
            ));
        }
        let width = model.config.hidden_size;
        let mask = inputs.attention_mask.iter().flatten();
        let (mut diff, mut norm, mut finite) = (0.0f64, 0.0f64, true);
        for ((out, want), &m) in values.chunks(width).zip(expected.chunks(width)).zip(mask) {
            if m == 0 {
                continue;
            }
            for (&o, &r) in out.iter().zip(want) {
                finite &= o.is_finite();
                diff += (o as f64 - r as f64).powi(2);
                norm += (r as f64).powi(2);
            }
        }
        let rel = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
        let tolerance = args.tolerance.unwrap_or(match args.dtype {
            DTypeArg::F32 => 1e-4,
            DTypeArg::Bf16 => 2e-2,
        });
        println!("compare `{name}` (valid tokens): rel-L2 {rel:.3e} (tolerance {tolerance:.0e})");
        if !finite || rel.is_nan() || rel > tolerance {
            return Err(format!(
                "--compare: rel-L2 {rel:.3e} exceeds {tolerance:.0e}{}",
                if finite { "" } else { " (output has NaN/inf)" }
            ));
        }
    }
    Ok(())
}
