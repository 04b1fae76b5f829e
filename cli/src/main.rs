//! `qie`: compile, run and (later) train Qwen-Image-Edit models from one binary.

mod atomic;
mod cmd_backward;
mod cmd_bench;
mod cmd_bench_edit;
mod cmd_bench_train;
mod cmd_cache;
mod cmd_chat;
mod cmd_compare;
mod cmd_compile;
mod cmd_data;
mod cmd_edit;
mod cmd_eval;
mod cmd_forward;
mod cmd_forward_text;
mod cmd_forward_vae;
mod cmd_infer;
mod cmd_kernels;
mod cmd_lora;
mod cmd_train;
mod eval_run;
mod image_out;
mod kernels_table;
mod model_args;
mod numeric_args;
mod pipeline_args;
mod progress;
mod report;
mod session;
mod shapes_arg;
mod sweep;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "qie",
    version,
    about = "Qwen-Image-Edit runtime: model DSL, compiler and CPU/GPU execution"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Edit images with an instruction (one shot, or --interactive for several turns).
    Edit(Box<cmd_edit::EditArgs>),
    /// Batch edits over a dataset (JSON/JSONL rows with prompt and edit_image).
    Infer(Box<cmd_infer::InferArgs>),
    /// Compile a .qie model for given input shapes and print the IR, fusion groups and memory plan.
    Compile(cmd_compile::CompileArgs),
    /// Run one model component on tensors from a safetensors file (for parity checks with PyTorch).
    #[command(subcommand)]
    Forward(cmd_forward::ForwardCommand),
    /// Fine-tune the DiT (LoRA, full, DSL variant) from a `qie cache` folder.
    Train(Box<cmd_train::TrainArgs>),
    /// Gradients of one training step (with a LoRA) from tensors in safetensors files, for parity
    /// checks with PyTorch.
    #[command(subcommand)]
    Backward(cmd_backward::BackwardCommand),
    /// Time a model at real size with random weights.
    #[command(subcommand)]
    Bench(cmd_bench::BenchCommand),
    /// Export every generated CUDA kernel of a model, or time an export on a GPU.
    #[command(subcommand)]
    Kernels(cmd_kernels::KernelsCommand),
    /// LoRA files: convert between the peft/diffusers, DiffSynth, kohya and ComfyUI layouts.
    #[command(subcommand)]
    Lora(cmd_lora::LoraCommand),
    /// Score predictions against a dataset's ground truth (L1, L2, PSNR, SSIM, background-only
    /// variants, DINO, CLIP-I) into eval.json + eval.csv.
    Eval(Box<cmd_eval::EvalArgs>),
    /// Compare several runs' results on one dataset: an offline HTML report with tables,
    /// plots and a gallery, plus summary.md and summary.csv.
    Compare(Box<cmd_compare::CompareArgs>),
    /// Encode a training dataset once (VAE latents, prompt embeddings) for `qie train`.
    Cache(Box<cmd_cache::CacheArgs>),
    /// Training data: `qie data check DATA` reads, checks and summarises a dataset.
    #[command(subcommand)]
    Data(cmd_data::DataCommand),
    /// List the compute backends compiled in and the devices found.
    Devices,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Edit(args) => cmd_edit::run(*args),
        Command::Infer(args) => cmd_infer::run(*args),
        Command::Compile(args) => cmd_compile::run(args),
        Command::Forward(cmd) => cmd_forward::run(cmd),
        Command::Train(args) => cmd_train::run(*args),
        Command::Backward(cmd) => cmd_backward::run(cmd),
        Command::Bench(cmd) => cmd_bench::run(cmd),
        Command::Kernels(cmd) => cmd_kernels::run(cmd),
        Command::Lora(cmd) => cmd_lora::run(cmd),
        Command::Cache(args) => cmd_cache::run(*args),
        Command::Eval(args) => cmd_eval::run(*args),
        Command::Compare(args) => cmd_compare::run(*args),
        Command::Data(cmd) => cmd_data::run(cmd),
        Command::Devices => {
            devices();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // DSL errors arrive formatted rustc-style (`file:line:col: error: ...`).
            let first_line = message.lines().next().unwrap_or("");
            if first_line.contains(": error: ") {
                eprintln!("{message}");
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `qie devices`: the backends compiled in, then the devices found (or why there is none).
fn devices() {
    println!("{}", qie_runtime::device::device_report());
}

/// Writes to stdout; a closed pipe (`qie compile ... | head`) is not an error.
pub fn write_stdout(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing to stdout: {e}")),
    }
}
