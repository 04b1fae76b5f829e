//! The Qwen2-VL image processor of transformers 5.24 as Qwen-Image-Edit's `processor/` uses it:
//! smart_resize to multiples of patch*merge, bicubic resize, rescale + normalise, then patches in
//! merge-unit order with the frame repeated `temporal_patch_size` times.
//!
//! Two backends, as transformers has them. `Torchvision` is the default: in transformers 5.24
//! `Qwen2VLProcessor.from_pretrained` needs torchvision (its video processor requires it), and
//! AutoImageProcessor then picks the torchvision image processor. `Pil` is `backend="pil"`.

use std::path::Path;

use image::RgbImage;
use qie_runtime::Tensor;
use serde_json::Value;

use super::resize::{resize_bicubic, resize_bicubic_torch};
use crate::ModelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ImageBackend {
    /// torchvision: torch's uint8 antialiased bicubic (int16 weights), fused rescale+normalise.
    #[default]
    Torchvision,
    /// PIL: Pillow bicubic, rescale in f64 then normalise in f32.
    Pil,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Qwen2VlImageConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub rescale_factor: f64,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
}

impl Default for Qwen2VlImageConfig {
    /// Class defaults of `Qwen2VLImageProcessor` (OPENAI CLIP mean/std).
    fn default() -> Self {
        Qwen2VlImageConfig {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.48145466, 0.4578275, 0.40821073],
            image_std: [0.26862954, 0.26130258, 0.27577711],
            rescale_factor: 1.0 / 255.0,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
        }
    }
}

impl Qwen2VlImageConfig {
    /// Reads an image-processor dict: `size.{shortest,longest}_edge`, overridden by
    /// `min_pixels` / `max_pixels` like the class constructor does.
    pub fn from_json(v: &Value) -> Result<Self, ModelError> {
        let mut c = Qwen2VlImageConfig::default();
        let uint = |key: &str| -> Result<Option<u64>, ModelError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(Some).ok_or_else(|| {
                    ModelError::new(format!("{key}: expected a non-negative integer"))
                }),
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool, ModelError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| ModelError::new(format!("{key}: expected a boolean"))),
            }
        };
        if let Some(size) = v.get("size").filter(|s| !s.is_null()) {
            let edge = |key: &str| size.get(key).and_then(Value::as_u64);
            match (edge("shortest_edge"), edge("longest_edge")) {
                (Some(lo), Some(hi)) => (c.min_pixels, c.max_pixels) = (lo, hi),
                _ => {
                    return Err(ModelError::new(format!(
                        "size must contain 'shortest_edge' and 'longest_edge', got {size}"
                    )))
                }
            }
        }
        if let Some(lo) = uint("min_pixels")? {
            c.min_pixels = lo;
        }
        if let Some(hi) = uint("max_pixels")? {
            c.max_pixels = hi;
        }
        for (key, slot) in [
            ("patch_size", &mut c.patch_size),
            ("temporal_patch_size", &mut c.temporal_patch_size),
            ("merge_size", &mut c.merge_size),
        ] {
            if let Some(x) = uint(key)? {
                if x == 0 {
                    return Err(ModelError::new(format!("{key} must be positive")));
                }
                *slot = x as usize;
            }
        }
        for (key, slot) in [
            ("image_mean", &mut c.image_mean),
            ("image_std", &mut c.image_std),
        ] {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                *slot = triple(x)
                    .ok_or_else(|| ModelError::new(format!("{key}: expected 3 numbers")))?;
            }
        }
        if c.image_std.contains(&0.0) {
            return Err(ModelError::new("image_std must not contain 0"));
        }
        if let Some(x) = v.get("rescale_factor").filter(|x| !x.is_null()) {
            c.rescale_factor = x
                .as_f64()
                .ok_or_else(|| ModelError::new("rescale_factor: expected a number"))?;
        }
        c.do_resize = flag("do_resize", true)?;
        c.do_rescale = flag("do_rescale", true)?;
        c.do_normalize = flag("do_normalize", true)?;
        if let Some(r) = uint("resample")? {
            if r != 3 {
                return Err(ModelError::new(format!(
                    "resample={r}: only 3 (BICUBIC) is supported"
                )));
            }
        }
        if c.min_pixels > c.max_pixels {
            return Err(ModelError::new("min_pixels is larger than max_pixels"));
        }
        Ok(c)
    }

    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

fn triple(v: &Value) -> Option<[f64; 3]> {
    if let Some(x) = v.as_f64() {
        return Some([x; 3]);
    }
    let a = v.as_array()?;
    if a.len() != 3 {
        return None;
    }
    Some([a[0].as_f64()?, a[1].as_f64()?, a[2].as_f64()?])
}

/// transformers' `smart_resize`: `(height, width)` as multiples of `factor` with the area within
/// `[min_pixels, max_pixels]`, keeping the aspect ratio (Python's round-half-to-even).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), ModelError> {
    if height == 0 || width == 0 {
        return Err(ModelError::new(format!(
            "smart_resize: empty image {width}x{height}"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(ModelError::new(format!(
            "absolute aspect ratio must be smaller than 200, got {}",
            h.max(w) / h.min(w)
        )));
    }
    let mut h_bar = (h / f).round_ties_even() as usize * factor;
    let mut w_bar = (w / f).round_ties_even() as usize * factor;
    let area = (h_bar * w_bar) as u64;
    if area > max_pixels {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = factor.max((h / beta / f).floor() as usize * factor);
        w_bar = factor.max((w / beta / f).floor() as usize * factor);
    } else if area < min_pixels {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() as usize * factor;
        w_bar = (w * beta / f).ceil() as usize * factor;
    }
    Ok((h_bar, w_bar))
}

#[derive(Clone, Debug)]
pub struct Qwen2VlImageProcessor {
    pub config: Qwen2VlImageConfig,
    pub backend: ImageBackend,
}

impl Qwen2VlImageProcessor {
    pub fn new(config: Qwen2VlImageConfig, backend: ImageBackend) -> Self {
        Qwen2VlImageProcessor { config, backend }
    }

    /// Loads the settings of a `processor/` folder the way transformers does: the nested
    /// `image_processor` of `processor_config.json` (transformers 5 `save_pretrained`), else
    /// `preprocessor_config.json` (published checkpoints). Uses the torchvision backend.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let nested = dir.join("processor_config.json");
        if nested.is_file() {
            let v = read_json(&nested)?;
            if let Some(ip) = v.get("image_processor") {
                let config = Qwen2VlImageConfig::from_json(ip)
                    .map_err(|e| e.context(&format!("{}: image_processor", nested.display())))?;
                return Ok(Self::new(config, ImageBackend::default()));
            }
        }
        let flat = dir.join("preprocessor_config.json");
        if !flat.is_file() {
            return Err(ModelError::new(format!(
                "{}: no processor_config.json with an image_processor entry and no preprocessor_config.json",
                dir.display()
            )));
        }
        let config = Qwen2VlImageConfig::from_json(&read_json(&flat)?)
            .map_err(|e| e.context(&flat.display().to_string()))?;
        Ok(Self::new(config, ImageBackend::default()))
    }

    pub fn with_backend(mut self, backend: ImageBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The size an image is resized to, `(height, width)`.
    pub fn target_size(&self, height: usize, width: usize) -> Result<(usize, usize), ModelError> {
        if !self.config.do_resize {
            return Ok((height, width));
        }
        let c = &self.config;
        smart_resize(height, width, c.factor(), c.min_pixels, c.max_pixels)
    }

    /// `processor(images=...)`: `pixel_values` `[sum(t*h*w), 3 * temporal * patch * patch]` (f32)
    /// and `image_grid_thw` (`[1, h, w]` in patches) per image.
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<(Tensor, Vec<[usize; 3]>), ModelError> {
        let c = &self.config;
        let row = 3 * c.temporal_patch_size * c.patch_size * c.patch_size;
        let mut data = Vec::new();
        let mut grids = Vec::with_capacity(images.len());
        for (n, img) in images.iter().enumerate() {
            let (h, w) = (img.height() as usize, img.width() as usize);
            let (rh, rw) = self
                .target_size(h, w)
                .map_err(|e| e.context(&format!("image {n}")))?;
            if rh % c.factor() != 0 || rw % c.factor() != 0 {
                return Err(ModelError::new(format!(
                    "image {n}: {rw}x{rh} is not a multiple of patch_size * merge_size = {}",
                    c.factor()
                )));
            }
            let resized = if (rh, rw) == (h, w) {
                img.clone()
            } else {
                match self.backend {
                    ImageBackend::Torchvision => resize_bicubic_torch(img, rw as u32, rh as u32),
                    ImageBackend::Pil => resize_bicubic(img, rw as u32, rh as u32),
                }
            };
            let planes = self.normalize(&resized);
            grids.push([1, rh / c.patch_size, rw / c.patch_size]);
            self.patchify(&planes, rh, rw, &mut data);
        }
        let rows = data.len() / row;
        let pixel_values = Tensor::from_f32(&[rows, row], data).expect("shape matches data");
        Ok((pixel_values, grids))
    }

    /// Channel-first f32 planes after rescale / normalise, rounded like the chosen backend.
    fn normalize(&self, img: &RgbImage) -> Vec<f32> {
        let c = &self.config;
        let hw = (img.width() * img.height()) as usize;
        let mut out = vec![0.0f32; 3 * hw];
        let mean32 = c.image_mean.map(|m| m as f32);
        let std32 = c.image_std.map(|s| s as f32);
        // torchvision folds the rescale into mean/std: f32(mean) * f32(1 / rescale_factor).
        let inv = (1.0 / c.rescale_factor) as f32;
        let fused_mean = mean32.map(|m| m * inv);
        let fused_std = std32.map(|s| s * inv);
        for (i, px) in img.pixels().enumerate() {
            for ch in 0..3 {
                let v = px.0[ch];
                out[ch * hw + i] = match (self.backend, c.do_rescale, c.do_normalize) {
                    (ImageBackend::Torchvision, true, true) => {
                        (v as f32 - fused_mean[ch]) / fused_std[ch]
                    }
                    (ImageBackend::Torchvision, true, false) => v as f32 * c.rescale_factor as f32,
                    (ImageBackend::Pil, true, false) => (v as f64 * c.rescale_factor) as f32,
                    (ImageBackend::Pil, true, true) => {
                        let r = (v as f64 * c.rescale_factor) as f32;
                        (r - mean32[ch]) / std32[ch]
                    }
                    (_, false, true) => (v as f32 - mean32[ch]) / std32[ch],
                    (_, false, false) => v as f32,
                };
            }
        }
        out
    }

    /// Rows in merge-unit order (block row, block col, row in block, col in block); columns in
    /// (channel, temporal copy, patch row, patch col) order.
    fn patchify(&self, planes: &[f32], height: usize, width: usize, out: &mut Vec<f32>) {
        let c = &self.config;
        let (p, m, t) = (c.patch_size, c.merge_size, c.temporal_patch_size);
        let (gh, gw) = (height / p, width / p);
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                        for ch in 0..3 {
                            let plane = &planes[ch * height * width..(ch + 1) * height * width];
                            for _ in 0..t {
                                for py in 0..p {
                                    let start = (y0 + py) * width + x0;
                                    out.extend_from_slice(&plane[start..start + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Placeholder tokens one image takes in the prompt: `t * h * w / merge_size²`.
    pub fn num_image_tokens(&self, grid: [usize; 3]) -> usize {
        grid[0] * grid[1] * grid[2] / (self.config.merge_size * self.config.merge_size)
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| ModelError::new(format!("{}: malformed JSON: {e}", path.display())))
}

/// The processor's prompt expansion: each `<|image_pad|>`, in order across `texts`, becomes as
/// many `<|image_pad|>` as its image has tokens (`t*h*w / merge_size²`).
pub fn expand_image_pads(
    texts: &[String],
    grids: &[[usize; 3]],
    merge_size: usize,
) -> Result<Vec<String>, ModelError> {
    const PAD: &str = "<|image_pad|>";
    let found: usize = texts.iter().map(|t| t.matches(PAD).count()).sum();
    if found != grids.len() {
        return Err(ModelError::new(format!(
            "the prompts hold {found} {PAD} tokens but {} images were given",
            grids.len()
        )));
    }
    let mut next = grids.iter();
    Ok(texts
        .iter()
        .map(|text| {
            let mut out = String::with_capacity(text.len());
            let mut parts = text.split(PAD);
            out.push_str(parts.next().unwrap_or_default());
            for part in parts {
                let g = next.next().expect("counted above");
                out.push_str(&PAD.repeat(g[0] * g[1] * g[2] / (merge_size * merge_size)));
                out.push_str(part);
            }
            out
        })
        .collect())
}
