//! `vae/config.json` of a diffusers AutoencoderKLQwenImage, checked before lowering so a wrong
//! folder or an unsupported layout gives one clear error.

use crate::ModelError;
use serde_json::Value;
use std::path::Path;

/// diffusers' defaults (the released Qwen-Image VAE).
const DEFAULT_LATENTS_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
const DEFAULT_LATENTS_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// The config keys the VAE source reads.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub raw: Value,
    pub base_dim: usize,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub temperal_downsample: Vec<bool>,
    pub input_channels: usize,
    /// Per-channel statistics of the raw latents (length z_dim).
    pub latents_mean: Vec<f32>,
    pub latents_std: Vec<f32>,
}

impl VaeConfig {
    pub fn load(path: &Path) -> Result<VaeConfig, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::new(format!("{}: cannot read: {e}", path.display())))?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::new(format!("{}: invalid JSON: {e}", path.display())))?;
        VaeConfig::from_json(raw).map_err(|e| e.context(&path.display().to_string()))
    }

    pub fn from_json(raw: Value) -> Result<VaeConfig, ModelError> {
        if !raw.is_object() {
            return Err(ModelError::new("config.json must be a JSON object"));
        }
        let base_dim = get_usize(&raw, "base_dim", 96)?;
        let z_dim = get_usize(&raw, "z_dim", 16)?;
        let dim_mult = get_list(&raw, "dim_mult", vec![1usize, 2, 4, 4], |v| {
            v.as_u64().filter(|&x| x > 0).map(|x| x as usize)
        })?;
        let temperal_downsample = get_list(
            &raw,
            "temperal_downsample",
            vec![false, true, true],
            Value::as_bool,
        )?;
        let attn_scales = get_list(&raw, "attn_scales", Vec::new(), Value::as_f64)?;
        let latents_mean = get_list(&raw, "latents_mean", DEFAULT_LATENTS_MEAN.to_vec(), |v| {
            v.as_f64().map(|x| x as f32)
        })?;
        let latents_std = get_list(&raw, "latents_std", DEFAULT_LATENTS_STD.to_vec(), |v| {
            v.as_f64().map(|x| x as f32)
        })?;
        let cfg = VaeConfig {
            base_dim,
            z_dim,
            num_res_blocks: get_usize(&raw, "num_res_blocks", 2)?,
            input_channels: get_usize(&raw, "input_channels", 3)?,
            dim_mult,
            temperal_downsample,
            latents_mean,
            latents_std,
            raw,
        };
        // The source computes the block layout from dim_mult and num_res_blocks; attention
        // inside the stages (attn_scales) is not written.
        if cfg.dim_mult.is_empty() || cfg.num_res_blocks == 0 || !attn_scales.is_empty() {
            return Err(ModelError::new(format!(
                "unsupported VAE layout: dim_mult {:?} (need a stage), num_res_blocks {} (need >= 1), \
                 attn_scales {attn_scales:?} (need [])",
                cfg.dim_mult, cfg.num_res_blocks
            )));
        }
        if cfg.temperal_downsample.len() + 1 != cfg.dim_mult.len() {
            return Err(ModelError::new(format!(
                "config key `temperal_downsample` must have len(dim_mult) - 1 = {} entries, got {:?}",
                cfg.dim_mult.len() - 1,
                cfg.temperal_downsample
            )));
        }
        if cfg.dim_mult.len() > 1
            && cfg
                .dim_mult
                .iter()
                .any(|m| !(cfg.base_dim * m).is_multiple_of(2))
        {
            return Err(ModelError::new(
                "base_dim * dim_mult must be even (the upsamplers halve the width)",
            ));
        }
        for (key, v) in [
            ("latents_mean", &cfg.latents_mean),
            ("latents_std", &cfg.latents_std),
        ] {
            if v.len() != cfg.z_dim {
                return Err(ModelError::new(format!(
                    "config key `{key}` has {} entries, z_dim is {}",
                    v.len(),
                    cfg.z_dim
                )));
            }
        }
        if cfg.latents_std.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
            return Err(ModelError::new(
                "config key `latents_std` must hold positive numbers",
            ));
        }
        Ok(cfg)
    }

    /// diffusers' default config (the released Qwen-Image VAE: base_dim 96).
    pub fn released() -> VaeConfig {
        VaeConfig::from_json(serde_json::json!({})).expect("the default config is valid")
    }

    /// The config the DSL sees: the raw JSON with defaults filled in.
    pub fn for_dsl(&self) -> Value {
        let mut v = self.raw.clone();
        if let Some(obj) = v.as_object_mut() {
            let mut fill = |k: &str, val: Value| {
                if obj.get(k).is_none_or(Value::is_null) {
                    obj.insert(k.to_string(), val);
                }
            };
            fill("base_dim", self.base_dim.into());
            fill("z_dim", self.z_dim.into());
            fill("dim_mult", serde_json::json!(self.dim_mult));
            fill("num_res_blocks", self.num_res_blocks.into());
            fill(
                "temperal_downsample",
                serde_json::json!(self.temperal_downsample),
            );
            fill("input_channels", self.input_channels.into());
        }
        v
    }

    /// Spatial downsampling factor between images and latents.
    pub fn scale_factor(&self) -> usize {
        1 << self.temperal_downsample.len()
    }
}

fn get_usize(raw: &Value, key: &str, default: usize) -> Result<usize, ModelError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|&x| x > 0)
            .map(|x| x as usize)
            .ok_or_else(|| {
                ModelError::new(format!(
                    "config key `{key}` must be a positive integer, got {v}"
                ))
            }),
    }
}

fn get_list<T>(
    raw: &Value,
    key: &str,
    default: Vec<T>,
    item: impl Fn(&Value) -> Option<T>,
) -> Result<Vec<T>, ModelError> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(&item).collect::<Option<Vec<T>>>())
            .ok_or_else(|| ModelError::new(format!("config key `{key}` has a bad value: {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_released_vae() {
        let c = VaeConfig::released();
        assert_eq!(c.base_dim, 96);
        assert_eq!(c.z_dim, 16);
        assert_eq!(c.scale_factor(), 8);
        assert_eq!(c.latents_std.len(), 16);
    }

    #[test]
    fn rejects_unsupported_layouts_and_bad_statistics() {
        let err = VaeConfig::from_json(serde_json::json!({"num_res_blocks": 0})).unwrap_err();
        assert!(err.message.contains("num_res_blocks"), "{err}");
        let err = VaeConfig::from_json(serde_json::json!({"attn_scales": [0.5]})).unwrap_err();
        assert!(err.message.contains("attn_scales"), "{err}");
        let err = VaeConfig::from_json(serde_json::json!({"dim_mult": [1, 2]})).unwrap_err();
        assert!(err.message.contains("len(dim_mult) - 1 = 1"), "{err}");
        let err = VaeConfig::from_json(serde_json::json!({"latents_mean": [0.0]})).unwrap_err();
        assert!(err.message.contains("latents_mean"), "{err}");
        let err = VaeConfig::from_json(serde_json::json!({"z_dim": "16"})).unwrap_err();
        assert!(err.message.contains("z_dim"), "{err}");
    }
}
