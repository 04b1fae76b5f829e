//! diffusers `VaeImageProcessor` as both Qwen-Image-Edit pipelines use it
//! (`vae_scale_factor * 2` = 16, LANCZOS, `do_normalize`), and their `calculate_dimensions`.

use half::bf16;
use image::RgbImage;
use qie_ir::DType;
use qie_runtime::Tensor;

use super::resize::resize_lanczos;
use crate::ModelError;

/// Target pixel areas of `QwenImageEditPlusPipeline`: the VL-encoder copy and the VAE copy.
pub const CONDITION_IMAGE_SIZE: u32 = 384 * 384;
pub const VAE_IMAGE_SIZE: u32 = 1024 * 1024;

/// `calculate_dimensions(target_area, ratio)` of diffusers' edit pipelines: returns
/// `(width, height)` as multiples of 32 with Python's round-half-to-even.
pub fn calculate_dimensions(target_area: f64, ratio: f64) -> (u32, u32) {
    let width = (target_area * ratio).sqrt();
    let height = width / ratio;
    let snap = |v: f64| ((v / 32.0).round_ties_even() * 32.0) as u32;
    (snap(width), snap(height))
}

#[derive(Clone, Copy, Debug)]
pub struct VaeImageProcessor {
    /// Sizes are floored to multiples of this (16 in the edit pipelines).
    pub vae_scale_factor: u32,
}

impl Default for VaeImageProcessor {
    fn default() -> Self {
        VaeImageProcessor {
            vae_scale_factor: 16,
        }
    }
}

impl VaeImageProcessor {
    /// `VaeImageProcessor.resize(image, height, width)`: PIL LANCZOS to exactly that size.
    pub fn resize(&self, img: &RgbImage, width: u32, height: u32) -> RgbImage {
        resize_lanczos(img, width, height)
    }

    /// `preprocess(image, height, width)`: floors the size to the scale factor, resizes with
    /// LANCZOS, and maps u8 to `2 * (v / 255) - 1` in f32. Returns `[1, 3, H, W]`.
    pub fn preprocess(&self, img: &RgbImage, width: u32, height: u32) -> Tensor {
        let f = self.vae_scale_factor.max(1);
        let (width, height) = (width - width % f, height - height % f);
        let resized = self.resize(img, width, height);
        let (w, h) = (width as usize, height as usize);
        let mut data = vec![0.0f32; 3 * h * w];
        for (i, px) in resized.pixels().enumerate() {
            for c in 0..3 {
                // numpy: float32 / 255.0, then torch: 2.0 * x - 1.0 (two f32 roundings).
                let unit = px.0[c] as f32 / 255.0f32;
                data[c * h * w + i] = 2.0f32 * unit - 1.0f32;
            }
        }
        Tensor::from_f32(&[1, 3, h, w], data).expect("shape matches data")
    }

    /// `postprocess(image, output_type="pil")` for a `[B, 3, H, W]` tensor in [-1, 1]:
    /// `(x * 0.5 + 0.5).clamp(0, 1)` in the tensor's dtype, then `round(x * 255)` (half to even).
    pub fn postprocess(&self, images: &Tensor) -> Result<Vec<RgbImage>, ModelError> {
        let shape = images.shape();
        if shape.len() != 4 || shape[1] != 3 {
            return Err(ModelError::new(format!(
                "VaeImageProcessor.postprocess: expected [B, 3, H, W], got {shape:?}"
            )));
        }
        let (b, h, w) = (shape[0], shape[2], shape[3]);
        let as_bf16 = images.dtype() == DType::BF16;
        let values = images.to_f32_vec();
        let mut out = Vec::with_capacity(b);
        for n in 0..b {
            let mut img = RgbImage::new(w as u32, h as u32);
            for (i, px) in img.pixels_mut().enumerate() {
                for c in 0..3 {
                    let x = values[((n * 3 + c) * h * w) + i];
                    px.0[c] = to_u8(denormalize(x, as_bf16));
                }
            }
            out.push(img);
        }
        Ok(out)
    }
}

fn denormalize(x: f32, as_bf16: bool) -> f32 {
    let half_x = x * 0.5;
    let shifted = if as_bf16 {
        // torch rounds each bf16 op back to bf16.
        bf16::from_f32(bf16::from_f32(half_x).to_f32() + 0.5).to_f32()
    } else {
        half_x + 0.5
    };
    if shifted.is_nan() {
        return shifted;
    }
    shifted.clamp(0.0, 1.0)
}

fn to_u8(unit: f32) -> u8 {
    // numpy: (images * 255).round().astype("uint8"); NaN casts to 0 on x86.
    let v = (unit * 255.0f32).round_ties_even();
    if v.is_nan() {
        0
    } else {
        v as u8
    }
}
