//! Everything that decides an edit's result besides the input images and the model, recorded
//! next to every output so a run can be repeated exactly.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EditSettings {
    pub prompt: String,
    /// None disables true CFG (diffusers: CFG runs only with a negative prompt and cfg > 1).
    pub negative_prompt: Option<String>,
    pub steps: usize,
    /// true_cfg_scale.
    pub cfg: f32,
    /// diffusers rescales the combined prediction per token to the conditional one's norm
    /// (the default); DiffSynth does not (plain CFG).
    pub cfg_rescale: bool,
    pub seed: u64,
    /// Output size; None = from the last input image's aspect at the VAE area.
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Custom sigmas (the schedule before shifting); None = linspace(1, 1/steps, steps).
    pub sigmas: Option<Vec<f32>>,
    /// Pixel areas the VL model and the VAE see the input images at; None = the flavour's.
    pub vl_area: Option<usize>,
    pub vae_area: Option<usize>,
    /// Pixel area the default output size is computed at; None = 1024².
    pub output_area: Option<usize>,
    /// Decode in tiles (large images).
    pub tiled_decode: bool,
}

impl Default for EditSettings {
    fn default() -> Self {
        EditSettings {
            prompt: String::new(),
            negative_prompt: Some(" ".into()),
            steps: 40,
            cfg: 4.0,
            cfg_rescale: true,
            seed: 0,
            width: None,
            height: None,
            sigmas: None,
            vl_area: None,
            vae_area: None,
            output_area: None,
            tiled_decode: false,
        }
    }
}

impl EditSettings {
    /// diffusers' rule: true CFG needs a negative prompt and a scale above 1.
    pub fn does_cfg(&self) -> bool {
        self.cfg > 1.0 && self.negative_prompt.is_some()
    }
}
