//! Where the language-model weights sit in a Qwen2.5-VL checkpoint: transformers < 4.52 (and 5.x
//! on save) write `model.layers.*`, 4.52+ in memory and some exports `model.language_model.*`.
//! The model binds them under the detected prefix (see [`crate::dsl_model::DslModel`]).

/// Prefixes tried in order; "" accepts weights already named relative to the language model.
const PREFIXES: [&str; 3] = ["model.language_model.", "model.", ""];

/// The prefix under which `embed_tokens.weight` exists, if any.
pub fn detect_prefix(has: impl Fn(&str) -> bool) -> Option<&'static str> {
    PREFIXES
        .into_iter()
        .find(|p| has(&format!("{p}embed_tokens.weight")))
}
