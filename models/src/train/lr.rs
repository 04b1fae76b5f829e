//! Learning-rate schedules: the rate of optimizer step `step` (0-based) of `total`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "schedule", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    #[default]
    Constant,
    /// Linear from lr / warmup_steps up to lr over `warmup_steps`, then constant.
    Warmup { warmup_steps: u64 },
    /// Linear warmup, then half a cosine from lr down to `min_lr` at the last step.
    Cosine {
        #[serde(default)]
        warmup_steps: u64,
        #[serde(default)]
        min_lr: f64,
    },
}

impl LrSchedule {
    pub fn rate(&self, lr: f64, step: u64, total: u64) -> f64 {
        let warm = |w: u64| {
            if step < w {
                Some(lr * (step + 1) as f64 / w as f64)
            } else {
                None
            }
        };
        match *self {
            LrSchedule::Constant => lr,
            LrSchedule::Warmup { warmup_steps } => warm(warmup_steps).unwrap_or(lr),
            LrSchedule::Cosine {
                warmup_steps,
                min_lr,
            } => warm(warmup_steps).unwrap_or_else(|| {
                let span = total.saturating_sub(warmup_steps).max(1) as f64;
                let progress = ((step - warmup_steps) as f64 / span).min(1.0);
                min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        assert_eq!(LrSchedule::Constant.rate(1e-4, 7, 10), 1e-4);
        let w = LrSchedule::Warmup { warmup_steps: 4 };
        assert_eq!(w.rate(1.0, 0, 10), 0.25);
        assert_eq!(w.rate(1.0, 3, 10), 1.0);
        assert_eq!(w.rate(1.0, 9, 10), 1.0);
        let c = LrSchedule::Cosine {
            warmup_steps: 2,
            min_lr: 0.1,
        };
        assert_eq!(c.rate(1.0, 0, 12), 0.5);
        assert!((c.rate(1.0, 2, 12) - 1.0).abs() < 1e-12);
        assert!((c.rate(1.0, 7, 12) - 0.55).abs() < 1e-12);
        assert!((c.rate(1.0, 12, 12) - 0.1).abs() < 1e-12);
    }
}
