//! Everything that decides an edit's result besides the input images and the model, recorded
//! next to every output so a run can be repeated exactly.

use crate::preprocess::vae_image::calculate_dimensions;
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
    /// Pixels an image the pipeline makes may have unless the user raises the limit
    /// (`--max-pixels`): 4096², 16 times the 1024² the models were trained at. The CPU and
    /// one GPU run out of memory well before sizes a typo produces (100000² would be 30 GB of
    /// RGB alone), so those are refused before anything is loaded.
    pub const DEFAULT_MAX_PIXELS: usize = 4096 * 4096;
    /// The most denoising steps (or custom sigmas): 10 times the scheduler's 1000 training
    /// timesteps.
    pub const MAX_STEPS: usize = 10_000;
    /// Output sizes are floored to multiples of this (VAE 8x, then 2x2 patches).
    const SIZE_MULTIPLE: usize = 16;
    /// The area the default output size is computed at when `output_area` is None.
    const DEFAULT_OUTPUT_AREA: usize = 1024 * 1024;

    /// diffusers' rule: true CFG needs a negative prompt and a scale above 1.
    pub fn does_cfg(&self) -> bool {
        self.cfg > 1.0 && self.negative_prompt.is_some()
    }

    /// The output size when the last input image is `last_width` x `last_height`: `width` and
    /// `height` where given, else from that image's aspect at `output_area` (diffusers uses a
    /// fixed 1024² area, independent of the VAE area); floored to multiples of 16.
    pub fn output_size(&self, last_width: u32, last_height: u32) -> (usize, usize) {
        let ratio = last_width as f64 / last_height as f64;
        let area = self.output_area.unwrap_or(Self::DEFAULT_OUTPUT_AREA) as f64;
        let (w, h) = calculate_dimensions(area, ratio);
        let m = Self::SIZE_MULTIPLE;
        let w = self.width.unwrap_or(w as usize) / m * m;
        let h = self.height.unwrap_or(h as usize) / m * m;
        (w, h)
    }

    /// Checks the values a user can set (flags, a session file, interactive commands) before
    /// anything is loaded: a step count in 1..=MAX_STEPS, finite sigmas in [0, 1], a finite
    /// cfg >= 0, areas and explicit sizes that are positive and at most `max_pixels`. Errors
    /// name the flag.
    pub fn check(&self, max_pixels: usize) -> Result<(), String> {
        match &self.sigmas {
            Some(sigmas) => {
                if sigmas.is_empty() || sigmas.len() > Self::MAX_STEPS {
                    return Err(format!(
                        "--sigmas: {} values; give 1 to {}",
                        sigmas.len(),
                        Self::MAX_STEPS
                    ));
                }
                if let Some(s) = sigmas.iter().find(|s| !(0.0..=1.0).contains(*s)) {
                    return Err(format!("--sigmas: {s} is not a noise level in [0, 1]"));
                }
            }
            None if self.steps == 0 || self.steps > Self::MAX_STEPS => {
                return Err(format!(
                    "--steps: {} is not in 1..={}",
                    self.steps,
                    Self::MAX_STEPS
                ))
            }
            None => {}
        }
        if !(self.cfg.is_finite() && self.cfg >= 0.0) {
            return Err(format!(
                "--cfg: {} is not a finite scale >= 0 (1 disables CFG)",
                self.cfg
            ));
        }
        for (flag, value) in [
            ("--vl-area", self.vl_area),
            ("--vae-area", self.vae_area),
            ("--output-area", self.output_area),
            ("--width", self.width),
            ("--height", self.height),
        ] {
            match value {
                Some(0) => return Err(format!("{flag}: must be positive")),
                Some(v) if v > max_pixels => {
                    return Err(format!(
                        "{flag}: {v} is more than the pixel limit {max_pixels} (--max-pixels)"
                    ))
                }
                _ => {}
            }
        }
        if let (Some(w), Some(h)) = (self.width, self.height) {
            check_pixels("--width x --height", w, h, max_pixels)?;
        }
        Ok(())
    }

    /// Checks the sizes these input images (width, height each, in order) lead to: the output
    /// size not empty and at most `max_pixels`, each image's VAE (and explicit VL) size not
    /// empty. Run it once the images are decoded, before the pipeline. Returns the output size.
    pub fn check_image_sizes(
        &self,
        inputs: &[(u32, u32)],
        max_pixels: usize,
    ) -> Result<(usize, usize), String> {
        let &(last_w, last_h) = inputs.last().ok_or("no input image")?;
        for (i, &(w, h)) in inputs.iter().enumerate() {
            let ratio = w as f64 / h as f64;
            let areas = [
                (
                    "VAE",
                    Some(self.vae_area.unwrap_or(Self::DEFAULT_OUTPUT_AREA)),
                ),
                ("VL", self.vl_area),
            ];
            for (what, area) in areas.iter().filter_map(|(n, a)| a.map(|a| (n, a))) {
                let (rw, rh) = calculate_dimensions(area as f64, ratio);
                if rw == 0 || rh == 0 {
                    return Err(format!(
                        "input image {} ({w}x{h}) is too narrow for its aspect: it would be {rw}x{rh} at the {what} area {area}",
                        i + 1
                    ));
                }
            }
        }
        let (w, h) = self.output_size(last_w, last_h);
        if w == 0 || h == 0 {
            return Err(format!(
                "the output size {w}x{h} is empty (sizes are floored to multiples of {}; set --width/--height)",
                Self::SIZE_MULTIPLE
            ));
        }
        check_pixels("the output size", w, h, max_pixels)?;
        Ok((w, h))
    }
}

fn check_pixels(what: &str, w: usize, h: usize, max_pixels: usize) -> Result<(), String> {
    match w.checked_mul(h) {
        Some(n) if n <= max_pixels => Ok(()),
        n => Err(format!(
            "{what} {w}x{h} is {} pixels, more than the limit {max_pixels} (raise it with --max-pixels)",
            n.map_or_else(|| "too many".to_string(), |n| n.to_string())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = EditSettings::DEFAULT_MAX_PIXELS;

    #[test]
    fn default_settings_pass() {
        let s = EditSettings::default();
        s.check(LIMIT).unwrap();
        assert_eq!(
            s.check_image_sizes(&[(640, 480)], LIMIT).unwrap(),
            (1184, 896)
        );
    }

    #[test]
    fn out_of_range_values_name_the_flag() {
        let cases: [(EditSettings, &str); 9] = [
            (
                EditSettings {
                    cfg: f32::NAN,
                    ..Default::default()
                },
                "--cfg",
            ),
            (
                EditSettings {
                    cfg: -1.0,
                    ..Default::default()
                },
                "--cfg",
            ),
            (
                EditSettings {
                    steps: 0,
                    ..Default::default()
                },
                "--steps",
            ),
            (
                EditSettings {
                    steps: 10_001,
                    ..Default::default()
                },
                "--steps",
            ),
            (
                EditSettings {
                    sigmas: Some(vec![1.0, f32::NAN]),
                    ..Default::default()
                },
                "--sigmas",
            ),
            (
                EditSettings {
                    sigmas: Some(vec![]),
                    ..Default::default()
                },
                "--sigmas",
            ),
            (
                EditSettings {
                    vae_area: Some(0),
                    ..Default::default()
                },
                "--vae-area",
            ),
            (
                EditSettings {
                    vl_area: Some(LIMIT + 1),
                    ..Default::default()
                },
                "--vl-area",
            ),
            (
                EditSettings {
                    width: Some(100_000),
                    height: Some(100_000),
                    ..Default::default()
                },
                "--max-pixels",
            ),
        ];
        for (settings, needle) in cases {
            let err = settings.check(LIMIT).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let huge = EditSettings {
            width: Some(usize::MAX),
            height: Some(16),
            ..Default::default()
        };
        assert!(huge.check(usize::MAX).unwrap_err().contains("too many"));
    }

    #[test]
    fn derived_output_sizes_are_checked() {
        // One explicit side: the other comes from the image's aspect.
        let wide = EditSettings {
            width: Some(32_768),
            ..Default::default()
        };
        wide.check(LIMIT).unwrap();
        let err = wide.check_image_sizes(&[(1024, 1024)], LIMIT).unwrap_err();
        assert!(
            err.contains("32768x1024") && err.contains("--max-pixels"),
            "{err}"
        );
        wide.check_image_sizes(&[(1024, 1024)], 32_768 * 1024)
            .unwrap();
        // An extreme aspect floors one side to zero.
        let err = EditSettings::default()
            .check_image_sizes(&[(100_000, 10)], LIMIT)
            .unwrap_err();
        assert!(err.contains("input image 1 (100000x10)"), "{err}");
        let err = EditSettings {
            output_area: Some(64),
            ..Default::default()
        }
        .check_image_sizes(&[(64, 64)], LIMIT)
        .unwrap_err();
        assert!(err.contains("empty"), "{err}");
    }
}
