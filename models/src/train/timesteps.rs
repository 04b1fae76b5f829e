//! How a training step picks its noise level: sigma in (0, 1], the timestep the DiT is given
//! (sigma * 1000) and the loss weight of the sample.

use super::rng::{normal, uniform};
use crate::scheduler::calculate_shift;
use serde::{Deserialize, Serialize};

/// DiffSynth-Studio's table size (`set_timesteps(1000, training=True)`).
const DIFFSYNTH_STEPS: usize = 1000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum TimestepScheme {
    /// DiffSynth-Studio's Qwen-Image template: a uniform index into 1000 sigmas
    /// `linspace(1, 0, 1001)[:-1]`, shifted with `exp(mu) / (exp(mu) + 1/s - 1)` (mu 0.8) and
    /// stretched so the last is 0.02 (shift_terminal); the timestep is rounded to bf16 as its
    /// bf16 pipeline does and the sigma and weight are those of the nearest table entry. Weight
    /// `exp(-2 ((t - 500) / 1000)^2)`, minus its minimum, scaled to mean 1.
    #[serde(rename = "diffsynth")]
    DiffSynth {
        #[serde(default = "default_mu")]
        mu: f64,
    },
    /// musubi-tuner's `shift`: t = sigmoid(N(0, 1) * sigmoid_scale), sigma = shift t / (1 + (shift - 1) t).
    Shift {
        #[serde(default = "default_shift")]
        shift: f64,
        #[serde(default = "one")]
        sigmoid_scale: f64,
    },
    /// musubi-tuner's `qwen_shift`: `shift` with shift = exp(mu) and mu from the target's token
    /// count as at inference (0.5 at 256 tokens to 0.9 at 8192).
    ResolutionShift {
        #[serde(default = "one")]
        sigmoid_scale: f64,
    },
    /// sigma = sigmoid(N(mean, std)) (SD3's logit-normal).
    LogitNormal {
        #[serde(default)]
        mean: f64,
        #[serde(default = "one")]
        std: f64,
    },
    /// sigma uniform in (0, 1).
    Uniform,
}

fn default_mu() -> f64 {
    0.8
}
fn default_shift() -> f64 {
    2.2
}
fn one() -> f64 {
    1.0
}

impl Default for TimestepScheme {
    fn default() -> Self {
        TimestepScheme::DiffSynth { mu: default_mu() }
    }
}

/// One sample's noise level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimestepDraw {
    /// x_t = (1 - sigma) x0 + sigma eps.
    pub sigma: f32,
    /// What the DiT's timestep embedding is given, times 1000 (the pipeline passes t / 1000).
    pub timestep: f32,
    /// Loss weight (1 for every scheme but DiffSynth's).
    pub weight: f32,
}

/// A scheme ready to draw (DiffSynth's table computed once).
pub struct TimestepSampler {
    scheme: TimestepScheme,
    table: Option<DiffSynthTable>,
}

impl TimestepSampler {
    pub fn new(scheme: &TimestepScheme) -> Result<TimestepSampler, String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        let table = match *scheme {
            TimestepScheme::DiffSynth { mu } => {
                check(mu.is_finite(), "timesteps.mu must be finite")?;
                Some(DiffSynthTable::new(mu))
            }
            TimestepScheme::Shift {
                shift,
                sigmoid_scale,
            } => {
                check(
                    shift.is_finite() && shift > 0.0,
                    "timesteps.shift must be > 0",
                )?;
                check(
                    sigmoid_scale.is_finite(),
                    "timesteps.sigmoid_scale must be finite",
                )?;
                None
            }
            TimestepScheme::ResolutionShift { sigmoid_scale } => {
                check(
                    sigmoid_scale.is_finite(),
                    "timesteps.sigmoid_scale must be finite",
                )?;
                None
            }
            TimestepScheme::LogitNormal { mean, std } => {
                check(
                    mean.is_finite() && std.is_finite() && std > 0.0,
                    "timesteps.mean must be finite and timesteps.std > 0",
                )?;
                None
            }
            TimestepScheme::Uniform => None,
        };
        Ok(TimestepSampler {
            scheme: scheme.clone(),
            table,
        })
    }

    /// The draw for random stream `seed`; `target_tokens` = the target image's token count.
    pub fn draw(&self, seed: u64, target_tokens: usize) -> TimestepDraw {
        let sigma = match self.scheme {
            TimestepScheme::DiffSynth { .. } => {
                return self
                    .table
                    .as_ref()
                    .expect("built in new")
                    .draw(uniform(seed))
            }
            TimestepScheme::Shift {
                shift,
                sigmoid_scale,
            } => shifted(sigmoid(normal(seed) * sigmoid_scale), shift),
            TimestepScheme::ResolutionShift { sigmoid_scale } => {
                let mu = calculate_shift(target_tokens, 256, 8192, 0.5, 0.9);
                shifted(sigmoid(normal(seed) * sigmoid_scale), mu.exp())
            }
            TimestepScheme::LogitNormal { mean, std } => sigmoid(mean + std * normal(seed)),
            // (0, 1): a draw of exactly 0 would train on the clean latents.
            TimestepScheme::Uniform => uniform(seed).max(f64::MIN_POSITIVE),
        };
        TimestepDraw {
            sigma: sigma as f32,
            timestep: (sigma * 1000.0) as f32,
            weight: 1.0,
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn shifted(t: f64, shift: f64) -> f64 {
    shift * t / (1.0 + (shift - 1.0) * t)
}

/// DiffSynth's `FlowMatchScheduler("Qwen-Image").set_timesteps(1000, training=True)` tables, in
/// f32 as torch keeps them.
struct DiffSynthTable {
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    weights: Vec<f32>,
}

impl DiffSynthTable {
    fn new(mu: f64) -> DiffSynthTable {
        let n = DIFFSYNTH_STEPS;
        let shift_terminal = 0.02f64;
        let raw: Vec<f64> = (0..n).map(|i| 1.0 - i as f64 / n as f64).collect();
        let shifted: Vec<f64> = raw
            .iter()
            .map(|&s| mu.exp() / (mu.exp() + (1.0 / s - 1.0)))
            .collect();
        let scale = (1.0 - shifted[n - 1]) / (1.0 - shift_terminal);
        let sigmas: Vec<f32> = shifted
            .iter()
            .map(|&s| (1.0 - (1.0 - s) / scale) as f32)
            .collect();
        let timesteps: Vec<f32> = sigmas.iter().map(|&s| s * 1000.0).collect();
        let y: Vec<f64> = timesteps
            .iter()
            .map(|&x| (-2.0 * ((x as f64 - 500.0) / 1000.0).powi(2)).exp())
            .collect();
        let min = y.iter().cloned().fold(f64::INFINITY, f64::min);
        let total: f64 = y.iter().map(|v| v - min).sum();
        let weights = y
            .iter()
            .map(|v| ((v - min) * (n as f64 / total)) as f32)
            .collect();
        DiffSynthTable {
            sigmas,
            timesteps,
            weights,
        }
    }

    fn draw(&self, u: f64) -> TimestepDraw {
        let id = ((u * self.sigmas.len() as f64) as usize).min(self.sigmas.len() - 1);
        let t = half::bf16::from_f32(self.timesteps[id]).to_f32();
        let nearest = self
            .timesteps
            .iter()
            .enumerate()
            .min_by(|a, b| (a.1 - t).abs().total_cmp(&(b.1 - t).abs()))
            .map(|(i, _)| i)
            .expect("a non-empty table");
        TimestepDraw {
            sigma: self.sigmas[nearest],
            timestep: t,
            weight: self.weights[nearest],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rng::{stream_seed, Purpose};

    fn draws(scheme: TimestepScheme, tokens: usize) -> Vec<TimestepDraw> {
        let s = TimestepSampler::new(&scheme).unwrap();
        (0..4000)
            .map(|i| s.draw(stream_seed(3, i, Purpose::Timestep, 0), tokens))
            .collect()
    }

    #[test]
    fn diffsynth_table_matches_its_formulas() {
        let t = DiffSynthTable::new(0.8);
        assert!((t.sigmas[0] - 1.0).abs() < 1e-6);
        assert!((t.sigmas[999] - 0.02).abs() < 1e-6);
        assert!(t.sigmas.windows(2).all(|w| w[0] > w[1]));
        let mean = t.weights.iter().map(|&w| w as f64).sum::<f64>() / 1000.0;
        assert!((mean - 1.0).abs() < 1e-5, "mean weight {mean}");
        assert!(t.weights.iter().all(|&w| w >= 0.0));
        // The weight peaks at t = 500 (the entry nearest to it).
        let peak = t
            .weights
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert!(
            (t.timesteps[peak] - 500.0).abs() < 2.0,
            "{}",
            t.timesteps[peak]
        );
    }

    #[test]
    fn every_scheme_stays_in_range() {
        for scheme in [
            TimestepScheme::default(),
            TimestepScheme::Shift {
                shift: 2.2,
                sigmoid_scale: 1.0,
            },
            TimestepScheme::ResolutionShift { sigmoid_scale: 1.0 },
            TimestepScheme::LogitNormal {
                mean: 0.0,
                std: 1.0,
            },
            TimestepScheme::Uniform,
        ] {
            for d in draws(scheme.clone(), 4096) {
                assert!(d.sigma > 0.0 && d.sigma <= 1.0, "{scheme:?}: {d:?}");
                assert!(d.weight.is_finite() && d.weight >= 0.0);
                assert!(
                    (d.timestep - d.sigma * 1000.0).abs() < 4.0,
                    "{scheme:?}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn shift_moves_mass_to_high_noise() {
        let mean =
            |v: &[TimestepDraw]| v.iter().map(|d| d.sigma as f64).sum::<f64>() / v.len() as f64;
        let plain = mean(&draws(
            TimestepScheme::LogitNormal {
                mean: 0.0,
                std: 1.0,
            },
            1024,
        ));
        let shifted = mean(&draws(
            TimestepScheme::Shift {
                shift: 2.2,
                sigmoid_scale: 1.0,
            },
            1024,
        ));
        assert!((plain - 0.5).abs() < 0.02, "{plain}");
        assert!(shifted > plain + 0.1, "{shifted} vs {plain}");
        // Bigger images shift more under the resolution-dependent scheme.
        let small = mean(&draws(
            TimestepScheme::ResolutionShift { sigmoid_scale: 1.0 },
            256,
        ));
        let large = mean(&draws(
            TimestepScheme::ResolutionShift { sigmoid_scale: 1.0 },
            8192,
        ));
        assert!(large > small + 0.05, "{large} vs {small}");
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(TimestepSampler::new(&TimestepScheme::Shift {
            shift: 0.0,
            sigmoid_scale: 1.0
        })
        .is_err());
        assert!(TimestepSampler::new(&TimestepScheme::LogitNormal {
            mean: 0.0,
            std: -1.0
        })
        .is_err());
    }
}
