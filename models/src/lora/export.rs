//! Writing LoRA adapters in the layouts other tools load: peft/diffusers (what
//! `pipe.load_lora_weights` reads, with the adapter config in the header), DiffSynth-Studio,
//! kohya/musubi and ComfyUI. Every format stores the same update `alpha / rank * B @ A`.

use super::file::LoraFile;
use super::keys::{LoraFormat, ModuleName};
use crate::ModelError;
use qie_runtime::weights::{save_safetensors_with_metadata, Dtype};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One module's adapter, by the DiT's dotted module name.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterModule {
    /// `transformer_blocks.0.attn.to_q`
    pub module: String,
    /// [rank, in], row-major.
    pub down: Vec<f32>,
    /// [out, rank], row-major.
    pub up: Vec<f32>,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub alpha: f32,
}

/// What the header records about the adapter (peft's LoraConfig fields diffusers reads).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    pub rank: usize,
    pub alpha: f32,
    pub targets: Vec<String>,
}

/// The file name diffusers' `load_lora_weights(DIR)` looks for.
pub const DIFFUSERS_FILE: &str = "pytorch_lora_weights.safetensors";

/// Writes `modules` to `path` in `format` (f32 tensors, atomically).
pub fn write_adapter(
    path: &Path,
    modules: &[AdapterModule],
    config: &AdapterConfig,
    format: LoraFormat,
) -> Result<(), ModelError> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for m in modules {
        if m.down.len() != m.rank * m.in_features || m.up.len() != m.out_features * m.rank {
            return Err(ModelError::new(format!(
                "LoRA module `{}`: factors do not match rank {} x [{} -> {}]",
                m.module, m.rank, m.in_features, m.out_features
            )));
        }
        let down_shape = vec![m.rank, m.in_features];
        let up_shape = vec![m.out_features, m.rank];
        match format {
            LoraFormat::Peft => {
                let base = format!("transformer.{}", m.module);
                tensors.push((format!("{base}.lora_A.weight"), down_shape, m.down.clone()));
                tensors.push((format!("{base}.lora_B.weight"), up_shape, m.up.clone()));
            }
            LoraFormat::DiffSynth => {
                // DiffSynth applies B @ A unscaled: fold alpha / rank into B.
                let scale = m.alpha / m.rank as f32;
                let up: Vec<f32> = m.up.iter().map(|v| v * scale).collect();
                tensors.push((
                    format!("{}.lora_A.default.weight", m.module),
                    down_shape,
                    m.down.clone(),
                ));
                tensors.push((format!("{}.lora_B.default.weight", m.module), up_shape, up));
            }
            LoraFormat::Kohya | LoraFormat::ComfyUi => {
                let base = if format == LoraFormat::Kohya {
                    format!("lora_unet_{}", m.module.replace('.', "_"))
                } else {
                    format!("diffusion_model.{}", m.module)
                };
                tensors.push((
                    format!("{base}.lora_down.weight"),
                    down_shape,
                    m.down.clone(),
                ));
                tensors.push((format!("{base}.lora_up.weight"), up_shape, m.up.clone()));
                tensors.push((format!("{base}.alpha"), vec![], vec![m.alpha]));
            }
        }
    }
    let metadata = header(modules, config, format);
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    save_safetensors_with_metadata(path, &refs, Dtype::F32, &metadata)
        .map_err(|e| ModelError::new(e.to_string()))
}

fn header(
    modules: &[AdapterModule],
    config: &AdapterConfig,
    format: LoraFormat,
) -> HashMap<String, String> {
    let mut targets = config.targets.clone();
    targets.sort();
    // Modules whose rank or alpha differ from the adapter's (peft's rank_pattern / alpha_pattern).
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    for m in modules {
        if m.rank != config.rank {
            rank_pattern.insert(m.module.clone(), json!(m.rank));
        }
        if m.alpha != config.alpha {
            alpha_pattern.insert(m.module.clone(), json!(m.alpha));
        }
    }
    let mut out = HashMap::new();
    match format {
        LoraFormat::Peft => {
            // The LoraConfig fields diffusers' loader reads, prefixed as save_lora_weights does.
            let lora_config = json!({
                "transformer.r": config.rank,
                "transformer.lora_alpha": config.alpha,
                "transformer.target_modules": targets,
                "transformer.peft_type": "LORA",
                "transformer.bias": "none",
                "transformer.lora_dropout": 0.0,
                "transformer.use_rslora": false,
                "transformer.use_dora": false,
                "transformer.init_lora_weights": true,
                "transformer.fan_in_fan_out": false,
                "transformer.lora_bias": false,
                "transformer.alpha_pattern": alpha_pattern,
                "transformer.rank_pattern": rank_pattern,
            });
            out.insert(
                "lora_adapter_metadata".to_string(),
                serde_json::to_string_pretty(&lora_config).expect("plain data"),
            );
        }
        LoraFormat::Kohya => {
            out.insert("ss_network_dim".to_string(), config.rank.to_string());
            out.insert("ss_network_alpha".to_string(), config.alpha.to_string());
            out.insert("ss_network_module".to_string(), "networks.lora".to_string());
        }
        LoraFormat::DiffSynth | LoraFormat::ComfyUi => {}
    }
    out.insert("qie_lora_targets".to_string(), targets.join(","));
    out
}

/// The adapter of a LoRA file read by [`LoraFile::load`], with kohya's flattened module names
/// turned back into dotted ones by `resolve` (None: not a module of the model).
pub fn adapter_from_file(
    file: &LoraFile,
    resolve: &dyn Fn(&ModuleName) -> Option<String>,
) -> Result<(Vec<AdapterModule>, AdapterConfig), ModelError> {
    let mut modules = Vec::with_capacity(file.modules.len());
    for m in &file.modules {
        let module = resolve(&m.name).ok_or_else(|| {
            ModelError::new(format!(
                "LoRA file {}: key `{}`: module `{}` is not a DiT module",
                file.path.display(),
                m.key,
                m.name
            ))
        })?;
        modules.push(AdapterModule {
            module,
            down: m.down.clone(),
            up: m.up.clone(),
            rank: m.rank,
            in_features: m.in_features,
            out_features: m.out_features,
            // Keeps alpha / rank (rsLoRA's alpha / sqrt(rank) becomes the equivalent alpha).
            alpha: m.alpha_scale * m.rank as f32,
        });
    }
    let most_common = |values: Vec<String>| -> Option<String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for v in values {
            *counts.entry(v).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, c)| *c).map(|(v, _)| v)
    };
    let rank = most_common(modules.iter().map(|m| m.rank.to_string()).collect())
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| ModelError::new(format!("LoRA file {}: no modules", file.path.display())))?;
    let alpha = most_common(modules.iter().map(|m| m.alpha.to_string()).collect())
        .and_then(|a| a.parse().ok())
        .unwrap_or(rank as f32);
    let mut targets: Vec<String> = modules.iter().map(|m| target_of(&m.module)).collect();
    targets.sort();
    targets.dedup();
    Ok((
        modules,
        AdapterConfig {
            rank,
            alpha,
            targets,
        },
    ))
}

/// The peft target pattern of a DiT module: its name inside a block, without `attn.`
/// (`transformer_blocks.3.attn.to_q` -> `to_q`, `transformer_blocks.3.img_mlp.net.2` -> `img_mlp.net.2`).
pub fn target_of(module: &str) -> String {
    let inside = match module.strip_prefix("transformer_blocks.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, r)| r),
        None => module,
    };
    inside.strip_prefix("attn.").unwrap_or(inside).to_string()
}

impl std::str::FromStr for LoraFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "peft" | "diffusers" => Ok(LoraFormat::Peft),
            "diffsynth" => Ok(LoraFormat::DiffSynth),
            "kohya" | "musubi" => Ok(LoraFormat::Kohya),
            "comfyui" | "comfy" => Ok(LoraFormat::ComfyUi),
            other => Err(format!(
                "unknown LoRA format `{other}` (expected peft, diffsynth, kohya or comfyui)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraFile;

    fn module(name: &str, rank: usize, alpha: f32) -> AdapterModule {
        let (i, o) = (6, 5);
        AdapterModule {
            module: name.to_string(),
            down: (0..rank * i).map(|k| (k as f32 * 0.37).sin()).collect(),
            up: (0..o * rank).map(|k| (k as f32 * 0.71).cos()).collect(),
            rank,
            in_features: i,
            out_features: o,
            alpha,
        }
    }

    #[test]
    fn every_format_reads_back_to_the_same_update() {
        let modules = vec![
            module("transformer_blocks.0.attn.to_q", 4, 8.0),
            module("transformer_blocks.1.img_mlp.net.2", 2, 2.0),
        ];
        let config = AdapterConfig {
            rank: 4,
            alpha: 8.0,
            targets: vec!["to_q".into(), "img_mlp.net.2".into()],
        };
        let dir = tempfile::tempdir().unwrap();
        for format in [
            LoraFormat::Peft,
            LoraFormat::DiffSynth,
            LoraFormat::Kohya,
            LoraFormat::ComfyUi,
        ] {
            let path = dir.path().join(format!("{format:?}.safetensors"));
            write_adapter(&path, &modules, &config, format).unwrap();
            let file = LoraFile::load(&path).unwrap();
            assert_eq!(file.format, format);
            let dotted = |n: &ModuleName| match n {
                ModuleName::Dotted(d) => Some(d.clone()),
                ModuleName::Flat(f) => modules
                    .iter()
                    .find(|m| m.module.replace('.', "_") == *f)
                    .map(|m| m.module.clone()),
            };
            let (back, back_config) = adapter_from_file(&file, &dotted).unwrap();
            assert_eq!(back.len(), 2, "{format:?}");
            for m in &modules {
                let b = back.iter().find(|b| b.module == m.module).unwrap();
                assert_eq!(b.down, m.down, "{format:?} {}", m.module);
                // The update alpha / rank * B is what every format must keep.
                let want: Vec<f32> = m.up.iter().map(|v| v * m.alpha / m.rank as f32).collect();
                let got: Vec<f32> = b.up.iter().map(|v| v * b.alpha / b.rank as f32).collect();
                for (w, g) in want.iter().zip(&got) {
                    assert!(
                        (w - g).abs() <= 1e-6 * w.abs().max(1.0),
                        "{format:?}: {w} vs {g}"
                    );
                }
            }
            let mut targets = back_config.targets.clone();
            targets.sort();
            assert_eq!(
                targets,
                vec!["img_mlp.net.2".to_string(), "to_q".to_string()]
            );
        }
    }

    #[test]
    fn targets_and_formats_parse() {
        assert_eq!(target_of("transformer_blocks.12.attn.to_out.0"), "to_out.0");
        assert_eq!(target_of("transformer_blocks.0.txt_mod.1"), "txt_mod.1");
        assert_eq!(target_of("proj_out"), "proj_out");
        assert_eq!(
            "ComfyUI".parse::<LoraFormat>().unwrap(),
            LoraFormat::ComfyUi
        );
        assert!("lokr".parse::<LoraFormat>().is_err());
    }
}
