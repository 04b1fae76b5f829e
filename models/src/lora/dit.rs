//! Loading the DiT with LoRAs merged into its weights, or with an adapter slot whose factors are
//! set from LoRA files on the fly.

use super::merge::{merge_into, LoraSet, MergeReport};
use super::onthefly::LoraSlot;
use crate::host_weights::round_to_bf16;
use crate::qwen_image::dit::expected_weights_for;
use crate::qwen_image::{DitConfig, DitOptions, QwenImageDit};
use crate::{HostWeights, ModelError, WeightPrecision};
use qie_runtime::weights::{CheckMode, Dtype, WeightStore};
use std::path::Path;

/// Like [`QwenImageDit::load`], with `loras` merged in f32 before the weights are rounded to the
/// options' precision.
pub fn load_dit_with_loras(
    dir: &Path,
    options: &DitOptions,
    loras: &LoraSet,
) -> Result<(QwenImageDit, MergeReport), ModelError> {
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(ModelError::new(format!(
            "{}: no config.json (expected a diffusers transformer/ folder)",
            dir.display()
        )));
    }
    let config = DitConfig::load(&config_path)?;
    let expected = expected_weights_for(&config, options.source.as_deref())?;
    let store = WeightStore::open(dir).map_err(|e| ModelError::new(e.to_string()))?;
    store
        .check_with(&expected, CheckMode::Strict)
        .map_err(|e| ModelError::new(e.to_string()))?;
    // A bf16 checkpoint loads as bf16 (half the host memory); merging widens each updated
    // tensor to f32 and rounds it once, exactly like merging into f32 copies. f32 checkpoints
    // are merged in f32 first so they, too, are rounded only once.
    let bf16_checkpoint = expected
        .iter()
        .all(|(name, _)| store.info(name).is_some_and(|i| i.dtype == Dtype::BF16));
    let load_precision = if bf16_checkpoint {
        options.precision
    } else {
        WeightPrecision::F32
    };
    let mut weights = HostWeights::load(&store, &expected, load_precision)?;
    let report = merge_into(&mut weights, loras)?;
    if options.precision == WeightPrecision::Bf16 && load_precision == WeightPrecision::F32 {
        let names: Vec<String> = weights.names().map(str::to_string).collect();
        for name in names {
            if let Some(w) = weights.get_mut(&name) {
                round_to_bf16(w);
            }
        }
    }
    Ok((
        QwenImageDit::from_weights(config, weights, options)?,
        report,
    ))
}

/// The DiT with an empty LoRA `slot` layered on it (factors created: A kaiming, B zeros, so the
/// output equals the base model's until [`QwenImageDit::set_loras`]).
pub fn load_dit_with_lora_slot(
    dir: &Path,
    options: &DitOptions,
    slot: &LoraSlot,
) -> Result<QwenImageDit, ModelError> {
    QwenImageDit::load_with_adapter(dir, options, Some(&slot.settings()))
}

/// The DiT with `loras` applied on the fly: a slot just large enough for them, factors set.
/// Another set that fits the slot can replace them with [`QwenImageDit::set_loras`].
pub fn load_dit_with_loras_on_the_fly(
    dir: &Path,
    options: &DitOptions,
    loras: &LoraSet,
) -> Result<(QwenImageDit, MergeReport), ModelError> {
    let config = DitConfig::load(&dir.join("config.json"))?;
    let base = expected_weights_for(&config, options.source.as_deref())?;
    let slot = LoraSlot::for_set(loras, &base)?;
    let mut dit = load_dit_with_lora_slot(dir, options, &slot)?;
    let report = dit.set_loras(loras)?;
    Ok((dit, report))
}

impl QwenImageDit {
    /// Sets the adapter slot's factors from `loras` (no recompilation, no reload of the base);
    /// an empty set gives the base model. An error when the DiT has no slot or the set needs
    /// more than it holds.
    pub fn set_loras(&mut self, loras: &LoraSet) -> Result<MergeReport, ModelError> {
        let weights = self.expected_weights()?;
        let slot = LoraSlot::of_model(&weights).ok_or_else(|| {
            ModelError::new(
                "the DiT was loaded without a LoRA adapter slot (load_dit_with_lora_slot)",
            )
        })?;
        let (tensors, report) = slot.tensors(loras, &weights)?;
        for (name, values) in tensors {
            self.update_weight(&name, &values)?;
        }
        Ok(report)
    }
}
