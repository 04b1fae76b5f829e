//! `EditPipeline`: Qwen-Image-Edit(-Plus) end to end, step for step what diffusers'
//! QwenImageEditPipeline / QwenImageEditPlusPipeline do (see docs/pipeline.md).

use super::encoder::{at, prepare_images, vae_sizes, EditEncoder};
use super::latents::{concat_tokens, f32_data, leading_tokens, pack, tensor, unpack};
use super::{EditSettings, Flavour, StageTimes};
use crate::hub::ModelPaths;
use crate::lora::{load_dit_with_loras, LoraSet};
use crate::preprocess::qwen2vl_image::{ImageBackend, Qwen2VlImageProcessor};
use crate::preprocess::{QwenTokenizer, VaeImageProcessor};
use crate::qwen25vl::vision::QwenVisionTower;
use crate::qwen25vl::{PositionMode, QwenVlLanguageModel};
use crate::qwen_image::vae::QwenImageVae;
use crate::qwen_image::{DitInputs, QwenImageDit};
use crate::scheduler::{
    gaussian_noise, qwen_default_sigmas, true_cfg, FlowMatchEulerScheduler, SchedulerConfig,
};
use crate::{ModelError, ModelOptions};
use image::RgbImage;
use qie_runtime::Tensor;
use std::time::Instant;

pub struct EditPipeline {
    pub flavour: Flavour,
    pub paths: ModelPaths,
    dit: QwenImageDit,
    stages: EditStages,
}

/// Everything of an edit but the DiT: the encoders, the scheduler's configuration, the denoising
/// loop and the VAE decode. Each call borrows the DiT, so one owned elsewhere (the model
/// `qie train` is training) runs exactly the loop [`EditPipeline`] runs, without a copy of its
/// weights.
pub struct EditStages {
    encoder: EditEncoder,
    scheduler: SchedulerConfig,
}

/// The conditioning of one edit: what the DiT sees besides the noisy target tokens.
pub struct EncodedInputs {
    pub prompt_embeds: Tensor,
    /// With CFG: the negative prompt's embeddings.
    pub negative_embeds: Option<Tensor>,
    /// Every input's packed latents, concatenated: [1, S_refs, 64].
    pub image_latents: Tensor,
    /// Latent grid of each input, [1, H/16, W/16].
    pub ref_shapes: Vec<[usize; 3]>,
}

/// What an edit produced.
pub struct EditOutput {
    pub image: RgbImage,
    /// Final packed latents [1, S, 64] before VAE decoding (diffusers' layout).
    pub latents: Tensor,
    pub width: usize,
    pub height: usize,
    pub times: StageTimes,
}

/// Called after every denoising step with (step, total).
pub type StepCallback<'a> = &'a mut dyn FnMut(usize, usize);

/// What one denoising step produced, for observers (golden tests, live previews).
pub struct StepState<'a> {
    /// 1-based, as in [`StepCallback`].
    pub step: usize,
    pub total: usize,
    /// The scheduler's timestep (the DiT sees it / 1000).
    pub timestep: f32,
    /// The noise prediction the scheduler stepped with (after CFG), packed [1, S, 64].
    pub noise_pred: &'a Tensor,
    /// The latents after the step, packed [1, S, 64].
    pub latents: &'a Tensor,
}

impl EditPipeline {
    /// Loads every component of a diffusers-layout edit checkpoint; `loras` are merged into the
    /// DiT's weights.
    pub fn load(
        paths: ModelPaths,
        options: &ModelOptions,
        loras: &LoraSet,
    ) -> Result<EditPipeline, ModelError> {
        let stages = EditStages::load(&paths, options)?;
        let dit = if loras.is_empty() {
            QwenImageDit::load(&paths.transformer, options)
        } else {
            load_dit_with_loras(&paths.transformer, options, loras).map(|(dit, _)| dit)
        }
        .map_err(at("transformer", &paths.transformer))?;
        Ok(EditPipeline {
            flavour: stages.flavour(),
            paths,
            dit,
            stages,
        })
    }

    /// Assembles a pipeline from components already built (random-weight benchmarks).
    #[allow(clippy::too_many_arguments)]
    pub fn from_components(
        flavour: Flavour,
        paths: ModelPaths,
        dit: QwenImageDit,
        vae: QwenImageVae,
        vision: QwenVisionTower,
        text: QwenVlLanguageModel,
        tokenizer: QwenTokenizer,
        image_processor: Qwen2VlImageProcessor,
        scheduler: SchedulerConfig,
    ) -> EditPipeline {
        EditPipeline {
            flavour,
            paths,
            dit,
            stages: EditStages {
                encoder: EditEncoder {
                    flavour,
                    vae,
                    vision,
                    text,
                    tokenizer,
                    image_processor,
                },
                scheduler,
            },
        }
    }

    /// The conditioning half (VAE, VL model, preprocessors) that `qie cache` shares.
    pub fn encoder(&self) -> &EditEncoder {
        self.stages.encoder()
    }

    /// The DiT's backend memory (`None` on the CPU); every component shares one backend.
    pub fn device_memory(&self) -> Option<qie_runtime::MemoryReport> {
        self.dit.device_memory()
    }

    /// RoPE positions of the VL model: `Multimodal` (3-D, how the model was trained; transformers
    /// 4.x) or `Sequential` (what diffusers 0.42.1 with transformers 5.x computes, diffusers #14194).
    pub fn set_text_positions(&mut self, mode: PositionMode) {
        self.stages.set_text_positions(mode);
    }

    /// How the VL image processor resizes: torchvision (transformers' default when it is
    /// installed, which Qwen2VLProcessor requires) or PIL.
    pub fn set_vl_resize(&mut self, backend: ImageBackend) {
        self.stages.set_vl_resize(backend);
    }

    /// The output size for these inputs and settings (multiples of 16).
    pub fn output_size(&self, images: &[RgbImage], settings: &EditSettings) -> (usize, usize) {
        self.stages.output_size(images, settings)
    }

    /// Runs one edit. `init_noise` ([1, S, 64] packed, diffusers' layout) replaces the seeded noise.
    pub fn edit(
        &self,
        images: &[RgbImage],
        settings: &EditSettings,
        init_noise: Option<&Tensor>,
        on_step: StepCallback<'_>,
    ) -> Result<EditOutput, ModelError> {
        self.stages
            .edit(&self.dit, images, settings, init_noise, on_step)
    }

    /// [`Self::edit`], showing every step's noise prediction and latents to `on_step`.
    pub fn edit_observed(
        &self,
        images: &[RgbImage],
        settings: &EditSettings,
        init_noise: Option<&Tensor>,
        on_step: &mut dyn FnMut(&StepState<'_>),
    ) -> Result<EditOutput, ModelError> {
        self.stages
            .edit_observed(&self.dit, images, settings, init_noise, on_step)
    }

    /// The conditioning [`Self::edit`] samples with (see [`EditStages::encode_inputs`]).
    pub fn encode_inputs(
        &self,
        images: &[RgbImage],
        settings: &EditSettings,
    ) -> Result<EncodedInputs, ModelError> {
        self.stages.encode_inputs(images, settings)
    }

    /// Prompt embeddings [1, S - 64, D] per prompt for the VL-sized input images (each prompt
    /// encoded alone, as diffusers does, so there is no padding mask); the vision tower runs once.
    pub fn encode_text(
        &self,
        vl_images: &[RgbImage],
        prompts: &[&str],
    ) -> Result<Vec<Tensor>, ModelError> {
        self.stages.encoder.encode_text(vl_images, prompts)
    }
}

impl EditStages {
    /// Loads the encoders and the scheduler's configuration of a diffusers-layout edit
    /// checkpoint (not the transformer).
    pub fn load(paths: &ModelPaths, options: &ModelOptions) -> Result<EditStages, ModelError> {
        let scheduler = SchedulerConfig::load(&paths.scheduler.join("scheduler_config.json"))
            .map_err(at("scheduler", &paths.scheduler))?;
        let encoder = EditEncoder::load(paths, options)?;
        Ok(EditStages { encoder, scheduler })
    }

    pub fn flavour(&self) -> Flavour {
        self.encoder.flavour
    }

    /// The conditioning half (VAE, VL model, preprocessors).
    pub fn encoder(&self) -> &EditEncoder {
        &self.encoder
    }

    /// See [`EditPipeline::set_text_positions`].
    pub fn set_text_positions(&mut self, mode: PositionMode) {
        self.encoder.set_text_positions(mode);
    }

    /// See [`EditPipeline::set_vl_resize`].
    pub fn set_vl_resize(&mut self, backend: ImageBackend) {
        self.encoder.set_vl_resize(backend);
    }

    /// The output size for these inputs and settings (multiples of 16).
    pub fn output_size(&self, images: &[RgbImage], settings: &EditSettings) -> (usize, usize) {
        let last = images.last().expect("at least one image");
        settings.output_size(last.width(), last.height())
    }

    /// [`EditPipeline::edit`] with the DiT `dit`.
    pub fn edit(
        &self,
        dit: &QwenImageDit,
        images: &[RgbImage],
        settings: &EditSettings,
        init_noise: Option<&Tensor>,
        on_step: StepCallback<'_>,
    ) -> Result<EditOutput, ModelError> {
        self.edit_observed(dit, images, settings, init_noise, &mut |s| {
            on_step(s.step, s.total)
        })
    }

    /// [`EditPipeline::edit_observed`] with the DiT `dit`.
    pub fn edit_observed(
        &self,
        dit: &QwenImageDit,
        images: &[RgbImage],
        settings: &EditSettings,
        init_noise: Option<&Tensor>,
        on_step: &mut dyn FnMut(&StepState<'_>),
    ) -> Result<EditOutput, ModelError> {
        let start = Instant::now();
        let mut times = StageTimes::default();
        self.flavour().check_image_count(images.len())?;
        if settings.steps == 0 && settings.sigmas.is_none() {
            return Err(ModelError::new("--steps must be at least 1"));
        }
        let (width, height) = self.output_size(images, settings);
        if width == 0 || height == 0 {
            return Err(ModelError::new(format!(
                "output size {width}x{height} is empty"
            )));
        }

        let EncodedInputs {
            prompt_embeds,
            negative_embeds,
            image_latents,
            ref_shapes,
        } = self.encode_inputs_timed(images, settings, &mut times)?;

        // Sampling.
        let t = Instant::now();
        let (lh, lw) = (height / 8, width / 8);
        let target_tokens = (lh / 2) * (lw / 2);
        let channels = dit.config.in_channels;
        let mut latents = match init_noise {
            Some(noise) => {
                if noise.shape() != [1, target_tokens, channels] {
                    return Err(ModelError::new(format!(
                        "init noise has shape {:?}, this edit needs [1, {target_tokens}, {channels}] ({width}x{height})",
                        noise.shape()
                    )));
                }
                noise.clone()
            }
            None => {
                let c = channels / 4;
                let noise = gaussian_noise(settings.seed, &[1, c, lh, lw]);
                pack(&tensor(&[1, c, lh, lw], noise)?)?
            }
        };
        let mut img_shapes = vec![[1, lh / 2, lw / 2]];
        img_shapes.extend(ref_shapes);
        let mut scheduler = FlowMatchEulerScheduler::new(self.scheduler.clone())?;
        let mu = self.scheduler.mu_for(target_tokens);
        let sigmas = settings
            .sigmas
            .clone()
            .unwrap_or_else(|| qwen_default_sigmas(settings.steps));
        scheduler.set_timesteps(None, Some(sigmas), Some(mu))?;
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &ts) in timesteps.iter().enumerate() {
            let step_start = Instant::now();
            let input = concat_tokens(&[&latents, &image_latents])?;
            let cond = self.denoise(dit, &input, &prompt_embeds, ts, &img_shapes, target_tokens)?;
            let pred = match &negative_embeds {
                Some(neg) => {
                    let uncond = self.denoise(dit, &input, neg, ts, &img_shapes, target_tokens)?;
                    let combined = true_cfg(
                        f32_data(&cond)?,
                        f32_data(&uncond)?,
                        settings.cfg,
                        settings.cfg_rescale,
                        channels,
                    )?;
                    tensor(cond.shape(), combined)?
                }
                None => cond,
            };
            let next = scheduler.step(f32_data(&pred)?, f32_data(&latents)?)?;
            latents = tensor(latents.shape(), next)?;
            times.step_s.push(super::timings::since(step_start));
            on_step(&StepState {
                step: i + 1,
                total: timesteps.len(),
                timestep: ts,
                noise_pred: &pred,
                latents: &latents,
            });
        }
        times.denoise_s = super::timings::since(t);

        // Decoding.
        let t = Instant::now();
        let z = self
            .encoder
            .vae
            .denormalize_latents(&unpack(&latents, lh, lw)?);
        let decoded = if settings.tiled_decode {
            self.encoder.vae.decode_tiled(&z, &Default::default())?
        } else {
            self.encoder.vae.decode(&z)?
        };
        let image = VaeImageProcessor::default()
            .postprocess(&decoded)?
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::new("the VAE decoded no image"))?;
        times.vae_decode_s = super::timings::since(t);
        times.total_s = super::timings::since(start);
        Ok(EditOutput {
            image,
            latents,
            width,
            height,
            times,
        })
    }

    /// The conditioning [`Self::edit`] samples with: inputs resized (VL and VAE areas), prompt
    /// (and negative prompt under CFG) encoded with them, reference latents packed.
    pub fn encode_inputs(
        &self,
        images: &[RgbImage],
        settings: &EditSettings,
    ) -> Result<EncodedInputs, ModelError> {
        self.flavour().check_image_count(images.len())?;
        self.encode_inputs_timed(images, settings, &mut StageTimes::default())
    }

    fn encode_inputs_timed(
        &self,
        images: &[RgbImage],
        settings: &EditSettings,
        times: &mut StageTimes,
    ) -> Result<EncodedInputs, ModelError> {
        // Input images at the VL and VAE areas (PIL Lanczos, as VaeImageProcessor.resize).
        let t = Instant::now();
        let vl_area = settings.vl_area.unwrap_or(self.flavour().vl_area());
        let vae_area = settings.vae_area.unwrap_or(self.flavour().vae_area());
        let prepared = prepare_images(
            self.flavour(),
            images,
            &vae_sizes(images, vae_area),
            vl_area,
        );
        times.preprocess_s = super::timings::since(t);

        // Text: the prompt and (with CFG) the negative prompt, sharing the vision tower's output.
        let t = Instant::now();
        let mut prompts = vec![settings.prompt.as_str()];
        if let (Some(neg), true) = (&settings.negative_prompt, settings.does_cfg()) {
            prompts.push(neg);
        }
        let mut embeds = self
            .encoder
            .encode_text(&prepared.vl_images, &prompts)?
            .into_iter();
        let prompt_embeds = embeds.next().expect("one per prompt");
        let negative_embeds = embeds.next();
        times.text_encoder_s = super::timings::since(t);

        // Reference latents: VAE posterior mode, normalised, packed, concatenated in order.
        let t = Instant::now();
        let image_latents = self.encoder.encode_references(&prepared.vae_inputs)?;
        times.vae_encode_s = super::timings::since(t);
        Ok(EncodedInputs {
            prompt_embeds,
            negative_embeds,
            image_latents,
            ref_shapes: prepared.grids,
        })
    }

    fn denoise(
        &self,
        dit: &QwenImageDit,
        input: &Tensor,
        prompt_embeds: &Tensor,
        timestep: f32,
        img_shapes: &[[usize; 3]],
        target_tokens: usize,
    ) -> Result<Tensor, ModelError> {
        let inputs = DitInputs {
            hidden_states: input.clone(),
            encoder_hidden_states: prompt_embeds.clone(),
            encoder_hidden_states_mask: None,
            timestep: tensor(&[1], vec![timestep / 1000.0f32])?,
            additional_t_cond: None,
            img_shapes: img_shapes.to_vec(),
        };
        let sample = dit.forward(&inputs)?;
        leading_tokens(&sample, target_tokens)
    }
}
