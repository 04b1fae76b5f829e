//! `text_encoder/config.json` of Qwen-Image-Edit (a Qwen2_5_VLForConditionalGeneration): the
//! language model's keys and the special token ids. Both layouts are read: transformers 4.x puts
//! the text keys at the top level (`rope_scaling` with `mrope_section`), 5.x nests them under
//! `text_config` (`rope_parameters`). The vision part is kept as raw JSON for the vision driver.

use crate::ModelError;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct QwenVlConfig {
    /// The whole file.
    pub raw: Value,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// hidden_size / num_attention_heads (what the attention and the rotary embedding use).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Frequencies per axis (t, h, w); sums to head_dim / 2.
    pub mrope_section: Vec<usize>,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
    pub vision_end_token_id: i64,
    /// vision_config.spatial_merge_size (2 when absent): image tokens per side = patches / merge.
    pub spatial_merge_size: usize,
    /// `vision_config` as found in the file (None when absent), for the vision driver.
    pub vision_config: Option<Value>,
}

impl QwenVlConfig {
    pub fn load(path: &Path) -> Result<QwenVlConfig, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::new(format!("{}: cannot read: {e}", path.display())))?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::new(format!("{}: invalid JSON: {e}", path.display())))?;
        QwenVlConfig::from_json(raw).map_err(|e| e.context(&path.display().to_string()))
    }

    pub fn from_json(raw: Value) -> Result<QwenVlConfig, ModelError> {
        if !raw.is_object() {
            return Err(ModelError::new("config must be a JSON object"));
        }
        let text = raw.get("text_config").filter(|v| v.is_object());
        // A text key from text_config first, then from the top level (transformers 4.x).
        let get = |key: &str| -> Option<&Value> {
            text.and_then(|t| t.get(key))
                .filter(|v| !v.is_null())
                .or_else(|| raw.get(key).filter(|v| !v.is_null()))
        };
        let usize_key = |key: &str, default: Option<usize>| -> Result<usize, ModelError> {
            match get(key) {
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        ModelError::new(format!(
                            "config key `{key}` must be a positive integer, got {v}"
                        ))
                    }),
                None => {
                    default.ok_or_else(|| ModelError::new(format!("missing config key `{key}`")))
                }
            }
        };
        let float_key = |key: &str, default: f64| -> Result<f64, ModelError> {
            match get(key) {
                Some(v) => v.as_f64().filter(|x| *x > 0.0).ok_or_else(|| {
                    ModelError::new(format!(
                        "config key `{key}` must be a positive number, got {v}"
                    ))
                }),
                None => Ok(default),
            }
        };
        let token_key = |key: &str, default: i64| -> Result<i64, ModelError> {
            match raw.get(key).or_else(|| text.and_then(|t| t.get(key))) {
                Some(v) => v.as_i64().filter(|&n| n >= 0).ok_or_else(|| {
                    ModelError::new(format!("config key `{key}` must be a token id, got {v}"))
                }),
                None => Ok(default),
            }
        };

        let hidden_size = usize_key("hidden_size", None)?;
        let num_attention_heads = usize_key("num_attention_heads", None)?;
        if hidden_size % num_attention_heads != 0 {
            return Err(ModelError::new(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )));
        }
        let head_dim = hidden_size / num_attention_heads;
        if let Some(v) = get("head_dim") {
            if v.as_u64() != Some(head_dim as u64) {
                return Err(ModelError::new(format!(
                    "config key `head_dim` is {v}, but the model uses hidden_size / num_attention_heads = {head_dim}"
                )));
            }
        }
        let num_key_value_heads = usize_key("num_key_value_heads", Some(num_attention_heads))?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::new(format!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        if let Some(act) = get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(ModelError::new(format!(
                    "config key `hidden_act` is {act}; only \"silu\" is supported"
                )));
            }
        }
        if get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(ModelError::new(
                "config sets use_sliding_window: sliding-window attention is not supported",
            ));
        }

        // rope_parameters (5.x) or rope_scaling (4.x), in text_config or at the top level.
        let rope = get("rope_parameters").or_else(|| get("rope_scaling"));
        let rope_type = rope
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if !matches!(rope_type, "default" | "mrope") {
            return Err(ModelError::new(format!(
                "rope type `{rope_type}` is not supported (expected default / mrope)"
            )));
        }
        let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
            Some(v) => v.as_f64().filter(|x| *x > 0.0).ok_or_else(|| {
                ModelError::new(format!(
                    "config key `rope_theta` must be a positive number, got {v}"
                ))
            })?,
            None => float_key("rope_theta", 1_000_000.0)?,
        };
        let mrope_section: Vec<usize> = match rope.and_then(|r| r.get("mrope_section")) {
            None => vec![16, 24, 24],
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_u64().map(|n| n as usize))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    ModelError::new(format!(
                        "`mrope_section` must be a list of integers, got {v}"
                    ))
                })?,
        };
        if mrope_section.iter().sum::<usize>() * 2 != head_dim {
            return Err(ModelError::new(format!(
                "mrope_section {mrope_section:?} must sum to head_dim / 2 = {}",
                head_dim / 2
            )));
        }

        let vision_config = raw.get("vision_config").filter(|v| v.is_object()).cloned();
        let spatial_merge_size = match vision_config
            .as_ref()
            .and_then(|v| v.get("spatial_merge_size"))
        {
            None => 2,
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    ModelError::new(format!(
                        "vision_config.spatial_merge_size must be a positive integer, got {v}"
                    ))
                })?,
        };

        Ok(QwenVlConfig {
            vocab_size: usize_key("vocab_size", None)?,
            hidden_size,
            intermediate_size: usize_key("intermediate_size", None)?,
            num_hidden_layers: usize_key("num_hidden_layers", None)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: float_key("rms_norm_eps", 1e-6)?,
            rope_theta,
            mrope_section,
            image_token_id: token_key("image_token_id", 151655)?,
            video_token_id: token_key("video_token_id", 151656)?,
            vision_start_token_id: token_key("vision_start_token_id", 151652)?,
            vision_end_token_id: token_key("vision_end_token_id", 151653)?,
            spatial_merge_size,
            vision_config,
            raw,
        })
    }

    /// The flat key set the language-model source (qwen25vl_text.qie) reads.
    pub fn for_dsl(&self) -> Value {
        json!({
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "mrope_section": self.mrope_section,
            "attn_scale": (self.head_dim as f64).powf(-0.5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout transformers 4.x saves (Qwen-Image-Edit's text_encoder/config.json).
    fn v4_config() -> Value {
        json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "hidden_act": "silu",
            "hidden_size": 3584,
            "image_token_id": 151655,
            "intermediate_size": 18944,
            "model_type": "qwen2_5_vl",
            "num_attention_heads": 28,
            "num_hidden_layers": 28,
            "num_key_value_heads": 4,
            "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "use_sliding_window": false,
            "video_token_id": 151656,
            "vision_config": {"hidden_size": 1280, "out_hidden_size": 3584, "spatial_merge_size": 2},
            "vision_end_token_id": 151653,
            "vision_start_token_id": 151652,
            "vocab_size": 152064
        })
    }

    #[test]
    fn reads_the_transformers_4_layout() {
        let c = QwenVlConfig::from_json(v4_config()).unwrap();
        assert_eq!(c.hidden_size, 3584);
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.mrope_section, vec![16, 24, 24]);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.image_token_id, 151655);
        assert_eq!(c.vision_start_token_id, 151652);
        assert_eq!(c.spatial_merge_size, 2);
        assert!(c.vision_config.is_some());
    }

    #[test]
    fn reads_the_transformers_5_layout() {
        let raw = json!({
            "image_token_id": 290,
            "vision_start_token_id": 292,
            "text_config": {
                "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 300,
                "rms_norm_eps": 1e-6, "use_sliding_window": false, "sliding_window": null,
                "rope_parameters": {"mrope_section": [2, 3, 3], "rope_theta": 10000.0, "rope_type": "default"}
            },
            "vision_config": {"spatial_merge_size": 2}
        });
        let c = QwenVlConfig::from_json(raw).unwrap();
        assert_eq!((c.hidden_size, c.head_dim, c.vocab_size), (64, 16, 300));
        assert_eq!(c.mrope_section, vec![2, 3, 3]);
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.image_token_id, 290);
    }

    #[test]
    fn rejects_bad_configs_with_the_key_named() {
        let mut raw = v4_config();
        raw.as_object_mut().unwrap().remove("hidden_size");
        let e = QwenVlConfig::from_json(raw).unwrap_err();
        assert!(e.message.contains("hidden_size"), "{e}");

        let mut raw = v4_config();
        raw["rope_scaling"]["mrope_section"] = json!([16, 24, 16]);
        let e = QwenVlConfig::from_json(raw).unwrap_err();
        assert!(e.message.contains("mrope_section"), "{e}");

        let mut raw = v4_config();
        raw["num_key_value_heads"] = json!(5);
        let e = QwenVlConfig::from_json(raw).unwrap_err();
        assert!(e.message.contains("num_key_value_heads"), "{e}");

        let e = QwenVlConfig::from_json(json!([1, 2])).unwrap_err();
        assert!(e.message.contains("object"), "{e}");
    }
}
