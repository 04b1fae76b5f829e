//! `vision_config` of text_encoder/config.json (transformers' Qwen2_5_VLVisionConfig). Absent keys take
//! transformers' defaults; old saves spell `in_channels` as `in_chans`.

use crate::ModelError;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Window side in pixels (112: 4 x 4 merge units of 28 px).
    pub window_size: usize,
    pub out_hidden_size: usize,
    /// Blocks attending over whole frames; the others attend inside windows.
    pub fullatt_block_indexes: Vec<usize>,
    /// MLP activation: `silu` (Qwen2.5-VL), `gelu` or `gelu_pytorch_tanh`.
    pub hidden_act: String,
    pub rope_theta: f64,
}

impl Default for VisionConfig {
    /// transformers' defaults except the widths, which are Qwen2.5-VL-7B's (what Qwen-Image-Edit ships).
    fn default() -> Self {
        VisionConfig {
            depth: 32,
            hidden_size: 1280,
            num_heads: 16,
            intermediate_size: 3420,
            in_channels: 3,
            patch_size: 14,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            window_size: 112,
            out_hidden_size: 3584,
            fullatt_block_indexes: vec![7, 15, 23, 31],
            hidden_act: "silu".to_string(),
            rope_theta: 10000.0,
        }
    }
}

impl VisionConfig {
    /// Reads `vision_config` from a text_encoder/config.json.
    pub fn load(path: &Path) -> Result<VisionConfig, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::new(format!("{}: cannot read: {e}", path.display())))?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::new(format!("{}: invalid JSON: {e}", path.display())))?;
        let vision = raw.get("vision_config").ok_or_else(|| {
            ModelError::new(format!("{}: no `vision_config` object", path.display()))
        })?;
        VisionConfig::from_json(vision).map_err(|e| e.context(&path.display().to_string()))
    }

    /// Parses a `vision_config` object.
    pub fn from_json(v: &Value) -> Result<VisionConfig, ModelError> {
        if !v.is_object() {
            return Err(ModelError::new("vision_config must be a JSON object"));
        }
        let d = VisionConfig::default();
        let get = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).filter(|x| !x.is_null()));
        let size = |keys: &[&str], default: usize| -> Result<usize, ModelError> {
            match get(keys) {
                None => Ok(default),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        ModelError::new(format!(
                            "vision_config.{} must be a positive integer, got {x}",
                            keys[0]
                        ))
                    }),
            }
        };
        let fullatt = match get(&["fullatt_block_indexes"]) {
            None => d.fullatt_block_indexes.clone(),
            Some(x) => x
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|i| i.as_u64().map(|n| n as usize))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    ModelError::new(format!(
                        "vision_config.fullatt_block_indexes must be a list of block indices, got {x}"
                    ))
                })?,
        };
        let hidden_act = match get(&["hidden_act"]) {
            None => d.hidden_act.clone(),
            Some(Value::String(s))
                if ["silu", "gelu", "gelu_pytorch_tanh"].contains(&s.as_str()) =>
            {
                s.clone()
            }
            Some(x) => {
                return Err(ModelError::new(format!(
                    "vision_config.hidden_act must be silu, gelu or gelu_pytorch_tanh, got {x}"
                )))
            }
        };
        let theta = v
            .get("rope_parameters")
            .and_then(|r| r.get("rope_theta"))
            .or_else(|| get(&["rope_theta"]));
        let rope_theta = match theta {
            None | Some(Value::Null) => d.rope_theta,
            Some(x) => x.as_f64().filter(|t| *t > 0.0).ok_or_else(|| {
                ModelError::new(format!(
                    "vision_config rope_theta must be a positive number, got {x}"
                ))
            })?,
        };
        let config = VisionConfig {
            depth: size(&["depth", "num_hidden_layers"], d.depth)?,
            hidden_size: size(&["hidden_size", "embed_dim"], d.hidden_size)?,
            num_heads: size(&["num_heads", "num_attention_heads"], d.num_heads)?,
            intermediate_size: size(&["intermediate_size"], d.intermediate_size)?,
            in_channels: size(&["in_channels", "in_chans"], d.in_channels)?,
            patch_size: size(&["patch_size", "spatial_patch_size"], d.patch_size)?,
            temporal_patch_size: size(&["temporal_patch_size"], d.temporal_patch_size)?,
            spatial_merge_size: size(&["spatial_merge_size"], d.spatial_merge_size)?,
            window_size: size(&["window_size"], d.window_size)?,
            out_hidden_size: size(&["out_hidden_size"], d.out_hidden_size)?,
            fullatt_block_indexes: fullatt,
            hidden_act,
            rope_theta,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let head_dim = self.hidden_size / self.num_heads;
        if !self.hidden_size.is_multiple_of(self.num_heads) || !head_dim.is_multiple_of(4) {
            return Err(ModelError::new(format!(
                "vision_config: hidden_size {} over num_heads {} must give a head_dim divisible by 4 \
                 (the 2-D rotary embedding splits it between rows and columns)",
                self.hidden_size, self.num_heads
            )));
        }
        if self.window_units() == 0 {
            return Err(ModelError::new(format!(
                "vision_config: window_size {} is smaller than one merge unit ({} px)",
                self.window_size,
                self.spatial_merge_size * self.patch_size
            )));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Values per patch row of pixel_values: channels x temporal_patch x patch x patch.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Patches per merged output token (spatial_merge_size²).
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }

    /// Window side in merge units (the reference's vit_merger_window_size).
    pub fn window_units(&self) -> usize {
        self.window_size / self.spatial_merge_size / self.patch_size
    }

    /// The config the DSL source reads (normalised key names).
    pub fn for_dsl(&self) -> Value {
        json!({
            "depth": self.depth,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "in_channels": self.in_channels,
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "spatial_merge_size": self.spatial_merge_size,
            "window_size": self.window_size,
            "out_hidden_size": self.out_hidden_size,
            "fullatt_block_indexes": self.fullatt_block_indexes,
            "hidden_act": self.hidden_act,
            "rope_theta": self.rope_theta,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_key_names_and_defaults() {
        let c = VisionConfig::from_json(&json!({"in_chans": 3, "depth": 2, "hidden_size": 64,
            "num_heads": 4, "fullatt_block_indexes": [1]}))
        .unwrap();
        assert_eq!(c.in_channels, 3);
        assert_eq!(c.depth, 2);
        assert_eq!(c.window_units(), 4);
        assert_eq!(c.patch_dim(), 3 * 2 * 14 * 14);
        assert_eq!(c.rope_theta, 10000.0);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = VisionConfig::from_json(&json!({"depth": "four"})).unwrap_err();
        assert!(e.message.contains("vision_config.depth"), "{e}");
        let e = VisionConfig::from_json(&json!({"hidden_act": "relu"})).unwrap_err();
        assert!(e.message.contains("hidden_act"), "{e}");
        let e = VisionConfig::from_json(&json!({"hidden_size": 30, "num_heads": 2})).unwrap_err();
        assert!(e.message.contains("head_dim"), "{e}");
    }
}
