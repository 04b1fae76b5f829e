//! `qie backward dit`: the loss of one training step and the gradient of every tensor of a LoRA
//! file, for parity checks against diffusers + peft (like `qie forward dit` for the forward).

use crate::cmd_forward::{make_backend, DTypeArg};
use clap::{Args, Subcommand};
use qie_models::qwen_image::{format_img_shapes, parse_img_shapes, DitInputs, DitOptions};
use qie_models::train::lora_grad::lora_file_gradients;
use qie_models::WeightPrecision;
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_runtime::Tensor;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BackwardCommand {
    /// QwenImageTransformer2DModel with a LoRA: loss = mean((sample[:, :S_target] - target)^2),
    /// gradients of the LoRA's tensors.
    Dit(BackwardDitArgs),
}

#[derive(Args)]
pub struct BackwardDitArgs {
    /// A diffusers `transformer/` folder.
    #[arg(long)]
    pub weights: PathBuf,
    /// safetensors with the DiT inputs, as for `qie forward dit`.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Frames x height x width in patches per image, target first: `1x32x32,1x32x48`.
    #[arg(long)]
    pub img_shapes: String,
    /// The LoRA (peft/diffusers, DiffSynth, kohya or ComfyUI layout) whose gradients are wanted.
    #[arg(long)]
    pub lora: PathBuf,
    /// safetensors with `target` [B, S_target, out_channels * 4] for the first image's tokens.
    #[arg(long)]
    pub target: PathBuf,
    /// Where to write `loss` and one gradient per LoRA tensor, under the file's names.
    #[arg(long)]
    pub out: PathBuf,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Storage precision (f32 for exact checks).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// A .qie source to use instead of the bundled DiT (architecture variants).
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// Reference gradients (same names): prints rel-L2 and fails above --tolerance.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// rel-L2 limit for --compare (default 1e-4 for f32, 2e-2 for bf16).
    #[arg(long, value_parser = crate::numeric_args::non_negative_f64)]
    pub tolerance: Option<f64>,
}

pub fn run(cmd: BackwardCommand) -> Result<(), String> {
    match cmd {
        BackwardCommand::Dit(args) => run_dit(args),
    }
}

fn run_dit(args: BackwardDitArgs) -> Result<(), String> {
    let backend = make_backend(&args.device, args.dtype)?;
    let img_shapes = parse_img_shapes(&args.img_shapes).map_err(|e| e.to_string())?;
    let options = DitOptions {
        precision: match args.dtype {
            DTypeArg::F32 => WeightPrecision::F32,
            DTypeArg::Bf16 => WeightPrecision::Bf16,
        },
        source: args.model_file.clone(),
        backend,
        ..DitOptions::default()
    };
    let inputs = DitInputs::load(&args.inputs, img_shapes).map_err(|e| e.to_string())?;
    let target = load_target(&args.target)?;
    let start = Instant::now();
    let result = lora_file_gradients(&args.weights, &options, &args.lora, &inputs, &target)
        .map_err(|e| e.to_string())?;
    let ran = start.elapsed();
    let loss = [result.loss];
    let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![("loss", vec![], &loss)];
    for (name, shape, values) in &result.grads {
        tensors.push((name.as_str(), shape.clone(), values.as_slice()));
    }
    save_safetensors(&args.out, &tensors).map_err(|e| e.to_string())?;
    eprintln!(
        "backward dit, img_shapes {}: loss {:.6}, {} LoRA tensors, {:.3} s; wrote {}",
        format_img_shapes(&inputs.img_shapes),
        result.loss,
        result.grads.len(),
        ran.as_secs_f64(),
        args.out.display()
    );
    if let Some(reference) = &args.compare {
        let tolerance = args.tolerance.unwrap_or(match args.dtype {
            DTypeArg::F32 => 1e-4,
            DTypeArg::Bf16 => 2e-2,
        });
        compare(reference, &tensors, tolerance)?;
    }
    Ok(())
}

fn load_target(path: &std::path::Path) -> Result<Tensor, String> {
    let at = |e: String| format!("--target {}: {e}", path.display());
    let store = WeightStore::open(path).map_err(|e| at(e.to_string()))?;
    let info = store
        .info("target")
        .ok_or_else(|| at("no tensor `target`".into()))?;
    let values = store.load_f32("target").map_err(|e| at(e.to_string()))?;
    Tensor::from_f32(&info.shape, values).map_err(|e| at(e.to_string()))
}

/// rel-L2 of the loss and of all gradients together, and the worst single tensor.
fn compare(
    reference: &std::path::Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    tolerance: f64,
) -> Result<(), String> {
    let store = WeightStore::open(reference).map_err(|e| e.to_string())?;
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    let mut worst = (0.0f64, "");
    for (name, _, values) in tensors {
        let expected = store
            .load_f32(name)
            .map_err(|e| format!("--compare {}: {e}", reference.display()))?;
        if expected.len() != values.len() {
            return Err(format!(
                "--compare: `{name}` has {} values, the reference {}",
                values.len(),
                expected.len()
            ));
        }
        let (mut d, mut n) = (0.0f64, 0.0f64);
        for (&o, &r) in values.iter().zip(&expected) {
            d += (o as f64 - r as f64).powi(2);
            n += (r as f64).powi(2);
        }
        if !values.iter().all(|v| v.is_finite()) {
            return Err(format!("--compare: `{name}` has NaN/inf"));
        }
        let rel = if n > 0.0 { (d / n).sqrt() } else { d.sqrt() };
        if rel > worst.0 {
            worst = (rel, name);
        }
        if *name != "loss" {
            diff += d;
            norm += n;
        }
    }
    let rel = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
    println!(
        "compare gradients: rel-L2 {rel:.3e} over all tensors, worst `{}` {:.3e} (tolerance {tolerance:.0e})",
        worst.1, worst.0
    );
    if rel.is_nan() || rel > tolerance || worst.0 > tolerance {
        return Err(format!(
            "--compare: rel-L2 {rel:.3e} (worst `{}` {:.3e}) exceeds {tolerance:.0e}",
            worst.1, worst.0
        ));
    }
    Ok(())
}
