//! Fused flash attention (forward) on tensor cores: `runtime/kernels/flash_attention.cu`.
//!
//! `o = softmax(q k^T * scale + mask) v` per (batch, head) over [B, S, H, D] tensors, bf16 in
//! and out, f32 softmax; no [Sq, Sk] matrix is ever stored. The joint [text; image] sequence
//! of the DiT is one sequence here: its projections write into the rows of shared q/k/v
//! buffers (or any strided views, see [`TensorStrides`]) and the key padding mask marks the
//! padded text tokens. The per-row log-sum-exp is written for the backward pass.

use std::sync::Arc;

use super::nvrtc::{Arg, Kernel};
use super::{sources, CudaDevice, CudaError, DevPtr, KernelCache, Result};

/// Query rows per block and keys per tile (must match the .cu constants).
pub const BLOCK_M: usize = 128;
pub const BLOCK_N: usize = 64;
const THREADS: u32 = 128;

/// Element strides of a [B, S, H, D] tensor whose last dimension is contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorStrides {
    pub batch: usize,
    pub seq: usize,
    pub head: usize,
}

impl TensorStrides {
    /// Contiguous [B, S, H, D].
    pub fn contiguous(seq: usize, heads: usize, head_dim: usize) -> Self {
        TensorStrides {
            batch: seq * heads * head_dim,
            seq: heads * head_dim,
            head: head_dim,
        }
    }
}

/// One attention call. All tensors bf16 except `mask` (u8, non-zero = attend) and `lse` (f32).
#[derive(Clone, Copy, Debug)]
pub struct AttentionArgs {
    pub batch: usize,
    pub seq_q: usize,
    pub seq_k: usize,
    pub heads: usize,
    /// 64 or 128.
    pub head_dim: usize,
    /// Softmax scale; usually 1 / sqrt(head_dim).
    pub scale: f32,
    pub q: DevPtr,
    pub k: DevPtr,
    pub v: DevPtr,
    pub q_strides: TensorStrides,
    pub k_strides: TensorStrides,
    pub v_strides: TensorStrides,
    /// Key padding mask [B, Sk] (row stride `mask_batch_stride`), or null for none.
    pub mask: DevPtr,
    pub mask_batch_stride: usize,
    pub out: DevPtr,
    pub out_strides: TensorStrides,
    /// [B, H, Sq] f32 log-sum-exp of the scaled, masked scores (+inf for fully masked rows).
    pub lse: DevPtr,
}

impl AttentionArgs {
    /// Contiguous q [B, Sq, H, D], k/v [B, Sk, H, D], out [B, Sq, H, D], mask [B, Sk] (or null).
    #[allow(clippy::too_many_arguments)]
    pub fn contiguous(
        batch: usize,
        seq_q: usize,
        seq_k: usize,
        heads: usize,
        head_dim: usize,
        q: DevPtr,
        k: DevPtr,
        v: DevPtr,
        mask: DevPtr,
        out: DevPtr,
        lse: DevPtr,
    ) -> Self {
        let sq = TensorStrides::contiguous(seq_q, heads, head_dim);
        let sk = TensorStrides::contiguous(seq_k, heads, head_dim);
        AttentionArgs {
            batch,
            seq_q,
            seq_k,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            q,
            k,
            v,
            q_strides: sq,
            k_strides: sk,
            v_strides: sk,
            mask,
            mask_batch_stride: seq_k,
            out,
            out_strides: sq,
            lse,
        }
    }

    /// Matmul FLOPs of the forward pass (4 B H Sq Sk D), the usual attention FLOP count.
    pub fn flops(&self) -> f64 {
        4.0 * self.batch as f64
            * self.heads as f64
            * self.seq_q as f64
            * self.seq_k as f64
            * self.head_dim as f64
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(CudaError::Invalid(format!("attention: {m} ({self:?})")));
        if self.head_dim != 64 && self.head_dim != 128 {
            return bad("head_dim must be 64 or 128");
        }
        if self.batch == 0 || self.seq_q == 0 || self.heads == 0 {
            return bad("empty problem");
        }
        if self.batch > 65535 || self.heads > 65535 {
            return bad("batch and heads must each be < 65536 (grid limits)");
        }
        for (name, p, s) in [
            ("q", self.q, self.q_strides),
            ("k", self.k, self.k_strides),
            ("v", self.v, self.v_strides),
            ("out", self.out, self.out_strides),
        ] {
            if p.is_null() || !p.0.is_multiple_of(16) {
                return bad(&format!("{name} must be non-null and 16-byte aligned"));
            }
            if ![s.batch, s.seq, s.head].iter().all(|x| x.is_multiple_of(8)) {
                return bad(&format!("{name} strides must be multiples of 8 elements"));
            }
        }
        if self.lse.is_null() || !self.lse.0.is_multiple_of(4) {
            return bad("lse must be non-null and 4-byte aligned");
        }
        Ok(())
    }
}

/// The compiled kernels, loaded on one device.
pub struct FlashAttention {
    d128: Kernel,
    d64: Kernel,
    /// Whether the module came from the kernel cache (nothing compiled).
    pub from_cache: bool,
}

impl FlashAttention {
    /// Compiles (or reads from `cache`) and loads the kernels on `dev`.
    pub fn new(dev: &Arc<CudaDevice>, cache: &KernelCache) -> Result<Self> {
        Self::with_options(dev, cache, &[])
    }

    /// As [`FlashAttention::new`], with extra NVRTC options: the kernel's tuning switches
    /// (`-DFA_KS_UNROLL=2`, `-DFA_SKIP_RESCALE=0`, `-DFA_PREFETCH_Q=1`) for benchmarking.
    pub fn with_options(
        dev: &Arc<CudaDevice>,
        cache: &KernelCache,
        options: &[String],
    ) -> Result<Self> {
        let compiled = cache.compile(
            sources::FLASH_ATTENTION,
            "flash_attention.cu",
            &dev.arch(),
            dev.driver_version(),
            options,
        )?;
        let module = super::Module::load(dev, &compiled)?;
        let d128 = module.function("flash_attn_fwd_d128")?;
        let d64 = module.function("flash_attn_fwd_d64")?;
        d128.set_max_dynamic_shared(shared_bytes(128) as u32)?;
        d64.set_max_dynamic_shared(shared_bytes(64) as u32)?;
        Ok(FlashAttention {
            d128,
            d64,
            from_cache: module.from_cache,
        })
    }

    /// The kernel used for `head_dim` (for resource queries).
    pub fn kernel(&self, head_dim: usize) -> &Kernel {
        if head_dim == 64 {
            &self.d64
        } else {
            &self.d128
        }
    }

    /// Queues one forward pass on the device's stream.
    pub fn forward(&self, a: &AttentionArgs) -> Result<()> {
        a.check()?;
        let grid = (
            a.seq_q.div_ceil(BLOCK_M) as u32,
            a.heads as u32,
            a.batch as u32,
        );
        let i = |x: usize| Arg::I64(x as i64);
        let args = [
            Arg::Ptr(a.q),
            Arg::Ptr(a.k),
            Arg::Ptr(a.v),
            Arg::Ptr(a.mask),
            Arg::Ptr(a.out),
            Arg::Ptr(a.lse),
            Arg::I32(a.seq_q as i32),
            Arg::I32(a.seq_k as i32),
            Arg::I32(a.heads as i32),
            i(a.q_strides.batch),
            i(a.q_strides.seq),
            i(a.q_strides.head),
            i(a.k_strides.batch),
            i(a.k_strides.seq),
            i(a.k_strides.head),
            i(a.v_strides.batch),
            i(a.v_strides.seq),
            i(a.v_strides.head),
            i(a.out_strides.batch),
            i(a.out_strides.seq),
            i(a.out_strides.head),
            i(a.mask_batch_stride),
            Arg::F32(a.scale * std::f32::consts::LOG2_E),
        ];
        self.kernel(a.head_dim).launch(
            grid,
            (THREADS, 1, 1),
            shared_bytes(a.head_dim) as u32,
            &args,
        )
    }
}

/// Dynamic shared memory of one block: Q tile, two K and two V tiles, two bias rows, flags.
pub fn shared_bytes(head_dim: usize) -> usize {
    BLOCK_M * head_dim * 2 + 4 * BLOCK_N * head_dim * 2 + 2 * BLOCK_N * 4 + 4 * 4
}
