//! The gradient of the flow-matching loss with respect to every tensor of a LoRA file: the
//! parity tool behind `qie backward dit`. The file's factors go into the DSL LoRA adapter slot
//! unchanged (its rank and alpha), so the gradients are those of the file's own tensors.

use crate::lora::keys::{parse_key, Factor};
use crate::lora::resolve::ModuleResolver;
use crate::lora::LoraFile;
use crate::qwen_image::{DitConfig, DitInputs, DitOptions, QwenImageDit};
use crate::ModelError;
use qie_runtime::weights::WeightStore;
use qie_runtime::Tensor;
use serde_json::json;
use std::path::Path;

/// `loss` and the gradient of each tensor of the file, under the file's names.
pub struct FileGradients {
    pub loss: f32,
    pub grads: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// `loss = mean((sample[:, :S_target] - target)^2)` for the DiT in `dir` with the LoRA of
/// `lora_path` applied, and its gradients.
pub fn lora_file_gradients(
    dir: &Path,
    options: &DitOptions,
    lora_path: &Path,
    inputs: &DitInputs,
    target: &Tensor,
) -> Result<FileGradients, ModelError> {
    let file = LoraFile::load(lora_path)?;
    let config = DitConfig::load(&dir.join("config.json"))?;
    let resolver = ModuleResolver::for_config(&config)?;
    let at = |key: &str, m: String| {
        ModelError::new(format!(
            "LoRA file {}: key `{key}`: {m}",
            lora_path.display()
        ))
    };
    let first = file
        .modules
        .first()
        .ok_or_else(|| ModelError::new(format!("LoRA file {}: no modules", lora_path.display())))?;
    let (rank, scale) = (first.rank, first.alpha_scale);
    if let Some(m) = file
        .modules
        .iter()
        .find(|m| m.rank != rank || (m.alpha_scale - scale).abs() > 1e-6 * scale.abs())
    {
        return Err(at(
            &m.key,
            format!(
                "rank {} / scale {} differ from the first module's ({rank} / {scale}): one adapter setting serves the whole file",
                m.rank, m.alpha_scale
            ),
        ));
    }
    let mut targets = Vec::new();
    for m in &file.modules {
        targets.push(
            resolver
                .resolve(&m.name)
                .ok_or_else(|| at(&m.key, format!("module `{}` is not a DiT module", m.name)))?,
        );
    }
    let settings = json!({ "rank": rank, "alpha": scale * rank as f32, "targets": targets });
    let mut dit = QwenImageDit::load_with_adapter(dir, options, Some(&settings))?;
    let mut trainable = Vec::new();
    for (m, module) in file.modules.iter().zip(&targets) {
        let a = format!("{module}.lora_A.weight");
        let b = format!("{module}.lora_B.weight");
        dit.update_weight(&a, &m.down)?;
        dit.update_weight(&b, &m.up)?;
        trainable.push(a);
        trainable.push(b);
    }
    let weight = Tensor::from_f32(&[inputs.batch()], vec![1.0; inputs.batch()])
        .map_err(|e| ModelError::new(e.to_string()))?;
    let out = dit.loss_and_grads(inputs, target, &weight, &trainable)?;

    // Every tensor of the file, in the file's order and names.
    let store = WeightStore::open(lora_path).map_err(|e| ModelError::new(e.to_string()))?;
    let mut grads = Vec::new();
    for key in store.names() {
        let shape = store.info(key).expect("listed").shape.clone();
        let parsed = parse_key(key).map_err(|m| at(key, m))?;
        let values = match parsed.factor {
            // The loss depends on alpha only through the scale; the tool reports factors.
            Factor::Alpha => vec![0.0; shape.iter().product()],
            factor => {
                let module = resolver
                    .resolve(&parsed.module)
                    .ok_or_else(|| at(key, "not a DiT module".into()))?;
                let name = match factor {
                    Factor::Down => format!("{module}.lora_A.weight"),
                    _ => format!("{module}.lora_B.weight"),
                };
                out.grads[&name].to_f32_vec()
            }
        };
        grads.push((key.to_string(), shape, values));
    }
    Ok(FileGradients {
        loss: out.loss,
        grads,
    })
}
