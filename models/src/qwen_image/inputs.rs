//! The DiT's inputs, named as diffusers' `QwenImageTransformer2DModel.forward` arguments, with the
//! checks a user debugging parity needs: every message names the input and what was expected.

use super::{token_count, DitConfig, ImgShape};
use crate::ModelError;
use qie_ir::{DType, TensorType};
use qie_runtime::weights::{Dtype, WeightStore};
use qie_runtime::Tensor;
use std::collections::HashMap;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct DitInputs {
    /// [B, S_img, in_channels]: packed latents of the target image followed by every reference image.
    pub hidden_states: Tensor,
    /// [B, S_txt, joint_attention_dim]
    pub encoder_hidden_states: Tensor,
    /// [B, S_txt] bool (true = valid token); None = every token valid.
    pub encoder_hidden_states_mask: Option<Tensor>,
    /// [B] f32, the scheduler timestep / 1000.
    pub timestep: Tensor,
    /// [B] i64 (0/1), only for configs with use_additional_t_cond.
    pub additional_t_cond: Option<Tensor>,
    /// F x H x W per image in patches, target first.
    pub img_shapes: Vec<ImgShape>,
}

pub const INPUT_NAMES: [&str; 5] = [
    "hidden_states",
    "encoder_hidden_states",
    "encoder_hidden_states_mask",
    "timestep",
    "additional_t_cond",
];

impl DitInputs {
    /// Reads the inputs from a safetensors file (f32/bf16/f16 floats; mask as bool, ints or floats).
    pub fn load(path: &Path, img_shapes: Vec<ImgShape>) -> Result<DitInputs, ModelError> {
        let at = |e: String| ModelError::new(format!("{}: {e}", path.display()));
        let store = WeightStore::open(path).map_err(|e| ModelError::new(e.to_string()))?;
        let unknown: Vec<&str> = store
            .names()
            .into_iter()
            .filter(|n| !INPUT_NAMES.contains(n))
            .collect();
        if !unknown.is_empty() {
            return Err(at(format!(
                "unknown input tensor(s) {} (expected names: {})",
                unknown.join(", "),
                INPUT_NAMES.join(", ")
            )));
        }
        let float = |name: &str| -> Result<Option<Tensor>, ModelError> {
            let Some(info) = store.info(name) else {
                return Ok(None);
            };
            let values = store
                .load_f32(name)
                .map_err(|e| at(format!("input `{name}`: {e}")))?;
            Tensor::from_f32(&info.shape, values)
                .map(Some)
                .map_err(|e| at(format!("input `{name}`: {e}")))
        };
        let required = |name: &str, t: Option<Tensor>| {
            t.ok_or_else(|| at(format!("missing input tensor `{name}`")))
        };
        let hidden_states = required("hidden_states", float("hidden_states")?)?;
        let encoder_hidden_states =
            required("encoder_hidden_states", float("encoder_hidden_states")?)?;
        let timestep = required("timestep", float("timestep")?)?;
        let encoder_hidden_states_mask = match store.info("encoder_hidden_states_mask") {
            None => None,
            Some(info) => {
                let name = "encoder_hidden_states_mask";
                let valid: Vec<bool> = if matches!(
                    info.dtype,
                    Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
                ) {
                    store
                        .load_f32(name)
                        .map_err(|e| at(e.to_string()))?
                        .iter()
                        .map(|&v| v != 0.0)
                        .collect()
                } else {
                    store
                        .load_i64(name)
                        .map_err(|e| at(e.to_string()))?
                        .iter()
                        .map(|&v| v != 0)
                        .collect()
                };
                Some(
                    Tensor::from_bool(&info.shape, valid)
                        .map_err(|e| at(format!("input `{name}`: {e}")))?,
                )
            }
        };
        let additional_t_cond = match store.info("additional_t_cond") {
            None => None,
            Some(info) => {
                let ids = store
                    .load_i64("additional_t_cond")
                    .map_err(|e| at(e.to_string()))?;
                Some(
                    Tensor::from_i64(&info.shape, ids)
                        .map_err(|e| at(format!("input `additional_t_cond`: {e}")))?,
                )
            }
        };
        Ok(DitInputs {
            hidden_states,
            encoder_hidden_states,
            encoder_hidden_states_mask,
            timestep,
            additional_t_cond,
            img_shapes,
        })
    }

    pub fn batch(&self) -> usize {
        self.hidden_states.shape().first().copied().unwrap_or(0)
    }

    pub fn img_tokens(&self) -> usize {
        self.hidden_states.shape().get(1).copied().unwrap_or(0)
    }

    pub fn txt_tokens(&self) -> usize {
        self.encoder_hidden_states
            .shape()
            .get(1)
            .copied()
            .unwrap_or(0)
    }

    /// Checks every input against the config and each other; the message names the input.
    pub fn validate(&self, config: &DitConfig) -> Result<(), ModelError> {
        let hs = self.hidden_states.shape();
        if hs.len() != 3 || hs[2] != config.in_channels {
            return Err(ModelError::new(format!(
                "input `hidden_states` has shape {hs:?}, expected [B, S_img, {}] (in_channels from config.json)",
                config.in_channels
            )));
        }
        let (b, s_img) = (hs[0], hs[1]);
        let ehs = self.encoder_hidden_states.shape();
        if ehs.len() != 3 || ehs[0] != b || ehs[2] != config.joint_attention_dim {
            return Err(ModelError::new(format!(
                "input `encoder_hidden_states` has shape {ehs:?}, expected [{b}, S_txt, {}] (batch from hidden_states, joint_attention_dim from config.json)",
                config.joint_attention_dim
            )));
        }
        if ehs[1] == 0 {
            return Err(ModelError::new(
                "input `encoder_hidden_states` has no tokens (S_txt = 0)",
            ));
        }
        if let Some(mask) = &self.encoder_hidden_states_mask {
            if mask.shape() != [b, ehs[1]] {
                return Err(ModelError::new(format!(
                    "input `encoder_hidden_states_mask` has shape {:?}, expected [{b}, {}] like encoder_hidden_states",
                    mask.shape(),
                    ehs[1]
                )));
            }
        }
        if self.timestep.shape() != [b] {
            return Err(ModelError::new(format!(
                "input `timestep` has shape {:?}, expected [{b}] (one value per batch element)",
                self.timestep.shape()
            )));
        }
        match (&self.additional_t_cond, config.use_additional_t_cond) {
            (None, true) => {
                return Err(ModelError::new(
                    "input `additional_t_cond` is required: config.json sets use_additional_t_cond",
                ))
            }
            (Some(_), false) => {
                return Err(ModelError::new(
                    "input `additional_t_cond` given but config.json does not set use_additional_t_cond",
                ))
            }
            (Some(t), true) if t.shape() != [b] => {
                return Err(ModelError::new(format!(
                    "input `additional_t_cond` has shape {:?}, expected [{b}]",
                    t.shape()
                )))
            }
            (Some(t), true) if t.to_f64_vec().iter().any(|&v| v != 0.0 && v != 1.0) => {
                return Err(ModelError::new("input `additional_t_cond` must hold 0 or 1"))
            }
            _ => {}
        }
        let n = token_count(&self.img_shapes);
        if n != s_img {
            return Err(ModelError::new(format!(
                "--img-shapes {} cover {n} tokens but `hidden_states` has {s_img}",
                format_img_shapes(&self.img_shapes)
            )));
        }
        Ok(())
    }

    /// (name, type) of every supplied input, as the lowering needs them.
    pub fn key_types(&self) -> Vec<(String, TensorType)> {
        let mut v = vec![
            ("hidden_states".to_string(), self.hidden_states.ty().clone()),
            (
                "encoder_hidden_states".to_string(),
                self.encoder_hidden_states.ty().clone(),
            ),
            ("timestep".to_string(), self.timestep.ty().clone()),
        ];
        if let Some(m) = &self.encoder_hidden_states_mask {
            v.push((
                "encoder_hidden_states_mask".to_string(),
                m.ty().with_dtype(DType::Bool),
            ));
        }
        if let Some(t) = &self.additional_t_cond {
            v.push((
                "additional_t_cond".to_string(),
                t.ty().with_dtype(DType::I64),
            ));
        }
        v
    }

    pub fn bindings(&self) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        m.insert("hidden_states".to_string(), self.hidden_states.clone());
        m.insert(
            "encoder_hidden_states".to_string(),
            self.encoder_hidden_states.clone(),
        );
        m.insert("timestep".to_string(), self.timestep.clone());
        if let Some(t) = &self.encoder_hidden_states_mask {
            m.insert("encoder_hidden_states_mask".to_string(), t.clone());
        }
        if let Some(t) = &self.additional_t_cond {
            m.insert("additional_t_cond".to_string(), t.clone());
        }
        m
    }
}

pub fn format_img_shapes(shapes: &[ImgShape]) -> String {
    shapes
        .iter()
        .map(|s| format!("{}x{}x{}", s[0], s[1], s[2]))
        .collect::<Vec<_>>()
        .join(",")
}
