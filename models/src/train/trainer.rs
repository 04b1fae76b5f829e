//! The training loop: micro-batches -> loss and gradients from one plan -> global-norm clipping
//! -> the fused AdamW update on the f32 master copies -> the new values written into the model
//! in place (no recompilation). Gradients, master copies and moments live in the optimizer's
//! parameter set on the DiT's backend: on a GPU a step moves only the batch in and the loss and
//! norm out. Every draw depends only on (seed, step), and the data order only on (seed, epoch),
//! so a run resumed from a checkpoint repeats the uninterrupted run exactly.

use super::adamw::{AdamW, AdamWConfig, GRAD, GRAD_MICRO, PARAM};
use super::checkpoint::{self, LoopState};
use super::lr::LrSchedule;
use super::sample::{noise_batch, TrainingData};
use super::timesteps::{TimestepSampler, TimestepScheme};
use crate::qwen_image::QwenImageDit;
use crate::ModelError;
use qie_runtime::ParamCopy;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the loop does (the optimizer-step view of the config).
#[derive(Clone, Debug, PartialEq)]
pub struct LoopSettings {
    pub steps: u64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub schedule: LrSchedule,
    pub optimizer: AdamWConfig,
    /// Clip the global gradient norm to this (None: no clipping).
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub timesteps: TimestepScheme,
}

impl LoopSettings {
    /// What must stay equal for a resumed run to continue the same run.
    pub fn fingerprint(&self) -> String {
        format!(
            "bs={} accum={} lr={} schedule={:?} opt={:?} clip={:?} seed={} timesteps={:?}",
            self.batch_size,
            self.grad_accum,
            self.lr,
            self.schedule,
            self.optimizer,
            self.max_grad_norm,
            self.seed,
            self.timesteps
        )
    }
}

/// A trainable tensor's name, shape and values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// One optimizer step's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// 1-based: the number of optimizer steps taken so far.
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    /// Global L2 norm of the (accumulated) gradient, before clipping.
    pub grad_norm: f64,
    pub step_s: f64,
    pub samples: usize,
    pub epoch: u64,
}

pub struct Trainer {
    settings: LoopSettings,
    /// Trainable weights (source names) and shapes, in master-vector order.
    layout: Vec<(String, Vec<usize>)>,
    /// Element offset of each trainable tensor in the flat vectors.
    offsets: Vec<usize>,
    optimizer: AdamW,
    sampler: TimestepSampler,
    state: LoopState,
}

impl Trainer {
    /// Starts from the model's current values of `trainable`.
    pub fn new(
        dit: &QwenImageDit,
        trainable: Vec<String>,
        settings: LoopSettings,
    ) -> Result<Trainer, ModelError> {
        if trainable.is_empty() {
            return Err(ModelError::new(
                "nothing to train: the trainable set is empty",
            ));
        }
        if settings.batch_size == 0 || settings.grad_accum == 0 {
            return Err(ModelError::new(
                "batch size and gradient accumulation must be >= 1",
            ));
        }
        if !(settings.lr.is_finite() && settings.lr > 0.0) {
            return Err(ModelError::new(format!("lr {} must be > 0", settings.lr)));
        }
        let shapes: std::collections::HashMap<&str, &Vec<usize>> = dit
            .model_weights()
            .iter()
            .map(|(n, s)| (n.as_str(), s))
            .collect();
        let mut layout = Vec::with_capacity(trainable.len());
        let mut offsets = Vec::with_capacity(trainable.len());
        let mut master = Vec::new();
        for name in trainable {
            let shape = shapes.get(name.as_str()).ok_or_else(|| {
                ModelError::new(format!(
                    "trainable weight `{name}` is not a weight of the DiT"
                ))
            })?;
            offsets.push(master.len());
            master.extend(dit.weight_f32(&name)?);
            layout.push((name, (*shape).clone()));
        }
        let optimizer = AdamW::new(
            settings.optimizer.clone(),
            &master,
            settings.grad_accum > 1,
            &**dit.backend(),
        )?;
        let sampler = TimestepSampler::new(&settings.timesteps).map_err(ModelError::new)?;
        let state = LoopState {
            step: 0,
            epoch: 0,
            batch_in_epoch: 0,
            seed: settings.seed,
            fingerprint: settings.fingerprint(),
        };
        Ok(Trainer {
            settings,
            layout,
            offsets,
            optimizer,
            sampler,
            state,
        })
    }

    pub fn step(&self) -> u64 {
        self.state.step
    }

    pub fn layout(&self) -> &[(String, Vec<usize>)] {
        &self.layout
    }

    /// The master value of each trainable tensor (copied from the optimizer's state).
    pub fn tensors(&self) -> Result<Vec<NamedTensor>, ModelError> {
        let master = self.optimizer.master()?;
        Ok(self.split(&master))
    }

    fn split(&self, flat: &[f32]) -> Vec<NamedTensor> {
        self.layout
            .iter()
            .zip(&self.offsets)
            .map(|((name, shape), &at)| {
                let n: usize = shape.iter().product();
                (name.clone(), shape.clone(), flat[at..at + n].to_vec())
            })
            .collect()
    }

    /// Number of trainable values.
    pub fn trainable_values(&self) -> usize {
        self.optimizer.len()
    }

    /// One optimizer step (grad_accum micro-batches of batch_size rows).
    pub fn train_step(
        &mut self,
        dit: &mut QwenImageDit,
        data: &dyn TrainingData,
    ) -> Result<StepReport, ModelError> {
        let start = Instant::now();
        let step = self.state.step;
        let names: Vec<String> = self.layout.iter().map(|(n, _)| n.clone()).collect();
        let mut loss_sum = 0.0f64;
        let mut samples = 0;
        let mut sources = Vec::new();
        for micro in 0..self.settings.grad_accum {
            let rows = self.next_batch(data)?;
            let loaded = rows
                .iter()
                .map(|&i| data.load(i))
                .collect::<Result<Vec<_>, _>>()?;
            samples += loaded.len();
            sources.extend(loaded.iter().map(|s| s.source.clone()));
            let batch = noise_batch(
                &loaded,
                &self.sampler,
                self.settings.seed,
                step,
                micro as u64,
            )?;
            // The first micro-batch's gradient lands in `grad`, later ones are added to it.
            let sink = if micro == 0 { GRAD } else { GRAD_MICRO };
            let places: Vec<(String, usize)> = self
                .offsets
                .iter()
                .map(|&o| (sink.to_string(), o))
                .collect();
            let loss = dit.loss_into(
                &batch.inputs,
                &batch.target,
                &batch.weight,
                &names,
                self.optimizer.set_mut(),
                &places,
            )?;
            if !loss.is_finite() {
                return Err(ModelError::new(format!(
                    "step {}: the loss is {loss} (rows {})",
                    step + 1,
                    sources.join(", ")
                )));
            }
            loss_sum += loss as f64;
            if micro > 0 {
                self.optimizer.accumulate()?;
            }
        }
        let sq_sum = self.optimizer.grad_sq_sum()?;
        if !sq_sum.is_finite() {
            return Err(self.first_non_finite(GRAD, step, |name| {
                format!(
                    "the gradient of `{name}` has a non-finite value (rows {})",
                    sources.join(", ")
                )
            }));
        }
        let accum = self.settings.grad_accum as f64;
        let grad_norm = sq_sum.sqrt() / accum;
        // torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), at most 1.
        let clip = match self.settings.max_grad_norm {
            Some(max) => (max / (grad_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        let lr = self
            .settings
            .schedule
            .rate(self.settings.lr, step, self.settings.steps);
        if !self.optimizer.step(lr, clip / accum)? {
            return Err(self.first_non_finite(PARAM, step, |name| {
                format!("the update made `{name}` non-finite")
            }));
        }
        self.write_back(dit)?;
        self.state.step += 1;
        Ok(StepReport {
            step: self.state.step,
            loss: loss_sum / accum,
            lr,
            grad_norm,
            step_s: start.elapsed().as_secs_f64(),
            samples,
            epoch: self.state.epoch,
        })
    }

    /// The error for a non-finite value in state vector `which`, naming the first tensor that
    /// holds one (the vector is copied to the host only on this path).
    fn first_non_finite(
        &self,
        which: &str,
        step: u64,
        describe: impl Fn(&str) -> String,
    ) -> ModelError {
        let what = match self.optimizer.read(which) {
            Ok(values) => match values.iter().position(|v| !v.is_finite()) {
                Some(i) => describe(self.name_at(i)),
                None => describe("?"),
            },
            Err(e) => format!("{} (and reading it back failed: {e})", describe("?")),
        };
        ModelError::new(format!("step {}: {what}", step + 1))
    }

    fn name_at(&self, index: usize) -> &str {
        let mut at = 0;
        for (name, shape) in &self.layout {
            at += shape.iter().product::<usize>();
            if index < at {
                return name;
            }
        }
        "?"
    }

    /// Copies the master values into the DiT's weights, on its backend.
    fn write_back(&self, dit: &mut QwenImageDit) -> Result<(), ModelError> {
        let copies: Vec<ParamCopy> = self
            .layout
            .iter()
            .zip(&self.offsets)
            .map(|((name, shape), &at)| ParamCopy {
                from: PARAM.to_string(),
                from_offset: at,
                to: name.clone(),
                to_offset: 0,
                len: shape.iter().product(),
            })
            .collect();
        dit.copy_weights_from(self.optimizer.set(), &copies)
    }

    /// The rows of the next batch, moving to the next epoch when this one is used up.
    fn next_batch(&mut self, data: &dyn TrainingData) -> Result<Vec<usize>, ModelError> {
        loop {
            let keys = data.shape_keys();
            // A batch needs equal sizes; with batch_size > 1 a shape group's remainder waits
            // for the next epoch (in another order) rather than forming a short batch.
            let batches = crate::data::batches(
                &keys,
                self.settings.batch_size,
                self.settings.seed,
                self.state.epoch,
                self.settings.batch_size > 1,
            );
            if batches.is_empty() {
                return Err(ModelError::new(format!(
                    "no batch of {} rows with equal image sizes can be formed from the {} rows",
                    self.settings.batch_size,
                    data.len()
                )));
            }
            if let Some(rows) = batches.get(self.state.batch_in_epoch as usize) {
                self.state.batch_in_epoch += 1;
                return Ok(rows.clone());
            }
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
        }
    }

    /// Writes a resumable checkpoint into `out` (see [`checkpoint::save`]).
    pub fn save_checkpoint(&self, out: &Path) -> Result<PathBuf, ModelError> {
        let master = self.optimizer.master()?;
        let moments = self.optimizer.state()?;
        checkpoint::save(out, &self.layout, &master, &moments, &self.state)
    }

    /// Continues from checkpoint `dir`: the master values go into `dit` too.
    pub fn resume(&mut self, dit: &mut QwenImageDit, dir: &Path) -> Result<(), ModelError> {
        let ckpt = checkpoint::load(dir, &self.layout)?;
        if ckpt.state.fingerprint != self.settings.fingerprint() {
            return Err(ModelError::new(format!(
                "{}: the checkpoint was made with other settings; a resumed run must keep them.\n  checkpoint: {}\n  now:        {}",
                dir.display(),
                ckpt.state.fingerprint,
                self.settings.fingerprint()
            )));
        }
        self.optimizer.load(&ckpt.master, &ckpt.optimizer)?;
        self.state = ckpt.state;
        self.write_back(dit)
    }
}
