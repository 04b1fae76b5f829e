//! `scheduler/scheduler_config.json` of a FlowMatchEulerDiscreteScheduler (diffusers 0.42.1 names and defaults).

use crate::ModelError;
use serde::Deserialize;
use std::path::Path;

/// How the dynamic (resolution-dependent) shift maps `mu` onto the sigmas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeShiftType {
    /// `e^mu / (e^mu + (1/t - 1))`
    Exponential,
    /// `mu / (mu + (1/t - 1))`
    Linear,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: Option<f64>,
    pub max_shift: Option<f64>,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub invert_sigmas: bool,
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub time_shift_type: String,
    pub stochastic_sampling: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: "exponential".to_string(),
            stochastic_sampling: false,
        }
    }
}

impl SchedulerConfig {
    /// Reads and validates a `scheduler_config.json`.
    pub fn load(path: &Path) -> Result<SchedulerConfig, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::new(format!("{}: {e}", path.display())))?;
        SchedulerConfig::from_json(&text).map_err(|e| e.context(&path.display().to_string()))
    }

    pub fn from_json(text: &str) -> Result<SchedulerConfig, ModelError> {
        let config: SchedulerConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::new(format!("invalid scheduler config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// The Qwen-Image / Qwen-Image-Edit(-Plus) checkpoints' scheduler config.
    pub fn qwen_image() -> SchedulerConfig {
        SchedulerConfig {
            use_dynamic_shifting: true,
            base_shift: Some(0.5),
            max_shift: Some(0.9),
            max_image_seq_len: 8192,
            shift_terminal: Some(0.02),
            ..SchedulerConfig::default()
        }
    }

    pub fn time_shift(&self) -> TimeShiftType {
        match self.time_shift_type.as_str() {
            "linear" => TimeShiftType::Linear,
            _ => TimeShiftType::Exponential,
        }
    }

    /// Rejects what diffusers rejects, and the sigma conversions qie does not implement.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !matches!(self.time_shift_type.as_str(), "exponential" | "linear") {
            return Err(ModelError::new(format!(
                "time_shift_type must be \"exponential\" or \"linear\", got {:?}",
                self.time_shift_type
            )));
        }
        for (flag, name) in [
            (self.use_karras_sigmas, "use_karras_sigmas"),
            (self.use_exponential_sigmas, "use_exponential_sigmas"),
            (self.use_beta_sigmas, "use_beta_sigmas"),
        ] {
            if flag {
                return Err(ModelError::new(format!(
                    "{name} = true is not supported by qie's FlowMatchEuler scheduler"
                )));
            }
        }
        if self.num_train_timesteps == 0 {
            return Err(ModelError::new("num_train_timesteps must be > 0"));
        }
        if self.shift_terminal.is_some_and(|s| s >= 1.0) {
            return Err(ModelError::new("shift_terminal must be < 1"));
        }
        Ok(())
    }
}
