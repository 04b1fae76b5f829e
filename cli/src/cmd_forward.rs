//! `qie forward <component>`: one component on tensors from a safetensors file, for parity checks
//! against PyTorch.

use clap::{Args, Subcommand, ValueEnum};
use qie_ir::dsl::Program;
use qie_models::qwen_image::{
    format_img_shapes, parse_img_shapes, DitInputs, DitOptions, QwenImageDit, WeightPrecision,
};
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_runtime::Backend;
use qie_runtime::{DeviceSpec, StorageMode};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Subcommand)]
pub enum ForwardCommand {
    /// QwenImageTransformer2DModel: inputs named as diffusers' forward arguments, output `sample`.
    Dit(DitArgs),
    /// AutoencoderKLQwenImage encoder: `image` [B, 3, H, W] in [-1, 1] -> posterior mean `latent`.
    VaeEncode(crate::cmd_forward_vae::VaeEncodeArgs),
    /// AutoencoderKLQwenImage decoder: raw `latents` [B, 16, h, w] -> `sample` [B, 3, 8h, 8w].
    VaeDecode(crate::cmd_forward_vae::VaeDecodeArgs),
    /// Qwen2.5-VL language model (text_encoder/): `input_ids` (+ image embeds) -> `hidden_states`.
    TextEncoder(crate::cmd_forward_text::TextEncoderArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
}

#[derive(Args)]
pub struct DitArgs {
    /// A diffusers `transformer/` folder: config.json + safetensors (sharded or not).
    #[arg(long)]
    pub weights: PathBuf,
    /// safetensors with hidden_states, encoder_hidden_states, timestep [, encoder_hidden_states_mask,
    /// additional_t_cond].
    #[arg(long)]
    pub inputs: PathBuf,
    /// Frames x height x width in patches per image, target first: `1x32x32,1x32x48`.
    #[arg(long)]
    pub img_shapes: String,
    /// Where to write `sample` (safetensors, f32).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute device: cpu, cuda or cuda:N; `QIE_DEVICE` sets the default.
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Precision. CPU: weights rounded to bf16 or not, f32 compute either way. CUDA: storage
    /// dtype of weights and activations (bf16: cuBLASLt and flash attention; f32: generic
    /// kernels, for exact checks), f32 compute either way.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// A .qie source to use instead of the bundled one (architecture variants).
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// A safetensors file with the reference `sample` (and `sample_bf16` for --dtype bf16): prints
    /// rel-L2 and fails when it exceeds --tolerance.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// rel-L2 limit for --compare (default 1e-4 for f32, 2e-2 for bf16).
    #[arg(long, value_parser = crate::numeric_args::non_negative_f64)]
    pub tolerance: Option<f64>,
}

pub fn run(cmd: ForwardCommand) -> Result<(), String> {
    match cmd {
        ForwardCommand::Dit(args) => run_dit(args),
        ForwardCommand::VaeEncode(args) => crate::cmd_forward_vae::run_encode(args),
        ForwardCommand::VaeDecode(args) => crate::cmd_forward_vae::run_decode(args),
        ForwardCommand::TextEncoder(args) => crate::cmd_forward_text::run(args),
    }
}

fn run_dit(args: DitArgs) -> Result<(), String> {
    let backend = make_backend(&args.device, args.dtype)?;
    let img_shapes = parse_img_shapes(&args.img_shapes).map_err(|e| e.to_string())?;
    let precision = match args.dtype {
        DTypeArg::F32 => WeightPrecision::F32,
        DTypeArg::Bf16 => WeightPrecision::Bf16,
    };
    let options = DitOptions {
        precision,
        source: args.model_file.clone(),
        backend,
        ..DitOptions::default()
    };
    let start = Instant::now();
    let dit = QwenImageDit::load(&args.weights, &options).map_err(|e| e.to_string())?;
    let loaded = start.elapsed();
    let inputs = DitInputs::load(&args.inputs, img_shapes).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let sample = dit.forward(&inputs).map_err(|e| e.to_string())?;
    let ran = start.elapsed();
    let values = sample.to_f32_vec();
    save_safetensors(
        &args.out,
        &[("sample", sample.shape().to_vec(), values.as_slice())],
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "dit on {}: {} layers, img_shapes {}, batch {}: load {:.2} s, forward {:.3} s; wrote sample {:?} to {}",
        dit.backend_name(),
        dit.config.num_layers,
        format_img_shapes(&inputs.img_shapes),
        inputs.batch(),
        loaded.as_secs_f64(),
        ran.as_secs_f64(),
        sample.shape(),
        args.out.display()
    );
    if let Some(reference) = &args.compare {
        let (name, default_tol) = match args.dtype {
            DTypeArg::F32 => ("sample", 1e-4),
            DTypeArg::Bf16 => ("sample_bf16", 2e-2),
        };
        compare(
            reference,
            name,
            "sample",
            &values,
            args.tolerance.unwrap_or(default_tol),
        )?;
    }
    Ok(())
}

/// `--compare`: rel-L2 of `values` against `preferred` (else `fallback`) in `reference`; an error
/// above `tolerance` or on NaN/inf.
pub fn compare(
    reference: &Path,
    preferred: &str,
    fallback: &str,
    values: &[f32],
    tolerance: f64,
) -> Result<(), String> {
    let store = WeightStore::open(reference).map_err(|e| e.to_string())?;
    let name = if store.contains(preferred) {
        preferred
    } else {
        fallback
    };
    let expected = store.load_f32(name).map_err(|e| e.to_string())?;
    if expected.len() != values.len() {
        return Err(format!(
            "--compare: `{name}` in {} has {} elements, the output has {}",
            reference.display(),
            expected.len(),
            values.len()
        ));
    }
    let (mut diff, mut norm, mut max_abs) = (0.0f64, 0.0f64, 0.0f64);
    for (&o, &r) in values.iter().zip(&expected) {
        let d = o as f64 - r as f64;
        diff += d * d;
        norm += (r as f64) * (r as f64);
        max_abs = max_abs.max(d.abs());
    }
    let rel = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
    let finite = values.iter().all(|v| v.is_finite());
    println!(
        "compare `{name}`: rel-L2 {rel:.3e}, max |diff| {max_abs:.3e} (tolerance {tolerance:.0e})"
    );
    if !finite || rel.is_nan() || rel > tolerance {
        return Err(format!(
            "--compare: rel-L2 {rel:.3e} exceeds {tolerance:.0e}{}",
            if finite { "" } else { " (output has NaN/inf)" }
        ));
    }
    Ok(())
}

/// Checks a `--device` value (cpu, cuda, cuda:N).
pub fn check_device(device: &str) -> Result<DeviceSpec, String> {
    DeviceSpec::parse(device).map_err(|e| format!("--device: {e}"))
}

/// The backend `--device` names: None for the CPU (the driver's default), a device backend with
/// the storage dtype of `--dtype` otherwise, or why the device cannot be used here.
pub fn make_backend(device: &str, dtype: DTypeArg) -> Result<Option<Arc<dyn Backend>>, String> {
    let spec = check_device(device)?;
    if spec == DeviceSpec::Cpu {
        return Ok(None);
    }
    let mode = match dtype {
        DTypeArg::F32 => StorageMode::F32,
        DTypeArg::Bf16 => StorageMode::Bf16,
    };
    spec.open(mode)
        .map(Some)
        .map_err(|e| format!("--device {device}: {e}"))
}

/// Loads a .qie file for `qie compile`: imports resolve next to it, then among the bundled sources.
pub fn load_program(path: &Path) -> Result<Program, String> {
    qie_models::sources::load_program_file(path).map_err(|e| e.to_string())
}
