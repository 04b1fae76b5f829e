//! The card's measured ceilings for `qie kernels bench`: device-to-device copy bandwidth
//! (read + write bytes per second) and a large bf16 cuBLASLt GEMM's TFLOP/s.

use super::bench_fill::Filler;
use super::kernel_bench::{time_op, Timing};
use super::{Blas, CudaDevice, GemmArgs, Result};
use qie_ir::DType;
use serde::Serialize;
use std::sync::Arc;

/// Side of the square GEMM used as the compute ceiling.
pub const GEMM_SIDE: usize = 8192;

#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    /// Bytes of each copy (the copy reads and writes this many).
    pub copy_bytes: u64,
    /// (read + write bytes) / time, GB/s (1e9 bytes).
    pub copy_gbps: f64,
    /// `M=N=K=8192 bf16, b transposed` or why it was not measured.
    pub gemm: String,
    pub gemm_tflops: Option<f64>,
}

/// Measures the copy bandwidth with a buffer pair of up to 1 GiB (a quarter of free memory at
/// most), and the GEMM ceiling when `blas` is available.
pub fn measure(
    dev: &Arc<CudaDevice>,
    blas: Option<&Blas>,
    filler: &mut Filler,
    iters: usize,
) -> Result<Ceilings> {
    let (free, _) = dev.mem_info()?;
    let bytes = ((free / 4).min(1 << 30) >> 20 << 20).max(1 << 20);
    let src = filler.random(DType::BF16, bytes)?;
    let dst = dev.alloc(bytes)?;
    let Timing { median_ms, .. } =
        time_op(dev, iters, &mut || dev.dtod(dst.ptr(), src.ptr(), bytes))?;
    drop((src, dst));
    let copy_gbps = 2.0 * bytes as f64 / (median_ms * 1e-3) / 1e9;
    let n = GEMM_SIDE;
    let (gemm, gemm_tflops) = match blas {
        None => ("not measured: cuBLASLt is unavailable".to_string(), None),
        Some(blas) => {
            let a = filler.random(DType::BF16, n * n * 2)?;
            let b = filler.random(DType::BF16, n * n * 2)?;
            let d = dev.alloc(n * n * 2)?;
            let args = GemmArgs::new(n, n, n, a.ptr(), b.ptr(), d.ptr()).transpose_b();
            let t = time_op(dev, iters, &mut || blas.gemm(&args))?;
            (
                format!("M=N=K={n} bf16, b transposed (nn.Linear layout)"),
                Some(args.flops() / (t.median_ms * 1e-3) / 1e12),
            )
        }
    };
    Ok(Ceilings {
        copy_bytes: bytes as u64,
        copy_gbps,
        gemm,
        gemm_tflops,
    })
}
