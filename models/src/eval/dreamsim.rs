//! DreamSim's ensemble (dreamsim 0.2, `dreamsim_type="ensemble"`) from the folder its
//! `dreamsim(cache_dir=...)` downloads: three ViT-B/16 towers in the DINO / timm layout
//! (`vit.qie`'s `dino_vit` variant), each with the peft LoRA of `ensemble_lora/` merged into its
//! `attn.qkv`, read straight from the released torch checkpoints:
//! - DINO: `checkpoints/dino_vitbase16_pretrain.pth` (what torch.hub fetches for
//!   `facebookresearch/dino` `dino_vitb16`); feature: the CLS row of block 11's output (no final
//!   norm); ImageNet mean / std;
//! - CLIP: `clip_vitb16_pretrain.pth.tar` (`state_dict` with ln_pre as `pos_drop` and `proj`),
//!   QuickGELU, LayerNorm eps 1e-5; feature: `norm(x)[:, 0] @ proj`; OpenAI CLIP mean / std;
//! - OpenCLIP: `open_clip_vitb16_pretrain.pth.tar`, the same with GELU.
//!
//! The image is resized once to 224 x 224 (PIL bicubic, no crop) and normalised per tower; the
//! embedding is the three features concatenated, mean-centred and divided by its norm, and the
//! distance `1 - cosine`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use qie_runtime::weights::{TorchFile, WeightStore};

use super::encoder::{spec, Batch, Tower, SOURCE};
use super::preprocess::{CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD};
use crate::dsl_model::{DslModel, DslProgram, DslSource};
use crate::host_weights::{HostTensor, HostWeights};
use crate::{ModelError, ModelOptions};

/// DreamSim's input side (dreamsim_args["img_size"]).
pub const INPUT_SIDE: usize = 224;

/// DreamSim extracts every DINO feature at block index 11 (`PerceptualModel._extract_cls`).
const FEATURE_BLOCK: usize = 11;

/// One tower of the ensemble, in `PerceptualModel.extractor_list` order.
struct TowerSpec {
    name: &'static str,
    file: &'static str,
    /// The key path of the state dict inside the file.
    state_dict: &'static [&'static str],
    feature: &'static str,
    act: &'static str,
    eps: f64,
    pre_norm: bool,
    mean: [f32; 3],
    std: [f32; 3],
}

const TOWERS: [TowerSpec; 3] = [
    TowerSpec {
        name: "DINO ViT-B/16",
        file: "checkpoints/dino_vitbase16_pretrain.pth",
        state_dict: &[],
        feature: "block_cls",
        act: "gelu",
        eps: 1e-6,
        pre_norm: false,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    TowerSpec {
        name: "CLIP ViT-B/16",
        file: "clip_vitb16_pretrain.pth.tar",
        state_dict: &["state_dict"],
        feature: "projected",
        act: "quick_gelu",
        eps: 1e-5,
        pre_norm: true,
        mean: CLIP_MEAN,
        std: CLIP_STD,
    },
    TowerSpec {
        name: "OpenCLIP ViT-B/16",
        file: "open_clip_vitb16_pretrain.pth.tar",
        state_dict: &["state_dict"],
        feature: "projected",
        act: "gelu",
        eps: 1e-5,
        pre_norm: true,
        mean: CLIP_MEAN,
        std: CLIP_STD,
    },
];

const LORA_DIR: &str = "ensemble_lora";

/// The three towers with the ensemble LoRA merged.
pub(super) fn load_towers(dir: &Path, options: &ModelOptions) -> Result<Vec<Tower>, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::new(format!(
            "{}: not a folder; --dreamsim-model takes the folder dreamsim(cache_dir=...) fills \
             (ensemble_lora/, clip_vitb16_pretrain.pth.tar, ...)",
            dir.display()
        )));
    }
    let lora = Lora::load(&dir.join(LORA_DIR))?;
    let mut towers = Vec::with_capacity(TOWERS.len());
    for (index, t) in TOWERS.iter().enumerate() {
        let path = dir.join(t.file);
        if !path.is_file() {
            return Err(ModelError::new(format!(
                "{}: missing: DreamSim's {} checkpoint (dreamsim downloads it on first use)",
                path.display(),
                t.name
            )));
        }
        let file = TorchFile::open(&path).map_err(|e| ModelError::new(e.to_string()))?;
        let tensors: HashMap<String, _> = file
            .tensors_at(t.state_dict)
            .map_err(|e| ModelError::new(e.to_string()))?
            .into_iter()
            .collect();
        let shape = |name: &str| tensors.get(name).map(|t| t.shape.clone());
        let config = tower_config(t, &shape)
            .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
        let program = DslProgram::load(
            "DreamSim tower",
            DslSource::new(SOURCE, options.source.as_deref()),
            config,
        )?;
        let probe = spec(1, INPUT_SIDE);
        let table = program.param_table(&probe)?;
        let mut weights = HostWeights::default();
        for (name, want) in &table.shapes {
            let at = |reason: String| {
                ModelError::new(format!("{}: tensor `{name}`: {reason}", path.display()))
            };
            let tensor = tensors
                .get(name)
                .ok_or_else(|| at(format!("missing (the {} tower needs it)", t.name)))?;
            if &tensor.shape != want {
                return Err(at(format!(
                    "has shape {:?}, the model expects {want:?}",
                    tensor.shape
                )));
            }
            let mut values = file
                .load_f32(name, tensor)
                .map_err(|e| ModelError::new(e.to_string()))?;
            lora.merge_into(index, name, &mut values, want)?;
            weights.insert_tensor(
                name.clone(),
                HostTensor::from_f32(values, options.precision),
            );
        }
        lora.check_used(index, &table.shapes)?;
        let model = DslModel::<Batch>::from_weights(program, &probe, weights, "", options)?;
        towers.push(Tower {
            model,
            normalize: Some((t.mean, t.std)),
        });
    }
    Ok(towers)
}

/// The `vit.qie` config of a tower, read off its tensor shapes (the checkpoints carry no
/// config): ViT-B's heads of 64, DINO cut after block 11.
fn tower_config(
    t: &TowerSpec,
    shape: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> Result<Value, String> {
    let need = |name: &str| shape(name).ok_or_else(|| format!("no tensor `{name}`"));
    let hidden = match need("cls_token")?.as_slice() {
        [1, 1, h] if *h > 0 => *h,
        other => {
            return Err(format!(
                "`cls_token` has shape {other:?}, not [1, 1, width]"
            ))
        }
    };
    if hidden % 64 != 0 {
        return Err(format!(
            "width {hidden} is not a multiple of 64 (ViT heads of 64 channels)"
        ));
    }
    let patch = match need("patch_embed.proj.weight")?.as_slice() {
        [h, 3, p, q] if *h == hidden && p == q && *p > 0 && *p <= INPUT_SIDE => *p,
        other => {
            return Err(format!(
                "`patch_embed.proj.weight` has shape {other:?}, not [{hidden}, 3, p, p]"
            ))
        }
    };
    let grid = INPUT_SIDE / patch;
    let tokens = need("pos_embed")?;
    if tokens != [1, grid * grid + 1, hidden] {
        return Err(format!(
            "`pos_embed` has shape {tokens:?}; a {INPUT_SIDE} input in patches of {patch} needs \
             [1, {}, {hidden}]",
            grid * grid + 1
        ));
    }
    let depth = (0..)
        .take_while(|i| shape(&format!("blocks.{i}.norm1.weight")).is_some())
        .count();
    let depth = if t.feature == "block_cls" {
        if depth <= FEATURE_BLOCK {
            return Err(format!(
                "{depth} blocks: DreamSim takes the DINO feature after block {FEATURE_BLOCK}"
            ));
        }
        FEATURE_BLOCK + 1
    } else if depth == 0 {
        return Err("no `blocks.0.norm1.weight`".into());
    } else {
        depth
    };
    let mlp = match need("blocks.0.mlp.fc1.weight")?.as_slice() {
        [m, h] if *h == hidden && *m > 0 => *m,
        other => return Err(format!("`blocks.0.mlp.fc1.weight` has shape {other:?}")),
    };
    let mut config = json!({
        "model_type": "dino_vit", "feature": t.feature, "pre_norm": t.pre_norm,
        "hidden_size": hidden, "num_attention_heads": hidden / 64, "num_hidden_layers": depth,
        "intermediate_size": mlp, "patch_size": patch, "image_size": INPUT_SIDE,
        "num_channels": 3, "hidden_act": t.act, "layer_norm_eps": t.eps, "qkv_bias": true,
    });
    if t.feature == "projected" {
        match need("proj")?.as_slice() {
            [h, d] if *h == hidden && *d > 0 => config["projection_dim"] = json!(d),
            other => return Err(format!("`proj` has shape {other:?}, not [{hidden}, dim]")),
        }
    }
    Ok(config)
}

/// A LoRA factor: values and shape.
type Factor = (Vec<f32>, Vec<usize>);
/// The adapted weight: (tower index, weight name without `.weight`).
type Target = (usize, String);

/// A peft LoRA over `PerceptualModel`: `base_model.model.extractor_list.{i}.model.{weight}`
/// pairs of `lora_A` [r, in] and `lora_B` [out, r], merged as `W += alpha / r * B A`.
struct Lora {
    path: PathBuf,
    scale: f32,
    /// (tower index, weight name) -> (A, A's shape, B, B's shape)
    pairs: HashMap<Target, [Factor; 2]>,
}

impl Lora {
    fn load(dir: &Path) -> Result<Lora, ModelError> {
        let config_path = dir.join("adapter_config.json");
        let err = |p: &Path, e: String| ModelError::new(format!("{}: {e}", p.display()));
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            err(
                &config_path,
                format!("{e} (DreamSim's ensemble LoRA, which dreamsim downloads with the towers)"),
            )
        })?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| err(&config_path, e.to_string()))?;
        let scale = lora_scale(&config).map_err(|e| err(&config_path, e))?;
        let (file, tensors) = read_adapter(dir)?;
        let mut halves: HashMap<Target, [Option<Factor>; 2]> = HashMap::new();
        for (name, shape, values) in tensors {
            let (tower, weight, half) = lora_key(&name).ok_or_else(|| {
                err(
                    &file,
                    format!(
                        "tensor `{name}` is not a LoRA factor of a DreamSim tower \
                         (base_model.model.extractor_list.N.model.*.lora_A/B.weight)"
                    ),
                )
            })?;
            if shape.len() != 2 {
                return Err(err(&file, format!("tensor `{name}` has shape {shape:?}")));
            }
            halves.entry((tower, weight)).or_default()[half] = Some((values, shape));
        }
        let mut pairs = HashMap::new();
        for ((tower, weight), [a, b]) in halves {
            match (a, b) {
                (Some(a), Some(b)) if a.1[0] == b.1[1] => {
                    pairs.insert((tower, weight), [a, b]);
                }
                (Some(a), Some(b)) => {
                    return Err(err(
                        &file,
                        format!(
                            "tower {tower} `{weight}`: lora_A {:?} and lora_B {:?} differ in rank",
                            a.1, b.1
                        ),
                    ))
                }
                _ => {
                    return Err(err(
                        &file,
                        format!("tower {tower} `{weight}` has only one of lora_A and lora_B"),
                    ))
                }
            }
        }
        Ok(Lora {
            path: file,
            scale,
            pairs,
        })
    }

    /// Adds the LoRA delta of tower `index`'s weight `name` (shape `shape`) to `values`.
    fn merge_into(
        &self,
        index: usize,
        name: &str,
        values: &mut [f32],
        shape: &[usize],
    ) -> Result<(), ModelError> {
        let Some(weight) = name.strip_suffix(".weight") else {
            return Ok(());
        };
        let Some([(a, a_shape), (b, b_shape)]) = self.pairs.get(&(index, weight.to_string()))
        else {
            return Ok(());
        };
        let (rank, cols, rows) = (a_shape[0], a_shape[1], b_shape[0]);
        if shape != [rows, cols] {
            return Err(ModelError::new(format!(
                "{}: tower {index} `{weight}`: lora_B {b_shape:?} x lora_A {a_shape:?} does not \
                 fit the weight {shape:?}",
                self.path.display()
            )));
        }
        for r in 0..rows {
            let row = &mut values[r * cols..(r + 1) * cols];
            for k in 0..rank {
                let f = self.scale * b[r * rank + k];
                for (w, &x) in row.iter_mut().zip(&a[k * cols..(k + 1) * cols]) {
                    *w += f * x;
                }
            }
        }
        Ok(())
    }

    /// Every LoRA pair of tower `index` adapts a weight the tower has.
    fn check_used(&self, index: usize, shapes: &[(String, Vec<usize>)]) -> Result<(), ModelError> {
        for (tower, weight) in self.pairs.keys() {
            let name = format!("{weight}.weight");
            if *tower == index && !shapes.iter().any(|(n, _)| *n == name) {
                return Err(ModelError::new(format!(
                    "{}: the LoRA adapts tower {index}'s `{name}`, which the tower does not use",
                    self.path.display()
                )));
            }
        }
        if self.pairs.keys().any(|(t, _)| *t >= TOWERS.len()) {
            return Err(ModelError::new(format!(
                "{}: the LoRA names a tower past the ensemble's {}",
                self.path.display(),
                TOWERS.len()
            )));
        }
        Ok(())
    }
}

/// peft's LoRA scaling: `lora_alpha / r`, or `/ sqrt(r)` with rsLoRA; the variants a merge
/// cannot express this way are refused.
fn lora_scale(config: &Value) -> Result<f32, String> {
    if config.get("peft_type").is_some_and(|t| t != "LORA") {
        return Err(format!("peft_type {} is not LORA", config["peft_type"]));
    }
    let r = config["r"]
        .as_u64()
        .filter(|r| *r > 0)
        .ok_or("`r` must be a positive integer")?;
    let alpha = config["lora_alpha"]
        .as_f64()
        .filter(|a| a.is_finite())
        .ok_or("`lora_alpha` must be a number")?;
    for flag in ["use_dora", "fan_in_fan_out", "lora_bias"] {
        if config.get(flag) == Some(&json!(true)) {
            return Err(format!("`{flag}` is not supported"));
        }
    }
    if config.get("bias").is_some_and(|b| b != "none") {
        return Err(format!(
            "bias {} is not supported (only \"none\")",
            config["bias"]
        ));
    }
    for pattern in ["rank_pattern", "alpha_pattern"] {
        if config
            .get(pattern)
            .and_then(Value::as_object)
            .is_some_and(|p| !p.is_empty())
        {
            return Err(format!("a non-empty `{pattern}` is not supported"));
        }
    }
    let rslora = config.get("use_rslora") == Some(&json!(true));
    let r = r as f64;
    Ok((if rslora { alpha / r.sqrt() } else { alpha / r }) as f32)
}

/// `base_model.model.extractor_list.{i}.model.{weight}.lora_{A,B}.weight` -> (i, weight, 0/1).
fn lora_key(name: &str) -> Option<(usize, String, usize)> {
    let rest = name.strip_prefix("base_model.model.extractor_list.")?;
    let (index, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("model.")?;
    let (weight, half) = if let Some(w) = rest.strip_suffix(".lora_A.weight") {
        (w, 0)
    } else {
        (rest.strip_suffix(".lora_B.weight")?, 1)
    };
    Some((index.parse().ok()?, weight.to_string(), half))
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The adapter's tensors: `adapter_model.safetensors`, else the older `adapter_model.bin`.
fn read_adapter(dir: &Path) -> Result<(PathBuf, Tensors), ModelError> {
    let err = |e: qie_runtime::weights::WeightsError| ModelError::new(e.to_string());
    let safetensors = dir.join("adapter_model.safetensors");
    if safetensors.is_file() {
        let store = WeightStore::open(&safetensors).map_err(err)?;
        let mut out = Vec::new();
        for name in store.names() {
            let shape = store.require(name).map_err(err)?.shape.clone();
            out.push((name.to_string(), shape, store.load_f32(name).map_err(err)?));
        }
        return Ok((safetensors, out));
    }
    let bin = dir.join("adapter_model.bin");
    if bin.is_file() {
        let file = TorchFile::open(&bin).map_err(err)?;
        let mut out = Vec::new();
        for (name, t) in file.tensors_at(&[]).map_err(err)? {
            let values = file.load_f32(&name, &t).map_err(err)?;
            out.push((name, t.shape, values));
        }
        return Ok((bin, out));
    }
    Err(ModelError::new(format!(
        "{}: no adapter_model.safetensors or adapter_model.bin",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_keys_and_scales_parse() {
        assert_eq!(
            lora_key("base_model.model.extractor_list.2.model.blocks.7.attn.qkv.lora_B.weight"),
            Some((2, "blocks.7.attn.qkv".to_string(), 1))
        );
        assert_eq!(lora_key("base_model.model.mlp.fc1.lora_A.weight"), None);
        assert_eq!(lora_scale(&json!({"r": 16, "lora_alpha": 8})).unwrap(), 0.5);
        let rs = lora_scale(&json!({"r": 16, "lora_alpha": 8, "use_rslora": true})).unwrap();
        assert_eq!(rs, 2.0);
        let e = lora_scale(&json!({"r": 4, "lora_alpha": 8, "use_dora": true})).unwrap_err();
        assert!(e.contains("use_dora"), "{e}");
        assert!(lora_scale(&json!({"r": 0, "lora_alpha": 8})).is_err());
        let e = lora_scale(&json!({"r": 4, "lora_alpha": 1, "rank_pattern": {"qkv": 2}}));
        assert!(e.unwrap_err().contains("rank_pattern"));
    }
}
