//! `transformer/config.json` of a diffusers QwenImageTransformer2DModel, checked before lowering so
//! a wrong folder gives one clear error instead of a DSL error deep inside the model source.

use crate::ModelError;
use std::path::Path;

/// The config keys the DiT source reads, with the checks the model needs.
#[derive(Clone, Debug, PartialEq)]
pub struct DitConfig {
    pub raw: serde_json::Value,
    pub num_layers: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub joint_attention_dim: usize,
    pub patch_size: usize,
    pub axes_dims_rope: Vec<usize>,
    pub zero_cond_t: bool,
    pub use_additional_t_cond: bool,
    /// Qwen-Image-Layered's rope (the condition image at frame -1): selects the layered variant source.
    pub use_layer3d_rope: bool,
}

impl DitConfig {
    pub fn load(path: &Path) -> Result<DitConfig, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::new(format!("{}: cannot read: {e}", path.display())))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::new(format!("{}: invalid JSON: {e}", path.display())))?;
        DitConfig::from_json(raw).map_err(|e| e.context(&path.display().to_string()))
    }

    pub fn from_json(raw: serde_json::Value) -> Result<DitConfig, ModelError> {
        let get_usize = |key: &str, default: Option<usize>| -> Result<usize, ModelError> {
            match raw.get(key) {
                Some(serde_json::Value::Number(n)) => n
                    .as_u64()
                    .filter(|&v| v > 0)
                    .map(|v| v as usize)
                    .ok_or_else(|| {
                        ModelError::new(format!(
                            "config key `{key}` must be a positive integer, got {n}"
                        ))
                    }),
                Some(serde_json::Value::Null) | None => default
                    .ok_or_else(|| ModelError::new(format!("config.json has no key `{key}`"))),
                Some(v) => Err(ModelError::new(format!(
                    "config key `{key}` must be a positive integer, got {v}"
                ))),
            }
        };
        let get_bool = |key: &str| -> Result<bool, ModelError> {
            match raw.get(key) {
                None | Some(serde_json::Value::Null) => Ok(false),
                Some(serde_json::Value::Bool(b)) => Ok(*b),
                Some(v) => Err(ModelError::new(format!(
                    "config key `{key}` must be true or false, got {v}"
                ))),
            }
        };
        let in_channels = get_usize("in_channels", Some(64))?;
        let axes_dims_rope: Vec<usize> = match raw.get("axes_dims_rope") {
            None => vec![16, 56, 56],
            Some(v) => v
                .as_array()
                .filter(|a| a.len() == 3)
                .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
                .ok_or_else(|| {
                    ModelError::new(format!(
                        "config key `axes_dims_rope` must be 3 integers, got {v}"
                    ))
                })?,
        };
        let use_layer3d_rope = get_bool("use_layer3d_rope")?;
        let guidance_embeds = get_bool("guidance_embeds")?;
        let cfg = DitConfig {
            num_layers: get_usize("num_layers", Some(60))?,
            num_attention_heads: get_usize("num_attention_heads", Some(24))?,
            attention_head_dim: get_usize("attention_head_dim", Some(128))?,
            in_channels,
            out_channels: get_usize("out_channels", Some(16))?,
            joint_attention_dim: get_usize("joint_attention_dim", Some(3584))?,
            patch_size: get_usize("patch_size", Some(2))?,
            axes_dims_rope,
            zero_cond_t: get_bool("zero_cond_t")?,
            use_additional_t_cond: get_bool("use_additional_t_cond")?,
            use_layer3d_rope,
            raw,
        };
        if guidance_embeds {
            return Err(ModelError::new(
                "guidance_embeds=true is not supported (no released Qwen-Image checkpoint uses it)"
                    .to_string(),
            ));
        }
        let rope: usize = cfg.axes_dims_rope.iter().sum();
        if rope != cfg.attention_head_dim || cfg.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            return Err(ModelError::new(format!(
                "axes_dims_rope {:?} must be even and sum to attention_head_dim {}",
                cfg.axes_dims_rope, cfg.attention_head_dim
            )));
        }
        Ok(cfg)
    }

    /// The config the DSL sees: the raw JSON with defaults filled in, so `config.x` never depends on
    /// whether diffusers wrote the default.
    pub fn for_dsl(&self) -> serde_json::Value {
        let mut v = self.raw.clone();
        if let Some(obj) = v.as_object_mut() {
            let fill = |obj: &mut serde_json::Map<String, serde_json::Value>,
                        k: &str,
                        val: serde_json::Value| {
                if obj.get(k).is_none_or(|x| x.is_null()) {
                    obj.insert(k.to_string(), val);
                }
            };
            fill(obj, "num_layers", self.num_layers.into());
            fill(obj, "num_attention_heads", self.num_attention_heads.into());
            fill(obj, "attention_head_dim", self.attention_head_dim.into());
            fill(obj, "in_channels", self.in_channels.into());
            fill(obj, "out_channels", self.out_channels.into());
            fill(obj, "joint_attention_dim", self.joint_attention_dim.into());
            fill(obj, "patch_size", self.patch_size.into());
            fill(
                obj,
                "axes_dims_rope",
                serde_json::json!(self.axes_dims_rope),
            );
            fill(obj, "zero_cond_t", self.zero_cond_t.into());
            fill(
                obj,
                "use_additional_t_cond",
                self.use_additional_t_cond.into(),
            );
        }
        v
    }

    /// The bundled model source this config selects.
    pub fn source_name(&self) -> &'static str {
        if self.use_layer3d_rope {
            "qwen_image_layered.qie"
        } else {
            "qwen_image_dit.qie"
        }
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }
}
