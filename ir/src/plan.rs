//! The products of the scheduling passes: kernel groups (fusion) and buffer offsets (memory planning).
//! Backends consume these; they never re-derive them.

use crate::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupKind {
    /// Elementwise ops, views (broadcast/transpose/slice/reshape) and leaves (constants, iota)
    /// computed in one pass over the output elements. Several outputs of equal shape allowed.
    Elementwise,
    /// An elementwise prologue feeding one `Reduce` (plus an optional elementwise epilogue on the
    /// reduced value). Outputs are the reduced values.
    Reduction,
    /// One library op (`MatMul`, `Attention`, `Conv2d`) with optional elementwise producers folded
    /// into its operands' loads (prologue) and an elementwise epilogue on its result.
    Library,
    /// One data-movement op that is not a cheap view: `Concat`, `Gather`.
    Data,
    /// A reshape of a value materialised elsewhere: no kernel, the output aliases the input buffer.
    Alias,
}

/// A set of nodes executed as one kernel launch.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelGroup {
    pub kind: GroupKind,
    /// Member nodes in topological order. The anchor (the Reduce / library / data op) is one of them.
    pub nodes: Vec<NodeId>,
    /// Values read from outside the group (graph inputs, params, outputs of earlier groups).
    pub inputs: Vec<NodeId>,
    /// Values produced here and needed later (by another group or as a graph output).
    pub outputs: Vec<NodeId>,
    /// For Reduction / Library / Data groups: the op the group is built around.
    pub anchor: Option<NodeId>,
}

/// The graph's schedule as kernel groups in execution order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FusionPlan {
    pub groups: Vec<KernelGroup>,
}

/// Where a materialised value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// A weight, bound by name at run time; never in the arena.
    Param,
    /// `bytes` at `offset` in the arena. Offsets are aligned to [`MemoryPlan::ALIGN`].
    Arena { offset: usize, bytes: usize },
}

/// Static buffer assignment for every value that crosses a group boundary, graph inputs and
/// outputs included. Two values whose lifetimes overlap never overlap in the arena, except a
/// value and its `Alias` (reshape) or a legal in-place reuse recorded in `in_place`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPlan {
    /// Indexed by node id; `None` for values that live only inside a kernel group.
    pub slots: Vec<Option<Slot>>,
    pub arena_bytes: usize,
    /// Largest total of simultaneously live bytes (<= arena_bytes; equal when packing is perfect).
    pub peak_live_bytes: usize,
    /// (output, input) pairs where the output reuses the input's buffer.
    pub in_place: Vec<(NodeId, NodeId)>,
}

impl MemoryPlan {
    pub const ALIGN: usize = 256;

    pub fn slot(&self, id: NodeId) -> Option<Slot> {
        self.slots.get(id.index()).copied().flatten()
    }
}
