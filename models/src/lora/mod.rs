//! LoRA adapters for the Qwen-Image DiT: peft/diffusers, DiffSynth-Studio, kohya and ComfyUI key
//! layouts, merged into the host weights (`W += scale * alpha / rank * B @ A`). Applying them on
//! the fly without merging is not implemented.

pub mod dit;
pub mod export;
pub mod file;
pub mod keys;
pub mod merge;
pub mod metadata;
pub mod resolve;
pub mod spec;

pub use dit::load_dit_with_loras;
pub use export::{write_adapter, AdapterConfig, AdapterModule, DIFFUSERS_FILE};
pub use file::{LoraFile, LoraModule};
pub use keys::{LoraFormat, ModuleName};
pub use merge::{merge_into, unmerge, FileReport, LoraSet, MergeReport};
pub use spec::parse_lora_spec;

impl LoraSet {
    /// Loads every `path[:scale]` spec.
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<LoraSet, crate::ModelError> {
        let mut files = Vec::with_capacity(specs.len());
        for spec in specs {
            let (path, scale) = parse_lora_spec(spec.as_ref())?;
            files.push((LoraFile::load(&path)?, scale));
        }
        Ok(LoraSet { files })
    }
}
