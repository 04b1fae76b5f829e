//! The CPU executable: lowered groups bound to arena offsets, run in order.

use super::attention::{attention, AttentionArgs};
use super::buffer::{Arena, RawBuf};
use super::conv::{conv2d, ConvArgs};
use super::interp::Interp;
use super::matmul::MatMulPlan;
use crate::backend::{CompileOptions, Executable, ParamData, ParamStore, PlanStats, RuntimeError};
use crate::tensor::{Storage, Tensor, TensorData};
use qie_codegen::{
    copy_program, Binding, IndexMap, KernelProgram, LoweredGroup, Operand, Step, View,
};
use qie_ir::plan::{FusionPlan, GroupKind, MemoryPlan, Slot};
use qie_ir::{DType, Graph, NodeId, Op, TensorType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Where a value lives at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufRef {
    Arena {
        offset: usize,
        len: usize,
        storage: Storage,
    },
    Param {
        index: usize,
        len: usize,
        storage: Storage,
    },
}

impl BufRef {
    fn len(&self) -> usize {
        match self {
            BufRef::Arena { len, .. } | BufRef::Param { len, .. } => *len,
        }
    }

    fn storage(&self) -> Storage {
        match self {
            BufRef::Arena { storage, .. } | BufRef::Param { storage, .. } => *storage,
        }
    }

    fn byte_range(&self) -> Option<(usize, usize)> {
        match self {
            BufRef::Arena {
                offset,
                len,
                storage,
            } => Some((*offset, offset + len * storage.size_bytes())),
            BufRef::Param { .. } => None,
        }
    }

    fn overlaps(&self, other: &BufRef) -> bool {
        match (self.byte_range(), other.byte_range()) {
            (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1 && a1 > a0 && b1 > b0,
            _ => false,
        }
    }

    /// A stand-in for bounds checks at compile time.
    fn fake(&self) -> RawBuf {
        RawBuf {
            ptr: std::ptr::null_mut(),
            len: self.len(),
            storage: self.storage(),
            writable: matches!(self, BufRef::Arena { .. }),
        }
    }
}

#[allow(clippy::large_enum_variant)]
enum ExecStep {
    Kernel {
        interp: Box<Interp>,
        inputs: Vec<BufRef>,
        outputs: Vec<BufRef>,
    },
    MatMul {
        plan: MatMulPlan,
        a: BufRef,
        b: BufRef,
        out: BufRef,
    },
    Attention {
        q: (BufRef, View),
        k: (BufRef, View),
        v: (BufRef, View),
        mask: Option<(BufRef, View)>,
        out: BufRef,
        scale: f32,
    },
    Conv2d {
        x: (BufRef, View),
        w: (BufRef, View),
        out: BufRef,
        out_shape: [usize; 4],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    },
    Copy {
        src: BufRef,
        dst: BufRef,
    },
}

/// Wall time of one step of a run ([`CpuExecutable::run_timed`]).
#[derive(Clone, Debug)]
pub struct StepTime {
    pub name: String,
    pub seconds: f64,
}

impl ExecStep {
    fn name(&self) -> String {
        match self {
            ExecStep::Kernel { interp, .. } => interp.name.clone(),
            ExecStep::MatMul { plan, .. } => format!("matmul {}", plan.describe()),
            ExecStep::Attention { q, k, .. } => format!(
                "attention q{:?} k{:?}",
                q.1.shape.as_slice(),
                k.1.shape.as_slice()
            ),
            ExecStep::Conv2d { x, w, .. } => format!(
                "conv2d x{:?} w{:?}",
                x.1.shape.as_slice(),
                w.1.shape.as_slice()
            ),
            ExecStep::Copy { src, .. } => format!("copy {} elements", src.len()),
        }
    }
}

struct InputSlot {
    name: String,
    ty: TensorType,
    buf: BufRef,
}

struct ParamSlot {
    name: String,
    ty: TensorType,
}

struct OutputSlot {
    name: String,
    ty: TensorType,
    buf: BufRef,
}

/// A compiled plan for the CPU: reusable across runs (the arena is allocated on the first run and
/// kept). Runs are serialised by a lock on the arena.
pub struct CpuExecutable {
    graph: Graph,
    fusion: FusionPlan,
    lowered: Vec<LoweredGroup>,
    inputs: Vec<InputSlot>,
    params: Vec<ParamSlot>,
    steps: Vec<ExecStep>,
    outputs: Vec<OutputSlot>,
    stats: PlanStats,
    arena: Mutex<Option<Arena>>,
    pool: Option<Arc<rayon::ThreadPool>>,
    poison: bool,
}

fn compile_err(m: impl Into<String>) -> RuntimeError {
    RuntimeError::Compile(m.into())
}

fn align(bytes: usize) -> usize {
    bytes.div_ceil(MemoryPlan::ALIGN) * MemoryPlan::ALIGN
}

struct Builder<'a> {
    graph: &'a Graph,
    memory: &'a MemoryPlan,
    param_index: HashMap<String, usize>,
    params: Vec<ParamSlot>,
    /// Buffers of values without an arena slot of their own (temporaries, aliases).
    extra: HashMap<NodeId, BufRef>,
    scratch_base: usize,
    scratch_top: usize,
    scratch_max: usize,
    steps: Vec<ExecStep>,
    kernels: usize,
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
            });
            self.params.len() - 1
        });
        BufRef::Param {
            index,
            len: ty.numel(),
            storage: Storage::of(ty.dtype),
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
        let storage = Storage::of(b.ty.dtype);
        match self.memory.slot(id) {
            Some(Slot::Arena { offset, bytes }) => {
                let len = b.ty.numel();
                if bytes < len * storage.size_bytes() {
                    return Err(compile_err(format!(
                        "memory plan gives {id} ({}) {bytes} bytes",
                        b.ty
                    )));
                }
                Ok(BufRef::Arena {
                    offset,
                    len,
                    storage,
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
        let storage = Storage::of(ty.dtype);
        let offset = self.scratch_base + self.scratch_top;
        self.scratch_top += align(ty.numel() * storage.size_bytes());
        self.scratch_max = self.scratch_max.max(self.scratch_top);
        BufRef::Arena {
            offset,
            len: ty.numel(),
            storage,
        }
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
        let interp = Interp::new(p);
        let fake_in: Vec<RawBuf> = inputs.iter().map(BufRef::fake).collect();
        let fake_out: Vec<RawBuf> = outputs.iter().map(BufRef::fake).collect();
        interp
            .check_buffers(p, &fake_in, &fake_out)
            .map_err(compile_err)?;
        check_in_place(p, &inputs, &outputs)?;
        self.steps.push(ExecStep::Kernel {
            interp: Box::new(interp),
            inputs,
            outputs,
        });
        self.kernels += 1;
        Ok(())
    }

    /// A library operand as (buffer, strided view); non-affine maps are copied to scratch.
    fn operand(&mut self, op: &Operand, name: &str) -> Result<(BufRef, View), RuntimeError> {
        let buf = self.resolve(&op.buffer)?;
        if let Some(v) = op.map.as_strided() {
            return Ok((buf, v.clone()));
        }
        let ty = TensorType {
            dtype: op.buffer.ty.dtype,
            shape: op.map.shape().into(),
        };
        let tmp = self.scratch(&ty);
        // Bind the copy's destination under a synthetic binding resolved to the scratch buffer.
        let fake_node = NodeId(u32::MAX - self.kernels as u32);
        self.extra.insert(fake_node, tmp);
        let p = copy_program(
            name,
            op.buffer.clone(),
            op.map.clone(),
            Binding {
                node: fake_node,
                ty: ty.clone(),
            },
        );
        self.kernel(&p)?;
        Ok((tmp, View::contiguous(&ty.shape)))
    }

    fn group(&mut self, lg: &LoweredGroup) -> Result<(), RuntimeError> {
        self.scratch_top = 0;
        for t in &lg.temporaries {
            if self.memory.slot(t.node).is_none() && !self.extra.contains_key(&t.node) {
                let r = self.scratch(&t.ty);
                self.extra.insert(t.node, r);
            }
        }
        for (si, step) in lg.steps.iter().enumerate() {
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
                    let out_r = self.resolve(out)?;
                    let (ab, av) = self.operand(a, &name)?;
                    let (bb, bv) = self.operand(b, &name)?;
                    check_f32(&[ab, bb, out_r], &name)?;
                    check_disjoint(&[ab, bb], out_r, &name)?;
                    check_view(&av, ab, &name)?;
                    check_view(&bv, bb, &name)?;
                    self.steps.push(ExecStep::MatMul {
                        plan: MatMulPlan::new(&av, &bv, *transpose_a, *transpose_b),
                        a: ab,
                        b: bb,
                        out: out_r,
                    });
                }
                Step::Attention {
                    out,
                    q,
                    k,
                    v,
                    mask,
                    scale,
                } => {
                    let out_r = self.resolve(out)?;
                    let q = self.operand(q, &name)?;
                    let k = self.operand(k, &name)?;
                    let v = self.operand(v, &name)?;
                    let mask = match mask {
                        Some(m) => Some(self.operand(m, &name)?),
                        None => None,
                    };
                    check_f32(&[q.0, k.0, v.0, out_r], &name)?;
                    let mut ops = vec![q.0, k.0, v.0];
                    ops.extend(mask.as_ref().map(|m| m.0));
                    check_disjoint(&ops, out_r, &name)?;
                    for (b, vw) in [&q, &k, &v].into_iter().chain(mask.as_ref()) {
                        check_view(vw, *b, &name)?;
                    }
                    self.steps.push(ExecStep::Attention {
                        q,
                        k,
                        v,
                        mask,
                        out: out_r,
                        scale: *scale as f32,
                    });
                }
                Step::Conv2d {
                    out,
                    x,
                    w,
                    stride,
                    padding,
                    dilation,
                    groups,
                } => {
                    let out_r = self.resolve(out)?;
                    let x = self.operand(x, &name)?;
                    let w = self.operand(w, &name)?;
                    check_f32(&[x.0, w.0, out_r], &name)?;
                    check_disjoint(&[x.0, w.0], out_r, &name)?;
                    check_view(&x.1, x.0, &name)?;
                    check_view(&w.1, w.0, &name)?;
                    let s = &out.ty.shape;
                    self.steps.push(ExecStep::Conv2d {
                        x,
                        w,
                        out: out_r,
                        out_shape: [s[0], s[1], s[2], s[3]],
                        stride: *stride,
                        padding: *padding,
                        dilation: *dilation,
                        groups: *groups,
                    });
                }
                Step::Alias { src, dst } => {
                    let s = self.resolve(src)?;
                    match self.memory.slot(dst.node) {
                        Some(Slot::Arena { .. }) => {
                            let d = self.resolve(dst)?;
                            if d != s {
                                if d.len() != s.len() || d.storage() != s.storage() {
                                    return Err(compile_err(format!(
                                        "{name}: alias of different size"
                                    )));
                                }
                                self.steps.push(ExecStep::Copy { src: s, dst: d });
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
}

fn check_f32(bufs: &[BufRef], name: &str) -> Result<(), RuntimeError> {
    if bufs.iter().any(|b| b.storage() != Storage::F32) {
        return Err(RuntimeError::Unsupported(format!(
            "{name}: library ops need f32 operands on the CPU"
        )));
    }
    Ok(())
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
    if lo < 0 || hi >= b.len() as i64 {
        return Err(compile_err(format!(
            "{name}: operand view {v} outside its buffer"
        )));
    }
    Ok(())
}

/// An output may share bytes with an input only if every load of that input uses the output's
/// store map (same element, read before written).
fn check_in_place(
    p: &KernelProgram,
    inputs: &[BufRef],
    outputs: &[BufRef],
) -> Result<(), RuntimeError> {
    for (oi, o) in outputs.iter().enumerate() {
        for (ii, i) in inputs.iter().enumerate() {
            if !o.overlaps(i) {
                continue;
            }
            let stores: Vec<&IndexMap> = p
                .body
                .stores
                .iter()
                .chain(&p.epilogue.stores)
                .filter(|s| s.output == oi)
                .map(|s| &s.map)
                .collect();
            let same = o.byte_range() == i.byte_range()
                && o.storage().size_bytes() == i.storage().size_bytes()
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
    Ok(())
}

fn storage_mismatch(ty: &TensorType, data: Storage) -> String {
    format!(
        "a {ty} value needs {:?} data, got {data:?}",
        Storage::of(ty.dtype)
    )
}

impl CpuExecutable {
    /// Binds a fusion plan and a memory plan of `graph`. Float values must be f32 (see
    /// [`super::compile`], which promotes bf16/f16 graphs).
    pub fn new(
        graph: Graph,
        fusion: FusionPlan,
        memory: MemoryPlan,
        options: &CompileOptions,
    ) -> Result<CpuExecutable, RuntimeError> {
        if let Some(n) = graph
            .nodes
            .iter()
            .find(|n| matches!(n.ty.dtype, DType::BF16 | DType::F16))
        {
            return Err(RuntimeError::Unsupported(format!(
                "the CPU plan needs f32 values, found {} ({}); use cpu::compile, which promotes",
                n.ty,
                n.op.mnemonic()
            )));
        }
        let lowered = qie_codegen::lower_plan_with_memory(&graph, &fusion, &memory)
            .map_err(|e| compile_err(e.to_string()))?;
        let scratch_base = align(memory.arena_bytes);
        let mut b = Builder {
            graph: &graph,
            memory: &memory,
            param_index: HashMap::new(),
            params: vec![],
            extra: HashMap::new(),
            scratch_base,
            scratch_top: 0,
            scratch_max: 0,
            steps: vec![],
            kernels: 0,
        };
        let mut inputs = vec![];
        for (name, id) in graph.inputs() {
            let binding = Binding {
                node: id,
                ty: graph.ty(id).clone(),
            };
            let buf = b.resolve(&binding)?;
            inputs.push(InputSlot {
                name: name.to_string(),
                ty: binding.ty,
                buf,
            });
        }
        for lg in &lowered {
            b.group(lg)?;
        }
        let mut outputs = vec![];
        for (name, id) in &graph.outputs {
            let binding = Binding {
                node: *id,
                ty: graph.ty(*id).clone(),
            };
            let buf = b.resolve(&binding)?;
            outputs.push(OutputSlot {
                name: name.clone(),
                ty: binding.ty,
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
            kernels: b.kernels,
        };
        let (steps, params) = (b.steps, b.params);
        let pool = match options.threads {
            Some(n) => Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| compile_err(format!("thread pool: {e}")))?,
            )),
            None => None,
        };
        Ok(CpuExecutable {
            graph,
            fusion,
            lowered,
            inputs,
            params,
            steps,
            outputs,
            stats,
            arena: Mutex::new(None),
            pool,
            poison: options.poison,
        })
    }

    /// The graph the plan executes (after promotion and optimisation).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn fusion(&self) -> &FusionPlan {
        &self.fusion
    }

    /// The lowered groups (kernel programs and library calls), for dumps and tests.
    pub fn lowered(&self) -> &[LoweredGroup] {
        &self.lowered
    }

    pub fn arena_bytes(&self) -> usize {
        self.stats.arena_bytes
    }

    pub fn stats(&self) -> PlanStats {
        self.stats.clone()
    }

    /// Names and types of the weights the plan reads.
    pub fn param_names(&self) -> Vec<(&str, &TensorType)> {
        self.params
            .iter()
            .map(|p| (p.name.as_str(), &p.ty))
            .collect()
    }

    /// Runs the plan (see [`Executable::run`]).
    pub fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        match &self.pool {
            Some(p) => p.install(|| self.run_inner(inputs, params, None)),
            None => self.run_inner(inputs, params, None),
        }
    }

    /// Runs the plan and reports the wall time of every step (plus copying inputs in and
    /// outputs out), in execution order.
    pub fn run_timed(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<(HashMap<String, Tensor>, Vec<StepTime>), RuntimeError> {
        let mut times = vec![];
        let out = match &self.pool {
            Some(p) => p.install(|| self.run_inner(inputs, params, Some(&mut times))),
            None => self.run_inner(inputs, params, Some(&mut times)),
        }?;
        Ok((out, times))
    }

    fn run_inner(
        &self,
        inputs: &HashMap<String, Tensor>,
        store: &dyn ParamStore,
        mut times: Option<&mut Vec<StepTime>>,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let mut clock = std::time::Instant::now();
        let mut lap = |name: &dyn Fn() -> String, times: &mut Option<&mut Vec<StepTime>>| {
            if let Some(t) = times.as_deref_mut() {
                let now = std::time::Instant::now();
                t.push(StepTime {
                    name: name(),
                    seconds: (now - clock).as_secs_f64(),
                });
                clock = now;
            }
        };
        // Validate everything before touching the arena.
        for i in &self.inputs {
            let t = inputs
                .get(&i.name)
                .ok_or_else(|| RuntimeError::MissingInput(i.name.clone()))?;
            if t.shape() != i.ty.shape.as_slice() || t.data().storage() != Storage::of(i.ty.dtype) {
                return Err(RuntimeError::BadInput {
                    name: i.name.clone(),
                    message: format!("expected {}, got {}", i.ty, t.ty()),
                });
            }
        }
        let mut param_bufs = Vec::with_capacity(self.params.len());
        // bf16 / f16 weights widened to f32 for this run (the kernels read f32); the heap
        // buffers stay put while `param_bufs` points into them.
        let mut widened: Vec<Vec<f32>> = Vec::new();
        for p in &self.params {
            let data = store
                .param(&p.name)
                .ok_or_else(|| RuntimeError::MissingParam(p.name.clone()))?;
            if data.storage() != Storage::of(p.ty.dtype) {
                return Err(RuntimeError::BadParam {
                    name: p.name.clone(),
                    message: storage_mismatch(&p.ty, data.storage()),
                });
            }
            if data.len() != p.ty.numel() {
                return Err(RuntimeError::BadParam {
                    name: p.name.clone(),
                    message: format!(
                        "expected {} ({} elements), got {} elements",
                        p.ty,
                        p.ty.numel(),
                        data.len()
                    ),
                });
            }
            let ptr = match data {
                ParamData::BF16(_) | ParamData::F16(_) => {
                    let v = data.to_f32().expect("float data").into_owned();
                    widened.push(v);
                    widened.last().expect("pushed").as_ptr() as *mut u8
                }
                _ => data.as_ptr() as *mut u8,
            };
            param_bufs.push(RawBuf {
                ptr,
                len: data.len(),
                storage: data.storage(),
                writable: false,
            });
        }
        let mut guard = self.arena.lock().unwrap_or_else(|e| e.into_inner());
        let total = align(self.stats.arena_bytes) + self.stats.scratch_bytes;
        if guard.as_ref().map(|a| a.len() < total).unwrap_or(true) {
            *guard = Some(Arena::new(total));
        }
        let arena = guard.as_mut().expect("allocated");
        let base = arena.base();
        if self.poison {
            // SAFETY: the arena is ours while the lock is held.
            unsafe { std::ptr::write_bytes(base, 0xFF, arena.len()) };
        }
        let raw = |r: &BufRef| -> RawBuf {
            match *r {
                BufRef::Arena {
                    offset,
                    len,
                    storage,
                } => RawBuf {
                    // SAFETY: offsets were checked to lie inside the arena at compile time.
                    ptr: unsafe { base.add(offset) },
                    len,
                    storage,
                    writable: true,
                },
                BufRef::Param { index, .. } => param_bufs[index],
            }
        };
        for i in &self.inputs {
            let t = &inputs[&i.name];
            let dst = raw(&i.buf);
            let bytes = t.data().as_bytes();
            // SAFETY: the slot holds exactly the input's bytes.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.ptr, bytes.len()) };
        }
        lap(&|| "copy inputs".into(), &mut times);
        for step in &self.steps {
            // SAFETY: every buffer was resolved and bounds-checked when the plan was built; the
            // arena is exclusively ours while the lock is held.
            unsafe { exec_step(step, &raw) }?;
            lap(&|| step.name(), &mut times);
        }
        let mut out = HashMap::new();
        for o in &self.outputs {
            let src = raw(&o.buf);
            // SAFETY: the buffer holds `len` elements of its storage type.
            let data = unsafe { read_data(src) };
            let t = Tensor::new(o.ty.clone(), data)
                .map_err(|e| RuntimeError::Execution(e.to_string()))?;
            out.insert(o.name.clone(), t);
        }
        lap(&|| "copy outputs".into(), &mut times);
        Ok(out)
    }
}

unsafe fn read_data(b: RawBuf) -> TensorData {
    match b.storage {
        Storage::F32 => {
            TensorData::F32(std::slice::from_raw_parts(b.ptr as *const f32, b.len).to_vec())
        }
        Storage::I32 => {
            TensorData::I32(std::slice::from_raw_parts(b.ptr as *const i32, b.len).to_vec())
        }
        Storage::I64 => {
            TensorData::I64(std::slice::from_raw_parts(b.ptr as *const i64, b.len).to_vec())
        }
        Storage::Bool => TensorData::Bool(
            std::slice::from_raw_parts(b.ptr as *const u8, b.len)
                .iter()
                .map(|&x| x != 0)
                .collect(),
        ),
    }
}

unsafe fn exec_step(step: &ExecStep, raw: &dyn Fn(&BufRef) -> RawBuf) -> Result<(), RuntimeError> {
    match step {
        ExecStep::Kernel {
            interp,
            inputs,
            outputs,
        } => {
            let ins: Vec<RawBuf> = inputs.iter().map(raw).collect();
            let outs: Vec<RawBuf> = outputs.iter().map(raw).collect();
            interp
                .run(&ins, &outs)
                .map_err(|e| RuntimeError::Execution(e.to_string()))?;
        }
        ExecStep::MatMul { plan, a, b, out } => plan.run(raw(a), raw(b), raw(out)),
        ExecStep::Attention {
            q,
            k,
            v,
            mask,
            out,
            scale,
        } => attention(&AttentionArgs {
            q: (raw(&q.0), &q.1),
            k: (raw(&k.0), &k.1),
            v: (raw(&v.0), &v.1),
            mask: mask.as_ref().map(|m| (raw(&m.0), &m.1)),
            out: raw(out),
            scale: *scale,
        }),
        ExecStep::Conv2d {
            x,
            w,
            out,
            out_shape,
            stride,
            padding,
            dilation,
            groups,
        } => conv2d(&ConvArgs {
            x: (raw(&x.0), &x.1),
            w: (raw(&w.0), &w.1),
            out: raw(out),
            out_shape: *out_shape,
            stride: *stride,
            padding: *padding,
            dilation: *dilation,
            groups: *groups,
        }),
        ExecStep::Copy { src, dst } => {
            let (s, d) = (raw(src), raw(dst));
            std::ptr::copy(s.ptr, d.ptr, s.bytes());
        }
    }
    Ok(())
}

impl Executable for CpuExecutable {
    fn run(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        CpuExecutable::run(self, inputs, params)
    }

    fn stats(&self) -> PlanStats {
        self.stats.clone()
    }

    fn run_profiled(
        &self,
        inputs: &HashMap<String, Tensor>,
        params: &dyn ParamStore,
    ) -> Result<(HashMap<String, Tensor>, crate::Profile), RuntimeError> {
        let (out, times) = self.run_timed(inputs, params)?;
        let steps = times
            .into_iter()
            .map(|t| {
                let name = if t.name.starts_with('g') {
                    let group = t.name.clone();
                    crate::profile::with_group(t.name, &group, &self.fusion, &self.graph)
                } else {
                    t.name
                };
                (name, t.seconds)
            })
            .collect();
        Ok((out, crate::Profile { steps }))
    }
}
