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
///
/// Evaluating `nodes` in order, each node's operands being either an earlier member or one of
/// `inputs`, computes every value of `outputs`. The values of members that are not outputs live
/// only inside the kernel (registers / scratch) and get no memory slot.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelGroup {
    pub kind: GroupKind,
    /// Member nodes in topological order (ascending id). The anchor (the Reduce / library / data op)
    /// is one of them. Includes the nodes listed in `recomputed`; never contains `Input`/`Param`.
    pub nodes: Vec<NodeId>,
    /// Values read from outside the group (graph inputs, params, outputs of earlier groups), in
    /// ascending id. Every one is materialised: a graph input, a param, or an output of an earlier
    /// group.
    pub inputs: Vec<NodeId>,
    /// Values produced here and needed later (by another group or as a graph output), in ascending
    /// id. Owned members (never `recomputed` ones). All outputs of an Elementwise group have the
    /// group's element count; those of a Reduction / Library group are on the anchor's result side:
    /// the anchor's element count, read at the anchor's linear index. Library outputs may have
    /// another shape (a row-major reinterpretation); Reduction outputs have exactly the Reduce's
    /// shape unless `FusionOptions::reshaped_reduction_outputs` is set (then e.g. `rstd: [B, S, 1]`
    /// from a Reduce to `[B, S]`).
    pub outputs: Vec<NodeId>,
    /// For Reduction / Library / Data groups: the op the group is built around.
    pub anchor: Option<NodeId>,
    /// Reduction / Library groups: members evaluated on the anchor's operand side, before it.
    /// Reduction: the elementwise/view nodes computing the reduced value, in the Reduce's input
    /// index space. Library: only views of materialised operands, reshapes directly on the
    /// operand's buffer then slices / transposes / broadcasts, so each operand is a strided view of
    /// its buffer (a backend that needs dense operands copies it).
    /// Empty for other kinds. Ascending id. Added by the fusion pass (see docs/fusion.md).
    pub prologue: Vec<NodeId>,
    /// Reduction / Library groups: members evaluated on the anchor's result index space, after it:
    /// the anchor's result is read only at the same (linear) index by these nodes (e.g. bias add,
    /// GELU, gate * x + residual for a MatMul; mean = sum / n for a Reduce). Besides the anchor's
    /// result they may read other inputs at the same index or through views (broadcast bias).
    /// Never contains the anchor. Empty for other kinds. Ascending id.
    pub epilogue: Vec<NodeId>,
    /// Members of `nodes` this group evaluates although it does not own them: `Constant`/`Iota`
    /// leaves and cheap producers (views, one elementwise op on materialised values) owned by
    /// another group and recomputed here instead of being materialised. Never outputs.
    /// Ascending id.
    pub recomputed: Vec<NodeId>,
}

impl KernelGroup {
    /// Members this group owns: `nodes` minus `recomputed`. Every non-leaf node of the graph is
    /// owned by exactly one group.
    pub fn owned(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .copied()
            .filter(|n| self.recomputed.binary_search(n).is_err())
    }

    /// True when `node` is a member (owned or recomputed).
    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes.binary_search(&node).is_ok()
    }
}

/// The graph's schedule as kernel groups in execution order: every input of a group is a graph
/// input, a param, or an output of an earlier group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FusionPlan {
    pub groups: Vec<KernelGroup>,
}

impl FusionPlan {
    /// Index of the group that owns `node` (computes it as its own member, not as a recomputed
    /// copy). `None` for `Input`/`Param` and for `Constant`/`Iota` that are only recomputed.
    pub fn group_of(&self, node: NodeId) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.contains(node) && g.recomputed.binary_search(&node).is_err())
    }

    /// Owning group of every node, indexed by node id (`len` = number of graph nodes): the same as
    /// [`FusionPlan::group_of`] for all nodes at once, in linear time.
    pub fn owners(&self, len: usize) -> Vec<Option<usize>> {
        let mut owners = vec![None; len];
        for (i, g) in self.groups.iter().enumerate() {
            for n in g.owned() {
                if let Some(slot) = owners.get_mut(n.index()) {
                    *slot = Some(i);
                }
            }
        }
        owners
    }

    /// Number of groups of one kind.
    pub fn count(&self, kind: GroupKind) -> usize {
        self.groups.iter().filter(|g| g.kind == kind).count()
    }

    /// Group counts of every kind, in the order Elementwise, Reduction, Library, Data, Alias.
    pub fn kind_counts(&self) -> [(GroupKind, usize); 5] {
        GroupKind::ALL.map(|k| (k, self.count(k)))
    }

    /// Groups that need a kernel launch (every kind but Alias).
    pub fn launches(&self) -> usize {
        self.groups.len() - self.count(GroupKind::Alias)
    }
}

impl GroupKind {
    pub const ALL: [GroupKind; 5] = [
        GroupKind::Elementwise,
        GroupKind::Reduction,
        GroupKind::Library,
        GroupKind::Data,
        GroupKind::Alias,
    ];

    /// Lower-case name used by the dumps.
    pub fn name(self) -> &'static str {
        match self {
            GroupKind::Elementwise => "elementwise",
            GroupKind::Reduction => "reduction",
            GroupKind::Library => "library",
            GroupKind::Data => "data",
            GroupKind::Alias => "alias",
        }
    }
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
/// value and its `Alias` (reshape), a legal in-place reuse recorded in `in_place`, or a concat
/// operand written directly into its slice of the concat's result (`concat_in_place`).
///
/// Time is the index of a group in [`FusionPlan::groups`]: graph inputs are copied into their
/// slots before group 0 runs and must stay intact until their last reader; a group's outputs are
/// written while it runs; graph outputs stay intact until the run ends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPlan {
    /// Indexed by node id; `None` for values that live only inside a kernel group (and for
    /// `Constant`/`Iota` recomputed in their users). `Some(Slot::Param)` for every `Param` node (and the outputs of `param_in_place`),
    /// `Some(Slot::Arena)` for graph inputs and every group output (the outputs of an `Alias`
    /// group have the offset of the group's input).
    pub slots: Vec<Option<Slot>>,
    pub arena_bytes: usize,
    /// Largest total of simultaneously live bytes (<= arena_bytes; equal when packing is perfect).
    /// Each buffer counts with its size rounded up to [`MemoryPlan::ALIGN`]; bytes shared by an
    /// alias or an in-place pair count once.
    pub peak_live_bytes: usize,
    /// (output, input) pairs where the output reuses the input's buffer: the output is written by
    /// an Elementwise group whose outputs all have one shape (one pass) and that reads the input
    /// only at the index it writes, and the input's last reader is that group. Same offset and
    /// byte size.
    pub in_place: Vec<(NodeId, NodeId)>,
    /// (concat, operand) pairs where the operand's slot is its slice of the concat's result: the
    /// concat (`Op::Concat`, the anchor of a Data group) has size 1 in every dim before its axis,
    /// so each operand is one contiguous byte range of the result, and the operand (a group output,
    /// possibly seen through `Alias` reshapes) is written there by its producer. The concat group
    /// copies only its other operands (`qie_codegen::lower_plan_with_memory` drops the copy
    /// kernels of these). The operand and the concat share those bytes; the buffer holding them
    /// lives from the operand's producer to the concat's last reader. Each operand appears once in
    /// the concat's arguments; in concat order, then argument order.
    pub concat_in_place: Vec<(NodeId, NodeId)>,
    /// (graph output, param) pairs where the output is computed straight into the param's
    /// memory (`Slot::Param`, no lifetime): the run updates the param in place, and the caller
    /// must treat the output as the param's new value (see `MemoryOptions::param_outputs`).
    pub param_in_place: Vec<(NodeId, NodeId)>,
    /// Indexed by node id, for arena values: `(first, last)` group index (inclusive) during which
    /// the value's bytes must stay intact. Graph inputs start at 0; graph outputs end at
    /// `groups.len()` (one past the last group). `None` where `slots` has no arena slot.
    pub lifetimes: Vec<Option<(usize, usize)>>,
}

impl MemoryPlan {
    pub const ALIGN: usize = 256;

    pub fn slot(&self, id: NodeId) -> Option<Slot> {
        self.slots.get(id.index()).copied().flatten()
    }

    /// The operands of `concat` that its producers write in place (see
    /// [`MemoryPlan::concat_in_place`]).
    pub fn concat_operands_in_place(&self, concat: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.concat_in_place
            .iter()
            .filter(move |(c, _)| *c == concat)
            .map(|&(_, a)| a)
    }
}
