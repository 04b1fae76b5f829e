//! `qie kernels export` / `qie kernels bench`: every generated CUDA kernel of a model written
//! out with a manifest, then timed one by one on a GPU against the card's ceilings
//! (docs/kernels.md).

use crate::cmd_forward::{check_device, DTypeArg};
use crate::model_args::ModelArgs;
use clap::{Args, Subcommand};
use qie_runtime::cuda::export::{build_manifest, ExportInfo};
use qie_runtime::cuda::export_dir::{check_out_dir, write_export};
use qie_runtime::cuda::kernel_bench::{bench_export, BenchOptions, BENCH_FILE};
use qie_runtime::cuda::manifest::Manifest;
use qie_runtime::cuda::{build_plan, CudaDevice};
use qie_runtime::CompileOptions;
use qie_runtime::{DeviceSpec, StorageMode};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KernelsCommand {
    /// Write every generated CUDA kernel of a model (standalone .cu, and .ptx when NVRTC is
    /// found) with manifest.json: launch shapes, parameters, bytes moved, FLOPs, launches per
    /// forward, and the library steps (GEMMs, attention). Needs no GPU.
    Export(ExportArgs),
    /// Time each kernel of an export alone on a GPU and print GB/s and TFLOP/s against the
    /// card's measured copy bandwidth and GEMM throughput; writes DIR/bench.json.
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Storage dtype of the CUDA plan (bf16: cuBLASLt + flash attention; f32: generic kernels).
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: DTypeArg,
    /// NVRTC architecture of the PTX (H100/H200: sm_90).
    #[arg(long, default_value = "sm_90")]
    pub arch: String,
    /// Output folder: created if missing; must be empty, or hold an earlier export with --force.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an earlier export in --out.
    #[arg(long)]
    pub force: bool,
    /// Write sources only, even when NVRTC is available.
    #[arg(long)]
    pub no_ptx: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    /// A folder written by `qie kernels export`.
    pub dir: PathBuf,
    /// CUDA device: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Timed repetitions per kernel (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Only entries whose id, label or summary contains this text.
    #[arg(long)]
    pub only: Option<String>,
}

pub fn run(cmd: KernelsCommand) -> Result<(), String> {
    match cmd {
        KernelsCommand::Export(args) => export(args),
        KernelsCommand::Bench(args) => bench(args),
    }
}

fn check_arch(arch: &str) -> Result<(), String> {
    let digits = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"))
        .map(|d| d.trim_end_matches(|c: char| c.is_ascii_lowercase()));
    match digits {
        Some(d) if !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()) => Ok(()),
        _ => Err(format!(
            "--arch: `{arch}` is not an NVRTC architecture like sm_90 or compute_90"
        )),
    }
}

fn export(args: ExportArgs) -> Result<(), String> {
    check_arch(&args.arch)?;
    check_out_dir(&args.out, args.force)?;
    let graph = args.model.lower()?;
    let mode = match args.dtype {
        DTypeArg::F32 => StorageMode::F32,
        DTypeArg::Bf16 => StorageMode::Bf16,
    };
    let plan = build_plan(&graph, &CompileOptions::default(), mode).map_err(|e| e.to_string())?;
    let info = ExportInfo {
        model: args.model.file.display().to_string(),
        config: args.model.config.as_ref().map(|c| c.display().to_string()),
        shapes: args.model.shapes.clone(),
        statics: args.model.statics.clone(),
        arch: args.arch.clone(),
    };
    let manifest = build_manifest(&plan, info)?;
    let m = write_export(&plan, manifest, &args.out, args.force, !args.no_ptx)?;
    let t = &m.totals;
    let lib_flops: u64 = m.library.iter().map(|l| l.flops * l.launches as u64).sum();
    crate::write_stdout(&format!(
        "exported {} kernels ({} source files, {} launches per forward) and {} library steps ({} GEMM/attention launches, {} copies) to {}\n  per forward: {} moved, {} ({:.1}% in library steps); storage {}, arch {}\n  {}\n  time them on a GPU: qie kernels bench {}\n",
        m.kernels.len(),
        t.symbols,
        t.kernel_launches,
        m.library.len(),
        t.library_launches,
        t.copies,
        args.out.display(),
        si(t.bytes_per_forward, "B"),
        si(t.flops_per_forward, "FLOP"),
        100.0 * lib_flops as f64 / (t.flops_per_forward.max(1)) as f64,
        m.storage,
        m.arch,
        m.ptx.note,
        args.out.display(),
    ))
}

/// `1.23 GB`, `456.0 kFLOP`: decimal prefixes.
fn si(v: u64, unit: &str) -> String {
    let mut x = v as f64;
    for prefix in ["", "k", "M", "G", "T"] {
        if x < 1000.0 || prefix == "T" {
            return if prefix.is_empty() {
                format!("{v} {unit}")
            } else {
                format!("{x:.2} {prefix}{unit}")
            };
        }
        x /= 1000.0;
    }
    unreachable!("the loop returns at T")
}

fn bench(args: BenchArgs) -> Result<(), String> {
    if args.iters == 0 {
        return Err("--iters must be positive".into());
    }
    let manifest = Manifest::read(&args.dir)?;
    let ordinal = match check_device(&args.device)? {
        DeviceSpec::Cpu => {
            return Err(format!(
                "--device {}: kernels bench needs a CUDA device (cuda or cuda:N)",
                args.device
            ))
        }
        DeviceSpec::Cuda(n) => n,
    };
    let dev = CudaDevice::new(ordinal).map_err(|e| format!("--device {}: {e}", args.device))?;
    if manifest.arch != dev.arch() {
        eprintln!(
            "note: the export targets {} but {} is {}; PTX the driver cannot load is compiled again with NVRTC",
            manifest.arch,
            args.device,
            dev.arch()
        );
    }
    let opts = BenchOptions {
        iters: args.iters,
        only: args.only.clone(),
    };
    let report = bench_export(&dev, &args.dir, &manifest, &opts, &mut |m| eprintln!("{m}"))
        .map_err(|e| e.to_string())?;
    crate::write_stdout(&crate::kernels_table::table(&report))?;
    let path = args.dir.join(BENCH_FILE);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
