//! Device-free half of the CUDA executable: binds lowered groups to arena offsets and decides,
//! step by step, which kernel runs it. Everything here is plain data (kernel sources, launch
//! shapes, buffer references), so a plan can be built and its kernels compiled with NVRTC on a
//! machine without a GPU (tests do, see `runtime/tests/cuda_backend_render.rs`).
//!
//! Library steps: `MatMul` on bf16 operands whose layouts cuBLASLt can read (any strides with a
//! unit stride in one of the two matrix axes, batch axes merged to one stride) goes to cuBLASLt;
//! otherwise to the generic GEMM kernel (f32 storage, mixed dtypes, odd views). `Attention` on
//! bf16 with head dim 64 / 128 and strides that are multiples of 8 goes to the flash kernel,
//! otherwise to the generic attention kernel. `Conv2d` on bf16 (groups 1) is im2col into bounded
//! scratch + cuBLASLt GEMMs (see `conv_gemm`), otherwise a direct generic kernel. Operands
//! whose index maps are not strided are first copied to dense scratch by a generated kernel.

use super::storage::StorageMode;
use crate::backend::{PlanStats, RuntimeError};
use qie_codegen::cuda::{render_program, KernelLaunch, RenderOptions};
use qie_codegen::{
    copy_program, Binding, IndexMap, Instr, KernelProgram, LoweredGroup, Operand, Step, View,
};
use qie_ir::plan::{FusionPlan, GroupKind, MemoryPlan, Slot};
use qie_ir::{DType, Graph, NodeId, Op, TensorType};
use std::collections::{BTreeMap, HashMap};

#[path = "conv_gemm.rs"]
mod conv_gemm;

/// The generic library kernels (templates instantiated per dtype combination).
pub const GENERIC: &str = include_str!("../../kernels/generic.cuh");

fn align(bytes: usize) -> usize {
    bytes.div_ceil(MemoryPlan::ALIGN) * MemoryPlan::ALIGN
}

fn compile_err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Compile(m.into())
}

/// Where a value lives at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufRef {
    /// `bytes` at `offset` from the start of the executable's arena (plan region then scratch).
    Arena {
        offset: usize,
        bytes: usize,
        dtype: DType,
    },
    /// The `index`-th weight of the plan.
    Param {
        index: usize,
        bytes: usize,
        dtype: DType,
    },
}

impl BufRef {
    pub fn dtype(&self) -> DType {
        match self {
            BufRef::Arena { dtype, .. } | BufRef::Param { dtype, .. } => *dtype,
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            BufRef::Arena { bytes, .. } | BufRef::Param { bytes, .. } => *bytes,
        }
    }

    fn elements(&self) -> usize {
        self.bytes() / self.dtype().size_bytes()
    }

    fn byte_range(&self) -> Option<(usize, usize)> {
        match self {
            BufRef::Arena { offset, bytes, .. } => Some((*offset, offset + bytes)),
            BufRef::Param { .. } => None,
        }
    }

    fn overlaps(&self, other: &BufRef) -> bool {
        match (self.byte_range(), other.byte_range()) {
            (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1 && a1 > a0 && b1 > b0,
            _ => false,
        }
    }
}

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
            PlanStep::Gemm { label, .. } | PlanStep::Flash { label, .. } => label.clone(),
            PlanStep::Copy { dst, .. } => format!("copy {} bytes", dst.bytes()),
            PlanStep::Zero { dst } => format!("zero {} bytes", dst.bytes()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct IoSlot {
    pub name: String,
    /// The type callers see (f32 for every float).
    pub ty: TensorType,
    /// Where it lives, in its storage dtype.
    pub buf: BufRef,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSlot {
    pub name: String,
    pub ty: TensorType,
    /// Storage dtype on the device.
    pub storage: DType,
}

/// A plan for the CUDA backend, before any device is involved.
#[derive(Clone, Debug)]
pub struct CudaPlan {
    /// The graph with storage dtypes (see [`super::storage`]).
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
            .map_err(|e| compile_err(e.to_string()))?;
        let mut b = Builder {
            graph: &graph,
            memory: &memory,
            mode,
            param_index: HashMap::new(),
            params: vec![],
            extra: HashMap::new(),
            scratch_base: align(memory.arena_bytes),
            scratch_top: 0,
            scratch_max: 0,
            steps: vec![],
            kernels: BTreeMap::new(),
            programs: BTreeMap::new(),
            step_groups: vec![],
            launches: 0,
            fake: 0,
        };
        let mut inputs = vec![];
        for (name, id) in graph.inputs() {
            let buf = b.resolve(&binding(&graph, id))?;
            inputs.push(IoSlot {
                name: name.to_string(),
                ty: visible.ty(id).clone(),
                buf,
            });
        }
        for lg in &lowered {
            b.group(lg)?;
            b.step_groups.resize(b.steps.len(), lg.index);
        }
        let mut outputs = vec![];
        for (name, id) in &graph.outputs {
            let buf = b.resolve(&binding(&graph, *id))?;
            outputs.push(IoSlot {
                name: name.clone(),
                ty: visible.ty(*id).clone(),
                buf,
            });
        }
        let count = |k: GroupKind| fusion.groups.iter().filter(|g| g.kind == k).count();
        let stats = PlanStats {
            arena_bytes: memory.arena_bytes,
            scratch_bytes: b.scratch_max,
            groups: fusion.groups.len(),
            elementwise_groups: count(GroupKind::Elementwise),
            reduction_groups: count(GroupKind::Reduction),
            library_groups: count(GroupKind::Library),
            data_groups: count(GroupKind::Data),
            alias_groups: count(GroupKind::Alias),
            kernels: b.launches,
        };
        let arena_bytes = b.scratch_base + b.scratch_max;
        let (steps, kernels, params) = (b.steps, b.kernels, b.params);
        let (programs, step_groups) = (b.programs, b.step_groups);
        Ok(CudaPlan {
            graph,
            fusion,
            memory,
            lowered,
            steps,
            kernels,
            programs,
            step_groups,
            inputs,
            outputs,
            params,
            arena_bytes,
            stats,
            mode,
        })
    }

    /// Whether any step uses the flash-attention kernel (loaded on demand).
    pub fn uses_flash(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, PlanStep::Flash { .. }))
    }
}

fn binding(graph: &Graph, id: NodeId) -> Binding {
    Binding {
        node: id,
        ty: graph.ty(id).clone(),
    }
}

fn dtype_tag(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::Bool => "bool",
    }
}

fn float_type(d: DType, what: &str) -> Result<&'static str, RuntimeError> {
    match d {
        DType::F32 => Ok("float"),
        DType::BF16 => Ok("bf16_t"),
        DType::F16 => Ok("f16_t"),
        _ => Err(RuntimeError::Unsupported(format!(
            "{what} on {d} values (the CUDA backend's library kernels are float-only)"
        ))),
    }
}

/// A strided view read as a batch of matrices: (batch stride, leading dimension, transposed).
/// `transposed` means the [r, c] matrix is stored as a row-major [c, r] one.
fn gemm_layout(v: &View, batch: usize) -> Option<(usize, usize, bool)> {
    let rank = v.rank();
    let (r, c) = (v.shape[rank - 2], v.shape[rank - 1]);
    let v3 = v.reshaped(&[batch, r, c])?;
    let (sb, sr, sc) = (v3.strides[0], v3.strides[1], v3.strides[2]);
    if sb < 0 || sr < 0 || sc < 0 || v3.offset < 0 {
        return None;
    }
    let (sb, sr, sc) = (sb as usize, sr as usize, sc as usize);
    if c == 1 || sc == 1 {
        let ld = if r == 1 { c } else { sr };
        (ld >= c).then_some((sb, ld, false))
    } else if r == 1 || sr == 1 {
        let ld = sc;
        (ld >= r).then_some((sb, ld, true))
    } else {
        None
    }
}

/// (batch, rows, cols) strides of a view read as [batch, r, c], or None when the batch axes do
/// not merge.
fn batched_strides(v: &View, batch: usize) -> Option<[i64; 3]> {
    let rank = v.rank();
    let v3 = v.reshaped(&[batch, v.shape[rank - 2], v.shape[rank - 1]])?;
    Some([v3.strides[0], v3.strides[1], v3.strides[2]])
}

struct Builder<'a> {
    graph: &'a Graph,
    memory: &'a MemoryPlan,
    mode: StorageMode,
    param_index: HashMap<String, usize>,
    params: Vec<ParamSlot>,
    /// Buffers of values without an arena slot of their own (temporaries, aliases, copies).
    extra: HashMap<NodeId, BufRef>,
    scratch_base: usize,
    scratch_top: usize,
    scratch_max: usize,
    steps: Vec<PlanStep>,
    kernels: BTreeMap<String, String>,
    programs: BTreeMap<String, KernelProgram>,
    step_groups: Vec<usize>,
    launches: usize,
    fake: u32,
}

impl Builder<'_> {
    fn param(&mut self, id: NodeId) -> BufRef {
        let node = self.graph.node(id);
        let Op::Param { name, ty } = &node.op else {
            unreachable!("only called for params")
        };
        let index = *self.param_index.entry(name.clone()).or_insert_with(|| {
            self.params.push(ParamSlot {
                name: name.clone(),
                ty: ty.clone(),
                storage: node.ty.dtype,
            });
            self.params.len() - 1
        });
        BufRef::Param {
            index,
            bytes: node.ty.size_bytes(),
            dtype: node.ty.dtype,
        }
    }

    fn resolve(&mut self, b: &Binding) -> Result<BufRef, RuntimeError> {
        let id = b.node;
        if let Some(r) = self.extra.get(&id) {
            return Ok(*r);
        }
        if matches!(self.graph.node(id).op, Op::Param { .. }) {
            return Ok(self.param(id));
        }
        match self.memory.slot(id) {
            Some(Slot::Arena { offset, bytes }) => {
                let need = b.ty.size_bytes();
                if bytes < need {
                    return Err(compile_err(format!(
                        "memory plan gives {id} ({}) {bytes} bytes",
                        b.ty
                    )));
                }
                Ok(BufRef::Arena {
                    offset,
                    bytes: need,
                    dtype: b.ty.dtype,
                })
            }
            Some(Slot::Param) => Err(compile_err(format!(
                "memory plan marks non-param {id} as a param"
            ))),
            None => Err(compile_err(format!(
                "{id} ({}, {}) has no memory slot but is needed across kernels",
                self.graph.node(id).op.mnemonic(),
                b.ty
            ))),
        }
    }

    fn scratch(&mut self, ty: &TensorType) -> BufRef {
        let offset = self.scratch_base + self.scratch_top;
        let bytes = ty.size_bytes();
        self.scratch_top += align(bytes.max(1));
        self.scratch_max = self.scratch_max.max(self.scratch_top);
        BufRef::Arena {
            offset,
            bytes,
            dtype: ty.dtype,
        }
    }

    /// A synthetic node id bound to `buf` (for copies into scratch).
    fn fake_binding(&mut self, ty: TensorType, buf: BufRef) -> Binding {
        self.fake += 1;
        let node = NodeId(u32::MAX - self.fake);
        self.extra.insert(node, buf);
        Binding { node, ty }
    }

    fn add_kernel(&mut self, name: &str, source: String) {
        self.kernels.entry(name.to_string()).or_insert(source);
    }

    fn kernel(&mut self, p: &KernelProgram) -> Result<(), RuntimeError> {
        let inputs = p
            .inputs
            .iter()
            .map(|b| self.resolve(b))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = p
            .outputs
            .iter()
            .map(|b| self.resolve(b))
            .collect::<Result<Vec<_>, _>>()?;
        for (b, r) in p
            .inputs
            .iter()
            .zip(&inputs)
            .chain(p.outputs.iter().zip(&outputs))
        {
            if r.dtype() != b.ty.dtype || r.elements() < b.ty.numel() {
                return Err(compile_err(format!(
                    "kernel {}: {} bound to a {:?} buffer of {} bytes",
                    p.name,
                    b.ty,
                    r.dtype(),
                    r.bytes()
                )));
            }
        }
        let overlapping = check_in_place(p, &inputs, &outputs)?;
        let rendered = render_program(
            p,
            &RenderOptions {
                restrict: !overlapping,
            },
        )
        .map_err(|e| RuntimeError::Unsupported(format!("kernel {}: {e}", p.name)))?;
        let KernelLaunch { grid, block } = rendered.launch;
        self.add_kernel(&rendered.name, rendered.source);
        if !self.programs.contains_key(&rendered.name) {
            self.programs.insert(rendered.name.clone(), p.clone());
        }
        if grid == 0 {
            return Ok(());
        }
        let args = inputs
            .iter()
            .chain(&outputs)
            .map(|&r| KArg::Ptr(r, 0))
            .collect();
        self.steps.push(PlanStep::Kernel {
            name: rendered.name,
            label: rendered.label,
            grid: (grid, 1, 1),
            block,
            args,
        });
        self.launches += 1;
        Ok(())
    }

    /// Copies `map` of `src` (over the shape `map` is defined on) into dense scratch.
    fn copy_dense(
        &mut self,
        src: &Binding,
        map: IndexMap,
        name: &str,
    ) -> Result<(BufRef, View), RuntimeError> {
        let ty = TensorType {
            dtype: src.ty.dtype,
            shape: map.shape().into(),
        };
        let tmp = self.scratch(&ty);
        let dst = self.fake_binding(ty.clone(), tmp);
        let p = copy_program(name, src.clone(), map, dst);
        self.kernel(&p)?;
        Ok((tmp, View::contiguous(&ty.shape)))
    }

    /// A library operand as (buffer, strided view); non-affine maps are copied to scratch.
    fn operand(&mut self, op: &Operand, name: &str) -> Result<(BufRef, View), RuntimeError> {
        let buf = self.resolve(&op.buffer)?;
        if let Some(v) = op.map.as_strided() {
            check_view(v, buf, name)?;
            return Ok((buf, v.clone()));
        }
        self.copy_dense(&op.buffer, op.map.clone(), name)
    }

    /// A strided operand view copied to dense scratch (for layouts a fast path cannot read).
    fn densify(&mut self, op: &Operand, name: &str) -> Result<(BufRef, View), RuntimeError> {
        self.copy_dense(&op.buffer, op.map.clone(), name)
    }

    fn group(&mut self, lg: &LoweredGroup) -> Result<(), RuntimeError> {
        self.scratch_top = 0;
        for t in &lg.temporaries {
            if self.memory.slot(t.node).is_none() && !self.extra.contains_key(&t.node) {
                let r = self.scratch(&t.ty);
                self.extra.insert(t.node, r);
            }
        }
        let mut skip_next = false;
        for (si, step) in lg.steps.iter().enumerate() {
            if std::mem::take(&mut skip_next) {
                continue;
            }
            let name = format!("g{}_s{si}", lg.index);
            match step {
                Step::Kernel(p) => self.kernel(p)?,
                Step::MatMul {
                    out,
                    a,
                    b,
                    transpose_a,
                    transpose_b,
                } => {
                    let fusable = epilogue_candidate(lg, si, out);
                    skip_next = self.matmul(
                        out,
                        a,
                        b,
                        *transpose_a,
                        *transpose_b,
                        fusable.as_ref(),
                        &name,
                    )?;
                }
                Step::Attention {
                    out,
                    q,
                    k,
                    v,
                    mask,
                    scale,
                } => self.attention(out, q, k, v, mask.as_ref(), *scale, &name)?,
                Step::Conv2d {
                    out,
                    x,
                    w,
                    stride,
                    padding,
                    dilation,
                    groups,
                } => self.conv2d(out, x, w, *stride, *padding, *dilation, *groups, &name)?,
                Step::Alias { src, dst } => {
                    let s = self.resolve(src)?;
                    match self.memory.slot(dst.node) {
                        Some(Slot::Arena { .. }) => {
                            let d = self.resolve(dst)?;
                            if d != s {
                                if d.bytes() != s.bytes() || d.dtype() != s.dtype() {
                                    return Err(compile_err(format!(
                                        "{name}: alias of different size or storage"
                                    )));
                                }
                                self.steps.push(PlanStep::Copy { src: s, dst: d });
                            }
                        }
                        _ => {
                            self.extra.insert(dst.node, s);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Plans a matmul; with `fusable`, the epilogue kernel that follows it is folded into the
    /// cuBLASLt call when the fast path is taken. Returns whether it was (the caller then skips
    /// that kernel).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &mut self,
        out: &Binding,
        a: &Operand,
        b: &Operand,
        ta: bool,
        tb: bool,
        fusable: Option<&FusedEpilogue>,
        name: &str,
    ) -> Result<bool, RuntimeError> {
        let out_r = self.resolve(out)?;
        let (mut ab, mut av) = self.operand(a, name)?;
        let (mut bb, mut bv) = self.operand(b, name)?;
        check_disjoint(&[ab, bb], out_r, name)?;
        let (ra, rb) = (av.rank(), bv.rank());
        let (a0, a1) = (av.shape[ra - 2], av.shape[ra - 1]);
        let (b0, b1) = (bv.shape[rb - 2], bv.shape[rb - 1]);
        let (m, k) = if ta { (a1, a0) } else { (a0, a1) };
        let n = if tb { b0 } else { b1 };
        let batch: usize = av.shape[..ra - 2].iter().product();
        let b_batch: usize = bv.shape[..rb - 2].iter().product();
        if batch == 0 || m == 0 || n == 0 {
            return Ok(false);
        }
        if k == 0 {
            self.steps.push(PlanStep::Zero { dst: out_r });
            return Ok(false);
        }
        let mut label = format!("matmul {name} [{batch}x{m}x{k}] x [{n}]");
        let fast = self.mode == StorageMode::Bf16
            && [ab.dtype(), bb.dtype(), out_r.dtype()]
                .iter()
                .all(|&d| d == DType::BF16);
        if fast {
            let mut la = gemm_layout(&av, batch);
            if la.is_none() {
                (ab, av) = self.densify(a, name)?;
                la = gemm_layout(&av, batch);
            }
            let mut lb = gemm_layout(&bv, b_batch);
            if lb.is_none() {
                (bb, bv) = self.densify(b, name)?;
                lb = gemm_layout(&bv, b_batch);
            }
            let ((sa, lda, fa), (sb, ldb, fb)) = (
                la.expect("dense layouts are readable"),
                lb.expect("dense layouts are readable"),
            );
            let el = DType::BF16.size_bytes();
            let (mut d, mut epilogue, mut bias) = (out_r, GemmEpilogue::None, None);
            let mut fused = false;
            if let Some(f) = fusable {
                let dst = self.resolve(&f.dst)?;
                let bias_ref = match &f.bias {
                    Some((bb, off)) => Some((self.resolve(bb)?, off * el)),
                    None => None,
                };
                let ok = dst.dtype() == DType::BF16
                    && bias_ref.is_none_or(|(r, _)| r.dtype() == DType::BF16)
                    && !ab.overlaps(&dst)
                    && !bb.overlaps(&dst);
                if ok {
                    (d, epilogue, bias, fused) = (dst, f.kind, bias_ref, true);
                    label.push_str(&format!(" + {:?}", f.kind).to_lowercase());
                }
            }
            self.steps.push(PlanStep::Gemm {
                label,
                gemm: GemmStep {
                    a: (ab, av.offset as usize * el),
                    b: (bb, bv.offset as usize * el),
                    d,
                    d_offset: 0,
                    ld_d: n,
                    m,
                    n,
                    k,
                    transpose_a: ta ^ fa,
                    transpose_b: tb ^ fb,
                    ld_a: lda,
                    ld_b: ldb,
                    batch,
                    stride_a: sa,
                    stride_b: if b_batch == 1 { 0 } else { sb },
                    epilogue,
                    bias,
                },
            });
            self.launches += 1;
            return Ok(fused);
        }
        // Generic kernel: any strides, batch axes merged (copied dense when they do not merge).
        let mut sa = batched_strides(&av, batch);
        if sa.is_none() {
            (ab, av) = self.densify(a, name)?;
            sa = batched_strides(&av, batch);
        }
        let mut sb = batched_strides(&bv, b_batch);
        if sb.is_none() {
            (bb, bv) = self.densify(b, name)?;
            sb = batched_strides(&bv, b_batch);
        }
        let (sa, sb) = (sa.expect("dense"), sb.expect("dense"));
        // a(m, k) and b(k, n) strides after the IR's transposes.
        let (sam, sak) = if ta { (sa[2], sa[1]) } else { (sa[1], sa[2]) };
        let (sbk, sbn) = if tb { (sb[2], sb[1]) } else { (sb[1], sb[2]) };
        let sbb = if b_batch == 1 { 0 } else { sb[0] };
        let types = [
            float_type(ab.dtype(), "matmul")?,
            float_type(bb.dtype(), "matmul")?,
            float_type(out_r.dtype(), "matmul")?,
        ];
        let kname = format!(
            "qgemm_{}_{}_{}",
            dtype_tag(ab.dtype()),
            dtype_tag(bb.dtype()),
            dtype_tag(out_r.dtype())
        );
        let source = format!(
            "extern \"C\" __global__ void __launch_bounds__(256) {kname}(const {}* a, const {}* b, {}* c, int batch, int M, int N, int K, long long sab, long long sam, long long sak, long long sbb, long long sbk, long long sbn) {{\n    qie_gemm(a, b, c, batch, M, N, K, sab, sam, sak, sbb, sbk, sbn);\n}}\n",
            types[0], types[1], types[2]
        );
        self.add_kernel(&kname, source);
        let grid = (
            n.div_ceil(16) as u32,
            m.div_ceil(16) as u32,
            batch.min(65535) as u32,
        );
        if grid.1 > 65535 {
            return Err(RuntimeError::Unsupported(format!(
                "{name}: generic matmul with M = {m} rows"
            )));
        }
        let (ea, eb) = (ab.dtype().size_bytes(), bb.dtype().size_bytes());
        let i32_arg = |x: usize| KArg::I32(x as i32);
        self.steps.push(PlanStep::Kernel {
            name: kname,
            label,
            grid,
            block: 256,
            args: vec![
                KArg::Ptr(ab, av.offset as usize * ea),
                KArg::Ptr(bb, bv.offset as usize * eb),
                KArg::Ptr(out_r, 0),
                i32_arg(batch),
                i32_arg(m),
                i32_arg(n),
                i32_arg(k),
                KArg::I64(sa[0]),
                KArg::I64(sam),
                KArg::I64(sak),
                KArg::I64(sbb),
                KArg::I64(sbk),
                KArg::I64(sbn),
            ],
        });
        self.launches += 1;
        Ok(false)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        out: &Binding,
        q: &Operand,
        k: &Operand,
        v: &Operand,
        mask: Option<&Operand>,
        scale: f64,
        name: &str,
    ) -> Result<(), RuntimeError> {
        let out_r = self.resolve(out)?;
        let (qb, qv) = self.operand(q, name)?;
        let (kb, kv) = self.operand(k, name)?;
        let (vb, vv) = self.operand(v, name)?;
        let mut m = match mask {
            Some(m) => Some(self.operand(m, name)?),
            None => None,
        };
        let mut ops = vec![qb, kb, vb];
        ops.extend(m.as_ref().map(|m| m.0));
        check_disjoint(&ops, out_r, name)?;
        let [batch, sq, heads, d] = [qv.shape[0], qv.shape[1], qv.shape[2], qv.shape[3]];
        let sk = kv.shape[1];
        let dv = vv.shape[3];
        if batch == 0 || sq == 0 || heads == 0 || dv == 0 {
            return Ok(());
        }
        if let Some((mb, _)) = &m {
            if mb.dtype() != DType::Bool {
                return Err(RuntimeError::Unsupported(format!(
                    "{name}: attention mask stored as {}",
                    mb.dtype()
                )));
            }
        }
        // The mask must be contiguous along keys for either kernel's fast reads; copy otherwise.
        if let (Some(op), Some((_, mv))) = (mask, &m) {
            if sk > 1 && mv.strides[1] != 1 {
                m = Some(self.densify(op, name)?);
            }
        }
        let label = format!("attention {name} [B{batch} Sq{sq} Sk{sk} H{heads} D{d}]");
        let strides = |v: &View| -> Option<[usize; 3]> {
            if v.strides.iter().any(|&s| s < 0) || (v.shape[3] > 1 && v.strides[3] != 1) {
                return None;
            }
            let s = [
                v.strides[0] as usize,
                v.strides[1] as usize,
                v.strides[2] as usize,
            ];
            (s.iter().all(|x| x % 8 == 0) && v.offset % 8 == 0).then_some(s)
        };
        let bf16 = [qb.dtype(), kb.dtype(), vb.dtype(), out_r.dtype()]
            .iter()
            .all(|&t| t == DType::BF16);
        let flash = self.mode == StorageMode::Bf16
            && bf16
            && d == dv
            && (d == 64 || d == 128)
            && sk > 0
            && batch <= 65535
            && heads <= 65535;
        if let (true, Some(qs), Some(ks), Some(vs)) =
            (flash, strides(&qv), strides(&kv), strides(&vv))
        {
            let lse = self.scratch(&TensorType::new(DType::F32, &[batch, heads, sq]));
            let el = DType::BF16.size_bytes();
            self.steps.push(PlanStep::Flash {
                label,
                flash: FlashStep {
                    q: (qb, qv.offset as usize * el),
                    k: (kb, kv.offset as usize * el),
                    v: (vb, vv.offset as usize * el),
                    mask: m.as_ref().map(|(mb, mv)| (*mb, mv.offset as usize)),
                    out: out_r,
                    lse,
                    batch,
                    seq_q: sq,
                    seq_k: sk,
                    heads,
                    head_dim: d,
                    scale: scale as f32,
                    q_strides: qs,
                    k_strides: ks,
                    v_strides: vs,
                    mask_batch_stride: m
                        .as_ref()
                        .map_or(0, |(_, mv)| mv.strides[0].max(0) as usize),
                },
            });
            self.launches += 1;
            return Ok(());
        }
        if d > 512 || dv > 512 {
            return Err(RuntimeError::Unsupported(format!(
                "{name}: attention head dims {d} / {dv} (the generic kernel takes up to 512)"
            )));
        }
        if sq > i32::MAX as usize || heads > 65535 || batch > 65535 {
            return Err(RuntimeError::Unsupported(format!(
                "{name}: attention grid too large"
            )));
        }
        let t = [
            float_type(qb.dtype(), "attention")?,
            float_type(kb.dtype(), "attention")?,
            float_type(vb.dtype(), "attention")?,
            float_type(out_r.dtype(), "attention")?,
        ];
        let kname = format!(
            "qattn_{}_{}_{}_{}",
            dtype_tag(qb.dtype()),
            dtype_tag(kb.dtype()),
            dtype_tag(vb.dtype()),
            dtype_tag(out_r.dtype())
        );
        let ll =
            |p: &str| format!("long long {p}b, long long {p}s, long long {p}h, long long {p}d");
        let source = format!(
            "extern \"C\" __global__ void __launch_bounds__(128) {kname}(const {}* q, const {}* k, const {}* v, const u8_t* mask, {}* o, int Sq, int Sk, int H, int D, int Dv, float scale, {}, {}, {}, long long mb, long long ms) {{\n    qie_attention(q, k, v, mask, o, Sq, Sk, H, D, Dv, scale, qb, qs, qh, qd, kb, ks, kh, kd, vb, vs, vh, vd, mb, ms);\n}}\n",
            t[0], t[1], t[2], t[3], ll("q"), ll("k"), ll("v")
        );
        self.add_kernel(&kname, source);
        let ptr = |b: BufRef, v: &View| KArg::Ptr(b, v.offset as usize * b.dtype().size_bytes());
        let mut args = vec![ptr(qb, &qv), ptr(kb, &kv), ptr(vb, &vv)];
        args.push(match &m {
            Some((mb, mv)) => ptr(*mb, mv),
            None => KArg::Null,
        });
        args.push(KArg::Ptr(out_r, 0));
        for x in [sq, sk, heads, d, dv] {
            args.push(KArg::I32(x as i32));
        }
        args.push(KArg::F32(scale as f32));
        for view in [&qv, &kv, &vv] {
            for s in &view.strides {
                args.push(KArg::I64(*s));
            }
        }
        let (mb_s, ms_s) = m
            .as_ref()
            .map_or((0, 0), |(_, mv)| (mv.strides[0], mv.strides[1]));
        args.push(KArg::I64(mb_s));
        args.push(KArg::I64(ms_s));
        self.steps.push(PlanStep::Kernel {
            name: kname,
            label,
            grid: (sq as u32, heads as u32, batch as u32),
            block: 128,
            args,
        });
        self.launches += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn conv2d(
        &mut self,
        out: &Binding,
        x: &Operand,
        w: &Operand,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
        name: &str,
    ) -> Result<(), RuntimeError> {
        let out_r = self.resolve(out)?;
        let (xb, xv) = self.operand(x, name)?;
        let (wb, wv) = self.operand(w, name)?;
        check_disjoint(&[xb, wb], out_r, name)?;
        let os = &out.ty.shape;
        let total: usize = os.iter().product();
        if total == 0 {
            return Ok(());
        }
        let planned = self.conv2d_gemm(
            out,
            out_r,
            (xb, &xv),
            (w, wb, wv.clone()),
            stride,
            padding,
            dilation,
            groups,
            name,
        )?;
        if planned {
            return Ok(());
        }
        let t = [
            float_type(xb.dtype(), "conv2d")?,
            float_type(wb.dtype(), "conv2d")?,
            float_type(out_r.dtype(), "conv2d")?,
        ];
        let kname = format!(
            "qconv_{}_{}_{}",
            dtype_tag(xb.dtype()),
            dtype_tag(wb.dtype()),
            dtype_tag(out_r.dtype())
        );
        let ints = [
            "N", "C", "H", "W", "O", "KH", "KW", "OH", "OW", "sh", "sw", "ph", "pw", "dh", "dw",
            "groups",
        ];
        let longs = ["xn", "xc", "xh", "xw", "wo", "wc", "wh", "ww"];
        let params: Vec<String> = ints
            .iter()
            .map(|p| format!("int {p}"))
            .chain(longs.iter().map(|p| format!("long long {p}")))
            .collect();
        let names: Vec<&str> = ints.iter().chain(longs.iter()).copied().collect();
        let source = format!(
            "extern \"C\" __global__ void __launch_bounds__(256) {kname}(const {}* x, const {}* w, {}* o, {}) {{\n    qie_conv2d(x, w, o, {});\n}}\n",
            t[0], t[1], t[2], params.join(", "), names.join(", ")
        );
        self.add_kernel(&kname, source);
        let mut args = vec![
            KArg::Ptr(xb, xv.offset as usize * xb.dtype().size_bytes()),
            KArg::Ptr(wb, wv.offset as usize * wb.dtype().size_bytes()),
            KArg::Ptr(out_r, 0),
        ];
        let xs = &xv.shape;
        let ws = &wv.shape;
        for v in [
            xs[0],
            xs[1],
            xs[2],
            xs[3],
            ws[0],
            ws[2],
            ws[3],
            os[2],
            os[3],
            stride[0],
            stride[1],
            padding[0],
            padding[1],
            dilation[0],
            dilation[1],
            groups,
        ] {
            args.push(KArg::I32(v as i32));
        }
        for s in xv.strides.iter().chain(&wv.strides) {
            args.push(KArg::I64(*s));
        }
        self.steps.push(PlanStep::Kernel {
            name: kname,
            label: format!("conv2d {name}"),
            grid: ((total.div_ceil(256)).min(1 << 16) as u32, 1, 1),
            block: 256,
            args,
        });
        self.launches += 1;
        Ok(())
    }
}

/// An epilogue kernel cuBLASLt can apply itself: `dst = kind(anchor [+ bias[n]])`.
#[derive(Clone, Debug, PartialEq)]
struct FusedEpilogue {
    kind: GemmEpilogue,
    /// The bias buffer and the element offset of `bias[0]` in it.
    bias: Option<(Binding, usize)>,
    dst: Binding,
}

/// Whether the step after the matmul at `si` is an epilogue cuBLASLt can fuse: one kernel that
/// reads the matmul result (a temporary no other step reads) at its own index, optionally a
/// bias along the last axis, and stores one value per element densely; and that computes, on
/// sample values, `y + b`, `gelu_tanh(y)` or `gelu_tanh(y + b)` (cuBLASLt's GELU is the tanh
/// form). The check is semantic, so it does not depend on how the model source spells GELU.
fn epilogue_candidate(lg: &LoweredGroup, si: usize, out: &Binding) -> Option<FusedEpilogue> {
    let Some(Step::Kernel(p)) = lg.steps.get(si + 1) else {
        return None;
    };
    let anchor = out.node;
    if !lg.temporaries.iter().any(|t| t.node == anchor) {
        return None;
    }
    let read_later = lg.steps[si + 2..].iter().any(|s| match s {
        Step::Kernel(q) => q.inputs.iter().any(|b| b.node == anchor),
        _ => true,
    });
    if read_later
        || p.is_reduction()
        || !p.epilogue.is_empty()
        || p.outputs.len() != 1
        || p.body.stores.len() != 1
        || p.outputs[0].ty.numel() != out.ty.numel()
        || !p.body.stores[0].map.is_contiguous()
    {
        return None;
    }
    let n = *out.ty.shape.last()?;
    let ai = p.inputs.iter().position(|b| b.node == anchor)?;
    let mut bias = None;
    for s in &p.body.stmts {
        if let Instr::Load { input, map } = &s.instr {
            if *input == ai {
                if !map.is_contiguous() {
                    return None;
                }
            } else {
                // A bias: [.., N] with stride 1 on the last axis, 0 elsewhere.
                let v = map.as_strided()?;
                let rank = v.rank();
                let along_n = rank >= 1
                    && v.shape[rank - 1] == n
                    && n > 1
                    && v.strides[rank - 1] == 1
                    && v.strides[..rank - 1].iter().all(|&x| x == 0)
                    && v.offset >= 0;
                if !along_n || bias.is_some_and(|(i, _)| i != *input) {
                    return None;
                }
                bias = Some((*input, v.offset as usize));
            }
        } else if s.instr.map().is_some() {
            return None;
        }
    }
    if p.inputs.len() != 1 + bias.is_some() as usize {
        return None;
    }
    let gelu =
        |x: f64| 0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x)).tanh());
    let samples = [-3.3, -1.1, -0.37, 0.0, 0.21, 0.8, 1.9, 5.2];
    let biases: &[f64] = if bias.is_some() {
        &[-0.7, 0.0, 1.4]
    } else {
        &[0.0]
    };
    let bi = bias.map(|(i, _)| i);
    let matches = |target: &dyn Fn(f64, f64) -> f64| {
        samples.iter().all(|&y| {
            biases.iter().all(|&b| {
                let mut vals = vec![0.0; p.inputs.len()];
                vals[ai] = y;
                if let Some(i) = bi {
                    vals[i] = b;
                }
                let want = target(y, b);
                eval_scalar(p, &vals)
                    .is_some_and(|got| (got - want).abs() <= 1e-9 * (1.0 + want.abs()))
            })
        })
    };
    let kind = match bias {
        Some(_) if matches(&|y, b| y + b) => GemmEpilogue::Bias,
        Some(_) if matches(&|y, b| gelu(y + b)) => GemmEpilogue::GeluBias,
        None if matches(&|y, _| gelu(y)) => GemmEpilogue::Gelu,
        _ => return None,
    };
    Some(FusedEpilogue {
        kind,
        bias: bias.map(|(i, off)| (p.inputs[i].clone(), off)),
        dst: p.outputs[0].clone(),
    })
}

/// Evaluates a one-output elementwise program in f64 for one element, `vals[i]` being what
/// every load of input `i` reads. `None` for anything but float arithmetic.
fn eval_scalar(p: &KernelProgram, vals: &[f64]) -> Option<f64> {
    use qie_ir::{BinaryOp as B, UnaryOp as U};
    let mut regs = vec![0.0f64; p.num_regs()];
    for s in &p.body.stmts {
        if !s.dtype.is_float() {
            return None;
        }
        let r = |x: qie_codegen::Reg| regs[x.index()];
        let v = match &s.instr {
            Instr::Load { input, .. } => vals[*input],
            Instr::Const { value } => *value,
            Instr::Cast { a } => r(*a),
            Instr::Unary { op, a } => {
                let x = r(*a);
                match op {
                    U::Neg => -x,
                    U::Abs => x.abs(),
                    U::Exp => x.exp(),
                    U::Log => x.ln(),
                    U::Sqrt => x.sqrt(),
                    U::Rsqrt => 1.0 / x.sqrt(),
                    U::Recip => 1.0 / x,
                    U::Sin => x.sin(),
                    U::Cos => x.cos(),
                    U::Tanh => x.tanh(),
                    U::Sigmoid => 1.0 / (1.0 + (-x).exp()),
                    U::Not => return None,
                }
            }
            Instr::Binary { op, a, b } => {
                let (x, y) = (r(*a), r(*b));
                match op {
                    B::Add => x + y,
                    B::Sub => x - y,
                    B::Mul => x * y,
                    B::Div => x / y,
                    B::Max => x.max(y),
                    B::Min => x.min(y),
                    B::Pow => x.powf(y),
                    _ => return None,
                }
            }
            _ => return None,
        };
        regs[s.dst.index()] = v;
    }
    Some(regs[p.body.stores.first()?.value.index()])
}

fn check_disjoint(ops: &[BufRef], out: BufRef, name: &str) -> Result<(), RuntimeError> {
    if ops.iter().any(|o| o.overlaps(&out)) {
        return Err(compile_err(format!(
            "{name}: library output overlaps an operand"
        )));
    }
    Ok(())
}

fn check_view(v: &View, b: BufRef, name: &str) -> Result<(), RuntimeError> {
    let Some((lo, hi)) = v.extent() else {
        return Ok(());
    };
    if lo < 0 || hi >= b.elements() as i64 {
        return Err(compile_err(format!(
            "{name}: operand view {v} outside its buffer"
        )));
    }
    Ok(())
}

/// An output may share bytes with an input only if every load of that input uses the output's
/// store map (same element, read before written, by the same thread). Returns whether any
/// output overlaps an input (then pointers must not be marked `__restrict__`).
fn check_in_place(
    p: &KernelProgram,
    inputs: &[BufRef],
    outputs: &[BufRef],
) -> Result<bool, RuntimeError> {
    let mut any = false;
    for (oi, o) in outputs.iter().enumerate() {
        for (ii, i) in inputs.iter().enumerate() {
            if !o.overlaps(i) {
                continue;
            }
            any = true;
            let stores: Vec<&IndexMap> = p
                .body
                .stores
                .iter()
                .chain(&p.epilogue.stores)
                .filter(|s| s.output == oi)
                .map(|s| &s.map)
                .collect();
            let same = o.byte_range() == i.byte_range()
                && o.dtype().size_bytes() == i.dtype().size_bytes()
                && p.epilogue.stmts.is_empty()
                && !p.is_reduction()
                && stores.len() == 1
                && p.body.stmts.iter().all(|s| match &s.instr {
                    qie_codegen::Instr::Load { input, map } => *input != ii || map == stores[0],
                    qie_codegen::Instr::LoadGather { input, .. } => *input != ii,
                    _ => true,
                });
            if !same {
                return Err(compile_err(format!(
                    "kernel {}: output {} overlaps input {} but is not an in-place elementwise update",
                    p.name, p.outputs[oi].node, p.inputs[ii].node
                )));
            }
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_layouts() {
        // Row-major [2, 3, 4] with batch merged.
        let v = View::contiguous(&[2, 3, 4]);
        assert_eq!(gemm_layout(&v, 2), Some((12, 4, false)));
        // A transposed view: [4, 3] read from a row-major [3, 4].
        let t = View {
            shape: qie_ir::shape(&[4, 3]),
            strides: [1, 4].into_iter().collect(),
            offset: 0,
        };
        assert_eq!(gemm_layout(&t, 1), Some((0, 4, true)));
        // A column slice of a wider matrix: ld is the parent's row length.
        let s = View {
            shape: qie_ir::shape(&[3, 2]),
            strides: [8, 1].into_iter().collect(),
            offset: 2,
        };
        assert_eq!(gemm_layout(&s, 1), Some((0, 8, false)));
        // Neither axis unit-strided.
        let bad = View {
            shape: qie_ir::shape(&[3, 2]),
            strides: [8, 2].into_iter().collect(),
            offset: 0,
        };
        assert_eq!(gemm_layout(&bad, 1), None);
    }
}
