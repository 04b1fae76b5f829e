//! Flash-attention backward on tensor cores: `runtime/kernels/flash_attention_bwd.cu`
//! (`mma.sync`, any device) and, where the forward runs on wgmma (compute capability 9.x),
//! `runtime/kernels/flash_attention_bwd_wgmma.cu` for head_dim 128.
//!
//! One call: the forward kernel again (O and the log-sum-exp into scratch), `delta =
//! rowsum(dO * O)`, then dQ (one block per 64 query rows) and dK / dV (one block per 64 key
//! rows), bf16 in and out, f32 accumulation. The [Sq, Sk] probabilities are never stored.

use std::sync::Arc;

use super::attention::{
    AttentionArgs, AttentionKernel, FlashAttention, TensorStrides, WGMMA_SOURCE,
};
use super::nvrtc::{Arg, Kernel};
use super::{sources, CudaDevice, CudaError, DevPtr, KernelCache, Result};

/// Rows per block of both gradient kernels and columns per tile (the .cu `FB_BM` / `FB_BN`).
const ROWS: usize = 64;
const COLS: usize = 64;
const THREADS: u32 = 128;
/// Warpgroups (of 64 rows each) per block of the wgmma dQ and dK/dV kernels (the block's
/// warpgroups share the column tiles); [`WgmmaBlocks::DEFAULT`] is the measured best.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgmmaBlocks {
    pub dq: usize,
    pub dkdv: usize,
}

impl WgmmaBlocks {
    pub const DEFAULT: WgmmaBlocks = WgmmaBlocks { dq: 3, dkdv: 1 };

    fn options(self) -> Vec<String> {
        vec![
            format!("-DFW_DQ_WGS={}", self.dq),
            format!("-DFW_DKDV_WGS={}", self.dkdv),
        ]
    }
}

/// The wgmma gradient kernels and their block shape.
struct WgmmaGrad {
    dq: Kernel,
    dkdv: Kernel,
    blocks: WgmmaBlocks,
}
/// Source of the wgmma gradient kernels (compiled after [`WGMMA_SOURCE`], whose helpers they use).
const WGMMA_BWD_SOURCE: &str = include_str!("../../kernels/flash_attention_bwd_wgmma.cu");

/// One backward call. `forward` names q, k, v, the mask and the scratch it recomputes into
/// (`out`: dense [B, Sq, H, D] bf16, `lse`: [B, H, Sq] f32).
#[derive(Clone, Copy, Debug)]
pub struct AttentionGradArgs {
    pub forward: AttentionArgs,
    pub dout: DevPtr,
    pub dout_strides: TensorStrides,
    /// [B, H, Sq] f32 scratch.
    pub delta: DevPtr,
    /// The three gradients; they share `grad_strides` (slices of one packed tensor).
    pub dq: DevPtr,
    pub dk: DevPtr,
    pub dv: DevPtr,
    pub grad_strides: TensorStrides,
}

impl AttentionGradArgs {
    /// The usual count: 2.5x the forward's matmul FLOPs.
    pub fn flops(&self) -> f64 {
        2.5 * self.forward.flops()
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| {
            Err(CudaError::Invalid(format!(
                "attention backward: {m} ({self:?})"
            )))
        };
        for (name, p, s) in [
            ("dout", self.dout, self.dout_strides),
            ("dq", self.dq, self.grad_strides),
            ("dk", self.dk, self.grad_strides),
            ("dv", self.dv, self.grad_strides),
        ] {
            if p.is_null() || !p.0.is_multiple_of(16) {
                return bad(&format!("{name} must be non-null and 16-byte aligned"));
            }
            if ![s.batch, s.seq, s.head].iter().all(|x| x.is_multiple_of(8)) {
                return bad(&format!("{name} strides must be multiples of 8 elements"));
            }
        }
        if self.delta.is_null() || !self.delta.0.is_multiple_of(4) {
            return bad("delta must be non-null and 4-byte aligned");
        }
        if self.forward.seq_k == 0 || self.forward.seq_k > i32::MAX as usize {
            return bad("seq_k must be in 1..2^31");
        }
        Ok(())
    }
}

/// The compiled backward kernels, loaded on one device.
pub struct FlashAttentionBackward {
    delta: Kernel,
    dq: [Kernel; 2],
    dkdv: [Kernel; 2],
    /// dQ and dK/dV on wgmma for head_dim 128, when the forward runs on wgmma.
    wgmma: Option<WgmmaGrad>,
}

impl FlashAttentionBackward {
    /// Compiles (or reads from `cache`) the backward program (the forward's source, whose
    /// helpers it uses, then the backward kernels) and loads it on `dev`; with
    /// `kind == Wgmma` also the wgmma gradient kernels, which then run head_dim 128.
    pub fn new(dev: &Arc<CudaDevice>, cache: &KernelCache, kind: AttentionKernel) -> Result<Self> {
        Self::with_blocks(dev, cache, kind, WgmmaBlocks::DEFAULT)
    }

    /// [`Self::new`] with the wgmma kernels' block shape (1..=3 warpgroups for dQ, 1..=2 for
    /// dK/dV: what their registers allow).
    pub fn with_blocks(
        dev: &Arc<CudaDevice>,
        cache: &KernelCache,
        kind: AttentionKernel,
        blocks: WgmmaBlocks,
    ) -> Result<Self> {
        if !(1..=3).contains(&blocks.dq) || !(1..=2).contains(&blocks.dkdv) {
            return Err(CudaError::Invalid(format!(
                "attention backward: {blocks:?} warpgroups (dq 1..=3, dkdv 1..=2)"
            )));
        }
        let source = format!(
            "{}\n{}",
            sources::FLASH_ATTENTION,
            sources::FLASH_ATTENTION_BWD
        );
        let compiled = cache.compile(
            &source,
            "flash_attention_bwd.cu",
            &dev.arch(),
            dev.driver_version(),
            &[],
        )?;
        let module = super::Module::load(dev, &compiled)?;
        let load = |name: &str, d: usize| -> Result<Kernel> {
            let k = module.function(name)?;
            k.set_max_dynamic_shared(shared_bytes(d) as u32)?;
            Ok(k)
        };
        let wgmma = if kind == AttentionKernel::Wgmma && kind.supported(dev) {
            let source = format!("{WGMMA_SOURCE}\n{WGMMA_BWD_SOURCE}");
            // wgmma exists only in the arch-specific sm_90a target.
            let compiled = cache.compile(
                &source,
                "flash_attention_bwd_wgmma.cu",
                "sm_90a",
                dev.driver_version(),
                &blocks.options(),
            )?;
            let module = super::Module::load(dev, &compiled)?;
            let load = |name: &str, wgs: usize| -> Result<Kernel> {
                let k = module.function(name)?;
                k.set_max_dynamic_shared(wgmma_shared_bytes(wgs) as u32)?;
                Ok(k)
            };
            Some(WgmmaGrad {
                dq: load("flash_attn_wgmma_bwd_dq_d128", blocks.dq)?,
                dkdv: load("flash_attn_wgmma_bwd_dkdv_d128", blocks.dkdv)?,
                blocks,
            })
        } else {
            None
        };
        Ok(FlashAttentionBackward {
            wgmma,
            delta: module.function("flash_attn_bwd_delta")?,
            dq: [
                load("flash_attn_bwd_dq_d64", 64)?,
                load("flash_attn_bwd_dq_d128", 128)?,
            ],
            dkdv: [
                load("flash_attn_bwd_dkdv_d64", 64)?,
                load("flash_attn_bwd_dkdv_d128", 128)?,
            ],
        })
    }

    /// Queues the backward on the device's stream (`forward` recomputes O and the lse).
    pub fn backward(&self, forward: &FlashAttention, a: &AttentionGradArgs) -> Result<()> {
        a.check()?;
        let f = &a.forward;
        forward.forward(f)?;
        let i = |x: usize| Arg::I64(x as i64);
        let rows = f.batch * f.heads * f.seq_q;
        self.delta.launch(
            (rows.div_ceil(256) as u32, 1, 1),
            (256, 1, 1),
            0,
            &[
                Arg::Ptr(f.out),
                Arg::Ptr(a.dout),
                Arg::Ptr(a.delta),
                Arg::I32(f.batch as i32),
                Arg::I32(f.seq_q as i32),
                Arg::I32(f.heads as i32),
                Arg::I32(f.head_dim as i32),
                i(f.out_strides.batch),
                i(f.out_strides.seq),
                i(f.out_strides.head),
                i(a.dout_strides.batch),
                i(a.dout_strides.seq),
                i(a.dout_strides.head),
            ],
        )?;
        let args = [
            Arg::Ptr(f.q),
            Arg::Ptr(f.k),
            Arg::Ptr(f.v),
            Arg::Ptr(a.dout),
            Arg::Ptr(f.mask),
            Arg::Ptr(f.lse),
            Arg::Ptr(a.delta),
            Arg::Ptr(a.dq),
            Arg::Ptr(a.dk),
            Arg::Ptr(a.dv),
            Arg::I32(f.seq_q as i32),
            Arg::I32(f.seq_k as i32),
            Arg::I32(f.heads as i32),
            i(f.q_strides.batch),
            i(f.q_strides.seq),
            i(f.q_strides.head),
            i(f.k_strides.batch),
            i(f.k_strides.seq),
            i(f.k_strides.head),
            i(f.v_strides.batch),
            i(f.v_strides.seq),
            i(f.v_strides.head),
            i(a.dout_strides.batch),
            i(a.dout_strides.seq),
            i(a.dout_strides.head),
            i(a.grad_strides.batch),
            i(a.grad_strides.seq),
            i(a.grad_strides.head),
            i(f.mask_batch_stride),
            Arg::F32(f.scale * std::f32::consts::LOG2_E),
            Arg::F32(f.scale),
        ];
        let grid = |n: usize| (n.div_ceil(ROWS) as u32, f.heads as u32, f.batch as u32);
        if let (Some(w), 128) = (&self.wgmma, f.head_dim) {
            let launch = |k: &Kernel, rows: usize, wgs: usize| {
                let grid = (
                    rows.div_ceil(ROWS * wgs) as u32,
                    f.heads as u32,
                    f.batch as u32,
                );
                let threads = (128 * wgs) as u32;
                k.launch(grid, (threads, 1, 1), wgmma_shared_bytes(wgs) as u32, &args)
            };
            launch(&w.dq, f.seq_q, w.blocks.dq)?;
            return launch(&w.dkdv, f.seq_k, w.blocks.dkdv);
        }
        let which = usize::from(f.head_dim == 128);
        let smem = shared_bytes(f.head_dim) as u32;
        self.dq[which].launch(grid(f.seq_q), (THREADS, 1, 1), smem, &args)?;
        self.dkdv[which].launch(grid(f.seq_k), (THREADS, 1, 1), smem, &args)
    }

    /// The kernels that run head_dim 128.
    pub fn kind(&self) -> AttentionKernel {
        if self.wgmma.is_some() {
            AttentionKernel::Wgmma
        } else {
            AttentionKernel::Fa2
        }
    }
}

/// Dynamic shared memory of one block of a wgmma kernel of `warpgroups` x 64 rows (`FwMap`):
/// two [64 warpgroups, 128] row tiles, four [64, 128] column tiles, four rows of 64 floats,
/// and 1 KB to align the base.
pub fn wgmma_shared_bytes(warpgroups: usize) -> usize {
    2 * warpgroups * ROWS * 128 * 2 + 4 * COLS * 128 * 2 + 4 * COLS * 4 + 1024
}

/// Dynamic shared memory of one block (either kernel): two row tiles, two double-buffered column
/// tiles, and two rows of 2 x [`COLS`] floats (bias, or lse and delta).
pub fn shared_bytes(head_dim: usize) -> usize {
    2 * ROWS * head_dim * 2 + 4 * COLS * head_dim * 2 + 4 * COLS * 4
}
