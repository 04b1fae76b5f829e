//! The two Qwen-Image-Edit pipeline flavours and what differs between them (diffusers 0.42.1
//! pipeline_qwenimage_edit.py and pipeline_qwenimage_edit_plus.py).

use crate::ModelError;

/// `Edit` (Qwen-Image-Edit): one input image; the VL model and the VAE both see it resized to a
/// 1024² area. `Plus` (2509, 2511): any number of input images, "Picture i:" prompts, the VL
/// model sees each image at a 384² area and the VAE at 1024².
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    Edit,
    Plus,
}

const SYSTEM: &str = "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), then explain how the user's text instruction should alter or modify the image. Generate a new image that meets the user's requirements while maintaining consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n";
const ASSISTANT: &str = "<|im_end|>\n<|im_start|>assistant\n";
const VISION: &str = "<|vision_start|><|image_pad|><|vision_end|>";

impl Flavour {
    /// From model_index.json's `_class_name`.
    pub fn from_class_name(name: &str) -> Result<Flavour, ModelError> {
        match name {
            "QwenImageEditPipeline" => Ok(Flavour::Edit),
            "QwenImageEditPlusPipeline" => Ok(Flavour::Plus),
            other => Err(ModelError::new(format!(
                "model_index.json: pipeline `{other}` is not an edit pipeline \
                 (expected QwenImageEditPipeline or QwenImageEditPlusPipeline)"
            ))),
        }
    }

    pub fn class_name(self) -> &'static str {
        match self {
            Flavour::Edit => "QwenImageEditPipeline",
            Flavour::Plus => "QwenImageEditPlusPipeline",
        }
    }

    /// The chat text the VL model encodes for `prompt` with `images` input images.
    pub fn prompt_text(self, prompt: &str, images: usize) -> String {
        match self {
            Flavour::Edit => format!("{SYSTEM}{VISION}{prompt}{ASSISTANT}"),
            Flavour::Plus => {
                let pictures: String = (1..=images)
                    .map(|i| format!("Picture {i}: {VISION}"))
                    .collect();
                format!("{SYSTEM}{pictures}{prompt}{ASSISTANT}")
            }
        }
    }

    /// Leading hidden states dropped (the system prompt): `prompt_template_encode_start_idx`.
    pub fn drop_tokens(self) -> usize {
        64
    }

    /// Pixel area the VL model sees each input image at before its own processor.
    pub fn vl_area(self) -> usize {
        match self {
            Flavour::Edit => 1024 * 1024,
            Flavour::Plus => 384 * 384,
        }
    }

    /// Pixel area each input image is VAE-encoded at.
    pub fn vae_area(self) -> usize {
        1024 * 1024
    }

    /// How many input images the flavour accepts.
    pub fn check_image_count(self, n: usize) -> Result<(), ModelError> {
        match (self, n) {
            (_, 0) => Err(ModelError::new("an edit needs at least one input image")),
            (Flavour::Edit, n) if n > 1 => Err(ModelError::new(format!(
                "Qwen-Image-Edit takes one input image, got {n} (multi-image edits need 2509/2511)"
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = Flavour::Plus.prompt_text("make it red", 2);
        assert!(
            t.contains("user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: ")
        );
        assert!(t.ends_with("make it red<|im_end|>\n<|im_start|>assistant\n"));
        let e = Flavour::Edit.prompt_text("x", 1);
        assert!(e.contains("user\n<|vision_start|><|image_pad|><|vision_end|>x<|im_end|>"));
        assert!(Flavour::Edit.check_image_count(2).is_err());
        assert!(Flavour::from_class_name("QwenImagePipeline").is_err());
    }
}
