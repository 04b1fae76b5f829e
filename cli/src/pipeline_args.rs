//! Arguments `qie edit` and `qie infer` share: which checkpoint, where it runs, LoRAs and the
//! sampling settings.

use crate::cmd_forward::{make_backend, DTypeArg};
use crate::numeric_args::{non_negative_f32, positive, seed, sigma, steps};
use clap::Args;
use qie_models::hub::resolve_model;
use qie_models::lora::{parse_lora_spec, LoraFile, LoraSet};
use qie_models::pipeline::{EditPipeline, EditSettings};
use qie_models::preprocess::ImageBackend;
use qie_models::qwen25vl::PositionMode;
use qie_models::{ModelOptions, WeightPrecision};
use std::time::Instant;

#[derive(Args, Clone)]
pub struct PipelineArgs {
    /// A diffusers-layout folder (model_index.json, transformer/, vae/, text_encoder/, ...) or a
    /// hub id such as `Qwen/Qwen-Image-Edit-2511` (HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE apply).
    #[arg(long)]
    pub model: String,
    /// Compute device: cpu, cuda or cuda:N; `QIE_DEVICE` sets the default.
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weight/activation precision (default: bf16 on CUDA, f32 on the CPU).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// A LoRA file merged into the DiT, `path[:scale]` (peft/diffusers, DiffSynth or kohya keys).
    /// Repeatable.
    #[arg(long = "lora", value_parser = lora_spec)]
    pub loras: Vec<String>,
    /// 1-D RoPE positions in the VL model, as diffusers 0.42.1 with transformers 5.x computes them
    /// (diffusers issue #14194); the default is the 3-D multimodal positions the model was trained with.
    #[arg(long)]
    pub sequential_positions: bool,
    /// Resize the VL images with PIL instead of torchvision (transformers' image-processor backends).
    #[arg(long)]
    pub pil_vl_resize: bool,
}

impl PipelineArgs {
    /// Resolves the model, loads every component and merges the LoRAs.
    pub fn load(&self) -> Result<EditPipeline, String> {
        let start = Instant::now();
        let dtype = self.dtype.unwrap_or(if self.device == "cpu" {
            DTypeArg::F32
        } else {
            DTypeArg::Bf16
        });
        let options = ModelOptions {
            backend: make_backend(&self.device, dtype)?,
            precision: match dtype {
                DTypeArg::F32 => WeightPrecision::F32,
                DTypeArg::Bf16 => WeightPrecision::Bf16,
            },
            ..ModelOptions::default()
        };
        let mut loras = LoraSet::default();
        for spec in &self.loras {
            let (path, scale) = parse_lora_spec(spec).map_err(|e| format!("--lora {spec}: {e}"))?;
            let file = LoraFile::load(&path).map_err(|e| e.to_string())?;
            loras.files.push((file, scale));
        }
        let paths = resolve_model(&self.model).map_err(|e| e.to_string())?;
        let mut pipeline =
            EditPipeline::load(paths, &options, &loras).map_err(|e| e.to_string())?;
        if self.sequential_positions {
            pipeline.set_text_positions(PositionMode::Sequential);
        }
        if self.pil_vl_resize {
            pipeline.set_vl_resize(ImageBackend::Pil);
        }
        eprintln!(
            "loaded {} ({:?}) on {} in {:.1} s",
            self.model,
            pipeline.flavour,
            self.device,
            start.elapsed().as_secs_f64()
        );
        Ok(pipeline)
    }
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Negative prompt for true CFG (diffusers needs one for CFG; " " is the usual empty one).
    #[arg(long, default_value = " ")]
    pub negative_prompt: String,
    /// Denoising steps (1 to 10000).
    #[arg(long, default_value_t = 40, value_parser = steps)]
    pub steps: usize,
    /// true_cfg_scale (finite, >= 0); 1 or less disables CFG (one DiT pass per step, e.g.
    /// distilled LoRAs).
    #[arg(long, default_value_t = 4.0, value_parser = non_negative_f32)]
    pub cfg: f32,
    /// Plain CFG as DiffSynth-Studio does it (no per-token norm rescale).
    #[arg(long)]
    pub plain_cfg: bool,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0, value_parser = seed)]
    pub seed: u64,
    /// Output width (default: from the last input image's aspect at a 1024² area).
    #[arg(long, value_parser = positive)]
    pub width: Option<usize>,
    /// Output height.
    #[arg(long, value_parser = positive)]
    pub height: Option<usize>,
    /// The most pixels the output (and --vl-area, --vae-area) may have; larger sizes are refused
    /// before the model loads.
    #[arg(long, default_value_t = EditSettings::DEFAULT_MAX_PIXELS, value_parser = positive)]
    pub max_pixels: usize,
    /// Custom sigmas in [0, 1], comma separated (the schedule before the shift), replacing
    /// linspace(1, 1/N, N).
    #[arg(long, value_delimiter = ',', value_parser = sigma)]
    pub sigmas: Option<Vec<f32>>,
    /// Decode the VAE in overlapping tiles (large outputs).
    #[arg(long)]
    pub tiled_decode: bool,
    /// Pixel area the VL model sees each input at (default: the pipeline's; for parity tests).
    #[arg(long, hide = true, value_parser = positive)]
    pub vl_area: Option<usize>,
    /// Pixel area each input is VAE-encoded at (default: 1024²; for parity tests).
    #[arg(long, hide = true, value_parser = positive)]
    pub vae_area: Option<usize>,
    /// Pixel area the default output size is computed at (default: 1024²; for parity tests).
    #[arg(long, hide = true, value_parser = positive)]
    pub output_area: Option<usize>,
}

impl SamplingArgs {
    /// The settings for `prompt`, or why the flags cannot make an edit (sizes over
    /// --max-pixels, ...): call it before loading anything.
    pub fn checked_settings(&self, prompt: &str) -> Result<EditSettings, String> {
        let settings = self.settings(prompt);
        settings.check(self.max_pixels)?;
        Ok(settings)
    }

    pub fn settings(&self, prompt: &str) -> EditSettings {
        EditSettings {
            prompt: prompt.to_string(),
            negative_prompt: Some(self.negative_prompt.clone()),
            steps: self.steps,
            cfg: self.cfg,
            cfg_rescale: !self.plain_cfg,
            seed: self.seed,
            width: self.width,
            height: self.height,
            sigmas: self.sigmas.clone(),
            vl_area: self.vl_area,
            vae_area: self.vae_area,
            output_area: self.output_area,
            tiled_decode: self.tiled_decode,
        }
    }
}

/// `--lora path[:scale]`, checked while the flags are parsed (a non-finite scale is refused);
/// the spec is kept as written for the run records.
fn lora_spec(text: &str) -> Result<String, String> {
    parse_lora_spec(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}
