//! Lowering of fused kernel groups to [`Step`]s: kernel programs and library calls.
//!
//! Values inside a group are computed inline: a program is built by walking from each output
//! down through the group's members. View ops (`Broadcast`, `Transpose`, `Slice`, `Reshape`) are
//! never executed; they are composed into the index maps of the loads below them. A value reached
//! through two different views is computed twice (once per index map); a value reached twice
//! through the same map is computed once.
//!
//! A library group (`MatMul`, `Attention`, `Conv2d`) becomes: kernels materialising computed
//! operands (prologue), the call reading its operands through strided maps, and kernels computing
//! the remaining outputs (epilogue) with the library result read from its buffer. Data groups
//! (`Concat`, `Gather`) lower to kernels only: one copy per concat operand, none for the operands
//! the memory plan has their producers write straight into the result
//! ([`lower_plan_with_memory`]).

use crate::index::IndexMap;
use crate::program::{Binding, Instr, KernelProgram, ReduceStage, Reg, Section, Stmt, Store};
use qie_ir::plan::{FusionPlan, GroupKind, KernelGroup, MemoryPlan};
use qie_ir::{shape, DType, Graph, NodeId, Op, Shape};
use smallvec::SmallVec;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// A library operand: read from `buffer` through `map` (defined over the operand's shape).
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    pub buffer: Binding,
    pub map: IndexMap,
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.buffer.node, self.map)
    }
}

/// One launch (or a no-op alias) of a lowered group, in execution order.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    Kernel(KernelProgram),
    /// `out = a @ b` (dense row-major output), with the IR's transpose flags and batching rules.
    MatMul {
        out: Binding,
        a: Operand,
        b: Operand,
        transpose_a: bool,
        transpose_b: bool,
    },
    /// `out = softmax(q k^T * scale + mask) v`, layout [B, S, H, D]; dense output. With
    /// `dout`, the backward instead: `out` = dq | dk | dv packed along the sequence axis
    /// (see `Op::AttentionGrad`).
    Attention {
        out: Binding,
        q: Operand,
        k: Operand,
        v: Operand,
        mask: Option<Operand>,
        dout: Option<Operand>,
        scale: f64,
    },
    /// NCHW convolution; dense output.
    Conv2d {
        out: Binding,
        x: Operand,
        w: Operand,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    },
    /// `dst` is a reshape of `src`: same bytes. A backend copies only if their buffers differ.
    Alias {
        src: Binding,
        dst: Binding,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Kernel(p) => write!(f, "{p}"),
            Step::MatMul {
                out,
                a,
                b,
                transpose_a,
                transpose_b,
            } => writeln!(f, "matmul {} {} = {a} x {b} ta={transpose_a} tb={transpose_b}", out.node, out.ty),
            Step::Attention {
                out,
                q,
                k,
                v,
                mask,
                dout,
                scale,
            } => {
                let what = if dout.is_some() { "attention_grad" } else { "attention" };
                write!(f, "{what} {} {} = q {q}, k {k}, v {v}", out.node, out.ty)?;
                if let Some(d) = dout {
                    write!(f, ", dout {d}")?;
                }
                if let Some(m) = mask {
                    write!(f, ", mask {m}")?;
                }
                writeln!(f, ", scale {scale}")
            }
            Step::Conv2d {
                out,
                x,
                w,
                stride,
                padding,
                dilation,
                groups,
            } => writeln!(
                f,
                "conv2d {} {} = x {x}, w {w}, stride {stride:?} padding {padding:?} dilation {dilation:?} groups {groups}",
                out.node, out.ty
            ),
            Step::Alias { src, dst } => writeln!(f, "alias {} = {} ({})", dst.node, src.node, dst.ty),
        }
    }
}

/// A fused group lowered to steps.
#[derive(Clone, Debug, PartialEq)]
pub struct LoweredGroup {
    /// Position of the group in the fusion plan.
    pub index: usize,
    pub kind: GroupKind,
    pub steps: Vec<Step>,
    /// Values written by the steps that are not group outputs (library results consumed by an
    /// epilogue, materialised operands): they need scratch memory for the group's duration.
    pub temporaries: Vec<Binding>,
}

impl fmt::Display for LoweredGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "group {} ({:?})", self.index, self.kind)?;
        for t in &self.temporaries {
            writeln!(f, "  temporary {}: {}", t.node, t.ty)?;
        }
        for s in &self.steps {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerError {
    pub group: usize,
    pub message: String,
}

impl fmt::Display for LowerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lowering kernel group {}: {}", self.group, self.message)
    }
}

impl std::error::Error for LowerError {}

/// Lowers every group of a fusion plan, in order, every concat copying all its operands.
pub fn lower_plan(graph: &Graph, plan: &FusionPlan) -> Result<Vec<LoweredGroup>, LowerError> {
    plan.groups
        .iter()
        .enumerate()
        .map(|(i, g)| lower_group(graph, g, i))
        .collect()
}

/// Lowers every group of a fusion plan for execution with `memory`: like [`lower_plan`], except
/// that a concat does not copy the operands its producers already wrote into its result
/// ([`MemoryPlan::concat_in_place`]). Backends binding `memory` must lower with this.
pub fn lower_plan_with_memory(
    graph: &Graph,
    plan: &FusionPlan,
    memory: &MemoryPlan,
) -> Result<Vec<LoweredGroup>, LowerError> {
    plan.groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let placed: Vec<NodeId> = match g.anchor {
                Some(a) if g.kind == GroupKind::Data => {
                    memory.concat_operands_in_place(a).collect()
                }
                _ => vec![],
            };
            lower_group_placed(graph, g, i, &placed)
        })
        .collect()
}

fn binding(graph: &Graph, id: NodeId) -> Binding {
    Binding {
        node: id,
        ty: graph.ty(id).clone(),
    }
}

/// Which nodes a program computes inline (the rest are read from buffers).
struct Scope {
    members: HashSet<NodeId>,
    bound: HashSet<NodeId>,
}

impl Scope {
    fn inline(&self, graph: &Graph, id: NodeId) -> bool {
        self.members.contains(&id)
            && !self.bound.contains(&id)
            && !matches!(graph.node(id).op, Op::Input { .. } | Op::Param { .. })
    }
}

/// Lowers one group. `index` is its position in the plan (for names and errors).
pub fn lower_group(
    graph: &Graph,
    group: &KernelGroup,
    index: usize,
) -> Result<LoweredGroup, LowerError> {
    lower_group_placed(graph, group, index, &[])
}

/// Lowers one group; a concat anchor copies none of the operands in `placed` (they are already
/// in their slices of its result, see [`MemoryPlan::concat_in_place`]).
pub fn lower_group_placed(
    graph: &Graph,
    group: &KernelGroup,
    index: usize,
    placed: &[NodeId],
) -> Result<LoweredGroup, LowerError> {
    let err = |message: String| LowerError {
        group: index,
        message,
    };
    for &n in group
        .nodes
        .iter()
        .chain(&group.inputs)
        .chain(&group.outputs)
    {
        if n.index() >= graph.len() {
            return Err(err(format!("refers to missing node {n}")));
        }
    }
    let scope = Scope {
        members: group.nodes.iter().copied().collect(),
        bound: HashSet::new(),
    };
    let outputs = dedup(&group.outputs);
    let mut lowered = LoweredGroup {
        index,
        kind: group.kind,
        steps: vec![],
        temporaries: vec![],
    };
    let name = format!("g{index}");
    match group.kind {
        GroupKind::Alias => {
            // Each output is a chain of reshapes of a materialised value: same bytes. Anything
            // else is computed like an elementwise group.
            let mut computed = vec![];
            for &o in &outputs {
                match view_chain_to_buffer(graph, &scope, o) {
                    Some((src, chain))
                        if !chain.is_empty()
                            && chain.iter().all(|op| matches!(op, Op::Reshape { .. })) =>
                    {
                        lowered.steps.push(Step::Alias {
                            src: binding(graph, src),
                            dst: binding(graph, o),
                        });
                    }
                    _ => computed.push(o),
                }
            }
            if !computed.is_empty() {
                lower_elementwise_outputs(graph, &scope, &computed, &name, &mut lowered)
                    .map_err(err)?;
            }
        }
        GroupKind::Elementwise => {
            lower_elementwise_outputs(graph, &scope, &outputs, &name, &mut lowered).map_err(err)?;
        }
        GroupKind::Reduction => {
            let anchor = group
                .anchor
                .or_else(|| {
                    group
                        .nodes
                        .iter()
                        .copied()
                        .find(|&n| matches!(graph.node(n).op, Op::Reduce { .. }))
                })
                .ok_or_else(|| err("reduction group without a reduce".into()))?;
            lower_reduction(graph, &scope, anchor, &outputs, &name, &mut lowered).map_err(err)?;
        }
        GroupKind::Library | GroupKind::Data => {
            let anchor = group
                .anchor
                .or_else(|| {
                    group.nodes.iter().copied().find(|&n| {
                        let op = &graph.node(n).op;
                        op.is_library_call() || matches!(op, Op::Concat { .. } | Op::Gather { .. })
                    })
                })
                .ok_or_else(|| err(format!("{:?} group without an anchor", group.kind)))?;
            lower_anchored(graph, scope, anchor, &outputs, placed, &name, &mut lowered)
                .map_err(err)?;
        }
    }
    Ok(lowered)
}

fn dedup(ids: &[NodeId]) -> Vec<NodeId> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// One program per distinct output shape, each storing densely.
fn lower_elementwise_outputs(
    graph: &Graph,
    scope: &Scope,
    outputs: &[NodeId],
    name: &str,
    lowered: &mut LoweredGroup,
) -> Result<(), String> {
    // Outputs are read at the group's linear index, so outputs of equal element count share one
    // program (over the first one's shape; the others are row-major reinterpretations of it).
    let mut spaces: Vec<Shape> = vec![];
    for &o in outputs {
        let s = &graph.ty(o).shape;
        let n: usize = s.iter().product();
        if !spaces.iter().any(|sp| sp.iter().product::<usize>() == n) {
            spaces.push(s.clone());
        }
    }
    for (k, space) in spaces.iter().enumerate() {
        let n: usize = space.iter().product();
        let mut b = ProgramBuilder::new(graph, scope, space.clone());
        for &o in outputs.iter().filter(|&&o| graph.ty(o).numel() == n) {
            let chain = reinterpret(&graph.ty(o).shape, space);
            let r = b.emit(o, Sec::Body, &chain)?;
            b.store(Sec::Body, o, r, IndexMap::contiguous(space));
        }
        let pname = if spaces.len() > 1 {
            format!("{name}_{k}")
        } else {
            name.to_string()
        };
        lowered.steps.push(Step::Kernel(b.finish(&pname)));
    }
    Ok(())
}

/// The view chain reading a value of shape `from` at the linear index of the space `to`.
fn reinterpret(from: &[usize], to: &[usize]) -> Vec<Op> {
    if from == to {
        vec![]
    } else {
        vec![Op::Reshape { shape: to.into() }]
    }
}

fn reduce_perm(arg_rank: usize, axes: &[usize]) -> Shape {
    let mut perm: Shape = (0..arg_rank).filter(|a| !axes.contains(a)).collect();
    perm.extend(axes.iter().copied());
    perm
}

fn lower_reduction(
    graph: &Graph,
    scope: &Scope,
    anchor: NodeId,
    outputs: &[NodeId],
    name: &str,
    lowered: &mut LoweredGroup,
) -> Result<(), String> {
    let node = graph.node(anchor);
    let Op::Reduce { axes, .. } = &node.op else {
        return Err(format!("anchor {anchor} is not a reduce"));
    };
    if axes.is_empty() {
        return lower_elementwise_outputs(graph, scope, outputs, name, lowered);
    }
    let arg = node.args[0];
    let arg_shape = graph.ty(arg).shape.clone();
    let kept = node.ty.shape.clone();
    let perm = reduce_perm(arg_shape.len(), axes);
    let full: Shape = perm.iter().map(|&p| arg_shape[p]).collect();
    let mut b = ProgramBuilder::new(graph, scope, full);
    b.reduction = Some(ReductionSpace {
        arg_shape: arg_shape.clone(),
        axes: axes.clone(),
        kept: kept.clone(),
    });
    let mut rest = vec![];
    for &o in outputs {
        let s = &graph.ty(o).shape;
        let n: usize = s.iter().product();
        if n == kept.iter().product::<usize>() {
            // The reduced value (or its epilogue) at the kept linear index, possibly reshaped.
            let r = b.emit(o, Sec::Epilogue, &reinterpret(s, &kept))?;
            b.store(Sec::Epilogue, o, r, IndexMap::contiguous(&kept));
        } else if *s == arg_shape {
            let chain = [Op::Transpose { perm: perm.clone() }];
            let r = b.emit(o, Sec::Body, &chain)?;
            b.store(
                Sec::Body,
                o,
                r,
                IndexMap::contiguous(&arg_shape).transpose(&perm),
            );
        } else {
            rest.push(o);
        }
    }
    lowered.steps.push(Step::Kernel(b.finish(name)));
    if !rest.is_empty() {
        lower_elementwise_outputs(graph, scope, &rest, &format!("{name}_side"), lowered)?;
    }
    Ok(())
}

/// Strips member views above `id` down to a buffer: (buffer, views in forward order).
fn view_chain_to_buffer(graph: &Graph, scope: &Scope, id: NodeId) -> Option<(NodeId, Vec<Op>)> {
    let mut chain = vec![];
    let mut cur = id;
    while scope.inline(graph, cur) {
        let n = graph.node(cur);
        if !n.op.is_view() {
            return None;
        }
        chain.push(n.op.clone());
        cur = n.args[0];
    }
    chain.reverse();
    Some((cur, chain))
}

fn lower_anchored(
    graph: &Graph,
    mut scope: Scope,
    anchor: NodeId,
    outputs: &[NodeId],
    placed: &[NodeId],
    name: &str,
    lowered: &mut LoweredGroup,
) -> Result<(), String> {
    let node = graph.node(anchor);
    let out = binding(graph, anchor);
    let mut materialised: Vec<NodeId> = vec![];
    // Resolves an operand to a strided buffer read, materialising computed values (and, when
    // `strided` is set, non-affine view chains) with a prologue kernel.
    let mut operand = |scope: &Scope,
                       lowered: &mut LoweredGroup,
                       x: NodeId,
                       strided: bool|
     -> Result<Operand, String> {
        if let Some((buf, chain)) = view_chain_to_buffer(graph, scope, x) {
            let map = fold_chain(IndexMap::contiguous(&graph.ty(buf).shape), &chain);
            if !strided || map.as_strided().is_some() {
                return Ok(Operand {
                    buffer: binding(graph, buf),
                    map,
                });
            }
        }
        let s = graph.ty(x).shape.clone();
        let mut b = ProgramBuilder::new(graph, scope, s.clone());
        let r = b.emit(x, Sec::Body, &[])?;
        b.store(Sec::Body, x, r, IndexMap::contiguous(&s));
        let k = lowered.steps.len();
        lowered
            .steps
            .push(Step::Kernel(b.finish(&format!("{name}_pro{k}"))));
        materialised.push(x);
        Ok(Operand {
            buffer: binding(graph, x),
            map: IndexMap::contiguous(&s),
        })
    };
    let args = node.args.clone();
    match &node.op {
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => {
            let a = operand(&scope, lowered, args[0], false)?;
            let b = operand(&scope, lowered, args[1], false)?;
            lowered.steps.push(Step::MatMul {
                out: out.clone(),
                a,
                b,
                transpose_a: *transpose_a,
                transpose_b: *transpose_b,
            });
        }
        Op::Attention { scale } | Op::AttentionGrad { scale } => {
            let backward = matches!(node.op, Op::AttentionGrad { .. });
            let q = operand(&scope, lowered, args[0], false)?;
            let k = operand(&scope, lowered, args[1], false)?;
            let v = operand(&scope, lowered, args[2], false)?;
            let dout = match backward {
                true => Some(operand(&scope, lowered, args[3], false)?),
                false => None,
            };
            let mask = match args.get(if backward { 4 } else { 3 }) {
                Some(&m) => Some(operand(&scope, lowered, m, false)?),
                None => None,
            };
            lowered.steps.push(Step::Attention {
                out: out.clone(),
                q,
                k,
                v,
                mask,
                dout,
                scale: *scale,
            });
        }
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } => {
            let x = operand(&scope, lowered, args[0], false)?;
            let w = operand(&scope, lowered, args[1], false)?;
            lowered.steps.push(Step::Conv2d {
                out: out.clone(),
                x,
                w,
                stride: *stride,
                padding: *padding,
                dilation: *dilation,
                groups: *groups,
            });
        }
        Op::Concat { axis } => {
            let out_shape = &node.ty.shape;
            let mut off = 0;
            for (i, &a) in args.iter().enumerate() {
                let s = graph.ty(a).shape.clone();
                let n = s[*axis];
                if s.iter().product::<usize>() > 0 && !placed.contains(&a) {
                    let mut b = ProgramBuilder::new(graph, &scope, s.clone());
                    let r = b.emit(a, Sec::Body, &[])?;
                    let map = IndexMap::contiguous(out_shape).slice(*axis, off, off + n);
                    b.store(Sec::Body, anchor, r, map);
                    lowered
                        .steps
                        .push(Step::Kernel(b.finish(&format!("{name}_concat{i}"))));
                }
                off += n;
            }
        }
        Op::Gather { axis } => {
            let axis = *axis;
            let (table, index) = (args[0], args[1]);
            let t = operand(&scope, lowered, table, true)?;
            let out_shape = node.ty.shape.clone();
            let tv = t
                .map
                .as_strided()
                .expect("materialised tables are strided")
                .clone();
            let r = graph.ty(index).rank();
            let mut strides: SmallVec<[i64; 6]> = tv.strides[..axis].iter().copied().collect();
            strides.extend(std::iter::repeat_n(0, r));
            strides.extend(tv.strides[axis + 1..].iter().copied());
            let base = IndexMap::strided(crate::index::View {
                shape: out_shape.clone(),
                strides,
                offset: tv.offset,
            });
            scope.bound.extend(materialised.iter().copied());
            let mut b = ProgramBuilder::new(graph, &scope, out_shape.clone());
            let mut ones: Shape = shape(&vec![1; axis]);
            ones.extend(graph.ty(index).shape.iter().copied());
            ones.extend(std::iter::repeat_n(1, out_shape.len() - axis - r));
            let chain = [
                Op::Reshape { shape: ones },
                Op::Broadcast {
                    shape: out_shape.clone(),
                },
            ];
            let ir = b.emit(index, Sec::Body, &chain)?;
            let input = b.bind_input(t.buffer.node);
            let dst = b.fresh();
            b.body.stmts.push(Stmt {
                dst,
                dtype: node.ty.dtype,
                instr: Instr::LoadGather {
                    input,
                    map: base,
                    index: ir,
                    stride: tv.strides[axis],
                    dim: graph.ty(table).shape[axis],
                },
            });
            b.store(Sec::Body, anchor, dst, IndexMap::contiguous(&out_shape));
            lowered
                .steps
                .push(Step::Kernel(b.finish(&format!("{name}_gather"))));
        }
        other => {
            return Err(format!(
                "{} cannot anchor a library or data group",
                other.mnemonic()
            ))
        }
    }
    // Epilogue: every other output, with the anchor and materialised operands read from buffers.
    scope.bound.insert(anchor);
    scope.bound.extend(materialised.iter().copied());
    let rest: Vec<NodeId> = outputs
        .iter()
        .copied()
        .filter(|o| *o != anchor && !materialised.contains(o))
        .collect();
    if !rest.is_empty() {
        lower_elementwise_outputs(graph, &scope, &rest, &format!("{name}_epi"), lowered)?;
    }
    let mut temps = materialised;
    temps.push(anchor);
    lowered.temporaries = temps
        .into_iter()
        .filter(|t| !outputs.contains(t))
        .map(|t| binding(graph, t))
        .collect();
    Ok(())
}

fn fold_chain(start: IndexMap, chain: &[Op]) -> IndexMap {
    chain.iter().fold(start, |m, op| {
        m.apply(op).expect("chains hold view ops only")
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Sec {
    Body,
    Epilogue,
}

struct ReductionSpace {
    arg_shape: Shape,
    axes: Shape,
    kept: Shape,
}

struct ProgramBuilder<'a> {
    graph: &'a Graph,
    scope: &'a Scope,
    space: Shape,
    reduction: Option<ReductionSpace>,
    inputs: Vec<Binding>,
    input_ix: HashMap<NodeId, usize>,
    outputs: Vec<Binding>,
    output_ix: HashMap<NodeId, usize>,
    body: Section,
    epilogue: Section,
    reduces: Vec<ReduceStage>,
    next: u32,
    memo: HashMap<(NodeId, Sec, IndexMap), Reg>,
}

impl<'a> ProgramBuilder<'a> {
    fn new(graph: &'a Graph, scope: &'a Scope, space: Shape) -> Self {
        ProgramBuilder {
            graph,
            scope,
            space,
            reduction: None,
            inputs: vec![],
            input_ix: HashMap::new(),
            outputs: vec![],
            output_ix: HashMap::new(),
            body: Section::default(),
            epilogue: Section::default(),
            reduces: vec![],
            next: 0,
            memo: HashMap::new(),
        }
    }

    fn fresh(&mut self) -> Reg {
        let r = Reg(self.next);
        self.next += 1;
        r
    }

    fn bind_input(&mut self, id: NodeId) -> usize {
        if let Some(&i) = self.input_ix.get(&id) {
            return i;
        }
        self.inputs.push(binding(self.graph, id));
        self.input_ix.insert(id, self.inputs.len() - 1);
        self.inputs.len() - 1
    }

    fn section(&mut self, sec: Sec) -> &mut Section {
        match sec {
            Sec::Body => &mut self.body,
            Sec::Epilogue => &mut self.epilogue,
        }
    }

    fn push(&mut self, sec: Sec, dtype: DType, instr: Instr) -> Reg {
        let dst = self.fresh();
        self.section(sec).stmts.push(Stmt { dst, dtype, instr });
        dst
    }

    fn store(&mut self, sec: Sec, node: NodeId, value: Reg, map: IndexMap) {
        let output = match self.output_ix.get(&node) {
            Some(&i) => i,
            None => {
                self.outputs.push(binding(self.graph, node));
                self.output_ix.insert(node, self.outputs.len() - 1);
                self.outputs.len() - 1
            }
        };
        self.section(sec).stores.push(Store { output, value, map });
    }

    /// The value of `id` at the kernel index of section `sec`, where `chain` holds the view ops
    /// (forward order) between `id` and the section's index space.
    fn emit(&mut self, id: NodeId, sec: Sec, chain: &[Op]) -> Result<Reg, String> {
        let graph = self.graph;
        let node = graph.node(id);
        let map = fold_chain(IndexMap::contiguous(&node.ty.shape), chain);
        let key = (id, sec, map);
        if let Some(&r) = self.memo.get(&key) {
            return Ok(r);
        }
        let map = key.2.clone();
        let dtype = node.ty.dtype;
        let reg = if !self.scope.inline(graph, id) {
            let input = self.bind_input(id);
            self.push(sec, dtype, Instr::Load { input, map })
        } else {
            let args = &node.args;
            match &node.op {
                Op::Constant { value, .. } => self.push(sec, dtype, Instr::Const { value: *value }),
                Op::Iota { shape, axis, .. } => {
                    let cs = qie_ir::contiguous_strides(shape);
                    let instr = Instr::Iota {
                        map,
                        stride: cs[*axis] as i64,
                        dim: shape[*axis],
                    };
                    self.push(sec, dtype, instr)
                }
                Op::Unary(op) => {
                    let a = self.emit(args[0], sec, chain)?;
                    self.push(sec, dtype, Instr::Unary { op: *op, a })
                }
                Op::Binary(op) => {
                    let a = self.emit(args[0], sec, chain)?;
                    let b = self.emit(args[1], sec, chain)?;
                    self.push(sec, dtype, Instr::Binary { op: *op, a, b })
                }
                Op::Compare(op) => {
                    let a = self.emit(args[0], sec, chain)?;
                    let b = self.emit(args[1], sec, chain)?;
                    self.push(sec, dtype, Instr::Compare { op: *op, a, b })
                }
                Op::Select => {
                    let cond = self.emit(args[0], sec, chain)?;
                    let a = self.emit(args[1], sec, chain)?;
                    let b = self.emit(args[2], sec, chain)?;
                    self.push(sec, dtype, Instr::Select { cond, a, b })
                }
                Op::Cast { .. } => {
                    let a = self.emit(args[0], sec, chain)?;
                    if graph.ty(args[0]).dtype == dtype {
                        a
                    } else {
                        self.push(sec, dtype, Instr::Cast { a })
                    }
                }
                op if op.is_view() => {
                    let mut c = Vec::with_capacity(chain.len() + 1);
                    c.push(op.clone());
                    c.extend_from_slice(chain);
                    self.emit(args[0], sec, &c)?
                }
                Op::Reduce { op, axes } => {
                    if axes.is_empty() {
                        self.emit(args[0], sec, chain)?
                    } else {
                        self.emit_reduce(id, *op, axes, sec, &key.2)?
                    }
                }
                other => {
                    return Err(format!(
                        "{id} ({}) cannot be computed inside a kernel; it must be its own group",
                        other.mnemonic()
                    ))
                }
            }
        };
        self.memo.insert(key, reg);
        Ok(reg)
    }

    fn emit_reduce(
        &mut self,
        id: NodeId,
        op: qie_ir::ReduceOp,
        axes: &[usize],
        sec: Sec,
        map: &IndexMap,
    ) -> Result<Reg, String> {
        let node = self.graph.node(id);
        let arg = node.args[0];
        let Some(red) = &self.reduction else {
            return Err(format!("{id} (reduce) inside an elementwise kernel"));
        };
        if sec != Sec::Epilogue {
            return Err(format!(
                "{id} (reduce) feeds another reduction in one kernel"
            ));
        }
        if red.arg_shape != self.graph.ty(arg).shape || red.axes.as_slice() != axes {
            return Err(format!(
                "{id} (reduce) reduces a different space than the group's anchor"
            ));
        }
        if *map != IndexMap::contiguous(&red.kept) {
            return Err(format!(
                "{id} (reduce) is read through a view inside its own kernel"
            ));
        }
        let perm = reduce_perm(red.arg_shape.len(), axes);
        let value = self.emit(arg, Sec::Body, &[Op::Transpose { perm }])?;
        let dst = self.fresh();
        self.reduces.push(ReduceStage {
            op,
            value,
            dst,
            dtype: node.ty.dtype,
        });
        Ok(dst)
    }

    fn finish(self, name: &str) -> KernelProgram {
        let reduce_rank = match &self.reduction {
            Some(r) if !self.reduces.is_empty() => r.axes.len(),
            _ => 0,
        };
        let mut p = KernelProgram {
            name: String::new(),
            space: self.space,
            reduce_rank,
            inputs: self.inputs,
            outputs: self.outputs,
            body: self.body,
            reduces: self.reduces,
            epilogue: self.epilogue,
        };
        if reduce_rank == 0 && !p.epilogue.is_empty() {
            // No reduce was reached: the kept space is the whole program.
            p.space = self.reduction.expect("epilogue only in reductions").kept;
            p.body = std::mem::take(&mut p.epilogue);
        }
        crate::simplify::coalesce_axes(&mut p);
        p.name = program_name(name, &p);
        p
    }
}

fn program_name(prefix: &str, p: &KernelProgram) -> String {
    let mut ops: Vec<String> = vec![];
    for s in p.body.stmts.iter().chain(&p.epilogue.stmts) {
        let m = match &s.instr {
            Instr::Unary { op, .. } => format!("{op:?}"),
            Instr::Binary { op, .. } => format!("{op:?}"),
            Instr::Compare { op, .. } => format!("{op:?}"),
            Instr::Select { .. } => "Select".into(),
            Instr::LoadGather { .. } => "Gather".into(),
            Instr::Iota { .. } => "Iota".into(),
            _ => continue,
        };
        let m = m.to_lowercase();
        if !ops.contains(&m) {
            ops.push(m);
        }
    }
    for r in &p.reduces {
        let m = format!("reduce{:?}", r.op).to_lowercase();
        if !ops.contains(&m) {
            ops.push(m);
        }
    }
    let mut name = prefix.to_string();
    for m in ops.iter().take(4) {
        name.push('_');
        name.push_str(m);
    }
    if ops.is_empty() {
        name.push_str("_copy");
    }
    name
}

/// A program that copies `src` read through `map` (over `dst`'s shape) into dense `dst`.
pub fn copy_program(name: &str, src: Binding, map: IndexMap, dst: Binding) -> KernelProgram {
    let space: Shape = dst.ty.shape.clone();
    let mut p = KernelProgram {
        name: name.to_string(),
        space: space.clone(),
        reduce_rank: 0,
        body: Section {
            stmts: vec![Stmt {
                dst: Reg(0),
                dtype: src.ty.dtype,
                instr: Instr::Load { input: 0, map },
            }],
            stores: vec![Store {
                output: 0,
                value: Reg(0),
                map: IndexMap::contiguous(&space),
            }],
        },
        inputs: vec![src],
        outputs: vec![dst],
        reduces: vec![],
        epilogue: Section::default(),
    };
    crate::simplify::coalesce_axes(&mut p);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use qie_ir::passes::{fuse, FusionOptions};
    use qie_ir::{BinaryOp, ReduceOp, TensorType, UnaryOp};

    fn lower(g: &Graph) -> Vec<LoweredGroup> {
        lower_plan(g, &fuse(g, &FusionOptions::default())).expect("lowering")
    }

    fn kernels(groups: &[LoweredGroup]) -> Vec<&KernelProgram> {
        groups
            .iter()
            .flat_map(|g| &g.steps)
            .filter_map(|s| match s {
                Step::Kernel(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// Copy kernels of concat groups in a plan lowered for `memory`.
    fn concat_copies(g: &Graph, concat_in_place: bool) -> usize {
        use qie_ir::passes::{plan_memory, MemoryOptions};
        let fusion = fuse(g, &FusionOptions::default());
        let opts = MemoryOptions {
            concat_in_place,
            ..MemoryOptions::default()
        };
        let memory = plan_memory(g, &fusion, &opts);
        let lowered = lower_plan_with_memory(g, &fusion, &memory).expect("lowering");
        lowered
            .iter()
            .filter(|lg| lg.kind == GroupKind::Data)
            .flat_map(|lg| &lg.steps)
            .filter(|s| matches!(s, Step::Kernel(p) if p.name.contains("_concat")))
            .count()
    }

    #[test]
    fn concat_operands_written_in_place_need_no_copy() {
        // q, k, v of a joint attention: 3 concats of 2 operands each.
        let g = qie_ir::testing::joint_attention_case(1, 0).graph;
        assert_eq!(concat_copies(&g, false), 6);
        assert_eq!(concat_copies(&g, true), 0);
        // Batch 2: every operand is two separate ranges of the result, so it is copied.
        let g = qie_ir::testing::joint_attention_case(2, 0).graph;
        assert_eq!(concat_copies(&g, true), 6);
    }

    #[test]
    fn dense_elementwise_becomes_one_axis() {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::F32, &[4, 8, 16]));
        let b = g.input("b", TensorType::new(DType::F32, &[16]));
        let bb = g
            .add(
                Op::Broadcast {
                    shape: shape(&[4, 8, 16]),
                },
                &[b],
            )
            .unwrap();
        let y = g.add(Op::Binary(BinaryOp::Add), &[x, bb]).unwrap();
        let z = g.add(Op::Unary(UnaryOp::Exp), &[y]).unwrap();
        g.set_output("z", z);
        let lowered = lower(&g);
        let ks = kernels(&lowered);
        assert_eq!(ks.len(), 1);
        let p = ks[0];
        // x and the store merge to one axis; the broadcast bias keeps [32, 16] with stride 0.
        assert_eq!(p.space.as_slice(), &[32, 16], "{p}");
        let text = p.to_string();
        assert!(text.contains("[32, 16]:(0,1)+0"), "{text}");
        assert!(text.contains("exp"), "{text}");
    }

    #[test]
    fn transposed_merge_needs_div_mod() {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::F32, &[3, 4, 5]));
        let t = g
            .add(
                Op::Transpose {
                    perm: shape(&[2, 0, 1]),
                },
                &[x],
            )
            .unwrap();
        let r = g
            .add(
                Op::Reshape {
                    shape: shape(&[60]),
                },
                &[t],
            )
            .unwrap();
        let y = g.add(Op::Unary(UnaryOp::Neg), &[r]).unwrap();
        g.set_output("y", y);
        let lowered = lower(&g);
        let p = kernels(&lowered)[0];
        let load = p.body.stmts.iter().find_map(|s| s.instr.map()).unwrap();
        assert_eq!(load.views().len(), 2, "{p}");
        let e = load.to_expr().to_string();
        assert!(e.contains('%') && e.contains('/'), "{e}");
    }

    #[test]
    fn reduction_has_prologue_and_epilogue() {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::F32, &[6, 10]));
        let e = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
        let s = g
            .add(
                Op::Reduce {
                    op: ReduceOp::Sum,
                    axes: shape(&[0]),
                },
                &[e],
            )
            .unwrap();
        let l = g.add(Op::Unary(UnaryOp::Log), &[s]).unwrap();
        g.set_output("l", l);
        let lowered = lower(&g);
        let p = kernels(&lowered)[0];
        assert!(p.is_reduction());
        // Kept axis first, reduced axis last: the load walks the column with stride 10.
        assert_eq!(p.space.as_slice(), &[10, 6]);
        assert_eq!(p.reduce_rank, 1);
        assert!(p.to_string().contains("[10, 6]:(1,10)+0"), "{p}");
        assert!(p.epilogue.stmts.iter().any(|s| matches!(
            s.instr,
            Instr::Unary {
                op: UnaryOp::Log,
                ..
            }
        )));
    }

    #[test]
    fn linear_layer_is_a_library_call_with_strided_operands() {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::F32, &[2, 5, 8]));
        let w = g.param("w", TensorType::new(DType::F32, &[12, 8]));
        let b = g.param("b", TensorType::new(DType::F32, &[12]));
        let m = g
            .add(
                Op::MatMul {
                    transpose_a: false,
                    transpose_b: true,
                },
                &[x, w],
            )
            .unwrap();
        let bb = g
            .add(
                Op::Broadcast {
                    shape: shape(&[2, 5, 12]),
                },
                &[b],
            )
            .unwrap();
        let y = g.add(Op::Binary(BinaryOp::Add), &[m, bb]).unwrap();
        g.set_output("y", y);
        let lowered = lower(&g);
        let steps: Vec<&Step> = lowered.iter().flat_map(|g| &g.steps).collect();
        assert!(steps.iter().any(|s| matches!(
            s,
            Step::MatMul {
                transpose_b: true,
                ..
            }
        )));
        let text: String = lowered.iter().map(|g| g.to_string()).collect();
        assert!(text.contains("matmul"), "{text}");
    }
}
