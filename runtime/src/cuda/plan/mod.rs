//! Device-free half of the CUDA executable: binds lowered groups to arena offsets (through the
//! shared [`crate::bind`] layer) and decides, step by step, which kernel runs it. Everything here is plain data (kernel sources, launch
//! shapes, buffer references), so a plan can be built and its kernels compiled with NVRTC on a
//! machine without a GPU (tests do, see `runtime/tests/cuda_backend_render.rs`).
//!
//! Library steps: `MatMul` on bf16 operands whose layouts cuBLASLt can read (any strides with a
//! unit stride in one of the two matrix axes, batch axes merged to one stride) goes to cuBLASLt;
//! otherwise to the generic GEMM kernel (f32 storage, mixed dtypes, odd views). `Attention` on
//! bf16 with head dim 64 / 128 and strides that are multiples of 8 goes to the flash kernel,
//! otherwise to the generic attention kernel. `Conv2d` on bf16 (groups 1) is im2col into bounded
//! scratch + cuBLASLt GEMMs (see [`conv_gemm`]), otherwise a direct generic kernel. Operands
//! whose index maps are not strided are first copied to dense scratch by a generated kernel.

mod attention;
mod attention_grad;
mod conv;
mod conv_gemm;
mod epilogue;
mod lowering;
mod matmul;

pub use crate::bind::{BufRef, IoSlot, ParamSlot};

use crate::backend::{PlanStats, RuntimeError};
use crate::bind::{bind_plan, plan_stats};
use crate::storage::StorageMode;
use lowering::CudaLowering;
use qie_codegen::{KernelProgram, LoweredGroup};
use qie_ir::plan::{FusionPlan, MemoryPlan};
use qie_ir::{DType, Graph};
use std::collections::BTreeMap;

/// The generic library kernels (templates instantiated per dtype combination).
pub const GENERIC: &str = include_str!("../../../kernels/generic.cuh");

/// A kernel argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KArg {
    /// A buffer address plus a byte offset (an operand view's start).
    Ptr(BufRef, usize),
    /// The null pointer (an absent mask).
    Null,
    I32(i32),
    I64(i64),
    F32(f32),
}

/// A (batched) cuBLASLt GEMM, pointers resolved at run time: `a`, `b`, `d` are (buffer, byte
/// offset). The other fields have [`super::GemmArgs`]' meaning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmStep {
    pub a: (BufRef, usize),
    pub b: (BufRef, usize),
    pub d: BufRef,
    /// Byte offset of `d[0, 0]` in `d`, and its row stride in elements (`n` when dense; the
    /// conv fast path writes column blocks of a wider matrix).
    pub d_offset: usize,
    pub ld_d: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
    pub ld_a: usize,
    pub ld_b: usize,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    /// A fused epilogue and its bias (buffer, byte offset) of N bf16 values.
    pub epilogue: GemmEpilogue,
    pub bias: Option<(BufRef, usize)>,
    /// BF16 or F32 (all operands alike).
    pub dtype: DType,
}

/// What cuBLASLt applies to the accumulator before the store (see [`super::Epilogue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmEpilogue {
    None,
    Bias,
    Gelu,
    GeluBias,
}

/// One flash-attention call; strides in elements ([B, S, H, D] batch / seq / head).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlashStep {
    pub q: (BufRef, usize),
    pub k: (BufRef, usize),
    pub v: (BufRef, usize),
    pub mask: Option<(BufRef, usize)>,
    pub out: BufRef,
    pub lse: BufRef,
    pub batch: usize,
    pub seq_q: usize,
    pub seq_k: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub q_strides: [usize; 3],
    pub k_strides: [usize; 3],
    pub v_strides: [usize; 3],
    pub mask_batch_stride: usize,
}

/// The gradient half of an attention backward step: the output cotangent, the delta scratch
/// ([B, H, Sq] f32) and the packed output dq | dk | dv (dense [B, Sq + 2 Sk, H, D] bf16).
#[derive(Clone, Debug, PartialEq)]
pub struct FlashGradStep {
    pub dout: (BufRef, usize),
    pub dout_strides: [usize; 3],
    pub delta: BufRef,
    pub out: BufRef,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PlanStep {
    Kernel {
        /// Symbol of the kernel (see [`CudaPlan::kernels`]).
        name: String,
        /// What it computes, for messages (`g12_add_exp`, `gemm g40`).
        label: String,
        grid: (u32, u32, u32),
        block: u32,
        args: Vec<KArg>,
    },
    Gemm {
        label: String,
        gemm: GemmStep,
    },
    Flash {
        label: String,
        flash: FlashStep,
    },
    /// Attention backward: `flash` recomputes O and the lse into scratch, then the gradient
    /// kernels run (see [`FlashGradStep`]).
    FlashGrad {
        label: String,
        flash: FlashStep,
        grad: FlashGradStep,
    },
    /// Device-to-device copy of `src`'s bytes into `dst` (an alias that got its own slot).
    Copy {
        src: BufRef,
        dst: BufRef,
    },
    /// Fills `dst` with zero bytes (a GEMM over an empty K).
    Zero {
        dst: BufRef,
    },
}

impl PlanStep {
    pub fn label(&self) -> String {
        match self {
            PlanStep::Kernel { label, name, .. } => format!("{label} ({name})"),
            PlanStep::Gemm { label, .. }
            | PlanStep::Flash { label, .. }
            | PlanStep::FlashGrad { label, .. } => label.clone(),
            PlanStep::Copy { dst, .. } => format!("copy {} bytes", dst.bytes()),
            PlanStep::Zero { dst } => format!("zero {} bytes", dst.bytes()),
        }
    }
}

/// A plan for the CUDA backend, before any device is involved.
#[derive(Clone, Debug)]
pub struct CudaPlan {
    /// The graph with storage dtypes (see [`crate::storage`]).
    pub graph: Graph,
    pub fusion: FusionPlan,
    pub memory: MemoryPlan,
    pub lowered: Vec<LoweredGroup>,
    pub steps: Vec<PlanStep>,
    /// Kernel symbol -> source (function definitions; compile after the prelude and
    /// [`GENERIC`]). Sorted by symbol, so module texts are deterministic.
    pub kernels: BTreeMap<String, String>,
    /// Generated-kernel symbol -> the program it was rendered from (the first one; programs
    /// with the same symbol have the same text). Library kernels (`qgemm_..`) have none.
    pub programs: BTreeMap<String, KernelProgram>,
    /// The fusion group (index into `fusion.groups`) each step of `steps` comes from.
    pub step_groups: Vec<usize>,
    pub inputs: Vec<IoSlot>,
    pub outputs: Vec<IoSlot>,
    pub params: Vec<ParamSlot>,
    /// Plan region plus scratch.
    pub arena_bytes: usize,
    pub stats: PlanStats,
    pub mode: StorageMode,
}

impl CudaPlan {
    /// Binds the plan. `graph` holds storage dtypes; `visible` is the same graph before storage
    /// assignment (the types callers bind inputs and receive outputs with).
    pub fn new(
        graph: Graph,
        visible: &Graph,
        fusion: FusionPlan,
        memory: MemoryPlan,
        mode: StorageMode,
    ) -> Result<CudaPlan, RuntimeError> {
        let lowered = qie_codegen::lower_plan_with_memory(&graph, &fusion, &memory)
            .map_err(|e| RuntimeError::Compile(e.to_string()))?;
        let bound = bind_plan(&graph, visible, &memory, &lowered, CudaLowering::new(mode))?;
        let l = bound.lowering;
        let stats = plan_stats(&fusion, &memory, bound.scratch_bytes, l.launches);
        Ok(CudaPlan {
            graph,
            fusion,
            memory,
            lowered,
            steps: l.steps,
            kernels: l.kernels,
            programs: l.programs,
            step_groups: l.step_groups,
            inputs: bound.inputs,
            outputs: bound.outputs,
            params: bound.params,
            arena_bytes: bound.arena_bytes,
            stats,
            mode,
        })
    }

    /// Whether any step uses the flash-attention kernel (loaded on demand).
    pub fn uses_flash(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, PlanStep::Flash { .. } | PlanStep::FlashGrad { .. }))
    }

    /// Whether any step uses the flash-attention backward kernels (loaded on demand).
    pub fn uses_flash_backward(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, PlanStep::FlashGrad { .. }))
    }
}
