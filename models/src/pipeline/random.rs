//! A full-size edit pipeline with random weights (no checkpoint): the real DiT, Qwen2.5-VL-7B and
//! VAE shapes, with the tokenizer, processor and scheduler config of a given model folder. Used by
//! `qie bench edit` to time the whole pipeline against diffusers on the same card.

use super::{EditPipeline, Flavour};
use crate::hub::model_paths_from_folder;
use crate::preprocess::{Qwen2VlImageProcessor, QwenTokenizer};
use crate::qwen25vl::vision::QwenVisionTower;
use crate::qwen25vl::vision_config::VisionConfig;
use crate::qwen25vl::{QwenVlConfig, QwenVlLanguageModel};
use crate::qwen_image::random::{random_weights_as, real_dit_config};
use crate::qwen_image::vae::QwenImageVae;
use crate::qwen_image::vae_config::VaeConfig;
use crate::qwen_image::QwenImageDit;
use crate::scheduler::SchedulerConfig;
use crate::{ModelError, ModelOptions};
use std::path::Path;

/// Qwen2.5-VL-7B-Instruct's text config with the special-token ids of `tokenizer`.
fn qwen25vl_7b_config(tokenizer: &QwenTokenizer) -> Result<QwenVlConfig, ModelError> {
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| ModelError::new(format!("the tokenizer has no `{t}`")))
    };
    QwenVlConfig::from_json(serde_json::json!({
        "model_type": "qwen2_5_vl",
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "image_token_id": id("<|image_pad|>")?,
        "video_token_id": id("<|video_pad|>")?,
        "vision_start_token_id": id("<|vision_start|>")?,
        "vision_end_token_id": id("<|vision_end|>")?,
        "vision_config": {
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
            "hidden_act": "silu"
        }
    }))
}

/// The Plus (2511) pipeline at real size with random weights; `assets` is a model folder whose
/// tokenizer/, processor/ and scheduler/ are used.
pub fn random_plus_pipeline(
    assets: &Path,
    options: &ModelOptions,
    dit_layers: usize,
) -> Result<EditPipeline, ModelError> {
    let paths = model_paths_from_folder(assets)?;
    let tokenizer = QwenTokenizer::load(&paths.tokenizer)?;
    let processor_dir = paths.processor.clone().unwrap_or(paths.tokenizer.clone());
    let image_processor = Qwen2VlImageProcessor::load(&processor_dir)?;
    let scheduler = SchedulerConfig::load(&paths.scheduler.join("scheduler_config.json"))?;
    let precision = options.precision;

    let text_config = qwen25vl_7b_config(&tokenizer)?;
    let vision_json = text_config.vision_config.clone().unwrap_or_default();
    let vision_config = VisionConfig::from_json(&vision_json)?;
    let text_weights = random_weights_as(
        &QwenVlLanguageModel::expected_weights(&text_config)?,
        precision,
    );
    let text = QwenVlLanguageModel::from_weights(text_config, text_weights, options)?;
    let vision_weights = random_weights_as(
        &QwenVisionTower::expected_weights(&vision_config)?,
        precision,
    );
    let vision = QwenVisionTower::from_weights(vision_config, vision_weights, options)?;

    let vae_config = VaeConfig::released();
    let vae_weights = random_weights_as(&QwenImageVae::expected_weights(&vae_config)?, precision);
    let vae = QwenImageVae::from_weights(vae_config, vae_weights, options)?;

    let dit_config = real_dit_config(dit_layers, true);
    let dit_weights = random_weights_as(
        &crate::qwen_image::dit::expected_weights_for(&dit_config, None)?,
        precision,
    );
    let dit = QwenImageDit::from_weights(dit_config, dit_weights, options)?;
    Ok(EditPipeline::from_components(
        Flavour::Plus,
        paths,
        dit,
        vae,
        vision,
        text,
        tokenizer,
        image_processor,
        scheduler,
    ))
}
