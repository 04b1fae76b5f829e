//! LoRA adapters for the Qwen-Image DiT: peft/diffusers, DiffSynth-Studio, kohya and ComfyUI key
//! layouts, merged into the host weights (`W += scale * alpha / rank * B @ A`), or applied on the
//! fly without merging (`onthefly`: the DiT lowered with `lora.qie`, factors as parameters).

pub mod dit;
pub mod export;
pub mod file;
pub mod keys;
pub mod merge;
pub mod metadata;
pub mod onthefly;
pub mod resolve;
pub mod spec;

pub use dit::{load_dit_with_lora_slot, load_dit_with_loras, load_dit_with_loras_on_the_fly};
pub use export::{write_adapter, AdapterConfig, AdapterModule, DIFFUSERS_FILE};
pub use file::{LoraFile, LoraModule};
pub use keys::{LoraFormat, ModuleName};
pub use merge::{merge_into, unmerge, FileReport, LoraSet, MergeReport};
pub use onthefly::LoraSlot;
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
