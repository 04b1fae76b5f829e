//! [`Binder`]: gives every binding of a lowered plan its buffer (arena slot, weight, scratch).

use super::checks::{check_in_place, check_kernel_buffers};
use super::BufRef;
use crate::backend::RuntimeError;
use qie_codegen::{copy_program, Binding, IndexMap, KernelProgram, LoweredGroup, View};
use qie_ir::plan::{MemoryPlan, Slot};
use qie_ir::{Graph, NodeId, Op, TensorType};
use std::collections::HashMap;

/// A weight a plan reads, in the order [`BufRef::Param`] indexes them.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSlot {
    pub name: String,
    /// The type as bound: its dtype is the storage dtype (bf16 on a bf16 device).
    pub ty: TensorType,
}

/// (name, type) of each weight, as [`crate::Executable::params`] reports them.
pub fn param_specs(slots: &[ParamSlot]) -> Vec<(String, TensorType)> {
    slots
        .iter()
        .map(|p| (p.name.clone(), p.ty.clone()))
        .collect()
}

/// A graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct IoSlot {
    pub name: String,
    /// The type callers see (f32 for every float).
    pub ty: TensorType,
    /// Where it lives, in its storage dtype.
    pub buf: BufRef,
}

fn align(bytes: usize) -> usize {
    bytes.div_ceil(MemoryPlan::ALIGN) * MemoryPlan::ALIGN
}

fn compile_err(m: String) -> RuntimeError {
    RuntimeError::Compile(m)
}

/// Binding state of one plan: the memory plan's slots, the weights seen so far, and scratch
/// for values that live inside one group (temporaries, dense copies of operands). Scratch sits
/// after the plan region and is reused by every group.
pub struct Binder<'a> {
    graph: &'a Graph,
    memory: &'a MemoryPlan,
    param_index: HashMap<String, usize>,
    params: Vec<ParamSlot>,
    /// Buffers of values without an arena slot of their own (temporaries, aliases, copies).
    extra: HashMap<NodeId, BufRef>,
    scratch_base: usize,
    scratch_top: usize,
    scratch_max: usize,
    synthetic: u32,
}

impl<'a> Binder<'a> {
    pub fn new(graph: &'a Graph, memory: &'a MemoryPlan) -> Binder<'a> {
        Binder {
            graph,
            memory,
            param_index: HashMap::new(),
            params: vec![],
            extra: HashMap::new(),
            scratch_base: align(memory.arena_bytes),
            scratch_top: 0,
            scratch_max: 0,
            synthetic: 0,
        }
    }

    pub fn graph(&self) -> &'a Graph {
        self.graph
    }

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
            bytes: node.ty.size_bytes(),
            dtype: node.ty.dtype,
        }
    }

    /// The buffer of a binding: a weight, an arena slot, or what the group bound it to.
    pub fn resolve(&mut self, b: &Binding) -> Result<BufRef, RuntimeError> {
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
            Some(Slot::Param) => match self.memory.param_in_place.iter().find(|(o, _)| *o == id) {
                // An output computed in the memory of the param it updates.
                Some(&(_, param)) => Ok(self.param(param)),
                None => Err(compile_err(format!(
                    "memory plan marks non-param {id} as a param"
                ))),
            },
            None => Err(compile_err(format!(
                "{id} ({}, {}) has no memory slot but is needed across kernels",
                self.graph.node(id).op.mnemonic(),
                b.ty
            ))),
        }
    }

    /// Fresh scratch for a value of `ty`, valid until the next group starts.
    pub fn scratch(&mut self, ty: &TensorType) -> BufRef {
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

    /// A synthetic binding resolved to `buf` (the destination of a copy the binder made up).
    fn synthetic_binding(&mut self, ty: TensorType, buf: BufRef) -> Binding {
        self.synthetic += 1;
        let node = NodeId(u32::MAX - self.synthetic);
        self.extra.insert(node, buf);
        Binding { node, ty }
    }

    /// Starts a group: scratch is reused, and the group's temporaries without an arena slot get
    /// scratch of their own.
    pub fn begin_group(&mut self, lg: &LoweredGroup) {
        self.scratch_top = 0;
        for t in &lg.temporaries {
            if self.memory.slot(t.node).is_none() && !self.extra.contains_key(&t.node) {
                let r = self.scratch(&t.ty);
                self.extra.insert(t.node, r);
            }
        }
    }

    /// A kernel that copies `map` of `src` (over the shape `map` is defined on) into dense
    /// scratch, and that scratch as a contiguous view. The caller lowers the kernel.
    pub fn dense_copy(
        &mut self,
        src: &Binding,
        map: IndexMap,
        name: &str,
    ) -> (KernelProgram, BufRef, View) {
        let ty = TensorType {
            dtype: src.ty.dtype,
            shape: map.shape().into(),
        };
        let tmp = self.scratch(&ty);
        let dst = self.synthetic_binding(ty.clone(), tmp);
        let p = copy_program(name, src.clone(), map, dst);
        (p, tmp, View::contiguous(&ty.shape))
    }

    /// The checked buffers of a kernel program: (inputs, outputs, whether an output overlaps an
    /// input).
    pub fn kernel_buffers(
        &mut self,
        p: &KernelProgram,
    ) -> Result<(Vec<BufRef>, Vec<BufRef>, bool), RuntimeError> {
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
        check_kernel_buffers(p, &inputs, &outputs)?;
        let overlapping = check_in_place(p, &inputs, &outputs)?;
        Ok((inputs, outputs, overlapping))
    }

    /// An alias step (`dst` is a view of `src`). Returns the copy to make when the memory plan
    /// gave `dst` a slot of its own, `None` when `dst` simply shares `src`'s bytes.
    pub fn alias(
        &mut self,
        src: &Binding,
        dst: &Binding,
        name: &str,
    ) -> Result<Option<(BufRef, BufRef)>, RuntimeError> {
        let s = self.resolve(src)?;
        if !matches!(self.memory.slot(dst.node), Some(Slot::Arena { .. })) {
            self.extra.insert(dst.node, s);
            return Ok(None);
        }
        let d = self.resolve(dst)?;
        if d == s {
            return Ok(None);
        }
        if d.bytes() != s.bytes() || d.dtype() != s.dtype() {
            return Err(compile_err(format!(
                "{name}: alias of different size or storage"
            )));
        }
        Ok(Some((s, d)))
    }

    /// Slots of the graph's inputs, typed as `visible` declares them.
    pub fn inputs(&mut self, visible: &Graph) -> Result<Vec<IoSlot>, RuntimeError> {
        let graph = self.graph;
        graph
            .inputs()
            .into_iter()
            .map(|(name, id)| self.io_slot(name, id, visible))
            .collect()
    }

    /// Slots of the graph's outputs, typed as `visible` declares them.
    pub fn outputs(&mut self, visible: &Graph) -> Result<Vec<IoSlot>, RuntimeError> {
        let graph = self.graph;
        graph
            .outputs
            .iter()
            .map(|(name, id)| self.io_slot(name, *id, visible))
            .collect()
    }

    fn io_slot(&mut self, name: &str, id: NodeId, visible: &Graph) -> Result<IoSlot, RuntimeError> {
        let binding = Binding {
            node: id,
            ty: self.graph.ty(id).clone(),
        };
        Ok(IoSlot {
            name: name.to_string(),
            ty: visible.ty(id).clone(),
            buf: self.resolve(&binding)?,
        })
    }

    /// The weights, in [`BufRef::Param`] index order.
    pub fn params(&self) -> &[ParamSlot] {
        &self.params
    }

    /// The most scratch any group used.
    pub fn scratch_bytes(&self) -> usize {
        self.scratch_max
    }

    /// Plan region plus scratch: the arena an executable allocates.
    pub fn arena_bytes(&self) -> usize {
        self.scratch_base + self.scratch_max
    }

    pub(crate) fn into_params(self) -> Vec<ParamSlot> {
        self.params
    }
}
