//! The `vit.qie` config and the preprocessing of each image encoder, from a transformers folder's
//! config.json (and, for SigLIP, its preprocessor_config.json).

use serde_json::{json, Map, Value};

use super::encoder::EncoderKind;
use super::preprocess::{Preprocess, Resize};

/// What a folder's configs give one encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct TowerSetup {
    /// The DSL config (config.image_size is the input side).
    pub config: Value,
    pub preprocess: Preprocess,
    /// The side of the input pixels (square).
    pub input_side: usize,
    /// The patch grid of the checkpoint's position table (differs from the input's for DINOv2).
    pub checkpoint_grid: usize,
    pub input_grid: usize,
}

/// The tower's setup: transformers' defaults for keys a saved config omits (it writes only
/// non-default values), a `vision_config` lifted out (with CLIP's `projection_dim`), `tower` (the
/// checkpoint prefix of the tower's weights) and the input side the preprocessing gives.
/// `processor` is the folder's preprocessor_config.json, if any.
pub fn tower_setup(
    raw: &Value,
    processor: Option<&Value>,
    kind: EncoderKind,
    tower: &str,
) -> Result<TowerSetup, String> {
    let model_type = raw["model_type"].as_str().unwrap_or("");
    let (mut config, defaults) = match (kind, model_type) {
        (EncoderKind::Dino, "vit") => (object(raw)?, vit_defaults()),
        (EncoderKind::Dinov2, "dinov2") => (object(raw)?, dinov2_defaults()),
        (EncoderKind::Clip, "clip") => {
            let mut v = object(&raw["vision_config"])
                .map_err(|_| "a CLIPModel config needs `vision_config`".to_string())?;
            let proj = raw.get("projection_dim").cloned().unwrap_or(json!(512));
            v.insert("projection_dim".into(), proj);
            (v, clip_defaults())
        }
        (EncoderKind::Clip, "clip_vision_model") => (object(raw)?, clip_defaults()),
        (EncoderKind::Siglip, "siglip") => {
            let v = object(&raw["vision_config"])
                .map_err(|_| "a SiglipModel config needs `vision_config`".to_string())?;
            (v, siglip_defaults())
        }
        (EncoderKind::Siglip, "siglip_vision_model") => (object(raw)?, siglip_defaults()),
        (_, other) => {
            return Err(format!(
                "model_type {other:?} is not {}",
                kind.expected_model_types()
            ))
        }
    };
    for (k, v) in defaults.as_object().expect("defaults are an object") {
        config.entry(k.clone()).or_insert(v.clone());
    }
    config.insert("model_type".into(), json!(kind.dsl_model_type()));
    config.insert("tower".into(), json!(tower));
    if kind == EncoderKind::Dinov2 {
        dinov2_intermediate(&mut config)?;
    }
    if kind == EncoderKind::Siglip && config.get("vision_use_head") == Some(&json!(false)) {
        return Err("vision_use_head is false: the model has no pooling head".into());
    }
    check_shape_keys(&config)?;
    let checkpoint_side = int(&config, "image_size")? as usize;
    let patch = int(&config, "patch_size")? as usize;
    let preprocess = match kind {
        EncoderKind::Dino | EncoderKind::Dinov2 => Preprocess::DINO,
        EncoderKind::Clip => Preprocess::CLIP,
        EncoderKind::Siglip => siglip_preprocess(processor)?,
        EncoderKind::DreamSim => return Err("DreamSim is not a transformers model".into()),
    };
    let input_side = preprocess
        .square_side()
        .ok_or("the preprocessing must give square images")?;
    if kind != EncoderKind::Dinov2 && input_side != checkpoint_side {
        return Err(format!(
            "image_size {checkpoint_side}: the reference preprocessing gives \
             {input_side} x {input_side} images"
        ));
    }
    if input_side < patch {
        return Err(format!(
            "the {input_side} x {input_side} input is smaller than patch_size {patch}"
        ));
    }
    config.insert("image_size".into(), json!(input_side));
    Ok(TowerSetup {
        config: Value::Object(config),
        preprocess,
        input_side,
        checkpoint_grid: checkpoint_side / patch,
        input_grid: input_side / patch,
    })
}

/// Dinov2Config has `mlp_ratio` instead of `intermediate_size`: `int(hidden * mlp_ratio)`, and
/// for the SwiGLU FFN two thirds of that rounded up to a multiple of 8.
fn dinov2_intermediate(c: &mut Map<String, Value>) -> Result<(), String> {
    let hidden = int(c, "hidden_size")? as f64;
    let ratio = c
        .get("mlp_ratio")
        .and_then(Value::as_f64)
        .filter(|r| *r > 0.0)
        .ok_or("`mlp_ratio` must be a positive number")?;
    let mut size = (hidden * ratio) as u64;
    if c.get("use_swiglu_ffn") == Some(&json!(true)) {
        size = ((size as f64 * 2.0 / 3.0) as u64).div_ceil(8) * 8;
    }
    c.insert("intermediate_size".into(), json!(size));
    Ok(())
}

/// SigLIP's image processor as saved (SiglipImageProcessor): resize to size.height x size.width
/// with Pillow's bicubic, rescale by 1/255, normalise with image_mean / image_std; no crop.
fn siglip_preprocess(processor: Option<&Value>) -> Result<Preprocess, String> {
    let p = processor.ok_or(
        "no preprocessor_config.json: SigLIP's size, mean and std come from the model's own \
         image processor",
    )?;
    let field = |k: &str| format!("preprocessor_config.json: `{k}`");
    let side = |k: &str| {
        p["size"][k]
            .as_u64()
            .filter(|v| *v > 0 && *v <= 4096)
            .map(|v| v as usize)
            .ok_or_else(|| {
                format!(
                    "{} must be a size from 1 to 4096",
                    field(&format!("size.{k}"))
                )
            })
    };
    let (width, height) = (side("width")?, side("height")?);
    if p.get("resample").is_some_and(|r| r != &json!(3)) {
        return Err(format!(
            "{} is {}: only 3 (bicubic) is supported",
            field("resample"),
            p["resample"]
        ));
    }
    for flag in ["do_resize", "do_rescale", "do_normalize"] {
        if p.get(flag) == Some(&json!(false)) {
            return Err(format!("{} is false: not supported", field(flag)));
        }
    }
    if let Some(r) = p.get("rescale_factor") {
        if r.as_f64().is_none_or(|r| (r - 1.0 / 255.0).abs() > 1e-9) {
            return Err(format!(
                "{} is {r}: only 1/255 is supported",
                field("rescale_factor")
            ));
        }
    }
    let triple = |k: &str| -> Result<[f32; 3], String> {
        match p.get(k) {
            None => Ok([0.5; 3]),
            Some(v) => {
                let v: Vec<f32> = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64().map(|x| x as f32))
                            .collect()
                    })
                    .unwrap_or_default();
                <[f32; 3]>::try_from(v.as_slice())
                    .map_err(|_| format!("{} must be three numbers", field(k)))
            }
        }
    };
    let (mean, std) = (triple("image_mean")?, triple("image_std")?);
    if std.iter().any(|s| !s.is_finite() || *s <= 0.0) || mean.iter().any(|m| !m.is_finite()) {
        return Err(format!(
            "{} must be finite and positive",
            field("image_std")
        ));
    }
    Ok(Preprocess {
        resize: Resize::Exact { width, height },
        crop: None,
        mean,
        std,
    })
}

fn int(c: &Map<String, Value>, k: &str) -> Result<u64, String> {
    c.get(k)
        .and_then(Value::as_u64)
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            format!(
                "`{k}` must be a positive integer, got {}",
                c.get(k).unwrap_or(&Value::Null)
            )
        })
}

/// The integer keys the source divides by or loops over: positive, and consistent.
fn check_shape_keys(c: &Map<String, Value>) -> Result<(), String> {
    let (hidden, heads) = (int(c, "hidden_size")?, int(c, "num_attention_heads")?);
    if hidden % heads != 0 {
        return Err(format!(
            "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        ));
    }
    // the patch conv drops a remainder (SigLIP so400m: 384 / 14 -> 27 x 27 patches)
    let (size, patch) = (int(c, "image_size")?, int(c, "patch_size")?);
    if patch > size {
        return Err(format!(
            "patch_size {patch} is larger than image_size {size}"
        ));
    }
    for k in ["num_hidden_layers", "intermediate_size", "num_channels"] {
        int(c, k)?;
    }
    if c.get("model_type").and_then(Value::as_str) == Some("clip_vision_model") {
        int(c, "projection_dim")?;
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

/// transformers' `Dinov2Config()` defaults.
fn dinov2_defaults() -> Value {
    json!({"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
           "mlp_ratio": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": 224,
           "patch_size": 14, "num_channels": 3, "qkv_bias": true, "use_swiglu_ffn": false})
}

/// transformers' `CLIPVisionConfig()` defaults.
fn clip_defaults() -> Value {
    json!({"hidden_size": 768, "intermediate_size": 3072, "projection_dim": 512,
           "num_hidden_layers": 12, "num_attention_heads": 12, "num_channels": 3,
           "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
           "layer_norm_eps": 1e-5})
}

/// transformers' `SiglipVisionConfig()` defaults.
fn siglip_defaults() -> Value {
    json!({"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
           "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
           "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": true})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_configs_are_lifted_and_defaulted() {
        let raw = json!({"model_type": "clip", "projection_dim": 16,
                         "vision_config": {"hidden_size": 32, "num_attention_heads": 4}});
        let c = tower_setup(&raw, None, EncoderKind::Clip, "vision_model.")
            .unwrap()
            .config;
        assert_eq!(c["projection_dim"], 16);
        assert_eq!(c["hidden_size"], 32);
        assert_eq!(c["hidden_act"], "quick_gelu");
        assert_eq!(c["model_type"], "clip_vision_model");
        assert_eq!(c["tower"], "vision_model.");
        let e =
            tower_setup(&json!({"model_type": "bert"}), None, EncoderKind::Dino, "").unwrap_err();
        assert!(e.contains("bert"), "{e}");
        let bad = json!({"model_type": "vit", "hidden_size": 30, "num_attention_heads": 4});
        let e = tower_setup(&bad, None, EncoderKind::Dino, "").unwrap_err();
        assert!(e.contains("num_attention_heads 4"), "{e}");
        let bad = json!({"model_type": "vit", "patch_size": 300});
        let e = tower_setup(&bad, None, EncoderKind::Dino, "").unwrap_err();
        assert!(e.contains("larger than image_size"), "{e}");
        let bad = json!({"model_type": "vit", "patch_size": 0});
        let e = tower_setup(&bad, None, EncoderKind::Dino, "").unwrap_err();
        assert!(e.contains("`patch_size` must be a positive integer"), "{e}");
    }

    #[test]
    fn dinov2_takes_the_crop_as_input_and_sizes_its_mlp() {
        let raw = json!({"model_type": "dinov2", "hidden_size": 48, "num_attention_heads": 4,
                         "image_size": 518});
        let s = tower_setup(&raw, None, EncoderKind::Dinov2, "").unwrap();
        assert_eq!(
            (s.checkpoint_grid, s.input_grid, s.input_side),
            (37, 16, 224)
        );
        assert_eq!(s.config["intermediate_size"], 192);
        assert_eq!(s.config["image_size"], 224);
        let swiglu = json!({"model_type": "dinov2", "hidden_size": 40, "num_attention_heads": 4,
                            "use_swiglu_ffn": true});
        let s = tower_setup(&swiglu, None, EncoderKind::Dinov2, "").unwrap();
        assert_eq!(s.config["intermediate_size"], 112); // int(160 * 2 / 3) = 106 -> 112
    }

    #[test]
    fn siglip_reads_its_processor_and_refuses_what_it_cannot_do() {
        let raw = json!({"model_type": "siglip", "vision_config": {"image_size": 64,
                         "hidden_size": 32, "num_attention_heads": 4, "patch_size": 16}});
        let proc = json!({"size": {"height": 64, "width": 64}, "image_mean": [0.5, 0.5, 0.5],
                          "image_std": [0.5, 0.5, 0.5], "resample": 3});
        let s = tower_setup(&raw, Some(&proc), EncoderKind::Siglip, "vision_model.").unwrap();
        assert_eq!(s.input_side, 64);
        assert_eq!(s.preprocess.crop, None);
        let e = tower_setup(&raw, None, EncoderKind::Siglip, "").unwrap_err();
        assert!(e.contains("preprocessor_config.json"), "{e}");
        let bilinear = json!({"size": {"height": 64, "width": 64}, "resample": 2});
        let e = tower_setup(&raw, Some(&bilinear), EncoderKind::Siglip, "").unwrap_err();
        assert!(e.contains("resample"), "{e}");
        let other = json!({"size": {"height": 32, "width": 32}});
        let e = tower_setup(&raw, Some(&other), EncoderKind::Siglip, "").unwrap_err();
        assert!(e.contains("image_size 64"), "{e}");
    }
}
