//! Inputs the way diffusers and transformers prepare them: tokenizer, prompt templates, image
//! resizing (PIL-exact), the Qwen2-VL image processor and the VAE image processor.

pub mod filters;
pub mod image_io;
pub mod qwen2vl_image;
pub mod resize;
pub mod tokenizer;
pub mod vae_image;

pub use filters::Filter;
pub use image::RgbImage;
pub use image_io::{decode_rgb, load_rgb};
pub use qwen2vl_image::{
    expand_image_pads, smart_resize, ImageBackend, Qwen2VlImageConfig, Qwen2VlImageProcessor,
};
pub use resize::{resize_bicubic, resize_bicubic_torch, resize_lanczos};
pub use tokenizer::{EncodedBatch, PaddingSide, QwenTokenizer};
pub use vae_image::{
    calculate_dimensions, VaeImageProcessor, CONDITION_IMAGE_SIZE, VAE_IMAGE_SIZE,
};
