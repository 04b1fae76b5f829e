//! `qie train`: LoRA / full / DSL-variant fine-tuning of the DiT from a `qie cache` folder, from a
//! TOML file, flags, or both (flags override the file). Ctrl-C writes a resumable checkpoint;
//! `--resume OUT` continues a run exactly where it stopped.

use crate::cmd_forward::{make_backend, DTypeArg};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qie_models::train::config::{LoraSection, TrainConfig, ValidationSection};
use qie_models::train::run::TrainRun;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args)]
pub struct TrainArgs {
    /// train.toml (see docs/training.md); flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this output folder (its config.toml unless --config is given) from
    /// its newest checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Pipeline folder (or hub id) the cache was made with.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A `.qie` DiT variant; its new parameters are trained.
    #[arg(long)]
    pub variant: Option<PathBuf>,
    /// A `qie cache` folder.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train a LoRA of this rank (default targets: DiffSynth-Studio's twelve).
    #[arg(long)]
    pub lora_rank: Option<usize>,
    #[arg(long, value_parser = crate::numeric_args::finite_f64)]
    pub lora_alpha: Option<f64>,
    /// Comma-separated peft target patterns (`to_q,to_k,img_mlp.net.2`).
    #[arg(long)]
    pub lora_targets: Option<String>,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long, value_parser = crate::numeric_args::positive_f64)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub grad_accum: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda or cuda:N.
    #[arg(long, env = "QIE_DEVICE")]
    pub device: Option<String>,
    /// Storage of the frozen base on the GPU: bf16 (default) or f32 (exact checks).
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Steps between resumable checkpoints (0: only at the end).
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Recompute each transformer block in the backward pass (less memory, about one more
    /// forward of compute); DiffSynth's --use_gradient_checkpointing.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// LoRA file layout: peft (diffusers), diffsynth, kohya, comfyui.
    #[arg(long)]
    pub export_format: Option<String>,
    /// Validation edits every N steps (and after the last) with the weights being trained:
    /// images under OUT/validation/step-<step>/ and in TensorBoard.
    #[arg(long, value_name = "N")]
    pub validate_every: Option<u64>,
    /// Comma-separated cache rows (0-based) the validation edits (default 0).
    #[arg(long, value_name = "ROWS")]
    pub validate_rows: Option<String>,
}

pub fn run(args: TrainArgs) -> Result<(), String> {
    let config = resolve_config(&args)?;
    let dtype = match config.model.dtype.as_str() {
        "f32" => DTypeArg::F32,
        _ => DTypeArg::Bf16,
    };
    let backend = make_backend(&config.model.device, dtype)?;
    let resume = args.resume.clone();
    let validates = config.validation.is_some();
    let mut run =
        TrainRun::prepare(config, backend, resume.as_deref()).map_err(|e| e.to_string())?;
    let s = run.summary();
    eprintln!(
        "training {} values: {} LoRA tensors, {} full, {} new; steps {} -> {}",
        s.values,
        s.lora_tensors,
        s.full_tensors,
        s.new_tensors,
        run.step(),
        run.total_steps()
    );
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // A second handler cannot be installed (tests run several in one process): ignore.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let bar = ProgressBar::new(run.total_steps());
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed} < {eta}, {per_sec}] {msg}")
            .expect("valid template"),
    );
    bar.set_position(run.step());
    while !run.is_done() {
        if run.validates_after(run.step() + 1) {
            bar.set_message("training, then validation edits");
        }
        let r = run.step_once().map_err(|e| e.to_string())?;
        bar.set_position(r.step);
        bar.set_message(format!(
            "loss {:.4} lr {:.2e} |g| {:.3}",
            r.loss, r.lr, r.grad_norm
        ));
        if interrupted.load(Ordering::SeqCst) {
            let ckpt = run.save_checkpoint().map_err(|e| e.to_string())?;
            bar.abandon();
            return Err(format!(
                "interrupted after step {}: checkpoint {}; continue with `qie train --resume {}`",
                r.step,
                ckpt.display(),
                run.out_dir().display()
            ));
        }
    }
    bar.finish_and_clear();
    let out = run.out_dir().to_path_buf();
    let written = run.finish().map_err(|e| e.to_string())?;
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    eprintln!("train.jsonl and tensorboard/ in {}", out.display());
    if validates {
        eprintln!("validation edits in {}", out.join("validation").display());
    }
    Ok(())
}

fn resolve_config(args: &TrainArgs) -> Result<TrainConfig, String> {
    let mut c = match (&args.config, &args.resume) {
        (Some(path), _) => TrainConfig::load(path)?,
        (None, Some(dir)) => {
            let path = dir.join("config.toml");
            if !path.exists() {
                return Err(format!(
                    "--resume {}: no config.toml there (give --config)",
                    dir.display()
                ));
            }
            TrainConfig::load(&path)?
        }
        (None, None) => TrainConfig::default(),
    };
    if let Some(v) = &args.model {
        c.model.path = Some(v.clone());
    }
    if let Some(v) = &args.variant {
        c.model.variant = Some(v.clone());
    }
    if let Some(v) = &args.cache {
        c.data.cache = Some(v.clone());
    }
    if let Some(v) = &args.out {
        c.output.dir = Some(v.clone());
    }
    if args.resume.is_some() && c.output.dir.is_none() {
        c.output.dir = args.resume.clone();
    }
    if args.lora_rank.is_some() || args.lora_alpha.is_some() || args.lora_targets.is_some() {
        let lora = c.lora.get_or_insert_with(LoraSection::default);
        if let Some(r) = args.lora_rank {
            lora.rank = r;
        }
        if let Some(a) = args.lora_alpha {
            lora.alpha = Some(a);
        }
        if let Some(t) = &args.lora_targets {
            lora.targets = t
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
    }
    if let Some(v) = args.steps {
        c.train.steps = Some(v);
        c.train.epochs = None;
    }
    if let Some(v) = args.lr {
        c.train.lr = v;
    }
    if let Some(v) = args.batch_size {
        c.train.batch_size = v;
    }
    if let Some(v) = args.grad_accum {
        c.train.grad_accum = v;
    }
    if let Some(v) = args.seed {
        c.train.seed = v;
    }
    if let Some(v) = &args.device {
        c.model.device = v.clone();
    }
    if let Some(v) = args.dtype {
        c.model.dtype = match v {
            DTypeArg::F32 => "f32".into(),
            DTypeArg::Bf16 => "bf16".into(),
        };
    }
    if let Some(v) = args.save_every {
        c.output.save_every = v;
    }
    if args.gradient_checkpointing {
        c.train.gradient_checkpointing = true;
    }
    if let Some(v) = &args.export_format {
        c.output.export_format = v.clone();
    }
    if args.validate_every.is_some() || args.validate_rows.is_some() {
        let v = match (&mut c.validation, args.validate_every) {
            (Some(v), _) => v,
            (None, Some(every)) => c.validation.insert(ValidationSection::every(every)),
            (None, None) => {
                return Err(
                    "--validate-rows: give --validate-every N too (or a [validation] section)"
                        .into(),
                )
            }
        };
        if let Some(every) = args.validate_every {
            v.every = every;
        }
        if let Some(rows) = &args.validate_rows {
            v.rows = parse_rows(rows)?;
        }
    }
    c.validate()?;
    Ok(c)
}

/// `0,3` -> [0, 3].
fn parse_rows(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("--validate-rows: `{s}` is not a row number (0-based)"))
        })
        .collect()
}
