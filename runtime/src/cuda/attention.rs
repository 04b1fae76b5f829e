//! Fused flash attention (forward) on tensor cores: `runtime/kernels/flash_attention.cu`.
//!
//! `o = softmax(q k^T * scale + mask) v` per (batch, head) over [B, S, H, D] tensors, bf16 in
//! and out, f32 softmax; no [Sq, Sk] matrix is ever stored. The joint [text; image] sequence
//! of the DiT is one sequence here: its projections write into the rows of shared q/k/v
//! buffers (or any strided views, see [`TensorStrides`]) and the key padding mask marks the
//! padded text tokens. The per-row log-sum-exp is written for the backward pass.
//!
//! Two kernels: the FlashAttention-2 schedule on `mma.sync` (`flash_attention.cu`, any device,
//! head_dim 64 and 128) and, on compute capability 9.x, the FlashAttention-3 schedule on `wgmma`
//! (`flash_attention_wgmma.cu`, compiled for `sm_90a`, head_dim 128), about 1.8x faster there.
//! [`AttentionKernel::auto`] picks one; `QIE_ATTN_KERNEL=fa2|wgmma` forces it.

use std::sync::Arc;

use super::nvrtc::{Arg, Kernel};
use super::{sources, CudaDevice, CudaError, DevPtr, KernelCache, Result};

/// Query rows per block and keys per tile (must match the .cu constants).
pub const BLOCK_M: usize = 128;
pub const BLOCK_N: usize = 64;
const THREADS: u32 = 128;

/// The wgmma kernel: query rows per block (as [`BLOCK_M`]), keys per tile, threads per block
/// (a producer warpgroup and two consumer warpgroups) and K/V ring depth (`FA3_STAGES`).
pub const WGMMA_BLOCK_N: usize = 128;
const WGMMA_THREADS: u32 = 384;
const WGMMA_STAGES: usize = 3;

/// Source of the wgmma (sm_90a) kernel.
pub const WGMMA_SOURCE: &str = include_str!("../../kernels/flash_attention_wgmma.cu");

/// Which kernel runs head_dim 128 (head_dim 64 always runs the FA2 kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// FlashAttention-2 schedule on `mma.sync` (any supported device).
    Fa2,
    /// FlashAttention-3 schedule on `wgmma`: compute capability 9.x only (built for `sm_90a`).
    Wgmma,
}

impl AttentionKernel {
    /// `QIE_ATTN_KERNEL` (`fa2` or `wgmma`) when set, else `Wgmma` on compute capability 9.x
    /// and `Fa2` elsewhere.
    pub fn auto(dev: &CudaDevice) -> Result<Self> {
        match std::env::var("QIE_ATTN_KERNEL") {
            Ok(v) if !v.is_empty() => v.parse(),
            _ => Ok(if Self::Wgmma.supported(dev) {
                Self::Wgmma
            } else {
                Self::Fa2
            }),
        }
    }

    /// Whether `dev` can run this kernel.
    pub fn supported(self, dev: &CudaDevice) -> bool {
        match self {
            Self::Fa2 => true,
            Self::Wgmma => dev.info().compute_capability.0 == 9,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fa2 => "fa2",
            Self::Wgmma => "wgmma",
        }
    }
}

impl std::str::FromStr for AttentionKernel {
    type Err = CudaError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fa2" => Ok(Self::Fa2),
            "wgmma" | "fa3" => Ok(Self::Wgmma),
            other => Err(CudaError::Invalid(format!(
                "attention kernel {other:?}: expected fa2 or wgmma (QIE_ATTN_KERNEL)"
            ))),
        }
    }
}

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
    /// The wgmma head_dim-128 kernel, when [`AttentionKernel::Wgmma`] was chosen.
    wgmma: Option<Kernel>,
    /// Whether the modules came from the kernel cache (nothing compiled).
    pub from_cache: bool,
}

impl FlashAttention {
    /// Compiles (or reads from `cache`) and loads the kernels on `dev`; the head_dim-128 kernel
    /// is [`AttentionKernel::auto`]'s choice.
    pub fn new(dev: &Arc<CudaDevice>, cache: &KernelCache) -> Result<Self> {
        Self::with_kernel(dev, cache, AttentionKernel::auto(dev)?, &[])
    }

    /// As [`FlashAttention::new`], with extra NVRTC options for the FA2 kernel: its tuning
    /// switches (`-DFA_KS_UNROLL=2`, `-DFA_SKIP_RESCALE=0`, `-DFA_PREFETCH_Q=1`) for
    /// benchmarking. Head_dim 128 runs the FA2 kernel too.
    pub fn with_options(
        dev: &Arc<CudaDevice>,
        cache: &KernelCache,
        options: &[String],
    ) -> Result<Self> {
        Self::with_kernel(dev, cache, AttentionKernel::Fa2, options)
    }

    /// Loads the FA2 kernels (with `fa2_options`) and, for `kind == Wgmma`, the wgmma kernel,
    /// which then runs head_dim 128. Fails when `dev` cannot run `kind`.
    pub fn with_kernel(
        dev: &Arc<CudaDevice>,
        cache: &KernelCache,
        kind: AttentionKernel,
        fa2_options: &[String],
    ) -> Result<Self> {
        if !kind.supported(dev) {
            return Err(CudaError::Invalid(format!(
                "attention kernel {} needs compute capability 9.x; {} is {}.{}",
                kind.name(),
                dev.info().name,
                dev.info().compute_capability.0,
                dev.info().compute_capability.1
            )));
        }
        let compiled = cache.compile(
            sources::FLASH_ATTENTION,
            "flash_attention.cu",
            &dev.arch(),
            dev.driver_version(),
            fa2_options,
        )?;
        let module = super::Module::load(dev, &compiled)?;
        let d128 = module.function("flash_attn_fwd_d128")?;
        let d64 = module.function("flash_attn_fwd_d64")?;
        d128.set_max_dynamic_shared(shared_bytes(128) as u32)?;
        d64.set_max_dynamic_shared(shared_bytes(64) as u32)?;
        let mut from_cache = module.from_cache;
        let wgmma = if kind == AttentionKernel::Wgmma {
            // wgmma and setmaxnreg exist only in the arch-specific sm_90a target.
            let compiled = cache.compile(
                WGMMA_SOURCE,
                "flash_attention_wgmma.cu",
                "sm_90a",
                dev.driver_version(),
                &[],
            )?;
            let module = super::Module::load(dev, &compiled)?;
            from_cache &= module.from_cache;
            let k = module.function("flash_attn_wgmma_fwd_d128")?;
            k.set_max_dynamic_shared(wgmma_shared_bytes() as u32)?;
            Some(k)
        } else {
            None
        };
        Ok(FlashAttention {
            d128,
            d64,
            wgmma,
            from_cache,
        })
    }

    /// The kernel that runs head_dim 128.
    pub fn kind(&self) -> AttentionKernel {
        if self.wgmma.is_some() {
            AttentionKernel::Wgmma
        } else {
            AttentionKernel::Fa2
        }
    }

    /// The kernel used for `head_dim` (for resource queries).
    pub fn kernel(&self, head_dim: usize) -> &Kernel {
        if head_dim == 64 {
            &self.d64
        } else {
            self.wgmma.as_ref().unwrap_or(&self.d128)
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
        match (&self.wgmma, a.head_dim) {
            (Some(k), 128) => k.launch(
                grid,
                (WGMMA_THREADS, 1, 1),
                wgmma_shared_bytes() as u32,
                &args,
            ),
            _ => self.kernel(a.head_dim).launch(
                grid,
                (THREADS, 1, 1),
                shared_bytes(a.head_dim) as u32,
                &args,
            ),
        }
    }
}

/// Dynamic shared memory of one block: Q tile, two K and two V tiles, two bias rows, flags.
pub fn shared_bytes(head_dim: usize) -> usize {
    BLOCK_M * head_dim * 2 + 4 * BLOCK_N * head_dim * 2 + 2 * BLOCK_N * 4 + 4 * 4
}

/// Dynamic shared memory of one block of the wgmma kernel (`FA3_SMEM_BYTES`): Q tile, K and V
/// rings, keep bytes and flags of 8 tiles, 4 mbarriers a stage, 1 KB to align the base.
pub fn wgmma_shared_bytes() -> usize {
    let tile = WGMMA_BLOCK_N * 128 * 2;
    BLOCK_M * 128 * 2
        + 2 * WGMMA_STAGES * tile
        + 8 * WGMMA_BLOCK_N
        + 8 * 16
        + 4 * WGMMA_STAGES * 8
        + 1024
}
