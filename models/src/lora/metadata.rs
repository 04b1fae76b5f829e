//! The peft adapter config diffusers stores in a LoRA file's safetensors metadata
//! (`lora_adapter_metadata`: LoraConfig as JSON, keys prefixed `transformer.` when saved through a
//! pipeline).

use qie_runtime::weights::WeightStore;
use serde_json::{Map, Value};

#[derive(Debug, Default)]
pub struct AdapterMetadata {
    pub lora_alpha: Option<f32>,
    /// Module-name pattern -> alpha (peft matches a pattern against the end of the module name).
    pub alpha_pattern: Vec<(String, f32)>,
    pub use_rslora: bool,
}

impl AdapterMetadata {
    pub fn from_store(store: &WeightStore) -> Result<AdapterMetadata, String> {
        let raw = store
            .files()
            .first()
            .and_then(|f| store.file_metadata(f))
            .and_then(|m| m.get("lora_adapter_metadata"));
        let Some(raw) = raw else {
            return Ok(AdapterMetadata::default());
        };
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| format!("metadata `lora_adapter_metadata` is not JSON: {e}"))?;
        let Value::Object(map) = value else {
            return Err("metadata `lora_adapter_metadata` is not a JSON object".to_string());
        };
        let map: Map<String, Value> = map
            .into_iter()
            .map(|(k, v)| (k.strip_prefix("transformer.").unwrap_or(&k).to_string(), v))
            .collect();
        if map.get("use_dora").and_then(Value::as_bool) == Some(true) {
            return Err("DoRA adapters (use_dora) are not supported".to_string());
        }
        let alpha_pattern = map
            .get("alpha_pattern")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()? as f32)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(AdapterMetadata {
            lora_alpha: map
                .get("lora_alpha")
                .and_then(Value::as_f64)
                .map(|a| a as f32),
            alpha_pattern,
            use_rslora: map.get("use_rslora").and_then(Value::as_bool) == Some(true),
        })
    }

    /// The alpha of `module`: its `alpha_pattern` entry, else `lora_alpha`.
    pub fn alpha_for(&self, module: &str) -> Option<f32> {
        self.alpha_pattern
            .iter()
            .find(|(pattern, _)| module == pattern || module.ends_with(&format!(".{pattern}")))
            .map(|&(_, a)| a)
            .or(self.lora_alpha)
    }
}
