//! The conditioning half of the edit pipelines, shared by inference and `qie cache`: input images
//! sized for the VL model and the VAE, the prompt encoded with them, and VAE latents packed into
//! DiT tokens. [`super::EditPipeline`] runs exactly this before sampling, so a training cache
//! built from it conditions the DiT as inference does.

use super::latents::{concat_tokens, pack};
use super::prompt::prompt_embeds_from_hidden;
use super::Flavour;
use crate::hub::ModelPaths;
use crate::preprocess::qwen2vl_image::{expand_image_pads, ImageBackend, Qwen2VlImageProcessor};
use crate::preprocess::{calculate_dimensions, resize_lanczos, QwenTokenizer, VaeImageProcessor};
use crate::qwen25vl::vision::QwenVisionTower;
use crate::qwen25vl::{PositionMode, QwenVlLanguageModel};
use crate::qwen_image::vae::QwenImageVae;
use crate::{ModelError, ModelOptions};
use image::RgbImage;
use qie_runtime::Tensor;

/// The VAE, the VL model (vision tower + language model) and their preprocessors.
pub struct EditEncoder {
    pub flavour: Flavour,
    pub(crate) vae: QwenImageVae,
    pub(crate) vision: QwenVisionTower,
    pub(crate) text: QwenVlLanguageModel,
    pub(crate) tokenizer: QwenTokenizer,
    pub(crate) image_processor: Qwen2VlImageProcessor,
}

/// Input images ready for the encoders.
pub struct PreparedImages {
    /// What the VL model sees (Edit: the VAE-sized image; Plus: a separate VL-area resize).
    pub vl_images: Vec<RgbImage>,
    /// VAE inputs [1, 3, H, W] in [-1, 1].
    pub vae_inputs: Vec<Tensor>,
    /// Latent grids [1, H/16, W/16] of each input, for the DiT's `img_shapes`.
    pub grids: Vec<[usize; 3]>,
}

/// Adds which component (and its folder) an error came from.
pub(crate) fn at(what: &str, dir: &std::path::Path) -> impl Fn(ModelError) -> ModelError {
    let place = format!("{what} ({})", dir.display());
    move |e| e.context(&place)
}

/// Inference's VAE sizes: each image at `vae_area` and its own aspect (multiples of 32).
pub fn vae_sizes(images: &[RgbImage], vae_area: usize) -> Vec<(u32, u32)> {
    images
        .iter()
        .map(|img| calculate_dimensions(vae_area as f64, img.width() as f64 / img.height() as f64))
        .collect()
}

/// Resizes each input to its VAE size (`vae_sizes[i]`) and, for Plus, to `vl_area` for the VL
/// model (PIL Lanczos, as diffusers' VaeImageProcessor.resize).
pub fn prepare_images(
    flavour: Flavour,
    images: &[RgbImage],
    vae_sizes: &[(u32, u32)],
    vl_area: usize,
) -> PreparedImages {
    let mut prepared = PreparedImages {
        vl_images: Vec::new(),
        vae_inputs: Vec::new(),
        grids: Vec::new(),
    };
    for (img, &(vw, vh)) in images.iter().zip(vae_sizes) {
        let (vae_img, vae_input) = vae_input(img, (vw, vh));
        let vl_img = match flavour {
            Flavour::Edit => vae_img.clone(),
            Flavour::Plus => {
                let ratio = img.width() as f64 / img.height() as f64;
                let (cw, ch) = calculate_dimensions(vl_area as f64, ratio);
                resize_lanczos(img, cw, ch)
            }
        };
        prepared.grids.push([1, vh as usize / 16, vw as usize / 16]);
        prepared.vae_inputs.push(vae_input);
        prepared.vl_images.push(vl_img);
    }
    prepared
}

/// An image resized to its VAE size and the VAE input [1, 3, H, W] in [-1, 1] made from it.
pub fn vae_input(img: &RgbImage, (w, h): (u32, u32)) -> (RgbImage, Tensor) {
    let resized = resize_lanczos(img, w, h);
    let input = VaeImageProcessor::default().preprocess(&resized, w, h);
    (resized, input)
}

impl EditEncoder {
    /// Loads the VAE, the VL model and the preprocessors of a diffusers-layout checkpoint (not
    /// the DiT).
    pub fn load(paths: &ModelPaths, options: &ModelOptions) -> Result<EditEncoder, ModelError> {
        let flavour = Flavour::from_class_name(&paths.pipeline_class)?;
        let tokenizer =
            QwenTokenizer::load(&paths.tokenizer).map_err(at("tokenizer", &paths.tokenizer))?;
        let processor_dir = paths
            .processor
            .clone()
            .unwrap_or_else(|| paths.tokenizer.clone());
        let image_processor =
            Qwen2VlImageProcessor::load(&processor_dir).map_err(at("processor", &processor_dir))?;
        let mut text = QwenVlLanguageModel::load(&paths.text_encoder, options)
            .map_err(at("text_encoder", &paths.text_encoder))?;
        text.position_mode = PositionMode::default();
        let vision = QwenVisionTower::load(&paths.text_encoder, options)
            .map_err(at("text_encoder", &paths.text_encoder))?;
        let vae = QwenImageVae::load(&paths.vae, options).map_err(at("vae", &paths.vae))?;
        Ok(EditEncoder {
            flavour,
            vae,
            vision,
            text,
            tokenizer,
            image_processor,
        })
    }

    /// RoPE positions of the VL model (see [`super::EditPipeline::set_text_positions`]).
    pub fn set_text_positions(&mut self, mode: PositionMode) {
        self.text.position_mode = mode;
    }

    /// How the VL image processor resizes (see [`super::EditPipeline::set_vl_resize`]).
    pub fn set_vl_resize(&mut self, backend: ImageBackend) {
        self.image_processor = self.image_processor.clone().with_backend(backend);
    }

    /// Prompt embeddings [1, S - 64, D] per prompt for the VL-sized input images (each prompt
    /// encoded alone, as diffusers does, so there is no padding mask); the vision tower runs once.
    /// Without images (Plus only) the prompt is encoded as text alone, as diffusers' Plus
    /// pipeline does with `image=None`.
    pub fn encode_text(
        &self,
        vl_images: &[RgbImage],
        prompts: &[&str],
    ) -> Result<Vec<Tensor>, ModelError> {
        if vl_images.is_empty() {
            if self.flavour == Flavour::Edit {
                return Err(ModelError::new(
                    "Qwen-Image-Edit encodes its prompt with an input image; none was given",
                ));
            }
            return prompts
                .iter()
                .map(|p| self.encode_prompt(p, None, &[]))
                .collect();
        }
        let (pixel_values, grids) = self.image_processor.preprocess(vl_images)?;
        let image_embeds = self.vision.forward(&pixel_values, &grids)?;
        prompts
            .iter()
            .map(|p| self.encode_prompt(p, Some(&image_embeds), &grids))
            .collect()
    }

    fn encode_prompt(
        &self,
        prompt: &str,
        image_embeds: Option<&Tensor>,
        grids: &[[usize; 3]],
    ) -> Result<Tensor, ModelError> {
        let text = self.flavour.prompt_text(prompt, grids.len());
        let merge = self.vision.config.spatial_merge_size;
        let text = expand_image_pads(&[text], grids, merge)?.remove(0);
        let ids: Vec<i64> = self
            .tokenizer
            .encode(&text)?
            .into_iter()
            .map(i64::from)
            .collect();
        let mask = vec![1i64; ids.len()];
        let hidden = self.text.forward(&[ids], &[mask], image_embeds, grids)?;
        prompt_embeds_from_hidden(&hidden, self.flavour.drop_tokens())
    }

    /// VAE posterior mode of one [1, 3, H, W] input, normalised and packed: [1, S, 64].
    pub fn encode_latents(&self, vae_input: &Tensor) -> Result<Tensor, ModelError> {
        let raw = self.vae.encode(vae_input)?;
        pack(&self.vae.normalize_latents(&raw))
    }

    /// Every input's packed latents, concatenated in order.
    pub fn encode_references(&self, vae_inputs: &[Tensor]) -> Result<Tensor, ModelError> {
        let packed = vae_inputs
            .iter()
            .map(|x| self.encode_latents(x))
            .collect::<Result<Vec<_>, _>>()?;
        concat_tokens(&packed.iter().collect::<Vec<_>>())
    }
}
