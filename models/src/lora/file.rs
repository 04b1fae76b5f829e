//! One LoRA `.safetensors` file read into per-module factors with their alpha.

use super::keys::{parse_key, Factor, LoraFormat, ModuleName};
use super::metadata::AdapterMetadata;
use crate::ModelError;
use qie_runtime::weights::WeightStore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The low-rank update of one linear layer: `delta = alpha / rank * up @ down`.
#[derive(Clone, Debug)]
pub struct LoraModule {
    pub name: ModuleName,
    /// The file's key of the down factor (error messages).
    pub key: String,
    /// [rank, in_features], row-major.
    pub down: Vec<f32>,
    /// [out_features, rank], row-major.
    pub up: Vec<f32>,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// `alpha / rank` (or `alpha / sqrt(rank)` for rsLoRA) from the file's alpha tensor or metadata;
    /// 1 when neither gives an alpha (alpha = rank, the diffusers / DiffSynth convention).
    pub alpha_scale: f32,
}

#[derive(Clone, Debug)]
pub struct LoraFile {
    pub path: PathBuf,
    pub format: LoraFormat,
    pub modules: Vec<LoraModule>,
}

#[derive(Default)]
struct Pending {
    down: Option<(String, Vec<usize>)>,
    up: Option<(String, Vec<usize>)>,
    alpha: Option<String>,
}

impl LoraFile {
    /// Reads a LoRA file (or a folder holding one, e.g. `pytorch_lora_weights.safetensors`); the
    /// key layout is detected from the names.
    pub fn load(path: &Path) -> Result<LoraFile, ModelError> {
        let err = |m: String| ModelError::new(format!("LoRA file {}: {m}", path.display()));
        if !path.exists() {
            return Err(err("no such file".to_string()));
        }
        let store = WeightStore::open(path).map_err(|e| err(e.to_string()))?;
        if store.is_empty() {
            return Err(err("holds no tensors".to_string()));
        }
        let metadata = AdapterMetadata::from_store(&store).map_err(err)?;
        let mut pending: BTreeMap<ModuleName, Pending> = BTreeMap::new();
        let mut format = None;
        for name in store.names() {
            let parsed = parse_key(name).map_err(|m| err(format!("key `{name}`: {m}")))?;
            format.get_or_insert(parsed.format);
            let shape = store
                .info(name)
                .map(|i| i.shape.clone())
                .unwrap_or_default();
            let entry = pending.entry(parsed.module).or_default();
            let slot = match parsed.factor {
                Factor::Down => &mut entry.down,
                Factor::Up => &mut entry.up,
                Factor::Alpha => {
                    entry.alpha = Some(name.to_string());
                    continue;
                }
            };
            if let Some((other, _)) = slot {
                return Err(err(format!("`{name}` and `{other}` hold the same factor")));
            }
            *slot = Some((name.to_string(), shape));
        }
        let mut modules = Vec::with_capacity(pending.len());
        for (module, p) in pending {
            modules.push(build_module(&store, module, p, &metadata).map_err(err)?);
        }
        Ok(LoraFile {
            path: path.to_path_buf(),
            format: format.unwrap_or(LoraFormat::Peft),
            modules,
        })
    }
}

fn build_module(
    store: &WeightStore,
    name: ModuleName,
    p: Pending,
    metadata: &AdapterMetadata,
) -> Result<LoraModule, String> {
    let (down_key, down_shape) = match (p.down, &p.up) {
        (Some(d), _) => d,
        (None, Some((up, _))) => return Err(format!("`{up}` has no lora_A / lora_down partner")),
        (None, None) => {
            let alpha = p.alpha.unwrap_or_default();
            return Err(format!("`{alpha}` belongs to no lora_A / lora_B pair"));
        }
    };
    let (up_key, up_shape) =
        p.up.ok_or_else(|| format!("`{down_key}` has no lora_B / lora_up partner"))?;
    let (rank, in_features) = matrix(&down_key, &down_shape)?;
    let (out_features, up_rank) = matrix(&up_key, &up_shape)?;
    if rank != up_rank || rank == 0 {
        return Err(format!(
            "`{down_key}` is {down_shape:?} but `{up_key}` is {up_shape:?} (ranks differ)"
        ));
    }
    let load = |k: &str| store.load_f32(k).map_err(|e| e.to_string());
    let alpha = match &p.alpha {
        Some(k) => {
            let v = load(k)?;
            if v.len() != 1 {
                return Err(format!("`{k}` should be a scalar, has {} values", v.len()));
            }
            Some(v[0])
        }
        None => metadata.alpha_for(&name.to_string()),
    };
    let alpha_scale = match alpha {
        Some(a) if metadata.use_rslora => a / (rank as f32).sqrt(),
        Some(a) => a / rank as f32,
        None => 1.0,
    };
    if !alpha_scale.is_finite() {
        return Err(format!("`{down_key}`: alpha is not finite"));
    }
    Ok(LoraModule {
        name,
        key: down_key.clone(),
        down: load(&down_key)?,
        up: load(&up_key)?,
        rank,
        in_features,
        out_features,
        alpha_scale,
    })
}

/// A linear factor's (rows, cols); conv-style trailing 1x1 dims are accepted.
fn matrix(key: &str, shape: &[usize]) -> Result<(usize, usize), String> {
    match shape {
        [r, c] if *c > 0 => Ok((*r, *c)),
        [r, c, rest @ ..] if *c > 0 && rest.iter().all(|&d| d == 1) => Ok((*r, *c)),
        _ => Err(format!("`{key}` has shape {shape:?}, expected a matrix")),
    }
}
