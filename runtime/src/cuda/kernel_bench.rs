//! `qie kernels bench`: times every entry of a kernel export (see [`super::export`]) alone on
//! one device and relates it to the card's measured ceilings (`bench_ceilings.rs`).
//!
//! Each generated kernel is loaded from its `.ptx` (or compiled from its `.cu` with NVRTC when
//! there is no PTX or the driver rejects it), its buffers are allocated and filled as the
//! manifest says, and it is timed with CUDA events: two eager warm-up runs, then `reps`
//! back-to-back launches captured into a CUDA graph (so a few-microsecond kernel is not timed
//! as its launch latency; the forward pass also runs as a graph) and replayed `iters` times;
//! the time is the median replay / `reps`. Data stays in L2 between repetitions when it fits,
//! as it often does in the forward pass where a producer ran just before.

use super::bench_ceilings::{self, Ceilings};
use super::bench_fill::{EntryBuffers, Filler};
use super::bench_library::{run_library, LibraryRuntime};
use super::manifest::{KernelEntry, Manifest, Param};
use super::nvrtc::{Arg, CompiledKernel, Kernel};
use super::{Blas, CudaDevice, CudaError, DevPtr, FlashAttention, KernelCache, Module, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File the report is written to inside the export folder.
pub const BENCH_FILE: &str = "bench.json";

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed replays per entry (the median is reported).
    pub iters: usize,
    /// Only entries whose id, label or summary contains this.
    pub only: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    /// Launches per timed replay.
    pub reps: usize,
}

/// One entry's result; times are per launch.
#[derive(Clone, Debug, Serialize)]
pub struct EntryResult {
    pub id: String,
    /// `kernel`, or the library kind (`gemm`, `attention`, `copy`, `zero`).
    pub kind: String,
    pub label: String,
    pub launches: usize,
    pub bytes: u64,
    pub flops: u64,
    pub median_us: Option<f64>,
    pub min_us: Option<f64>,
    pub gbps: Option<f64>,
    /// gbps / the copy ceiling.
    pub copy_fraction: Option<f64>,
    pub tflops: Option<f64>,
    /// tflops / the GEMM ceiling.
    pub gemm_fraction: Option<f64>,
    /// median × launches.
    pub us_per_forward: Option<f64>,
    /// Why the entry was not timed.
    pub skipped: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub device_arch: String,
    pub export_arch: String,
    pub storage: String,
    pub iters: usize,
    pub ceilings: Ceilings,
    pub results: Vec<EntryResult>,
    /// Sums of `us_per_forward` over the timed generated kernels and library entries.
    pub kernels_us_per_forward: f64,
    pub library_us_per_forward: f64,
}

/// Runs `f` twice eagerly, then times graph replays of `reps` back-to-back runs (eager runs
/// when the capture fails).
pub(crate) fn time_op(
    dev: &Arc<CudaDevice>,
    iters: usize,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<Timing> {
    f()?;
    f()?;
    let e0 = dev.record_event()?;
    f()?;
    let e1 = dev.record_event()?;
    let first = e0.elapsed_ms(&e1)? as f64;
    let reps = ((0.1 / first.max(1e-4)).ceil() as usize).clamp(1, 256);
    let graph = dev.capture(|| {
        for _ in 0..reps {
            f()?;
        }
        Ok(())
    });
    let mut run = |graph: &Option<super::Graph>| -> Result<()> {
        match graph {
            Some(g) => g.replay(),
            None => (0..reps).try_for_each(|_| f()),
        }
    };
    let graph = graph.ok();
    run(&graph)?;
    // Queue every sample before waiting, so the device never idles between them.
    let mut events = vec![dev.record_event()?];
    for _ in 0..iters.max(1) {
        run(&graph)?;
        events.push(dev.record_event()?);
    }
    dev.synchronize()?;
    let mut samples = events
        .windows(2)
        .map(|w| Ok(w[0].elapsed_ms(&w[1])? as f64 / reps as f64))
        .collect::<Result<Vec<f64>>>()?;
    samples.sort_by(f64::total_cmp);
    Ok(Timing {
        median_ms: samples[samples.len() / 2],
        min_ms: samples[0],
        reps,
    })
}

/// Loads kernels by symbol, once each.
struct Loader<'a> {
    dev: &'a Arc<CudaDevice>,
    dir: &'a Path,
    cache: KernelCache,
    loaded: HashMap<String, std::result::Result<Kernel, String>>,
}

impl Loader<'_> {
    /// The kernel of `e`, or why it cannot be loaded; `log` receives fallback notes.
    fn kernel(
        &mut self,
        e: &KernelEntry,
        log: &mut dyn FnMut(String),
    ) -> std::result::Result<Kernel, String> {
        if let Some(k) = self.loaded.get(&e.symbol) {
            return k.clone();
        }
        let mut ptx_error = None;
        if let Some(ptx) = &e.ptx {
            match self.load_ptx(&self.dir.join(ptx), &e.symbol) {
                Ok(k) => {
                    self.loaded.insert(e.symbol.clone(), Ok(k.clone()));
                    return Ok(k);
                }
                Err(err) => ptx_error = Some(err),
            }
        }
        let k = self.compile_source(&e.source, &e.symbol);
        if let (Some(pe), Ok(_)) = (&ptx_error, &k) {
            log(format!(
                "{}: {ptx} not loaded ({pe}); compiled {} with NVRTC instead",
                e.symbol,
                e.source,
                ptx = e.ptx.as_deref().unwrap_or_default()
            ));
        }
        let k = k.map_err(|se| match ptx_error {
            Some(pe) => format!("PTX: {pe}; NVRTC: {se}"),
            None => se,
        });
        self.loaded.insert(e.symbol.clone(), k.clone());
        k
    }

    fn load_ptx(&self, path: &Path, symbol: &str) -> std::result::Result<Kernel, String> {
        let ptx = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let compiled = CompiledKernel {
            name: symbol.to_string(),
            key: String::new(),
            ptx,
            cubin: None,
            from_cache: false,
            ptx_path: PathBuf::from(path),
            log: String::new(),
        };
        Module::load(self.dev, &compiled)
            .and_then(|m| m.function(symbol))
            .map_err(|e| e.to_string())
    }

    fn compile_source(&self, file: &str, symbol: &str) -> std::result::Result<Kernel, String> {
        let path = self.dir.join(file);
        let source = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        self.cache
            .load(self.dev, &source, file)
            .and_then(|m| m.function(symbol))
            .map_err(|e| e.to_string())
    }
}

/// The launch arguments of `e` on `bufs`.
fn kernel_args(e: &KernelEntry, bufs: &EntryBuffers) -> Vec<Arg> {
    e.params
        .iter()
        .map(|p| match p {
            Param::Ptr {
                buffer,
                offset_bytes,
                ..
            } => Arg::Ptr(bufs.ptr(*buffer, *offset_bytes)),
            Param::Null { .. } => Arg::Ptr(DevPtr::NULL),
            Param::I32 { value, .. } => Arg::I32(*value),
            Param::I64 { value, .. } => Arg::I64(*value),
            Param::F32 { value, .. } => Arg::F32(*value),
        })
        .collect()
}

fn selected(only: &Option<String>, fields: &[&str]) -> bool {
    only.as_ref()
        .is_none_or(|o| fields.iter().any(|f| f.contains(o.as_str())))
}

/// Benchmarks the export in `dir` (its manifest already read) on `dev`. `log` receives notes
/// (skipped entries, fallbacks, progress). Device faults abort with the entry's id.
pub fn bench_export(
    dev: &Arc<CudaDevice>,
    dir: &Path,
    m: &Manifest,
    opts: &BenchOptions,
    log: &mut dyn FnMut(String),
) -> Result<BenchReport> {
    let iters = opts.iters.max(1);
    let mut filler = Filler::new(dev);
    // Declared before `blas`, so it outlives it.
    let workspace = dev.alloc(super::blas::WORKSPACE_BYTES)?;
    let blas =
        Blas::new(dev, workspace.ptr(), super::blas::WORKSPACE_BYTES).map_err(|e| e.to_string());
    log("measuring the copy and GEMM ceilings".into());
    let ceilings = bench_ceilings::measure(dev, blas.as_ref().ok(), &mut filler, iters)?;
    let (copy, gemm) = (ceilings.copy_gbps, ceilings.gemm_tflops);
    let result = |id: &str,
                  kind: &str,
                  label: &str,
                  launches: usize,
                  bytes: u64,
                  flops: u64,
                  t: std::result::Result<Timing, String>| {
        let mut r = EntryResult {
            id: id.to_string(),
            kind: kind.to_string(),
            label: label.to_string(),
            launches,
            bytes,
            flops,
            median_us: None,
            min_us: None,
            gbps: None,
            copy_fraction: None,
            tflops: None,
            gemm_fraction: None,
            us_per_forward: None,
            skipped: None,
        };
        match t {
            Ok(t) => {
                let s = t.median_ms * 1e-3;
                let gbps = bytes as f64 / s / 1e9;
                let tflops = (flops > 0).then(|| flops as f64 / s / 1e12);
                r.median_us = Some(t.median_ms * 1e3);
                r.min_us = Some(t.min_ms * 1e3);
                r.gbps = Some(gbps);
                r.copy_fraction = Some(gbps / copy);
                r.tflops = tflops;
                r.gemm_fraction = tflops.zip(gemm).map(|(a, b)| a / b);
                r.us_per_forward = Some(t.median_ms * 1e3 * launches as f64);
            }
            Err(why) => r.skipped = Some(why),
        }
        r
    };
    let mut results = vec![];
    let mut loader = Loader {
        dev,
        dir,
        cache: KernelCache::default_location(),
        loaded: HashMap::new(),
    };
    let selected_kernels: Vec<&KernelEntry> = m
        .kernels
        .iter()
        .filter(|k| selected(&opts.only, &[&k.id, &k.label]))
        .collect();
    for (i, e) in selected_kernels.iter().enumerate() {
        if i % 50 == 0 {
            log(format!("kernels {}/{}", i, selected_kernels.len()));
        }
        let t = match loader.kernel(e, log) {
            Err(why) => Err(why),
            Ok(kernel) => {
                let fault = |err: CudaError| format!("kernel {}: {err}", e.id);
                let bufs = filler
                    .allocate(&e.buffers)
                    .map_err(|x| CudaError::Invalid(fault(x)))?;
                let args = kernel_args(e, &bufs);
                if e.dynamic_smem_bytes > 48 << 10 {
                    kernel
                        .set_max_dynamic_shared(e.dynamic_smem_bytes)
                        .map_err(|x| CudaError::Invalid(fault(x)))?;
                }
                let grid = (e.grid[0], e.grid[1], e.grid[2]);
                let block = (e.block[0], e.block[1], e.block[2]);
                let t = time_op(dev, iters, &mut || {
                    kernel.launch(grid, block, e.dynamic_smem_bytes, &args)
                })
                .map_err(|x| CudaError::Invalid(fault(x)))?;
                Ok(t)
            }
        };
        if let Err(why) = &t {
            log(format!("skipping {}: {why}", e.id));
        }
        results.push(result(
            &e.id, "kernel", &e.label, e.launches, e.bytes, e.flops, t,
        ));
    }
    let flash_cache = KernelCache::default_location();
    let mut flash: Option<std::result::Result<FlashAttention, String>> = None;
    for l in m
        .library
        .iter()
        .filter(|l| selected(&opts.only, &[&l.id, &l.label, &l.summary]))
    {
        let kind = l.id.rsplit_once('_').map_or(l.id.as_str(), |(k, _)| k);
        if matches!(l.call, super::manifest::LibraryCall::Attention { .. }) && flash.is_none() {
            flash = Some(FlashAttention::new(dev, &flash_cache).map_err(|e| e.to_string()));
        }
        let rt = LibraryRuntime {
            dev,
            blas: blas.as_ref().map_err(|e| format!("cuBLASLt: {e}")),
            flash: match &flash {
                Some(Ok(f)) => Ok(f),
                Some(Err(e)) => Err(format!("flash attention: {e}")),
                None => Err("flash attention not loaded".into()),
            },
        };
        let fault = |err: CudaError| CudaError::Invalid(format!("{}: {err}", l.id));
        let bufs = filler.allocate(&l.buffers).map_err(fault)?;
        let t = match run_library(&rt, &l.call, &bufs) {
            Err(why) => Err(why),
            Ok(f) => Ok(time_op(dev, iters, &mut || f()).map_err(fault)?),
        };
        if let Err(why) = &t {
            log(format!("skipping {}: {why}", l.id));
        }
        results.push(result(
            &l.id, kind, &l.summary, l.launches, l.bytes, l.flops, t,
        ));
    }
    let sum = |lib: bool| {
        results
            .iter()
            .filter(|r| (r.kind != "kernel") == lib)
            .filter_map(|r| r.us_per_forward)
            .sum()
    };
    let (kernels_us_per_forward, library_us_per_forward) = (sum(false), sum(true));
    Ok(BenchReport {
        device: dev.info().to_string(),
        device_arch: dev.arch(),
        export_arch: m.arch.clone(),
        storage: m.storage.clone(),
        iters,
        ceilings,
        results,
        kernels_us_per_forward,
        library_us_per_forward,
    })
}
