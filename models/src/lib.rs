//! Qwen-Image model family.
