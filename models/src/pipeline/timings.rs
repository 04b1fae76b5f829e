//! Wall time per pipeline stage, printed at the end of `qie edit` and stored with batch results.

use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageTimes {
    pub load_s: f64,
    pub preprocess_s: f64,
    pub text_encoder_s: f64,
    pub vae_encode_s: f64,
    pub denoise_s: f64,
    pub step_s: Vec<f64>,
    pub vae_decode_s: f64,
    pub total_s: f64,
}

impl StageTimes {
    /// One line per stage, e.g. for the end of `qie edit`.
    pub fn report(&self) -> String {
        let mean_step = if self.step_s.is_empty() {
            0.0
        } else {
            self.step_s.iter().sum::<f64>() / self.step_s.len() as f64
        };
        format!(
            "preprocess {:.2}s | text encoder {:.2}s | vae encode {:.2}s | denoise {:.2}s ({} steps, {:.3}s/step) | vae decode {:.2}s | total {:.2}s",
            self.preprocess_s,
            self.text_encoder_s,
            self.vae_encode_s,
            self.denoise_s,
            self.step_s.len(),
            mean_step,
            self.vae_decode_s,
            self.total_s
        )
    }
}

/// Seconds since `t`.
pub fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
