//! `qie cache`: encodes a training dataset once (target and input latents, prompt embeddings) so
//! training never runs the VAE or the text encoder. Bad rows stop the run before the model loads
//! unless `--skip-bad-rows`; `--resume` continues an interrupted cache; `--shard i/n` encodes rows
//! i mod n into the same folder (the shard manifests merge on open, or `--merge` writes one).

use crate::cmd_forward::{make_backend, DTypeArg};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use qie_models::cache::manifest::write_manifest;
use qie_models::cache::{plan_cache, Cache, CacheJob, CacheSettings, ModelIdentity, Shard};
use qie_models::data::SizeRule;
use qie_models::hub::resolve_model;
use qie_models::pipeline::{EditEncoder, Flavour};
use qie_models::preprocess::ImageBackend;
use qie_models::qwen25vl::PositionMode;
use qie_models::{ModelOptions, WeightPrecision};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct CacheArgs {
    /// A diffusers-layout folder or hub id (only the VAE and the text encoder are loaded).
    #[arg(long, required_unless_present = "merge")]
    pub model: Option<String>,
    /// Training dataset: JSON array, JSONL or metadata.csv (see `qie data check`).
    #[arg(long, required_unless_present = "merge")]
    pub dataset: Option<PathBuf>,
    /// Cache folder: `rows/*.safetensors` and `manifest.json`.
    #[arg(long, required_unless_present = "merge")]
    pub out: Option<PathBuf>,
    /// The most pixels a training image may have after resizing (default: the VAE area).
    #[arg(long)]
    pub max_pixels: Option<usize>,
    /// Snap each image to the nearest aspect-ratio bucket (centre crop) so mixed sizes batch.
    #[arg(long)]
    pub buckets: bool,
    /// Compute device: cpu, cuda or cuda:N; `QIE_DEVICE` sets the default.
    #[arg(long, env = "QIE_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Encoder precision (default: bf16 on CUDA, f32 on the CPU); tensors are stored as f32.
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Continue a cache in --out: rows whose files are complete are kept.
    #[arg(long)]
    pub resume: bool,
    /// Encode only rows with index % n == i, writing manifest.shard-i-of-n.json.
    #[arg(long, value_parser = shard)]
    pub shard: Option<Shard>,
    /// Record bad rows in the manifest and cache the others (default: stop at any bad row).
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Pixel area each image is VAE-encoded at (default: the checkpoint's 1024²; parity tests).
    #[arg(long)]
    pub vae_area: Option<usize>,
    /// Pixel area the VL model sees each input at (default: the flavour's; parity tests).
    #[arg(long)]
    pub vl_area: Option<usize>,
    /// 1-D RoPE positions in the VL model (diffusers 0.42.1 + transformers 5.x), as `qie edit`.
    #[arg(long)]
    pub sequential_positions: bool,
    /// Resize the VL images with PIL instead of torchvision, as `qie edit`.
    #[arg(long)]
    pub pil_vl_resize: bool,
    /// Merge the shard manifests in this cache folder into one manifest.json and exit.
    #[arg(long, conflicts_with_all = ["model", "dataset", "out"])]
    pub merge: Option<PathBuf>,
}

fn shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}`: expected i/n, e.g. 0/4"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{s}`: expected i/n with whole numbers"))
    };
    let (index, count) = (parse(i)?, parse(n)?);
    if count == 0 || index >= count {
        return Err(format!("`{s}`: need 0 <= i < n"));
    }
    Ok(Shard { index, count })
}

pub fn run(args: CacheArgs) -> Result<(), String> {
    if let Some(dir) = &args.merge {
        return merge(dir);
    }
    let (model, dataset, out) = match (&args.model, &args.dataset, &args.out) {
        (Some(m), Some(d), Some(o)) => (m.clone(), d.clone(), o.clone()),
        _ => return Err("--model, --dataset and --out are required".into()),
    };
    for (name, v) in [
        ("--max-pixels", args.max_pixels),
        ("--vae-area", args.vae_area),
        ("--vl-area", args.vl_area),
    ] {
        if v == Some(0) {
            return Err(format!("{name} must be positive"));
        }
    }
    let paths = resolve_model(&model).map_err(|e| e.to_string())?;
    let flavour = Flavour::from_class_name(&paths.pipeline_class).map_err(|e| e.to_string())?;
    let dtype = args.dtype.unwrap_or(if args.device == "cpu" {
        DTypeArg::F32
    } else {
        DTypeArg::Bf16
    });
    let settings = CacheSettings {
        flavour,
        size: SizeRule {
            area: args.vae_area.unwrap_or(flavour.vae_area()),
            max_pixels: args.max_pixels,
            buckets: args.buckets,
        },
        vl_area: args.vl_area.unwrap_or(match flavour {
            // Edit's VL model sees the VAE-sized image.
            Flavour::Edit => args.vae_area.unwrap_or(flavour.vae_area()),
            Flavour::Plus => flavour.vl_area(),
        }),
        text_positions: if args.sequential_positions {
            "sequential"
        } else {
            "multimodal"
        }
        .into(),
        vl_resize: if args.pil_vl_resize {
            "pil"
        } else {
            "torchvision"
        }
        .into(),
        precision: match dtype {
            DTypeArg::F32 => "f32",
            DTypeArg::Bf16 => "bf16",
        }
        .into(),
    };
    let job = CacheJob {
        dataset: dataset.clone(),
        out: out.clone(),
        model: ModelIdentity::of_paths(&paths).map_err(|e| e.to_string())?,
        settings,
        resume: args.resume,
        shard: args.shard,
        skip_bad_rows: args.skip_bad_rows,
    };
    let plan = plan_cache(job).map_err(|e| e.to_string())?;
    eprintln!(
        "{}: {} rows for this cache, {} already done, {} to encode",
        dataset.display(),
        plan.rows_in_shard(),
        plan.reused,
        plan.remaining()
    );
    let report = if plan.remaining() == 0 {
        plan.finish()
    } else {
        let start = Instant::now();
        let options = ModelOptions {
            backend: make_backend(&args.device, dtype)?,
            precision: match dtype {
                DTypeArg::F32 => WeightPrecision::F32,
                DTypeArg::Bf16 => WeightPrecision::Bf16,
            },
            ..ModelOptions::default()
        };
        let mut encoder = EditEncoder::load(&paths, &options).map_err(|e| e.to_string())?;
        if args.sequential_positions {
            encoder.set_text_positions(PositionMode::Sequential);
        }
        if args.pil_vl_resize {
            encoder.set_vl_resize(ImageBackend::Pil);
        }
        eprintln!(
            "loaded the encoders of {model} on {} in {:.1} s",
            args.device,
            start.elapsed().as_secs_f64()
        );
        let bar = row_bar(plan.remaining());
        let report = plan.run(&encoder, &mut |done, _, source| {
            bar.set_position(done as u64);
            bar.set_message(source.to_string());
        });
        bar.finish_and_clear();
        report
    }
    .map_err(|e| e.to_string())?;
    for s in &report.skipped {
        eprintln!("skipped {}: {}", s.source, s.reason);
    }
    eprintln!(
        "cached {} rows ({} reused, {} skipped): {}",
        report.written + report.reused,
        report.reused,
        report.skipped.len(),
        report.manifest.display()
    );
    Ok(())
}

fn row_bar(rows: usize) -> ProgressBar {
    let bar = ProgressBar::new(rows as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows [{elapsed} < {eta}] {msg}")
            .expect("valid template"),
    );
    bar
}

fn merge(dir: &std::path::Path) -> Result<(), String> {
    if dir.join("manifest.json").exists() {
        return Err(format!(
            "{}: manifest.json already exists (the cache is not sharded, or already merged)",
            dir.display()
        ));
    }
    let cache = Cache::open(dir).map_err(|e| e.to_string())?;
    let path = write_manifest(dir, cache.manifest()).map_err(|e| e.to_string())?;
    eprintln!("merged {} rows into {}", cache.len(), path.display());
    Ok(())
}
