//! Sampling: the FlowMatchEuler scheduler (diffusers 0.42.1), classifier-free guidance and seeded
//! host noise.

pub mod config;
pub mod flow_match;
pub mod guidance;
pub mod noise;
pub mod sigmas;

pub use config::{SchedulerConfig, TimeShiftType};
pub use flow_match::FlowMatchEulerScheduler;
pub use guidance::{plain_cfg, true_cfg};
pub use noise::{gaussian_noise, philox4x32_10};
pub use sigmas::{calculate_shift, layered_default_sigmas, linspace, qwen_default_sigmas};

impl SchedulerConfig {
    /// mu for `image_seq_len` target tokens as the Qwen pipelines compute it, from this config's
    /// base/max sequence lengths and shifts.
    pub fn mu_for(&self, image_seq_len: usize) -> f64 {
        calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift.unwrap_or(0.5),
            self.max_shift.unwrap_or(1.15),
        )
    }
}
