//! The image encoders of the model metrics: DINO (`dino`, a transformers `ViTModel`) and CLIP
//! (`clip_i`, the vision tower + projection of a `CLIPModel` / `CLIPVisionModelWithProjection`),
//! both `vit.qie` through [`DslModel`], loaded from a transformers folder (config.json +
//! safetensors), with the preprocessing of the reference scripts (torchvision on PIL images).

use std::collections::HashMap;
use std::path::Path;

use image::RgbImage;
use qie_ir::{DType, TensorType};
use qie_runtime::weights::CheckMode;
use qie_runtime::Tensor;
use serde_json::{json, Map, Value};

use super::preprocess::{preprocess, Preprocess};
use crate::dsl_model::Specialisation;
use crate::dsl_model::{config_json, open_store, DslModel, DslProgram, DslSource, ShapeKey};
use crate::{ModelError, ModelOptions};

/// The bundled model source.
pub const SOURCE: &str = "vit.qie";

/// Which encoder (and so which layout and preprocessing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncoderKind {
    Dino,
    Clip,
}

impl EncoderKind {
    pub fn preprocessing(self) -> Preprocess {
        match self {
            EncoderKind::Dino => Preprocess::DINO,
            EncoderKind::Clip => Preprocess::CLIP,
        }
    }

    fn what(self) -> &'static str {
        match self {
            EncoderKind::Dino => "a transformers ViTModel folder (e.g. facebook/dino-vits16)",
            EncoderKind::Clip => {
                "a transformers CLIPModel folder (e.g. openai/clip-vit-base-patch32)"
            }
        }
    }
}

/// Plans are keyed by the batch size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Batch(usize);
impl ShapeKey for Batch {}

pub struct ImageEncoder {
    kind: EncoderKind,
    image_size: usize,
    model: DslModel<Batch>,
}

impl ImageEncoder {
    pub fn load(dir: &Path, kind: EncoderKind, options: &ModelOptions) -> Result<Self, ModelError> {
        let config_path = config_json(dir, kind.what())?;
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| ModelError::new(format!("{}: {e}", config_path.display())))?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::new(format!("{}: {e}", config_path.display())))?;
        let store = open_store(dir)?;
        let tower = if store.names().iter().any(|n| n.starts_with("vision_model.")) {
            "vision_model."
        } else if store.names().iter().any(|n| n.starts_with("vit.")) {
            "vit."
        } else {
            ""
        };
        let config = tower_config(&raw, kind, tower)
            .map_err(|e| ModelError::new(format!("{}: {e}", config_path.display())))?;
        let image_size = config["image_size"].as_u64().ok_or_else(|| {
            ModelError::new(format!(
                "{}: image_size must be an integer, got {}",
                config_path.display(),
                config["image_size"]
            ))
        })? as usize;
        let crop = kind.preprocessing().crop;
        if image_size != crop {
            return Err(ModelError::new(format!(
                "{}: image_size {image_size}: the reference preprocessing crops {crop} x {crop}",
                config_path.display()
            )));
        }
        let program = DslProgram::load(
            "image encoder",
            DslSource::new(SOURCE, options.source.as_deref()),
            config,
        )?;
        let model = DslModel::load(
            program,
            &spec(1, image_size),
            &store,
            "",
            CheckMode::AllowUnexpected,
            options,
        )?;
        Ok(ImageEncoder {
            kind,
            image_size,
            model,
        })
    }

    pub fn kind(&self) -> EncoderKind {
        self.kind
    }

    /// The embedding of every image (preprocessed as the reference does), `batch` at a time;
    /// an image the preprocessing refuses is an error naming its position.
    pub fn embed(&self, images: &[&RgbImage], batch: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let p = self.kind.preprocessing();
        let mut out = Vec::with_capacity(images.len());
        for (c, chunk) in images.chunks(batch.max(1)).enumerate() {
            let mut pixels = Vec::with_capacity(chunk.len() * 3 * p.crop * p.crop);
            for (i, img) in chunk.iter().enumerate() {
                let at = c * batch.max(1) + i;
                pixels.extend(
                    preprocess(img, &p).map_err(|e| ModelError::new(format!("image {at}: {e}")))?,
                );
            }
            out.extend(self.embed_pixels(&pixels, chunk.len())?);
        }
        Ok(out)
    }

    /// Embeddings of preprocessed [n, 3, S, S] pixels.
    pub fn embed_pixels(&self, pixels: &[f32], n: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let s = self.image_size;
        let shape = [n, 3, s, s];
        let t = Tensor::from_f32(&shape, pixels.to_vec())
            .map_err(|e| ModelError::new(format!("pixel values: {}", e.0)))?;
        let mut inputs = HashMap::new();
        inputs.insert("pixel_values".to_string(), t);
        let embeds = self
            .model
            .forward(&Batch(n), &spec(n, s), &inputs)?
            .take("embeds")?;
        let values = embeds.cast(DType::F32).to_f32_vec();
        let width = values.len() / n;
        if width == 0 || values.len() != n * width {
            return Err(ModelError::new(format!(
                "the image encoder gave {} values for {n} images",
                values.len()
            )));
        }
        Ok(values.chunks(width).map(<[f32]>::to_vec).collect())
    }

    pub fn backend_name(&self) -> &str {
        self.model.backend_name()
    }
}

fn spec(batch: usize, size: usize) -> Specialisation {
    Specialisation::new(vec![(
        "pixel_values".to_string(),
        TensorType::new(DType::F32, &[batch, 3, size, size]),
    )])
}

/// The tower's config for `vit.qie`: transformers' defaults for keys a saved config omits (it
/// writes only non-default values), CLIP's `vision_config` lifted out with `projection_dim`, and
/// `tower` (the checkpoint prefix of the tower's weights).
fn tower_config(raw: &Value, kind: EncoderKind, tower: &str) -> Result<Value, String> {
    let model_type = raw["model_type"].as_str().unwrap_or("");
    let (mut config, defaults) = match (kind, model_type) {
        (EncoderKind::Dino, "vit") => (object(raw)?, vit_defaults()),
        (EncoderKind::Clip, "clip") => {
            let mut v = object(&raw["vision_config"])
                .map_err(|_| "a CLIPModel config needs `vision_config`".to_string())?;
            let proj = raw.get("projection_dim").cloned().unwrap_or(json!(512));
            v.insert("projection_dim".into(), proj);
            (v, clip_defaults())
        }
        (EncoderKind::Clip, "clip_vision_model") => (object(raw)?, clip_defaults()),
        (_, other) => {
            return Err(format!(
                "model_type {other:?} is not {}",
                match kind {
                    EncoderKind::Dino => "a ViT (`vit`)",
                    EncoderKind::Clip => "a CLIP model (`clip` or `clip_vision_model`)",
                }
            ))
        }
    };
    for (k, v) in defaults.as_object().expect("defaults are an object") {
        config.entry(k.clone()).or_insert(v.clone());
    }
    let model_type = match kind {
        EncoderKind::Dino => "vit",
        EncoderKind::Clip => "clip_vision_model",
    };
    config.insert("model_type".into(), json!(model_type));
    config.insert("tower".into(), json!(tower));
    check_shape_keys(&config)?;
    Ok(Value::Object(config))
}

/// The integer keys the source divides by or loops over: positive, and consistent.
fn check_shape_keys(c: &Map<String, Value>) -> Result<(), String> {
    let int = |k: &str| -> Result<u64, String> {
        c.get(k)
            .and_then(Value::as_u64)
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                format!(
                    "`{k}` must be a positive integer, got {}",
                    c.get(k).unwrap_or(&Value::Null)
                )
            })
    };
    let (hidden, heads) = (int("hidden_size")?, int("num_attention_heads")?);
    if hidden % heads != 0 {
        return Err(format!(
            "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        ));
    }
    let (size, patch) = (int("image_size")?, int("patch_size")?);
    if size % patch != 0 {
        return Err(format!(
            "image_size {size} is not a multiple of patch_size {patch}"
        ));
    }
    for k in ["num_hidden_layers", "intermediate_size", "num_channels"] {
        int(k)?;
    }
    if c.get("model_type").and_then(Value::as_str) == Some("clip_vision_model") {
        int("projection_dim")?;
    }
    Ok(())
}

fn object(v: &Value) -> Result<Map<String, Value>, String> {
    v.as_object()
        .cloned()
        .ok_or_else(|| "the config must be a JSON object".to_string())
}

/// transformers' `ViTConfig()` defaults.
fn vit_defaults() -> Value {
    json!({"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
           "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
           "image_size": 224, "patch_size": 16, "num_channels": 3, "qkv_bias": true})
}

/// transformers' `CLIPVisionConfig()` defaults.
fn clip_defaults() -> Value {
    json!({"hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512,
           "num_hidden_layers": 12, "num_attention_heads": 12, "num_channels": 3,
           "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
           "layer_norm_eps": 1e-5})
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_configs_are_lifted_and_defaulted() {
        let raw = json!({"model_type": "clip", "projection_dim": 16,
                         "vision_config": {"hidden_size": 32, "num_attention_heads": 4}});
        let c = tower_config(&raw, EncoderKind::Clip, "vision_model.").unwrap();
        assert_eq!(c["projection_dim"], 16);
        assert_eq!(c["hidden_size"], 32);
        assert_eq!(c["hidden_act"], "quick_gelu");
        assert_eq!(c["model_type"], "clip_vision_model");
        assert_eq!(c["tower"], "vision_model.");
        let e = tower_config(&json!({"model_type": "bert"}), EncoderKind::Dino, "").unwrap_err();
        assert!(e.contains("bert"), "{e}");
        let bad = json!({"model_type": "vit", "hidden_size": 30, "num_attention_heads": 4});
        let e = tower_config(&bad, EncoderKind::Dino, "").unwrap_err();
        assert!(e.contains("num_attention_heads 4"), "{e}");
        let bad = json!({"model_type": "vit", "patch_size": 0});
        let e = tower_config(&bad, EncoderKind::Dino, "").unwrap_err();
        assert!(e.contains("`patch_size` must be a positive integer"), "{e}");
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-12);
    }
}
