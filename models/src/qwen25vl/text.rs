//! Qwen2.5-VL language-model driver: loads the language weights of a Qwen-Image-Edit
//! `text_encoder/` folder (either checkpoint prefix), computes the RoPE positions and the
//! image-embedding scatter on the host, and runs the DSL source through the generic [`DslModel`],
//! compiled per (B, S, image tokens).

use super::rope_index::{positions_3bs, rope_index, sequential_positions, RowPositions};
use super::text_weights::detect_prefix;
use super::QwenVlConfig;
use crate::dsl_model::{
    config_json, open_store, DslModel, DslProgram, DslSource, ShapeKey, Specialisation,
};
use crate::{HostWeights, ModelError, ModelOptions};
use qie_ir::{DType, TensorType};
use qie_runtime::weights::CheckMode;
use qie_runtime::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// The bundled language-model source.
pub const TEXT_SOURCE: &str = "qwen25vl_text.qie";

/// How RoPE positions are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PositionMode {
    /// `get_rope_index`: 3-D grid positions for image tokens, padding skipped (transformers 4.x,
    /// and 5.x when `mm_token_type_ids` is passed). What the model was trained with.
    #[default]
    Multimodal,
    /// 0..S-1 on every axis: transformers 5.x under diffusers 0.42.1, which does not pass
    /// `mm_token_type_ids` (diffusers issue #14194). Only for parity with that stack.
    Sequential,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PlanKey {
    batch: usize,
    seq: usize,
    image_tokens: Option<usize>,
}

impl ShapeKey for PlanKey {}

pub struct QwenVlLanguageModel {
    pub config: QwenVlConfig,
    pub position_mode: PositionMode,
    /// Weights named like the checkpoint: `model.`, `model.language_model.` or no prefix before the
    /// source's names (`layers.0...`).
    model: DslModel<PlanKey>,
}

impl QwenVlLanguageModel {
    /// Loads a `text_encoder/` folder (config.json + safetensors, sharded or not). Vision weights
    /// and `lm_head.weight` in the same files are ignored.
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Self, ModelError> {
        let config_path = config_json(dir, "a Qwen2.5-VL text_encoder/ folder")?;
        let config = QwenVlConfig::load(&config_path)?;
        let program = text_program(&config, options.source.as_deref())?;
        let store = open_store(dir)?;
        let prefix = detect_prefix(|n| store.contains(n)).ok_or_else(|| {
            ModelError::new(format!(
                "{}: no language-model weights: found neither `model.embed_tokens.weight` nor `model.language_model.embed_tokens.weight`",
                dir.display()
            ))
        })?;
        let mode = CheckMode::AllowUnexpected;
        let model = DslModel::load(program, &probe(), &store, prefix, mode, options)?;
        Ok(Self::from_model(config, model))
    }

    /// Builds the model from weights in memory, named like the checkpoint (`model.` or
    /// `model.language_model.` prefix) or relative to the language model (`layers.0...`).
    pub fn from_weights(
        config: QwenVlConfig,
        weights: HostWeights,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let program = text_program(&config, options.source.as_deref())?;
        let prefix = detect_prefix(|n| weights.contains(n)).ok_or_else(|| {
            ModelError::new("missing weight `embed_tokens.weight` (under any prefix)")
        })?;
        let model = DslModel::from_weights(program, &probe(), weights, prefix, options)?;
        Ok(Self::from_model(config, model))
    }

    fn from_model(config: QwenVlConfig, model: DslModel<PlanKey>) -> Self {
        QwenVlLanguageModel {
            config,
            position_mode: PositionMode::default(),
            model,
        }
    }

    /// Weight names (relative to the language model) and shapes the bundled source reads.
    pub fn expected_weights(
        config: &QwenVlConfig,
    ) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
        text_program(config, None)?.param_shapes(&probe())
    }

    /// Name of the backend plans run on (`cpu`, `cuda:0`, ...).
    pub fn backend_name(&self) -> &str {
        self.model.backend_name()
    }

    /// The RoPE positions `forward` uses for these inputs (per row: t, h, w).
    pub fn positions(
        &self,
        input_ids: &[Vec<i64>],
        attention_mask: &[Vec<i64>],
        grid_thw: &[[usize; 3]],
    ) -> Result<Vec<RowPositions>, ModelError> {
        match self.position_mode {
            PositionMode::Multimodal => {
                rope_index(&self.config, input_ids, attention_mask, grid_thw)
            }
            PositionMode::Sequential => Ok(sequential_positions(
                input_ids.len(),
                input_ids.first().map_or(0, Vec::len),
            )),
        }
    }

    /// input_ids [B, S], attention_mask [B, S] (1 = token, 0 = padding), image embeds [N, hidden]
    /// for the `image_token_id` positions in order, grid_thw per image (t, h, w in patches before
    /// the merge) -> last hidden state after the final norm [B, S, hidden] f32.
    pub fn forward(
        &self,
        input_ids: &[Vec<i64>],
        attention_mask: &[Vec<i64>],
        image_embeds: Option<&Tensor>,
        grid_thw: &[[usize; 3]],
    ) -> Result<Tensor, ModelError> {
        let (batch, seq) = check_tokens(&self.config, input_ids, attention_mask)?;
        let image_tokens = input_ids
            .iter()
            .flatten()
            .filter(|&&t| t == self.config.image_token_id)
            .count();
        let image_embeds = check_image_embeds(&self.config, image_tokens, image_embeds)?;
        let positions = self.positions(input_ids, attention_mask, grid_thw)?;

        let mut inputs = HashMap::new();
        let ids: Vec<i64> = input_ids.iter().flatten().copied().collect();
        let mask: Vec<bool> = attention_mask.iter().flatten().map(|&m| m != 0).collect();
        inputs.insert(
            "input_ids".to_string(),
            Tensor::from_i64(&[batch, seq], ids.clone()).map_err(tensor_err("input_ids"))?,
        );
        inputs.insert(
            "attention_mask".to_string(),
            Tensor::from_bool(&[batch, seq], mask).map_err(tensor_err("attention_mask"))?,
        );
        inputs.insert(
            "position_ids".to_string(),
            Tensor::from_i64(&[3, batch, seq], positions_3bs(&positions))
                .map_err(tensor_err("position_ids"))?,
        );
        if let Some(embeds) = &image_embeds {
            inputs.insert("image_embeds".to_string(), embeds.clone());
            inputs.insert(
                "embed_index".to_string(),
                Tensor::from_i64(&[batch, seq], embed_index(&ids, self.config.image_token_id))
                    .map_err(tensor_err("embed_index"))?,
            );
        }
        let key = PlanKey {
            batch,
            seq,
            image_tokens: image_embeds.as_ref().map(|_| image_tokens),
        };
        let spec = Specialisation::of_bindings(&inputs);
        self.model
            .forward(&key, &spec, &inputs)?
            .take("last_hidden_state")
    }
}

fn tensor_err(what: &'static str) -> impl Fn(qie_runtime::TensorError) -> ModelError {
    move |e| ModelError::new(format!("{what}: {e}"))
}

/// Row b * S + s of the token embeddings, or B * S + k for the k-th image token (in order).
fn embed_index(ids: &[i64], image_token_id: i64) -> Vec<i64> {
    let total = ids.len() as i64;
    let mut next_image = total;
    ids.iter()
        .enumerate()
        .map(|(p, &t)| {
            if t == image_token_id {
                next_image += 1;
                next_image - 1
            } else {
                p as i64
            }
        })
        .collect()
}

fn check_tokens(
    config: &QwenVlConfig,
    input_ids: &[Vec<i64>],
    attention_mask: &[Vec<i64>],
) -> Result<(usize, usize), ModelError> {
    let batch = input_ids.len();
    let seq = input_ids.first().map_or(0, Vec::len);
    if batch == 0 || seq == 0 {
        return Err(ModelError::new(
            "input_ids is empty (need [B, S] with B, S > 0)",
        ));
    }
    if input_ids.iter().any(|r| r.len() != seq) {
        return Err(ModelError::new(
            "input_ids rows differ in length (pad them to one length)",
        ));
    }
    if attention_mask.len() != batch || attention_mask.iter().any(|r| r.len() != seq) {
        return Err(ModelError::new(format!(
            "attention_mask must have the shape of input_ids [{batch}, {seq}]"
        )));
    }
    if attention_mask.iter().flatten().any(|&m| m != 0 && m != 1) {
        return Err(ModelError::new("attention_mask must hold 0 or 1"));
    }
    let vocab = config.vocab_size as i64;
    if let Some(&bad) = input_ids.iter().flatten().find(|&&t| t < 0 || t >= vocab) {
        return Err(ModelError::new(format!(
            "input_ids: token id {bad} is outside the vocabulary [0, {vocab})"
        )));
    }
    Ok((batch, seq))
}

/// The image embeddings as f32 [N, hidden] when there are image tokens; None when neither.
fn check_image_embeds(
    config: &QwenVlConfig,
    image_tokens: usize,
    image_embeds: Option<&Tensor>,
) -> Result<Option<Tensor>, ModelError> {
    let rows = image_embeds.map_or(0, |t| t.shape().first().copied().unwrap_or(0));
    if let Some(t) = image_embeds {
        if t.shape().len() != 2 || t.shape()[1] != config.hidden_size {
            return Err(ModelError::new(format!(
                "image_embeds has shape {:?}, expected [N, {}] (hidden_size)",
                t.shape(),
                config.hidden_size
            )));
        }
    }
    if rows != image_tokens {
        return Err(ModelError::new(format!(
            "input_ids hold {image_tokens} image tokens (image_token_id {}) but image_embeds has {rows} rows",
            config.image_token_id
        )));
    }
    Ok(match image_embeds {
        Some(t) if rows > 0 => Some(if t.dtype() == DType::F32 {
            t.clone()
        } else {
            t.cast(DType::F32)
        }),
        _ => None,
    })
}

fn text_program(config: &QwenVlConfig, source: Option<&Path>) -> Result<DslProgram, ModelError> {
    let source = DslSource::new(TEXT_SOURCE, source);
    DslProgram::load("Qwen2.5-VL language model", source, config.for_dsl())
}

/// One token, to list the weights with (they do not depend on the shapes).
fn probe() -> Specialisation {
    Specialisation::new(vec![
        (
            "input_ids".to_string(),
            TensorType::new(DType::I64, &[1, 1]),
        ),
        (
            "attention_mask".to_string(),
            TensorType::new(DType::Bool, &[1, 1]),
        ),
        (
            "position_ids".to_string(),
            TensorType::new(DType::I64, &[3, 1, 1]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_index_scatters_image_rows_in_order() {
        assert_eq!(embed_index(&[5, 9, 9, 6, 9, 7], 9), vec![0, 6, 7, 3, 8, 5]);
    }
}
