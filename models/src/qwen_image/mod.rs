//! Qwen-Image / Qwen-Image-Edit family.

pub mod config;
pub mod img_shapes;

pub use config::DitConfig;
pub use img_shapes::{parse_img_shapes, token_count, ImgShape};
