//! Qwen-Image VAE driver (AutoencoderKLQwenImage on single images): the generic [`DslModel`] with
//! encoder and decoder plans keyed separately per input shape. Tiled decoding and the latent
//! normalisation of the edit pipelines live here too.

use super::vae_config::VaeConfig;
use super::vae_tiling::{tiled_decode, VaeTiling};
use crate::dsl_model::{
    config_json, open_store, DslModel, DslProgram, DslSource, ShapeKey, Specialisation,
};
use crate::{HostWeights, ModelError, ModelOptions};
use qie_ir::dsl::StaticValue;
use qie_ir::{DType, Graph, TensorType};
use qie_runtime::weights::CheckMode;
use qie_runtime::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// The bundled source of the VAE.
pub const VAE_SOURCE: &str = "qwen_image_vae.qie";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum PlanKey {
    Encode {
        batch: usize,
        height: usize,
        width: usize,
    },
    Decode {
        batch: usize,
        height: usize,
        width: usize,
        clamp: bool,
    },
}

impl ShapeKey for PlanKey {
    fn part(&self) -> Option<&'static str> {
        Some(match self {
            PlanKey::Encode { .. } => "encoder",
            PlanKey::Decode { .. } => "decoder",
        })
    }
}

pub struct QwenImageVae {
    pub config: VaeConfig,
    model: DslModel<PlanKey>,
}

impl QwenImageVae {
    /// Loads a diffusers `vae/` folder (config.json + safetensors).
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<QwenImageVae, ModelError> {
        let config = VaeConfig::load(&config_json(dir, "a diffusers vae/ folder")?)?;
        let program = vae_program(&config, options.source.as_deref())?;
        let store = open_store(dir)?;
        let probe = probe(&config);
        let model = DslModel::load(program, &probe, &store, "", CheckMode::Strict, options)?;
        Ok(QwenImageVae { config, model })
    }

    /// Builds a VAE from weights already in memory (benchmarks, random-weight runs).
    pub fn from_weights(
        config: VaeConfig,
        weights: HostWeights,
        options: &ModelOptions,
    ) -> Result<QwenImageVae, ModelError> {
        let program = vae_program(&config, options.source.as_deref())?;
        let model = DslModel::from_weights(program, &probe(&config), weights, "", options)?;
        Ok(QwenImageVae { config, model })
    }

    /// Checkpoint names and shapes of every weight of the bundled source (random weights).
    pub fn expected_weights(config: &VaeConfig) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
        vae_program(config, None)?.param_shapes(&probe(config))
    }

    /// Name of the backend plans run on (`cpu`, `cuda:0`, ...).
    pub fn backend_name(&self) -> &str {
        self.model.backend_name()
    }

    /// The backend's device memory (`None` on the CPU).
    pub fn device_memory(&self) -> Option<qie_runtime::MemoryReport> {
        self.model.device_memory()
    }

    /// image [B, C, H, W] f32 in [-1, 1] (H, W multiples of 8) -> the posterior mean
    /// [B, z_dim, H/8, W/8] (raw latents, not normalised).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor, ModelError> {
        let [batch, channels, height, width] = dims4(image, "image")?;
        let scale = self.config.scale_factor();
        if channels != self.config.input_channels {
            return Err(ModelError::new(format!(
                "VAE encode: image has {channels} channels, the VAE takes {}",
                self.config.input_channels
            )));
        }
        if height % scale != 0 || width % scale != 0 || height == 0 || width == 0 {
            return Err(ModelError::new(format!(
                "VAE encode: image is {height}x{width}; height and width must be positive \
                 multiples of {scale}"
            )));
        }
        let key = PlanKey::Encode {
            batch,
            height,
            width,
        };
        self.run(&key, "image", image, "latent")
    }

    /// Raw latents [B, z_dim, h, w] -> image [B, C, 8h, 8w], clamped to [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, ModelError> {
        self.decode_with(latents, true)
    }

    /// Like diffusers with `enable_tiling(...)`: latents larger than one tile are decoded in
    /// overlapping tiles blended together (the result is then not clamped, as in diffusers);
    /// smaller ones are decoded whole, as [`QwenImageVae::decode`].
    pub fn decode_tiled(&self, latents: &Tensor, tiling: &VaeTiling) -> Result<Tensor, ModelError> {
        let [_, _, h, w] = dims4(latents, "latents")?;
        let scale = self.config.scale_factor();
        tiling.validate(scale)?;
        if !tiling.applies(h, w, scale) {
            return self.decode(latents);
        }
        self.check_latents(latents)?;
        tiled_decode(latents, tiling, scale, |tile| self.decode_with(tile, false))
    }

    /// (raw - mean) / std per channel, as the edit pipelines prepare image latents for the DiT.
    pub fn normalize_latents(&self, raw: &Tensor) -> Tensor {
        self.per_channel(raw, |x, mean, std| (x - mean) / std)
    }

    /// z / (1 / std) + mean per channel, as the edit pipelines undo the normalisation before
    /// decoding (1 / std rounded to f32 first, like PyTorch).
    pub fn denormalize_latents(&self, z: &Tensor) -> Tensor {
        self.per_channel(z, |x, mean, std| x / (1.0 / std) + mean)
    }

    fn per_channel(&self, t: &Tensor, f: impl Fn(f32, f32, f32) -> f32) -> Tensor {
        let shape = t.shape().to_vec();
        assert!(
            shape.len() >= 2 && shape[1] == self.config.z_dim,
            "latents {shape:?} must have z_dim = {} channels on axis 1",
            self.config.z_dim
        );
        let inner: usize = shape[2..].iter().product();
        let mut values = t.to_f32_vec();
        for (i, v) in values.iter_mut().enumerate() {
            let c = (i / inner.max(1)) % shape[1];
            *v = f(*v, self.config.latents_mean[c], self.config.latents_std[c]);
        }
        Tensor::from_f32(&shape, values).expect("same shape")
    }

    fn check_latents(&self, latents: &Tensor) -> Result<[usize; 4], ModelError> {
        let d = dims4(latents, "latents")?;
        if d[1] != self.config.z_dim || d[2] == 0 || d[3] == 0 {
            return Err(ModelError::new(format!(
                "VAE decode: latents {:?} must be [B, {}, h, w] with h, w > 0",
                latents.shape(),
                self.config.z_dim
            )));
        }
        Ok(d)
    }

    fn decode_with(&self, latents: &Tensor, clamp: bool) -> Result<Tensor, ModelError> {
        let [batch, _, height, width] = self.check_latents(latents)?;
        let key = PlanKey::Decode {
            batch,
            height,
            width,
            clamp,
        };
        self.run(&key, "latents", latents, "sample")
    }

    fn run(
        &self,
        key: &PlanKey,
        input: &str,
        value: &Tensor,
        output: &str,
    ) -> Result<Tensor, ModelError> {
        let value = if value.dtype() == DType::F32 {
            value.clone()
        } else {
            value.cast(DType::F32)
        };
        let bindings = HashMap::from([(input.to_string(), value)]);
        self.model
            .forward(key, &specialisation(&self.config, key), &bindings)?
            .take(output)
    }
}

/// The encoder's graph for images [batch, C, height, width], without weights (plan inspection,
/// memory estimates).
pub fn lower_encoder(
    config: &VaeConfig,
    batch: usize,
    height: usize,
    width: usize,
) -> Result<Graph, ModelError> {
    let key = PlanKey::Encode {
        batch,
        height,
        width,
    };
    vae_program(config, None)?.lower(&specialisation(config, &key))
}

/// The decoder's graph for latents [batch, z_dim, height, width], without weights.
pub fn lower_decoder(
    config: &VaeConfig,
    batch: usize,
    height: usize,
    width: usize,
    clamp: bool,
) -> Result<Graph, ModelError> {
    let key = PlanKey::Decode {
        batch,
        height,
        width,
        clamp,
    };
    vae_program(config, None)?.lower(&specialisation(config, &key))
}

fn dims4(t: &Tensor, name: &str) -> Result<[usize; 4], ModelError> {
    match *t.shape() {
        [b, c, h, w] => Ok([b, c, h, w]),
        ref s => Err(ModelError::new(format!(
            "VAE: `{name}` must be [B, C, H, W], got {s:?}"
        ))),
    }
}

fn vae_program(config: &VaeConfig, source: Option<&Path>) -> Result<DslProgram, ModelError> {
    DslProgram::load("VAE", DslSource::new(VAE_SOURCE, source), config.for_dsl())
}

/// The encoder or the decoder for one input shape (the other half's inputs are absent).
fn specialisation(config: &VaeConfig, key: &PlanKey) -> Specialisation {
    let (input, clamp) = match *key {
        PlanKey::Encode {
            batch,
            height,
            width,
        } => (
            (
                "image".to_string(),
                TensorType::new(DType::F32, &[batch, config.input_channels, height, width]),
            ),
            true,
        ),
        PlanKey::Decode {
            batch,
            height,
            width,
            clamp,
        } => (
            (
                "latents".to_string(),
                TensorType::new(DType::F32, &[batch, config.z_dim, height, width]),
            ),
            clamp,
        ),
    };
    Specialisation::new(vec![input]).with_static("clamp", StaticValue::Bool(clamp))
}

/// Both halves at a tiny shape, to list the weights with (they do not depend on the input shapes).
fn probe(config: &VaeConfig) -> Specialisation {
    let scale = config.scale_factor();
    Specialisation::new(vec![
        (
            "image".to_string(),
            TensorType::new(DType::F32, &[1, config.input_channels, scale, scale]),
        ),
        (
            "latents".to_string(),
            TensorType::new(DType::F32, &[1, config.z_dim, 1, 1]),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_config_lowers_with_the_checkpoint_names() {
        let expected = QwenImageVae::expected_weights(&VaeConfig::released()).unwrap();
        let find = |n: &str| {
            expected
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, s)| s.clone())
        };
        assert_eq!(find("encoder.conv_in.weight"), Some(vec![96, 3, 3, 3, 3]));
        assert_eq!(
            find("decoder.up_blocks.0.upsamplers.0.time_conv.weight"),
            Some(vec![768, 384, 3, 1, 1])
        );
        assert_eq!(
            find("encoder.down_blocks.8.resample.1.weight"),
            Some(vec![384, 384, 3, 3])
        );
        assert_eq!(
            find("encoder.mid_block.attentions.0.norm.gamma"),
            Some(vec![384, 1, 1])
        );
        assert_eq!(
            find("decoder.up_blocks.3.upsamplers.0.resample.1.weight"),
            None
        );
        // diffusers' AutoencoderKLQwenImage() state dict has 194 tensors.
        assert_eq!(expected.len(), 194);
    }
}
