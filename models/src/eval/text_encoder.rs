//! CLIP's text tower for the `clip_t` metric: `clip_text.qie` through [`DslModel`], loaded from a
//! transformers CLIPModel folder (config.json `text_config`, safetensors, tokenizer.json), with
//! transformers' tokenisation (`tokenizer(text, padding="max_length", truncation=True)`) and
//! end-of-text pooling.

use std::collections::HashMap;
use std::path::Path;

use qie_ir::{DType, TensorType};
use qie_runtime::weights::CheckMode;
use qie_runtime::Tensor;
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use crate::dsl_model::{
    config_json, open_store, DslModel, DslProgram, DslSource, ShapeKey, Specialisation,
};
use crate::{ModelError, ModelOptions};

/// The bundled model source.
pub const SOURCE: &str = "clip_text.qie";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Batch(usize);
impl ShapeKey for Batch {}

pub struct TextEncoder {
    model: DslModel<Batch>,
    tokenizer: Tokenizer,
    /// Sequence length: max_position_embeddings.
    length: usize,
    eos_id: u32,
    pad_id: u32,
    /// transformers' legacy pooling (eos_token_id == 2): the row of the largest token id.
    legacy_pooling: bool,
}

impl TextEncoder {
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Self, ModelError> {
        let what = "a transformers CLIPModel folder (e.g. openai/clip-vit-base-patch32)";
        let config_path = config_json(dir, what)?;
        let at = |e: String| ModelError::new(format!("{}: {e}", config_path.display()));
        let text = std::fs::read_to_string(&config_path).map_err(|e| at(e.to_string()))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| at(e.to_string()))?;
        let config = text_config(&raw).map_err(at)?;
        let length = config["max_position_embeddings"].as_u64().unwrap_or(0) as usize;
        let eos = config["eos_token_id"].as_u64().unwrap_or(2);
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(ModelError::new(format!(
                "{}: clip_t needs the CLIP tokenizer (tokenizer.json) next to the model",
                dir.display()
            )));
        }
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| ModelError::new(format!("{}: {e}", tok_path.display())))?;
        let eos_id = u32::try_from(eos)
            .ok()
            .filter(|&id| (id as usize) < tokenizer.get_vocab_size(true))
            .ok_or_else(|| {
                at(format!(
                    "eos_token_id {eos} is not in the tokenizer's vocabulary"
                ))
            })?;
        let pad_id = config["pad_token_id"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(eos_id);
        let store = open_store(dir)?;
        let program = DslProgram::load(
            "text encoder",
            DslSource::new(SOURCE, options.source.as_deref()),
            config,
        )?;
        let model = DslModel::load(
            program,
            &spec(1, length),
            &store,
            "",
            CheckMode::AllowUnexpected,
            options,
        )?;
        super::encoder::refuse_created(&model, dir)?;
        Ok(TextEncoder {
            model,
            tokenizer,
            length,
            eos_id,
            pad_id,
            legacy_pooling: eos == 2,
        })
    }

    /// Token ids of `text`: start and end of text added, truncated (keeping the end-of-text
    /// token) and padded to the model's length.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::new(format!("tokenizer: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > self.length {
            ids.truncate(self.length - 1);
            ids.push(self.eos_id);
        }
        ids.resize(self.length, self.pad_id);
        Ok(ids)
    }

    /// The row whose hidden state is pooled, as transformers picks it.
    fn pooled_row(&self, ids: &[u32]) -> usize {
        if self.legacy_pooling {
            // argmax: the first of the largest ids
            let max = ids.iter().copied().max().unwrap_or(0);
            ids.iter().position(|&i| i == max).unwrap_or(0)
        } else {
            ids.iter().position(|&i| i == self.eos_id).unwrap_or(0)
        }
    }

    /// The projected text embedding of every text, `batch` at a time.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch.max(1)) {
            let rows = chunk
                .iter()
                .map(|t| self.tokenize(t))
                .collect::<Result<Vec<_>, _>>()?;
            out.extend(self.embed_ids(&rows)?);
        }
        Ok(out)
    }

    /// Embeddings of tokenised rows (each of the model's length).
    pub fn embed_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let n = rows.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let err = |e: qie_runtime::TensorError| ModelError::new(format!("token ids: {}", e.0));
        let flat: Vec<i32> = rows.iter().flatten().map(|&i| i as i32).collect();
        let eos: Vec<i32> = rows.iter().map(|r| self.pooled_row(r) as i32).collect();
        let mut inputs = HashMap::new();
        inputs.insert(
            "input_ids".to_string(),
            Tensor::from_i32(&[n, self.length], flat).map_err(err)?,
        );
        inputs.insert(
            "eos_index".to_string(),
            Tensor::from_i32(&[n], eos).map_err(err)?,
        );
        let embeds = self
            .model
            .forward(&Batch(n), &spec(n, self.length), &inputs)?
            .take("embeds")?;
        let values = embeds.cast(DType::F32).to_f32_vec();
        let width = values.len() / n;
        if width == 0 || values.len() != n * width {
            return Err(ModelError::new(format!(
                "the text encoder gave {} values for {n} texts",
                values.len()
            )));
        }
        Ok(values.chunks(width).map(<[f32]>::to_vec).collect())
    }
}

fn spec(batch: usize, length: usize) -> Specialisation {
    Specialisation::new(vec![
        (
            "input_ids".to_string(),
            TensorType::new(DType::I32, &[batch, length]),
        ),
        (
            "eos_index".to_string(),
            TensorType::new(DType::I32, &[batch]),
        ),
    ])
}

/// `text_config` of a CLIPModel config with transformers' `CLIPTextConfig()` defaults for the
/// keys a save omits, `projection_dim` from the top level, and the tower prefix.
fn text_config(raw: &Value) -> Result<Value, String> {
    if raw["model_type"].as_str() != Some("clip") {
        return Err(format!(
            "model_type {} is not a CLIP model (`clip`, with a text tower)",
            raw["model_type"]
        ));
    }
    let mut c: Map<String, Value> = raw["text_config"]
        .as_object()
        .cloned()
        .ok_or("a CLIPModel config needs `text_config`")?;
    let defaults = json!({"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
        "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 49407,
        "pad_token_id": 1});
    for (k, v) in defaults.as_object().expect("an object") {
        c.entry(k.clone()).or_insert(v.clone());
    }
    c.insert(
        "projection_dim".into(),
        raw.get("projection_dim").cloned().unwrap_or(json!(512)),
    );
    c.insert("model_type".into(), json!("clip_text_model"));
    c.insert("tower".into(), json!("text_model."));
    let int = |k: &str| c.get(k).and_then(Value::as_u64).filter(|v| *v > 0);
    for k in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "projection_dim",
    ] {
        int(k).ok_or_else(|| format!("text_config `{k}` must be a positive integer"))?;
    }
    if int("max_position_embeddings") < Some(2) {
        return Err("text_config `max_position_embeddings` must be at least 2".into());
    }
    if int("hidden_size").unwrap_or(0) % int("num_attention_heads").unwrap_or(1) != 0 {
        return Err("text_config hidden_size is not a multiple of num_attention_heads".into());
    }
    Ok(Value::Object(c))
}
