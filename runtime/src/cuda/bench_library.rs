//! Running one library entry of a kernel export (cuBLASLt GEMM, flash attention, copy,
//! memset) on its own buffers, for `qie kernels bench`. The calls are rebuilt from the
//! manifest exactly as `exec.rs` builds them from plan steps.

use super::bench_fill::EntryBuffers;
use super::manifest::{BufferView, LibraryCall};
use super::{
    AttentionArgs, Blas, CudaDevice, DevPtr, Epilogue, FlashAttention, GemmArgs, Result,
    TensorStrides,
};
use std::sync::Arc;

/// What a library entry needs from the device: cuBLASLt and the flash kernel (either may be
/// missing: entries that need it are skipped with the reason).
pub struct LibraryRuntime<'a> {
    pub dev: &'a Arc<CudaDevice>,
    pub blas: std::result::Result<&'a Blas, String>,
    pub flash: std::result::Result<&'a FlashAttention, String>,
}

/// One queued run of `call` on `bufs`, or why the entry cannot run here.
pub fn run_library<'a>(
    rt: &LibraryRuntime<'a>,
    call: &LibraryCall,
    bufs: &EntryBuffers,
) -> std::result::Result<Box<dyn Fn() -> Result<()> + 'a>, String> {
    let ptr = |v: &BufferView| -> DevPtr { bufs.ptr(v.buffer, v.offset_bytes) };
    Ok(match call {
        LibraryCall::Gemm {
            m,
            n,
            k,
            transpose_a,
            transpose_b,
            ld_a,
            ld_b,
            batch,
            stride_a,
            stride_b,
            epilogue,
            a,
            b,
            d,
            bias,
            dtype,
        } => {
            let blas = rt.blas.clone()?;
            let dtype = match dtype.as_str() {
                "bf16" => qie_ir::DType::BF16,
                "f32" => qie_ir::DType::F32,
                other => return Err(format!("unknown GEMM dtype `{other}`")),
            };
            let bias_ptr = || {
                bias.as_ref()
                    .map(ptr)
                    .ok_or_else(|| format!("epilogue {epilogue} without a bias"))
            };
            let epilogue = match epilogue.as_str() {
                "none" => Epilogue::None,
                "bias" => Epilogue::Bias(bias_ptr()?),
                "gelu" => Epilogue::Gelu,
                "gelu_bias" => Epilogue::GeluBias(bias_ptr()?),
                other => return Err(format!("unknown GEMM epilogue `{other}`")),
            };
            let args = GemmArgs {
                m: *m,
                n: *n,
                k: *k,
                transpose_a: *transpose_a,
                transpose_b: *transpose_b,
                a: ptr(a),
                b: ptr(b),
                d: ptr(d),
                ld_a: *ld_a,
                ld_b: *ld_b,
                ld_d: *n,
                batch: *batch,
                stride_a: *stride_a,
                stride_b: *stride_b,
                stride_d: m * n,
                epilogue,
                accumulate: false,
                dtype,
            };
            Box::new(move || blas.gemm(&args))
        }
        LibraryCall::Attention {
            batch,
            seq_q,
            seq_k,
            heads,
            head_dim,
            scale,
            q,
            k,
            v,
            mask,
            out,
            lse,
            q_strides,
            k_strides,
            v_strides,
            mask_batch_stride,
        } => {
            let flash = rt.flash.clone()?;
            let ts = |s: &[usize; 3]| TensorStrides {
                batch: s[0],
                seq: s[1],
                head: s[2],
            };
            let args = AttentionArgs {
                batch: *batch,
                seq_q: *seq_q,
                seq_k: *seq_k,
                heads: *heads,
                head_dim: *head_dim,
                scale: *scale,
                q: ptr(q),
                k: ptr(k),
                v: ptr(v),
                q_strides: ts(q_strides),
                k_strides: ts(k_strides),
                v_strides: ts(v_strides),
                mask: mask.as_ref().map_or(DevPtr::NULL, ptr),
                mask_batch_stride: *mask_batch_stride,
                out: ptr(out),
                out_strides: TensorStrides::contiguous(*seq_q, *heads, *head_dim),
                lse: ptr(lse),
            };
            Box::new(move || flash.forward(&args))
        }
        LibraryCall::Copy { src, dst, bytes } => {
            let (s, d, n) = (ptr(src), ptr(dst), *bytes as usize);
            let dev = rt.dev;
            Box::new(move || dev.dtod(d, s, n))
        }
        LibraryCall::Zero { dst, bytes } => {
            let (d, n) = (ptr(dst), *bytes as usize);
            let dev = rt.dev;
            Box::new(move || dev.memset(d, 0, n))
        }
    })
}
