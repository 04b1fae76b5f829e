//! Qwen-Image / Qwen-Image-Edit family.

pub mod config;
pub mod dit;
pub mod img_shapes;
pub mod inputs;
pub mod random;
pub mod vae;
pub mod vae_config;
pub mod vae_tiling;

pub use crate::WeightPrecision;
pub use config::DitConfig;
pub use dit::{DitOptions, DitWeights, QwenImageDit, CHECKPOINT_SEGMENTS};
pub use img_shapes::{parse_img_shapes, token_count, ImgShape};
pub use inputs::{format_img_shapes, DitInputs};
