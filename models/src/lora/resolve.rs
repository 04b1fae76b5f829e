//! Dotted DiT module names for LoRA keys that flatten them (kohya's `transformer_blocks_0_attn_to_q`),
//! from the weight names of a DiT config: a checkpoint's own, or the released Qwen-Image config.

use super::keys::ModuleName;
use crate::qwen_image::dit::expected_weights_for;
use crate::qwen_image::DitConfig;
use crate::ModelError;
use std::collections::HashMap;

/// The released Qwen-Image(-Edit) transformer config (60 blocks).
const RELEASED_CONFIG: &str = include_str!("../../qie/qwen_image_dit.config.json");

pub fn released_dit_config() -> DitConfig {
    let raw = serde_json::from_str(RELEASED_CONFIG).expect("the bundled config is JSON");
    DitConfig::from_json(raw).expect("the bundled config is valid")
}

/// Flattened name -> dotted module name, for every linear weight of `config`'s DiT (names that
/// two modules flatten to are left out: they cannot be told apart).
pub struct ModuleResolver {
    flat: HashMap<String, Option<String>>,
}

impl ModuleResolver {
    pub fn for_config(config: &DitConfig) -> Result<ModuleResolver, ModelError> {
        let mut flat: HashMap<String, Option<String>> = HashMap::new();
        for (name, shape) in expected_weights_for(config, None)? {
            if shape.len() != 2 {
                continue;
            }
            if let Some(module) = name.strip_suffix(".weight") {
                flat.entry(module.replace('.', "_"))
                    .and_modify(|v| *v = None)
                    .or_insert_with(|| Some(module.to_string()));
            }
        }
        Ok(ModuleResolver { flat })
    }

    pub fn resolve(&self, name: &ModuleName) -> Option<String> {
        match name {
            ModuleName::Dotted(d) => Some(d.clone()),
            ModuleName::Flat(f) => self.flat.get(f).cloned().flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_names_resolve_against_the_released_config() {
        let r = ModuleResolver::for_config(&released_dit_config()).unwrap();
        let flat = |s: &str| r.resolve(&ModuleName::Flat(s.into()));
        assert_eq!(
            flat("transformer_blocks_59_attn_to_out_0").as_deref(),
            Some("transformer_blocks.59.attn.to_out.0")
        );
        assert_eq!(
            flat("transformer_blocks_3_img_mlp_net_2").as_deref(),
            Some("transformer_blocks.3.img_mlp.net.2")
        );
        assert_eq!(flat("transformer_blocks_60_attn_to_q"), None);
    }
}
