//! Where the language-model weights sit in a Qwen2.5-VL checkpoint: transformers < 4.52 (and 5.x
//! on save) write `model.layers.*`, 4.52+ in memory and some exports `model.language_model.*`.

use crate::HostWeights;
use qie_runtime::{ParamData, ParamStore};

/// Prefixes tried in order; "" accepts weights already named relative to the language model.
const PREFIXES: [&str; 3] = ["model.language_model.", "model.", ""];

/// The prefix under which `embed_tokens.weight` exists, if any.
pub fn detect_prefix(has: impl Fn(&str) -> bool) -> Option<&'static str> {
    PREFIXES
        .into_iter()
        .find(|p| has(&format!("{p}embed_tokens.weight")))
}

/// Serves the source's parameter names (`layers.0...`) from weights named with `prefix`.
pub struct PrefixedParams<'a> {
    pub weights: &'a HostWeights,
    pub prefix: &'a str,
}

impl ParamStore for PrefixedParams<'_> {
    fn param(&self, name: &str) -> Option<ParamData<'_>> {
        if self.prefix.is_empty() {
            self.weights.param(name)
        } else {
            self.weights.param(&format!("{}{name}", self.prefix))
        }
    }
}
