//! `qie lora convert`: rewrites a LoRA file in another tool's key layout (same update).

use clap::{Args, Subcommand};
use qie_models::lora::export::adapter_from_file;
use qie_models::lora::resolve::{released_dit_config, ModuleResolver};
use qie_models::lora::{write_adapter, LoraFile, LoraFormat};
use qie_models::qwen_image::DitConfig;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Convert a LoRA between the peft/diffusers, DiffSynth, kohya and ComfyUI layouts.
    Convert(ConvertArgs),
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The LoRA file (any supported layout; detected from its keys).
    pub input: PathBuf,
    /// Target layout: peft (diffusers), diffsynth, kohya, comfyui.
    #[arg(long = "to")]
    pub to: String,
    /// Where to write the converted file.
    #[arg(long)]
    pub out: PathBuf,
    /// A transformer/ (or pipeline) folder whose module names resolve kohya's flattened names;
    /// default: the released Qwen-Image-Edit transformer config.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn run(cmd: LoraCommand) -> Result<(), String> {
    match cmd {
        LoraCommand::Convert(args) => convert(args),
    }
}

fn convert(args: ConvertArgs) -> Result<(), String> {
    let format: LoraFormat = args.to.parse().map_err(|e| format!("--to: {e}"))?;
    if args.out == args.input {
        return Err("--out must differ from the input file".into());
    }
    let file = LoraFile::load(&args.input).map_err(|e| e.to_string())?;
    let config = match &args.model {
        Some(dir) => {
            let transformer = if dir.join("transformer").is_dir() {
                dir.join("transformer")
            } else {
                dir.clone()
            };
            DitConfig::load(&transformer.join("config.json")).map_err(|e| e.to_string())?
        }
        None => released_dit_config(),
    };
    let resolver = ModuleResolver::for_config(&config).map_err(|e| e.to_string())?;
    let (modules, adapter) =
        adapter_from_file(&file, &|n| resolver.resolve(n)).map_err(|e| e.to_string())?;
    write_adapter(&args.out, &modules, &adapter, format).map_err(|e| e.to_string())?;
    eprintln!(
        "{} ({}, {} modules, rank {}, alpha {}) -> {} ({format})",
        args.input.display(),
        file.format,
        modules.len(),
        adapter.rank,
        adapter.alpha,
        args.out.display()
    );
    Ok(())
}
