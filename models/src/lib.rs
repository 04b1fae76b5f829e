//! Qwen-Image model family: DSL sources, config readers and drivers.

pub mod error;
pub mod qwen_image;
pub mod sources;

pub use error::ModelError;
