//! `qie forward vae-encode | vae-decode`: the Qwen-Image VAE on tensors from a safetensors file,
//! for parity checks against diffusers' AutoencoderKLQwenImage.

use crate::cmd_forward::{compare, make_backend, DTypeArg};
use clap::Args;
use qie_models::qwen_image::vae::QwenImageVae;
use qie_models::qwen_image::vae_tiling::VaeTiling;
use qie_models::{ModelOptions, WeightPrecision};
use qie_runtime::weights::{save_safetensors, WeightStore};
use qie_runtime::Tensor;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct VaeCommonArgs {
    /// A diffusers `vae/` folder: config.json + safetensors.
    #[arg(long)]
    pub weights: PathBuf,
    /// safetensors holding the input tensor (see --input-name).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Name of the input tensor in --inputs (default: `image` to encode, `latents` to decode).
    /// [B, C, H, W]; diffusers' [B, C, 1, H, W] is accepted too.
    #[arg(long)]
    pub input_name: Option<String>,
    /// Where to write the output (`latent` or `sample`, safetensors, f32).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute device: cpu, cuda or cuda:N; `QIE_DEVICE` sets the default.
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Precision. CPU: weights rounded to bf16 or not, f32 compute either way. CUDA: storage
    /// dtype of weights and activations, f32 compute either way.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DTypeArg,
    /// A .qie source to use instead of the bundled one.
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// A safetensors file with the reference output: prints rel-L2 and fails above --tolerance.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// Name of the reference tensor in --compare (default: the output's name, `_bf16` appended
    /// for --dtype bf16 when present).
    #[arg(long)]
    pub compare_name: Option<String>,
    /// rel-L2 limit for --compare (default 1e-4 for f32, 2e-2 for bf16).
    #[arg(long, value_parser = crate::numeric_args::non_negative_f64)]
    pub tolerance: Option<f64>,
}

#[derive(Args)]
pub struct VaeEncodeArgs {
    #[command(flatten)]
    pub common: VaeCommonArgs,
}

#[derive(Args)]
pub struct VaeDecodeArgs {
    #[command(flatten)]
    pub common: VaeCommonArgs,
    /// Decode in overlapping tiles like diffusers' enable_tiling() (output not clamped).
    #[arg(long)]
    pub tiled: bool,
    /// Tile size in image pixels, HxW (diffusers' tile_sample_min_height/width).
    #[arg(long, default_value = "256x256")]
    pub tile_size: String,
    /// Tile stride in image pixels, HxW (diffusers' tile_sample_stride_height/width).
    #[arg(long, default_value = "192x192")]
    pub tile_stride: String,
}

pub fn run_encode(args: VaeEncodeArgs) -> Result<(), String> {
    let a = &args.common;
    let (vae, input) = load(a, "image")?;
    let start = Instant::now();
    let latent = vae.encode(&input).map_err(|e| e.to_string())?;
    finish(a, &vae, "encode", "latent", &latent, start)
}

pub fn run_decode(args: VaeDecodeArgs) -> Result<(), String> {
    let a = &args.common;
    let tiling = if args.tiled {
        let (h, w) = parse_hw(&args.tile_size, "--tile-size")?;
        let (sh, sw) = parse_hw(&args.tile_stride, "--tile-stride")?;
        Some(VaeTiling {
            tile_sample_min_height: h,
            tile_sample_min_width: w,
            tile_sample_stride_height: sh,
            tile_sample_stride_width: sw,
        })
    } else {
        None
    };
    let (vae, input) = load(a, "latents")?;
    let start = Instant::now();
    let sample = match &tiling {
        Some(t) => vae.decode_tiled(&input, t),
        None => vae.decode(&input),
    }
    .map_err(|e| e.to_string())?;
    finish(a, &vae, "decode", "sample", &sample, start)
}

fn load(a: &VaeCommonArgs, default_input: &str) -> Result<(QwenImageVae, Tensor), String> {
    let backend = make_backend(&a.device, a.dtype)?;
    let options = ModelOptions {
        precision: match a.dtype {
            DTypeArg::F32 => WeightPrecision::F32,
            DTypeArg::Bf16 => WeightPrecision::Bf16,
        },
        source: a.model_file.clone(),
        backend,
        ..ModelOptions::default()
    };
    let start = Instant::now();
    let vae = QwenImageVae::load(&a.weights, &options).map_err(|e| e.to_string())?;
    eprintln!(
        "vae: loaded {} in {:.2} s",
        a.weights.display(),
        start.elapsed().as_secs_f64()
    );
    let name = a.input_name.as_deref().unwrap_or(default_input);
    Ok((vae, read_input(&a.inputs, name)?))
}

/// Reads `name` as f32, dropping diffusers' single-frame time axis ([B, C, 1, H, W]).
fn read_input(path: &Path, name: &str) -> Result<Tensor, String> {
    let store = WeightStore::open(path).map_err(|e| e.to_string())?;
    let info = store.info(name).ok_or_else(|| {
        format!(
            "{}: no tensor `{name}` (found: {})",
            path.display(),
            store.names().join(", ")
        )
    })?;
    let mut shape = info.shape.clone();
    if shape.len() == 5 && shape[2] == 1 {
        shape.remove(2);
    }
    let values = store.load_f32(name).map_err(|e| e.to_string())?;
    Tensor::from_f32(&shape, values).map_err(|e| format!("{}: `{name}`: {e}", path.display()))
}

fn finish(
    a: &VaeCommonArgs,
    vae: &QwenImageVae,
    what: &str,
    output: &str,
    result: &Tensor,
    start: Instant,
) -> Result<(), String> {
    let ran = start.elapsed();
    let values = result.to_f32_vec();
    save_safetensors(
        &a.out,
        &[(output, result.shape().to_vec(), values.as_slice())],
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "vae {what} on {}: {:.3} s; wrote {output} {:?} to {}",
        vae.backend_name(),
        ran.as_secs_f64(),
        result.shape(),
        a.out.display()
    );
    if let Some(reference) = &a.compare {
        let (name, tolerance) = match (&a.compare_name, a.dtype) {
            (Some(n), DTypeArg::F32) => (n.clone(), 1e-4),
            (Some(n), DTypeArg::Bf16) => (n.clone(), 2e-2),
            (None, DTypeArg::F32) => (output.to_string(), 1e-4),
            (None, DTypeArg::Bf16) => (format!("{output}_bf16"), 2e-2),
        };
        compare(
            reference,
            &name,
            output,
            &values,
            a.tolerance.unwrap_or(tolerance),
        )?;
    }
    Ok(())
}

fn parse_hw(text: &str, flag: &str) -> Result<(usize, usize), String> {
    let parts: Vec<&str> = text.split(['x', 'X', ',']).collect();
    match parts.as_slice() {
        [h, w] => match (h.trim().parse(), w.trim().parse()) {
            (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok((h, w)),
            _ => Err(format!("{flag}: expected HxW in pixels, got `{text}`")),
        },
        [s] => s
            .trim()
            .parse()
            .ok()
            .filter(|&s: &usize| s > 0)
            .map(|s| (s, s))
            .ok_or_else(|| format!("{flag}: expected HxW in pixels, got `{text}`")),
        _ => Err(format!("{flag}: expected HxW in pixels, got `{text}`")),
    }
}
