//! Qwen2.5-VL language-model driver: loads the language weights of a Qwen-Image-Edit
//! `text_encoder/` folder (either checkpoint prefix), computes the RoPE positions and the
//! image-embedding scatter on the host, and runs the DSL source compiled per (B, S, image tokens).

use super::rope_index::{positions_3bs, rope_index, sequential_positions, RowPositions};
use super::text_weights::{detect_prefix, PrefixedParams};
use super::QwenVlConfig;
use crate::{sources, HostWeights, ModelError, ModelOptions, PlanCache};
use qie_ir::dsl::Program;
use qie_ir::{DType, Graph, TensorType};
use qie_runtime::weights::{CheckMode, WeightStore};
use qie_runtime::{Backend, CompileOptions, Executable, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

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

pub struct QwenVlLanguageModel {
    pub config: QwenVlConfig,
    pub position_mode: PositionMode,
    program: Program,
    weights: HostWeights,
    /// Checkpoint prefix of the language weights in `weights` (`model.`, `model.language_model.`, ``).
    prefix: String,
    compile: CompileOptions,
    backend: Arc<dyn Backend>,
    plans: PlanCache<PlanKey>,
}

impl QwenVlLanguageModel {
    /// Loads a `text_encoder/` folder (config.json + safetensors, sharded or not). Vision weights
    /// and `lm_head.weight` in the same files are ignored.
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(ModelError::new(format!(
                "{}: no config.json (expected a Qwen2.5-VL text_encoder/ folder)",
                dir.display()
            )));
        }
        let config = QwenVlConfig::load(&config_path)?;
        let program = load_program(options.source.as_deref())?;
        let store = WeightStore::open(dir).map_err(|e| ModelError::new(e.to_string()))?;
        let prefix = detect_prefix(|n| store.contains(n)).ok_or_else(|| {
            ModelError::new(format!(
                "{}: no language-model weights: found neither `model.embed_tokens.weight` nor `model.language_model.embed_tokens.weight`",
                dir.display()
            ))
        })?;
        let expected: Vec<(String, Vec<usize>)> = param_shapes(&program, &config)?
            .into_iter()
            .map(|(name, shape)| (format!("{prefix}{name}"), shape))
            .collect();
        store
            .check_with(&expected, CheckMode::AllowUnexpected)
            .map_err(|e| ModelError::new(e.to_string()))?;
        let weights = HostWeights::load(&store, &expected, options.precision)?;
        Ok(Self::from_parts(config, program, weights, prefix, options))
    }

    /// Builds the model from weights in memory, named like the checkpoint (`model.` or
    /// `model.language_model.` prefix) or relative to the language model (`layers.0...`).
    pub fn from_weights(
        config: QwenVlConfig,
        weights: HostWeights,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let program = load_program(options.source.as_deref())?;
        let prefix = detect_prefix(|n| weights.contains(n)).ok_or_else(|| {
            ModelError::new("missing weight `embed_tokens.weight` (under any prefix)")
        })?;
        let expected: Vec<(String, Vec<usize>)> = param_shapes(&program, &config)?
            .into_iter()
            .map(|(name, shape)| (format!("{prefix}{name}"), shape))
            .collect();
        weights.check(&expected)?;
        Ok(Self::from_parts(config, program, weights, prefix, options))
    }

    fn from_parts(
        config: QwenVlConfig,
        program: Program,
        weights: HostWeights,
        prefix: &str,
        options: &ModelOptions,
    ) -> Self {
        QwenVlLanguageModel {
            config,
            position_mode: PositionMode::default(),
            program,
            weights,
            prefix: prefix.to_string(),
            compile: options.compile.clone(),
            backend: options.backend_or_cpu(),
            plans: PlanCache::default(),
        }
    }

    /// Weight names (relative to the language model) and shapes the bundled source reads.
    pub fn expected_weights(
        config: &QwenVlConfig,
    ) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
        param_shapes(&load_program(None)?, config)
    }

    /// Name of the backend plans run on (`cpu`, `cuda:0`, ...).
    pub fn backend_name(&self) -> &str {
        self.backend.name()
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
        let types: Vec<(String, TensorType)> = inputs
            .iter()
            .map(|(n, t)| (n.clone(), t.ty().clone()))
            .collect();
        let exe: Arc<dyn Executable> = self.plans.get_or_compile(
            &key,
            &*self.backend,
            &self.compile,
            "Qwen2.5-VL language model",
            || lower_for(&self.program, &self.config, &types),
        )?;
        let params = PrefixedParams {
            weights: &self.weights,
            prefix: &self.prefix,
        };
        let mut outputs = exe
            .run(&inputs, &params)
            .map_err(|e| ModelError::new(format!("running the Qwen2.5-VL language model: {e}")))?;
        outputs.remove("last_hidden_state").ok_or_else(|| {
            ModelError::new("the model source declared no `last_hidden_state` output")
        })
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

fn load_program(source: Option<&Path>) -> Result<Program, ModelError> {
    let result = match source {
        Some(path) => sources::load_program_file(path),
        None => sources::load_bundled(TEXT_SOURCE),
    };
    result.map_err(|e| ModelError::new(e.to_string()))
}

fn lower_for(
    program: &Program,
    config: &QwenVlConfig,
    inputs: &[(String, TensorType)],
) -> Result<Graph, ModelError> {
    program
        .lower(&config.for_dsl(), inputs, &[])
        .map_err(|e| ModelError::new(e.to_string()))
}

/// Weight names and shapes, from lowering once at a tiny probe shape.
fn param_shapes(
    program: &Program,
    config: &QwenVlConfig,
) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let inputs = vec![
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
    ];
    let graph = lower_for(program, config, &inputs)?;
    Ok(graph
        .params()
        .into_iter()
        .map(|(name, id)| (name.to_string(), graph.ty(id).shape.to_vec()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_index_scatters_image_rows_in_order() {
        assert_eq!(embed_index(&[5, 9, 9, 6, 9, 7], 9), vec![0, 6, 7, 3, 8, 5]);
    }
}
