//! FlowMatchEulerDiscreteScheduler as diffusers 0.42.1 implements it (no Karras / exponential /
//! beta sigmas). The sigma arithmetic follows diffusers' dtypes: custom sigmas (what the Qwen
//! pipelines pass) are shifted in f32 numpy arithmetic, the default schedule in f64 then rounded.

use super::config::{SchedulerConfig, TimeShiftType};
use crate::ModelError;
use std::ops::{Add, Div, Mul, Sub};
use std::path::Path;

#[derive(Clone, Debug)]
pub struct FlowMatchEulerScheduler {
    pub config: SchedulerConfig,
    /// Sigmas of the current schedule plus the trailing 0 (1 with `invert_sigmas`).
    sigmas: Vec<f32>,
    /// `sigmas * num_train_timesteps`, one per step (no trailing entry).
    timesteps: Vec<f32>,
    step_index: usize,
    sigma_min: f64,
    sigma_max: f64,
}

impl FlowMatchEulerScheduler {
    pub fn new(config: SchedulerConfig) -> Result<FlowMatchEulerScheduler, ModelError> {
        config.validate()?;
        let (sigma_min, sigma_max) = training_sigma_range(&config);
        Ok(FlowMatchEulerScheduler {
            config,
            sigmas: Vec::new(),
            timesteps: Vec::new(),
            step_index: 0,
            sigma_min,
            sigma_max,
        })
    }

    /// Reads `scheduler_config.json` from a diffusers `scheduler/` folder (or the file itself).
    pub fn load(path: &Path) -> Result<FlowMatchEulerScheduler, ModelError> {
        let file = if path.is_dir() {
            path.join("scheduler_config.json")
        } else {
            path.to_path_buf()
        };
        if !file.exists() {
            return Err(ModelError::new(format!(
                "{}: no such scheduler folder or scheduler_config.json",
                path.display()
            )));
        }
        FlowMatchEulerScheduler::new(SchedulerConfig::load(&file)?)
    }

    /// diffusers' `set_timesteps(num_inference_steps, sigmas=, mu=)`. With `sigmas`, `num_steps` may be
    /// None (its length is used); `mu` is required when the config uses dynamic shifting.
    pub fn set_timesteps(
        &mut self,
        num_steps: Option<usize>,
        sigmas: Option<Vec<f32>>,
        mu: Option<f64>,
    ) -> Result<(), ModelError> {
        let config = &self.config;
        if config.use_dynamic_shifting && mu.is_none() {
            return Err(ModelError::new(
                "scheduler: `mu` must be given when use_dynamic_shifting is true",
            ));
        }
        let shifted: Vec<f32> = match (sigmas, num_steps) {
            (Some(s), n) => {
                if n.is_some_and(|n| n != s.len()) {
                    return Err(ModelError::new(format!(
                        "scheduler: {} custom sigmas for {} steps",
                        s.len(),
                        n.unwrap_or_default()
                    )));
                }
                if s.is_empty() {
                    return Err(ModelError::new("scheduler: empty sigma schedule"));
                }
                shift_schedule(config, mu, s)?
            }
            (None, Some(n)) if n > 0 => {
                let train = config.num_train_timesteps as f64;
                let t = super::sigmas::linspace(self.sigma_max * train, self.sigma_min * train, n);
                let s: Vec<f64> = t.into_iter().map(|t| t / train).collect();
                shift_schedule(config, mu, s)?
                    .into_iter()
                    .map(|s| s as f32)
                    .collect()
            }
            _ => {
                return Err(ModelError::new(
                    "scheduler: give a step count > 0 or custom sigmas",
                ))
            }
        };
        let train = config.num_train_timesteps as f32;
        let (mut sigmas, last) = if config.invert_sigmas {
            (shifted.iter().map(|s| 1.0 - s).collect::<Vec<f32>>(), 1.0)
        } else {
            (shifted, 0.0)
        };
        self.timesteps = sigmas.iter().map(|s| s * train).collect();
        sigmas.push(last);
        self.sigmas = sigmas;
        self.step_index = 0;
        Ok(())
    }

    /// The schedule's sigmas, with the trailing terminal sigma.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// One timestep per step (`sigma * num_train_timesteps`).
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// The step the next [`step`](Self::step) call advances from.
    pub fn step_index(&self) -> usize {
        self.step_index
    }

    /// Restarts the schedule (diffusers' `set_begin_index(i)`).
    pub fn set_step_index(&mut self, index: usize) {
        self.step_index = index;
    }

    /// The DiT's `timestep` input at step `i`: `t / 1000` in f32, as the pipelines pass it for f32
    /// latents (bf16 latents would round `t` to bf16 first).
    pub fn dit_timestep(&self, i: usize) -> f32 {
        self.timesteps[i] / 1000.0
    }

    /// One Euler step: `sample + (sigma_next - sigma) * model_output`, in f32 like diffusers (which
    /// upcasts the sample to f32; the caller rounds the result for bf16 latents).
    pub fn step(&mut self, model_output: &[f32], sample: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut out = sample.to_vec();
        self.step_in_place(model_output, &mut out)?;
        Ok(out)
    }

    /// [`step`](Self::step) overwriting `sample`.
    pub fn step_in_place(
        &mut self,
        model_output: &[f32],
        sample: &mut [f32],
    ) -> Result<(), ModelError> {
        if self.config.stochastic_sampling {
            return Err(ModelError::new(
                "scheduler: stochastic_sampling needs noise (use step_with_noise)",
            ));
        }
        let (sigma, next) = self.current(model_output.len(), sample.len())?;
        let dt = next - sigma;
        for (x, &v) in sample.iter_mut().zip(model_output) {
            *x += dt * v;
        }
        self.step_index += 1;
        Ok(())
    }

    /// The stochastic-sampling step: `x0 = sample - sigma * v`, then
    /// `(1 - sigma_next) * x0 + sigma_next * noise`.
    pub fn step_with_noise(
        &mut self,
        model_output: &[f32],
        sample: &mut [f32],
        noise: &[f32],
    ) -> Result<(), ModelError> {
        let (sigma, next) = self.current(model_output.len(), sample.len())?;
        if noise.len() != sample.len() {
            return Err(ModelError::new(format!(
                "scheduler: noise has {} elements, the sample {}",
                noise.len(),
                sample.len()
            )));
        }
        for ((x, &v), &n) in sample.iter_mut().zip(model_output).zip(noise) {
            let x0 = *x - sigma * v;
            *x = (1.0 - next) * x0 + next * n;
        }
        self.step_index += 1;
        Ok(())
    }

    /// The flow-matching forward process at step `i` (img2img starts):
    /// `sigma * noise + (1 - sigma) * sample`.
    pub fn scale_noise(&self, sample: &[f32], noise: &[f32], i: usize) -> Vec<f32> {
        let sigma = self.sigmas[i];
        sample
            .iter()
            .zip(noise)
            .map(|(&x, &n)| sigma * n + (1.0 - sigma) * x)
            .collect()
    }

    fn current(&self, output_len: usize, sample_len: usize) -> Result<(f32, f32), ModelError> {
        if self.sigmas.is_empty() {
            return Err(ModelError::new("scheduler: call set_timesteps before step"));
        }
        if self.step_index + 1 >= self.sigmas.len() {
            return Err(ModelError::new(format!(
                "scheduler: step {} is past the {}-step schedule",
                self.step_index,
                self.num_steps()
            )));
        }
        if output_len != sample_len {
            return Err(ModelError::new(format!(
                "scheduler: model output has {output_len} elements, the sample {sample_len}"
            )));
        }
        Ok((
            self.sigmas[self.step_index],
            self.sigmas[self.step_index + 1],
        ))
    }
}

/// `sigma_min` / `sigma_max` of the training schedule (diffusers' `__init__`, torch f32).
fn training_sigma_range(config: &SchedulerConfig) -> (f64, f64) {
    let n = config.num_train_timesteps;
    let sigma = |t: f32| {
        let s = t / n as f32;
        if config.use_dynamic_shifting {
            s
        } else {
            (config.shift as f32 * s) / (1.0 + (config.shift - 1.0) as f32 * s)
        }
    };
    (sigma(1.0) as f64, sigma(n as f32) as f64)
}

/// Steps 2-3 of diffusers' `set_timesteps`: the (dynamic or static) shift, then the stretch to
/// `shift_terminal`, in the precision of the input (numpy f32 for custom sigmas, f64 otherwise).
fn shift_schedule<T: Real>(
    config: &SchedulerConfig,
    mu: Option<f64>,
    sigmas: Vec<T>,
) -> Result<Vec<T>, ModelError> {
    let one = T::of(1.0);
    let mut s: Vec<T> = if config.use_dynamic_shifting {
        let mu = mu.unwrap_or_default();
        let (num, offset) = match config.time_shift() {
            TimeShiftType::Exponential => (T::of(mu.exp()), T::of(mu.exp())),
            TimeShiftType::Linear => (T::of(mu), T::of(mu)),
        };
        sigmas
            .into_iter()
            .map(|t| num / (offset + (one / t - one)))
            .collect()
    } else {
        let shift = T::of(config.shift);
        let shift_m1 = T::of(config.shift - 1.0);
        sigmas
            .into_iter()
            .map(|t| (shift * t) / (one + shift_m1 * t))
            .collect()
    };
    if let Some(terminal) = config.shift_terminal.filter(|&t| t != 0.0) {
        let last = one - s[s.len() - 1];
        if last.to_f64() == 0.0 {
            return Err(ModelError::new(
                "scheduler: shift_terminal cannot stretch a schedule that ends at sigma 1 \
                 (e.g. a single step; diffusers produces NaN sigmas here)",
            ));
        }
        let scale = last / T::of(1.0 - terminal);
        for x in &mut s {
            *x = one - (one - *x) / scale;
        }
    }
    Ok(s)
}

/// The two precisions diffusers' sigma arithmetic runs in.
trait Real:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self>
{
    fn of(x: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    fn of(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
}
