//! `train.toml`: everything a run needs, with defaults that follow DiffSynth-Studio's Qwen-Image
//! LoRA recipe. Command-line flags override the file; the resolved config is saved next to the
//! outputs so a run can be repeated from it alone.

use super::adamw::AdamWConfig;
use super::lr::LrSchedule;
use super::timesteps::TimestepScheme;
use super::trainer::LoopSettings;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The DiffSynth-Studio Qwen-Image-Edit LoRA targets (GUIDE section 5).
pub const DEFAULT_LORA_TARGETS: [&str; 12] = [
    "to_q",
    "to_k",
    "to_v",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_out.0",
    "to_add_out",
    "img_mlp.net.2",
    "img_mod.1",
    "txt_mlp.net.2",
    "txt_mod.1",
];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub train: TrainSection,
    /// LoRA adapters on the matching linear layers (absent: no LoRA).
    pub lora: Option<LoraSection>,
    /// Full fine-tuning of the weights whose names match (absent: none).
    pub full: Option<FullSection>,
    #[serde(default)]
    pub optimizer: AdamWConfig,
    #[serde(default)]
    pub schedule: LrSchedule,
    #[serde(default)]
    pub timesteps: TimestepScheme,
    pub validation: Option<ValidationSection>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A pipeline folder (with transformer/) or a transformer/ folder.
    pub path: Option<PathBuf>,
    /// A `.qie` architecture variant of the DiT; its new parameters train too.
    pub variant: Option<PathBuf>,
    /// cpu, cuda, cuda:N.
    #[serde(default = "default_device")]
    pub device: String,
    /// Storage of the frozen base on the GPU: bf16 (default) or f32.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Seed of the parameters the checkpoint lacks and the source creates from its
    /// initialisers (a variant's `param x[..] = normal(0.02);`, new LoRA factors): the same
    /// seed creates the same values. Default 0. A resumed run takes the trained values from
    /// its checkpoint whatever this says.
    #[serde(default)]
    pub init_seed: u64,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: None,
            variant: None,
            device: default_device(),
            dtype: default_dtype(),
            init_seed: 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A `qie cache` folder.
    pub cache: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub dir: Option<PathBuf>,
    /// Steps between resumable checkpoints (0: only at the end).
    #[serde(default = "default_save_every")]
    pub save_every: u64,
    /// Steps between log records.
    #[serde(default = "one")]
    pub log_every: u64,
    /// LoRA file layout: peft (diffusers), diffsynth, kohya, comfyui.
    #[serde(default = "default_export")]
    pub export_format: String,
}

impl Default for OutputSection {
    fn default() -> Self {
        OutputSection {
            dir: None,
            save_every: default_save_every(),
            log_every: 1,
            export_format: default_export(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps (or give `epochs`).
    pub steps: Option<u64>,
    pub epochs: Option<u64>,
    #[serde(default = "one_usize")]
    pub batch_size: usize,
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Global gradient-norm clip (none: no clipping).
    pub max_grad_norm: Option<f64>,
    #[serde(default)]
    pub seed: u64,
    /// Recompute each block in the backward pass instead of keeping its activations.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            steps: None,
            epochs: None,
            batch_size: 1,
            grad_accum: 1,
            lr: default_lr(),
            max_grad_norm: Some(1.0),
            seed: 0,
            gradient_checkpointing: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    #[serde(default = "default_rank")]
    pub rank: usize,
    /// Defaults to the rank (scale 1), as DiffSynth-Studio trains.
    pub alpha: Option<f64>,
    /// peft target_modules: a module matches when its name equals a target or ends with
    /// `.target`; `*` matches within a name.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

impl Default for LoraSection {
    fn default() -> Self {
        LoraSection {
            rank: default_rank(),
            alpha: None,
            targets: default_targets(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullSection {
    /// Weight-name patterns (`transformer_blocks.*.img_mod.1.weight`, `proj_out.*`).
    pub weights: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationSection {
    /// Steps between validations (and one after the last step).
    pub every: u64,
    /// Cache rows (0-based) whose prompt and control images are edited (default: row 0).
    #[serde(default = "first_row")]
    pub rows: Vec<usize>,
    /// Denoising steps of each validation edit.
    #[serde(default = "default_val_steps")]
    pub steps: usize,
    /// True CFG scale, with the negative prompt " " (1 or less: no CFG).
    #[serde(default = "default_cfg")]
    pub cfg: f32,
    /// Noise seed of every row's edit, the same at each validation so they compare.
    #[serde(default)]
    pub seed: u64,
}

impl ValidationSection {
    /// The defaults for a run that asks for validation with flags only.
    pub fn every(every: u64) -> ValidationSection {
        ValidationSection {
            every,
            rows: first_row(),
            steps: default_val_steps(),
            cfg: default_cfg(),
            seed: 0,
        }
    }

    /// Checks the values; errors name the `[validation]` key. Rows are checked against the
    /// cache when it is opened.
    pub fn check(&self) -> Result<(), String> {
        if self.every == 0 {
            return Err("[validation] every must be >= 1 (steps between validations)".into());
        }
        if self.rows.is_empty() {
            return Err("[validation] rows is empty: name at least one cache row (0-based)".into());
        }
        let max = crate::pipeline::EditSettings::MAX_STEPS;
        if self.steps == 0 || self.steps > max {
            return Err(format!(
                "[validation] steps {} is not in 1..={max} (denoising steps per edit)",
                self.steps
            ));
        }
        if !(self.cfg.is_finite() && self.cfg >= 0.0) {
            return Err(format!(
                "[validation] cfg {} is not a finite scale >= 0 (1 disables CFG)",
                self.cfg
            ));
        }
        Ok(())
    }
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "bf16".into()
}
fn default_save_every() -> u64 {
    500
}
fn default_export() -> String {
    "peft".into()
}
fn one() -> u64 {
    1
}
fn one_usize() -> usize {
    1
}
fn default_lr() -> f64 {
    1e-4
}
fn default_rank() -> usize {
    32
}
fn default_targets() -> Vec<String> {
    DEFAULT_LORA_TARGETS.map(String::from).to_vec()
}
fn first_row() -> Vec<usize> {
    vec![0]
}
fn default_val_steps() -> usize {
    20
}
fn default_cfg() -> f32 {
    4.0
}

impl TrainConfig {
    /// Reads a TOML file; errors name the file, line and key.
    pub fn load(path: &Path) -> Result<TrainConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut config: TrainConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        // Relative paths in the file are relative to the file.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.model.path,
            &mut config.model.variant,
            &mut config.data.cache,
            &mut config.output.dir,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config serialises")
    }

    /// Checks what can be checked before anything is loaded.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        if self.model.path.is_none() {
            return Err("no model: give --model or [model] path".into());
        }
        if self.data.cache.is_none() {
            return Err(
                "no training data: give --cache or [data] cache (a `qie cache` folder)".into(),
            );
        }
        if self.output.dir.is_none() {
            return Err("no output folder: give --out or [output] dir".into());
        }
        match (t.steps, t.epochs) {
            (None, None) => {
                return Err("give the length of the run: --steps or [train] steps / epochs".into())
            }
            (Some(_), Some(_)) => return Err("[train] steps and epochs are exclusive".into()),
            (Some(0), _) | (_, Some(0)) => return Err("[train] steps / epochs must be >= 1".into()),
            _ => {}
        }
        if t.batch_size == 0 || t.grad_accum == 0 {
            return Err("[train] batch_size and grad_accum must be >= 1".into());
        }
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return Err(format!("[train] lr {} must be > 0", t.lr));
        }
        if let Some(c) = t.max_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("[train] max_grad_norm {c} must be > 0"));
            }
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                return Err("[lora] rank must be >= 1".into());
            }
            if l.alpha.is_some_and(|a| !a.is_finite()) {
                return Err("[lora] alpha must be finite".into());
            }
            if l.targets.is_empty() {
                return Err("[lora] targets is empty".into());
            }
        }
        if self.lora.is_none() && self.full.is_none() && self.model.variant.is_none() {
            return Err(
                "nothing to train: add [lora] (or --lora-rank), [full] weights, or a [model] variant with new parameters"
                    .into(),
            );
        }
        if !matches!(self.model.dtype.as_str(), "bf16" | "f32") {
            return Err(format!(
                "[model] dtype `{}`: expected bf16 or f32",
                self.model.dtype
            ));
        }
        if let Some(v) = &self.validation {
            v.check()?;
        }
        self.optimizer.check()?;
        crate::train::TimestepSampler::new(&self.timesteps)?;
        Ok(())
    }

    /// The loop's settings for a dataset of `rows` rows.
    pub fn loop_settings(&self, batches_per_epoch: usize) -> LoopSettings {
        let t = &self.train;
        let per_step = t.grad_accum.max(1);
        let steps = t.steps.unwrap_or_else(|| {
            let epochs = t.epochs.unwrap_or(1);
            (epochs * batches_per_epoch as u64)
                .div_ceil(per_step as u64)
                .max(1)
        });
        LoopSettings {
            steps,
            batch_size: t.batch_size,
            grad_accum: t.grad_accum,
            lr: t.lr,
            schedule: self.schedule.clone(),
            optimizer: self.optimizer.clone(),
            max_grad_norm: t.max_grad_norm,
            seed: t.seed,
            timesteps: self.timesteps.clone(),
        }
    }
}

/// peft's target matching, with `*` as a wildcard: `name` equals `pattern` or ends with
/// `.pattern`.
pub fn matches_target(name: &str, pattern: &str) -> bool {
    if !pattern.contains('*') {
        return name == pattern || name.ends_with(&format!(".{pattern}"));
    }
    glob(name, pattern)
        || name
            .char_indices()
            .filter(|&(_, c)| c == '.')
            .any(|(i, _)| glob(&name[i + 1..], pattern))
}

/// `*` matches any run of characters (including dots).
fn glob(text: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_fills_in_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.toml");
        std::fs::write(
            &path,
            r#"
[model]
path = "model"
[data]
cache = "cache"
[output]
dir = "out"
[train]
steps = 100
[lora]
rank = 16
[schedule]
schedule = "cosine"
warmup_steps = 10
[timesteps]
scheme = "shift"
"#,
        )
        .unwrap();
        let c = TrainConfig::load(&path).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.model.path.as_deref(),
            Some(dir.path().join("model").as_path())
        );
        let lora = c.lora.as_ref().unwrap();
        assert_eq!((lora.rank, lora.targets.len()), (16, 12));
        assert_eq!(c.optimizer, AdamWConfig::default());
        assert_eq!(
            c.timesteps,
            TimestepScheme::Shift {
                shift: 2.2,
                sigmoid_scale: 1.0
            }
        );
        assert_eq!(
            c.schedule,
            LrSchedule::Cosine {
                warmup_steps: 10,
                min_lr: 0.0
            }
        );
        // The resolved config reads back to itself.
        let again: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn mistakes_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[train]\nstep = 3\n").unwrap();
        let err = TrainConfig::load(&path).unwrap_err();
        assert!(err.contains("step") && err.contains("t.toml"), "{err}");
        std::fs::write(&path, "[train]\nlr = \"fast\"\n").unwrap();
        let err = TrainConfig::load(&path).unwrap_err();
        assert!(err.contains("lr") && err.contains("line 2"), "{err}");
        let mut c = TrainConfig::default();
        assert!(c.validate().unwrap_err().contains("--model"));
        c.model.path = Some("m".into());
        c.data.cache = Some("c".into());
        c.output.dir = Some("o".into());
        assert!(c.validate().unwrap_err().contains("--steps"));
        c.train.steps = Some(3);
        assert!(c.validate().unwrap_err().contains("nothing to train"));
        c.lora = Some(LoraSection::default());
        c.validate().unwrap();
    }

    #[test]
    fn validation_and_init_seed_read_with_their_defaults() {
        let mut c: TrainConfig = toml::from_str(
            "[model]\npath = \"m\"\ninit_seed = 9\n[data]\ncache = \"c\"\n[output]\ndir = \"o\"\n\
             [train]\nsteps = 3\n[lora]\n[validation]\nevery = 50\n",
        )
        .unwrap();
        assert_eq!(c.model.init_seed, 9);
        assert_eq!(c.validation, Some(ValidationSection::every(50)));
        let v = c.validation.as_ref().unwrap();
        assert_eq!(
            (v.rows.as_slice(), v.steps, v.cfg, v.seed),
            (&[0][..], 20, 4.0, 0)
        );
        c.validate().unwrap();
        let again: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(again, c);
        assert_eq!(TrainConfig::default().model.init_seed, 0);
        c.validation.as_mut().unwrap().cfg = f32::INFINITY;
        assert!(c.validate().unwrap_err().contains("[validation] cfg"));
    }

    #[test]
    fn peft_target_matching() {
        let m = "transformer_blocks.0.attn.to_q";
        assert!(matches_target(m, "to_q"));
        assert!(matches_target(m, "attn.to_q"));
        assert!(!matches_target(m, "q"));
        assert!(!matches_target(
            "transformer_blocks.0.attn.add_q_proj",
            "to_q"
        ));
        assert!(matches_target(m, "transformer_blocks.*.attn.to_q"));
        assert!(matches_target(
            "transformer_blocks.3.img_mlp.net.2",
            "img_mlp.*"
        ));
        assert!(!matches_target(
            "transformer_blocks.3.txt_mlp.net.2",
            "img_mlp.*"
        ));
    }
}
