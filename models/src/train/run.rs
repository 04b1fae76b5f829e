//! One `qie train` run: the model (with the LoRA adapter and/or a DSL variant layered on it) and
//! its trainable set, the cache, the loop, and what lands in the output folder: checkpoints,
//! `train.jsonl`, TensorBoard events, validation edits, the resolved config and the exported
//! adapter.

use super::checkpoint::find_latest;
use super::config::{matches_target, TrainConfig};
use super::log::{StepLog, StepRecord};
use super::trainer::{StepReport, Trainer};
use super::validation::{Validation, ValidationImage};
use crate::cache::{Cache, ModelIdentity};
use crate::hub::resolve_model;
use crate::lora::export::{write_adapter, AdapterConfig, AdapterModule, DIFFUSERS_FILE};
use crate::lora::LoraFormat;
use crate::qwen_image::{DitOptions, QwenImageDit};
use crate::tensorboard::EventWriter;
use crate::{ModelError, ModelOptions, WeightPrecision};
use qie_runtime::weights::save_safetensors;
use qie_runtime::Backend;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TrainRun {
    config: TrainConfig,
    out: PathBuf,
    dit: QwenImageDit,
    cache: Cache,
    trainer: Trainer,
    log: StepLog,
    events: EventWriter,
    validation: Option<Validation>,
    total_steps: u64,
}

/// What the run trains, for the start-up summary.
pub struct TrainableSummary {
    pub lora_tensors: usize,
    pub full_tensors: usize,
    pub new_tensors: usize,
    pub values: usize,
}

impl TrainRun {
    /// Loads everything; with `resume`, continues from the newest checkpoint in that folder.
    pub fn prepare(
        config: TrainConfig,
        backend: Option<Arc<dyn Backend>>,
        resume: Option<&Path>,
    ) -> Result<TrainRun, ModelError> {
        config.validate().map_err(ModelError::new)?;
        let model = config.model.path.clone().expect("validated");
        let out = config.output.dir.clone().expect("validated");
        let paths = resolve_model(&model.to_string_lossy())?;
        let cache = Cache::open(config.data.cache.as_ref().expect("validated"))?;
        cache.check_compatible(&ModelIdentity::of_paths(&paths)?)?;
        if cache.is_empty() {
            return Err(ModelError::new(format!(
                "{}: the cache holds no rows",
                cache.dir().display()
            )));
        }

        let on_gpu = backend.is_some();
        // The frozen base in bf16 on the GPU; the CPU reference computes in f32.
        let precision = if on_gpu && config.model.dtype == "bf16" {
            WeightPrecision::Bf16
        } else {
            WeightPrecision::F32
        };
        // The encoders validation edits with (the DiT is the one being trained).
        let validation = match &config.validation {
            Some(section) => {
                let options = ModelOptions {
                    backend: backend.clone(),
                    precision,
                    ..ModelOptions::default()
                };
                Some(Validation::prepare(section, &cache, &paths, &options)?)
            }
            None => None,
        };
        let options = DitOptions {
            backend: backend.clone(),
            precision,
            source: config.model.variant.clone(),
            init_seed: config.model.init_seed,
            ..DitOptions::default()
        };
        let adapter = config.lora.as_ref().map(|l| {
            json!({
                "rank": l.rank,
                "alpha": l.alpha.unwrap_or(l.rank as f64),
                "targets": l.targets,
            })
        });
        let mut dit =
            QwenImageDit::load_with_adapter(&paths.transformer, &options, adapter.as_ref())?;
        dit.set_gradient_checkpointing(config.train.gradient_checkpointing);
        let trainable = select_trainable(&dit, &config)?;
        let keys = cache.shape_keys();
        let per_epoch = crate::data::batches(
            &keys,
            config.train.batch_size,
            config.train.seed,
            0,
            config.train.batch_size > 1,
        )
        .len();
        if per_epoch == 0 {
            return Err(ModelError::new(format!(
                "no batch of {} rows with equal image sizes can be formed from the cache's {} rows (cache with --buckets, or lower the batch size)",
                config.train.batch_size,
                cache.len()
            )));
        }
        let settings = config.loop_settings(per_epoch);
        let total_steps = settings.steps;
        let mut trainer = Trainer::new(&dit, trainable, settings)?;
        if let Some(dir) = resume {
            let ckpt = find_latest(dir)?;
            trainer.resume(&mut dit, &ckpt)?;
        }
        std::fs::create_dir_all(&out)
            .map_err(|e| ModelError::new(format!("{}: {e}", out.display())))?;
        let resolved = out.join("config.toml");
        std::fs::write(&resolved, config.to_toml())
            .map_err(|e| ModelError::new(format!("{}: {e}", resolved.display())))?;
        let log = StepLog::open(&out, trainer.step())?;
        let events = EventWriter::create(&out.join("tensorboard"))?;
        Ok(TrainRun {
            config,
            out,
            dit,
            cache,
            trainer,
            log,
            events,
            validation,
            total_steps,
        })
    }

    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    pub fn step(&self) -> u64 {
        self.trainer.step()
    }

    pub fn is_done(&self) -> bool {
        self.trainer.step() >= self.total_steps
    }

    pub fn out_dir(&self) -> &Path {
        &self.out
    }

    pub fn summary(&self) -> TrainableSummary {
        let layout = self.trainer.layout();
        let created = self.dit.created_weights();
        let is_lora = |n: &str| n.contains(".lora_A.") || n.contains(".lora_B.");
        TrainableSummary {
            lora_tensors: layout.iter().filter(|(n, _)| is_lora(n)).count(),
            new_tensors: layout
                .iter()
                .filter(|(n, _)| !is_lora(n) && created.contains(n))
                .count(),
            full_tensors: layout
                .iter()
                .filter(|(n, _)| !is_lora(n) && !created.contains(n))
                .count(),
            values: self.trainer.trainable_values(),
        }
    }

    /// One optimizer step, logged; a checkpoint and validation edits when `save_every` and
    /// `[validation] every` say so (validation also after the last step).
    pub fn step_once(&mut self) -> Result<StepReport, ModelError> {
        let report = self.trainer.train_step(&mut self.dit, &self.cache)?;
        let every = self.config.output.log_every.max(1);
        if report.step % every == 0 || report.step == self.total_steps {
            self.log.append(&StepRecord {
                step: report.step,
                loss: report.loss,
                lr: report.lr,
                grad_norm: report.grad_norm,
                step_s: report.step_s,
                samples: report.samples,
                epoch: report.epoch,
            })?;
            let s = report.step as i64;
            self.events.scalar("train/loss", s, report.loss as f32)?;
            self.events.scalar("train/lr", s, report.lr as f32)?;
            self.events
                .scalar("train/grad_norm", s, report.grad_norm as f32)?;
            self.events
                .scalar("train/step_s", s, report.step_s as f32)?;
            self.events.flush()?;
        }
        let save = self.config.output.save_every;
        if save > 0 && report.step % save == 0 && report.step < self.total_steps {
            self.save_checkpoint()?;
        }
        // After the checkpoint, so a failing edit (out of memory) loses no training.
        if self.validates_after(report.step) {
            self.validate()?;
        }
        Ok(report)
    }

    /// Whether step `step` (1-based) is followed by validation edits.
    pub fn validates_after(&self, step: u64) -> bool {
        self.validation
            .as_ref()
            .is_some_and(|v| v.is_due(step, self.total_steps))
    }

    /// The validation edits with the weights as they are now, written under
    /// `validation/step-<step>/` and to TensorBoard; nothing without a `[validation]` section.
    pub fn validate(&mut self) -> Result<Vec<ValidationImage>, ModelError> {
        match &self.validation {
            Some(v) => v.run(&self.dit, self.trainer.step(), &self.out, &mut self.events),
            None => Ok(Vec::new()),
        }
    }

    /// A resumable checkpoint now (also what Ctrl-C writes).
    pub fn save_checkpoint(&mut self) -> Result<PathBuf, ModelError> {
        self.events.flush()?;
        self.trainer.save_checkpoint(&self.out)
    }

    /// The final checkpoint and the trained tensors in the formats users load: the LoRA in the
    /// configured layout (`pytorch_lora_weights.safetensors` for peft/diffusers) and the full /
    /// new tensors under the checkpoint's own names (`trained_weights.safetensors`).
    pub fn finish(mut self) -> Result<Vec<PathBuf>, ModelError> {
        let mut written = vec![self.save_checkpoint()?];
        let tensors = self.trainer.tensors()?;
        let is_lora = |n: &str| n.contains(".lora_A.") || n.contains(".lora_B.");
        if let Some(lora) = &self.config.lora {
            let format: LoraFormat = self
                .config
                .output
                .export_format
                .parse()
                .map_err(ModelError::new)?;
            let mut modules: Vec<AdapterModule> = Vec::new();
            for (name, shape, values) in &tensors {
                let Some(module) = name.strip_suffix(".lora_A.weight") else {
                    continue;
                };
                let up_name = format!("{module}.lora_B.weight");
                let (_, up_shape, up) = tensors
                    .iter()
                    .find(|(n, _, _)| *n == up_name)
                    .ok_or_else(|| ModelError::new(format!("`{name}` has no `{up_name}`")))?;
                modules.push(AdapterModule {
                    module: module.to_string(),
                    down: values.to_vec(),
                    up: up.to_vec(),
                    rank: shape[0],
                    in_features: shape[1],
                    out_features: up_shape[0],
                    alpha: lora.alpha.unwrap_or(lora.rank as f64) as f32,
                });
            }
            let file = match format {
                LoraFormat::Peft => DIFFUSERS_FILE.to_string(),
                other => format!("lora_{}.safetensors", format!("{other:?}").to_lowercase()),
            };
            let path = self.out.join(file);
            let adapter = AdapterConfig {
                rank: lora.rank,
                alpha: lora.alpha.unwrap_or(lora.rank as f64) as f32,
                targets: lora.targets.clone(),
            };
            write_adapter(&path, &modules, &adapter, format)?;
            written.push(path);
        }
        let others: Vec<(&str, Vec<usize>, &[f32])> = tensors
            .iter()
            .filter(|(n, _, _)| !is_lora(n))
            .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
            .collect();
        if !others.is_empty() {
            let path = self.out.join("trained_weights.safetensors");
            save_safetensors(&path, &others).map_err(|e| ModelError::new(e.to_string()))?;
            written.push(path);
        }
        Ok(written)
    }
}

/// LoRA factors, the variant's new parameters, and the full fine-tune's matches.
fn select_trainable(dit: &QwenImageDit, config: &TrainConfig) -> Result<Vec<String>, ModelError> {
    let created = dit.created_weights();
    let is_lora = |n: &str| n.contains(".lora_A.") || n.contains(".lora_B.");
    let mut names = Vec::new();
    for (name, _) in dit.model_weights() {
        let lora = config.lora.is_some() && is_lora(name);
        let new = config.model.variant.is_some() && !is_lora(name) && created.contains(name);
        let full = config
            .full
            .as_ref()
            .is_some_and(|f| f.weights.iter().any(|p| matches_target(name, p)));
        if lora || new || full {
            names.push(name.clone());
        }
    }
    if config.lora.is_some() && !names.iter().any(|n| is_lora(n)) {
        return Err(ModelError::new(format!(
            "[lora] targets {:?} match no linear layer of the DiT",
            config.lora.as_ref().map(|l| &l.targets)
        )));
    }
    if let Some(f) = &config.full {
        for p in &f.weights {
            if !dit
                .model_weights()
                .iter()
                .any(|(n, _)| matches_target(n, p))
            {
                return Err(ModelError::new(format!(
                    "[full] weights pattern `{p}` matches no weight of the DiT"
                )));
            }
        }
    }
    if names.is_empty() {
        return Err(ModelError::new(
            "nothing to train: the variant declares no new parameters and no [lora] / [full] is set",
        ));
    }
    Ok(names)
}
