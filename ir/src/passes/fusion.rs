//! Fusion: partitions a graph into kernel groups ([`KernelGroup`]) in execution order.
//!
//! # The cost rule
//!
//! Memory traffic is what a fused kernel saves, and launches are what it costs to split. So a
//! value is *materialised* (written to memory as a group output) only when something forces it;
//! everything else is computed inside the kernel of its consumers. Concretely:
//!
//! 1. **Leaves.** `Input`/`Param` are never in groups. `Constant`/`Iota` are recomputed inside
//!    every group that uses them (listed in that group's `recomputed`).
//! 2. **Elementwise groups.** Elementwise ops and views (`Broadcast`, `Transpose`, `Slice`,
//!    `Reshape`) fuse with their consumers as long as the group iterates over one index space
//!    (its outputs' element count). Every compute member must be evaluated once per element of
//!    its own value: it may be reached from the outputs only through bijective views (reshape,
//!    transpose, non-expanding broadcast, full slice), see [`Access`]. A compute member reached
//!    through an expanding broadcast or a partial slice ([`Access::Indexed`]) would be evaluated
//!    many times, so it is allowed only when *cheap* (below); otherwise it is materialised.
//! 3. **No duplicated expensive work.** A value whose users sit in two groups (or in both index
//!    spaces of one group) is materialised once, unless it is *cheap*, in which case each
//!    consumer recomputes it (`FusionOptions::recompute_cheap`). Cheap = a view (of a cheap or
//!    materialised value), or a single elementwise op whose operands are, after stripping views,
//!    leaves or values that are materialised anyway: a library/reduce/data result, a value seen
//!    through an expanding broadcast or partial slice, a value with several users. Recomputing an
//!    elementwise op *forces* those operands to be materialised, so recomputation never nests
//!    (at most one arithmetic op per element is repeated).
//! 4. **Reduction groups.** One `Reduce` per group, plus its elementwise prologue (the nodes
//!    computing the reduced value, in the Reduce's input index space) and an elementwise
//!    epilogue on the reduced value at the same index (e.g. `mean = sum / n`, `rsqrt(var + eps)`).
//!    Outputs have the Reduce's shape (`FusionOptions::reshaped_reduction_outputs` also allows
//!    the same element count in another shape, e.g. a keepdim `[B, S, 1]`).
//!    Layer norm is therefore two Reduction groups (mean; variance) and one Elementwise group
//!    (normalise, modulate, gate, residual add), the centred `x - mean` being recomputed.
//! 5. **Library groups.** `MatMul`/`Attention`/`Conv2d` each anchor their own group. Their
//!    operands are materialised values, possibly seen through views (reshape, transpose, slice,
//!    broadcast) that form the prologue: reshapes directly on the buffer, then any slices,
//!    transposes and broadcasts, so the operand is always a strided view (a backend that needs a
//!    dense operand copies it). E.g. the slice of the attention output that feeds `to_out` is
//!    never copied by a kernel of its own; `reshape(slice(x))` is materialised first.
//!    When `FusionOptions::matmul_epilogue` is set, elementwise consumers that read the library
//!    result only at the same linear index (bias add, GELU, gate * x + residual) ride in the group
//!    as its epilogue, with broadcasts of small operands; a backend (cuBLASLt epilogues) inspects
//!    `KernelGroup::epilogue` to decide whether it can fuse them or must run them as a kernel.
//! 6. **Data groups.** `Concat`, `Gather`: alone, operands materialised.
//! 7. **Alias groups.** A `Reshape` that must be materialised (graph output, concat operand, used
//!    by several groups with recomputation off, ...) does not compute its operand: the operand is
//!    materialised in its own group (same bytes written, and reductions / library ops keep their
//!    natural output shape) and the reshape becomes an Alias group, which launches no kernel; the
//!    memory planner gives it its input's buffer. A reshape of a `Param` (weights are not in the
//!    arena) or of a constant is computed instead.
//!
//! A graph output is always materialised; it may be an extra output of the group that contains
//! all its users, when that group reads it at the index it writes.
//!
//! # Algorithm
//!
//! One pass over the nodes in reverse topological order (the graph's id order, reversed). When a
//! node is visited, all its users have been placed; it collects their *demands* (group, index
//! space, access) and then joins the single group that demands it, is copied into every demanding
//! group (cheap), or *seeds* a new group (materialised). Because a node joins a group only when
//! all its users are in it, the group graph is acyclic and ordering groups by their seed (the
//! highest member id) is a valid execution order.

use crate::plan::{FusionPlan, GroupKind, KernelGroup};
use crate::{Graph, NodeId, Op};
use smallvec::SmallVec;
use std::collections::BTreeMap;

/// Knobs of [`fuse`]. `Default` is what the compiler uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FusionOptions {
    /// When false, every non-leaf node gets its own group (the unfused reference schedule);
    /// `Constant`/`Iota` are still recomputed in their users.
    pub fuse: bool,
    /// Allow cheap producers (views, one elementwise op on materialised values) to be recomputed
    /// in several consumer groups, or under an expanding broadcast, instead of materialised.
    pub recompute_cheap: bool,
    /// Let elementwise consumers of a `MatMul`/`Attention`/`Conv2d` result ride in its group as an
    /// epilogue.
    pub matmul_epilogue: bool,
    /// Let a Reduction group output a value of the Reduce's element count but another shape
    /// (keepdim: `rstd: [B, S, 1]` from a Reduce to `[B, S]`), which saves one launch per norm
    /// written with keepdim reshapes (8 per DiT block). Off by default: the codegen lowering
    /// (`qie_codegen::lower`) currently stores Reduction outputs only in the Reduce's shape.
    pub reshaped_reduction_outputs: bool,
}

impl Default for FusionOptions {
    fn default() -> Self {
        FusionOptions {
            fuse: true,
            recompute_cheap: true,
            matmul_epilogue: true,
            reshaped_reduction_outputs: false,
        }
    }
}

impl FusionOptions {
    /// One group per non-leaf node.
    pub fn unfused() -> Self {
        FusionOptions {
            fuse: false,
            ..FusionOptions::default()
        }
    }
}

/// How a member of a group (or a value it reads) is indexed relative to the index space the
/// group iterates over (the outputs' linear index for Elementwise groups and epilogues).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Element `i` of the value is used for element `i` of the group (same linear index; only
    /// reshapes and other layout-preserving views in between).
    Same,
    /// A bijection other than the identity (a transpose): every element is used once.
    Permuted,
    /// Through an expanding broadcast, a partial slice, or several different paths: elements may
    /// be used several times or not at all.
    Indexed,
}

impl Access {
    /// The access of a value used along two paths.
    pub fn join(self, other: Access) -> Access {
        if self == Access::Same && other == Access::Same {
            Access::Same
        } else {
            Access::Indexed
        }
    }
}

/// How `user` reads its operands when `user` itself is accessed with `access`: unchanged for
/// elementwise ops and layout-preserving views, [`Access::Permuted`] through a real transpose,
/// [`Access::Indexed`] through an expanding broadcast or a partial slice (and for any other op).
pub fn operand_access(g: &Graph, user: NodeId, access: Access) -> Access {
    let node = g.node(user);
    match &node.op {
        op if op.is_elementwise() => access,
        Op::Reshape { .. } => access,
        Op::Transpose { perm } => {
            let input = g.ty(node.args[0]);
            let moved: SmallVec<[usize; 6]> = perm
                .iter()
                .copied()
                .filter(|&p| input.shape[p] != 1)
                .collect();
            if moved.windows(2).all(|w| w[0] < w[1]) || access == Access::Indexed {
                access
            } else {
                Access::Permuted
            }
        }
        Op::Broadcast { .. } => {
            if g.ty(node.args[0]).numel() == node.ty.numel() {
                access
            } else {
                Access::Indexed
            }
        }
        Op::Slice { axis, start, end } => {
            if *start == 0 && *end == g.ty(node.args[0]).shape[*axis] {
                access
            } else {
                Access::Indexed
            }
        }
        _ => Access::Indexed,
    }
}

/// Follows views down from `id`: returns the first non-view node and whether some view on the
/// way expands or drops elements (so the root is read with [`Access::Indexed`]).
fn strip_views(g: &Graph, mut id: NodeId) -> (NodeId, bool) {
    let mut indexed = false;
    while g.node(id).op.is_view() {
        indexed |= operand_access(g, id, Access::Same) == Access::Indexed;
        id = g.node(id).args[0];
    }
    (id, indexed)
}

/// Ops that cost tens of instructions per element (range reduction, polynomials): reading a
/// materialised f32 is cheaper than recomputing them per use. E.g. the DiT's RoPE `cos(angles)`
/// [S, 64] is read by every head and layer; recomputed, it cost 4 trig calls per q/k element.
fn is_transcendental(op: &Op) -> bool {
    use crate::{BinaryOp, UnaryOp};
    matches!(
        op,
        Op::Unary(
            UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Sin
                | UnaryOp::Cos
                | UnaryOp::Tanh
                | UnaryOp::Sigmoid
        ) | Op::Binary(BinaryOp::Pow)
    )
}

fn is_anchor(op: &Op) -> bool {
    op.is_library_call()
        || matches!(
            op,
            Op::Reduce { .. } | Op::Concat { .. } | Op::Gather { .. }
        )
}

/// Which index space of a group a member is evaluated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Space {
    /// The group's output space (Elementwise groups; the anchor's result side otherwise).
    Main,
    /// The anchor's operand side (Reduction prologue, Library operand reshapes).
    Prologue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Placement {
    group: usize,
    space: Space,
    access: Access,
    /// Some user between this node and the group's anchor is a `Reshape` (Library prologues
    /// allow reshapes only directly on the operand's buffer, so the view stays strided).
    below_reshape: bool,
}

struct GroupState {
    seed: NodeId,
    kind: GroupKind,
    anchor: Option<NodeId>,
    outputs: Vec<NodeId>,
}

struct Builder<'a> {
    g: &'a Graph,
    opts: &'a FusionOptions,
    users: Vec<SmallVec<[NodeId; 4]>>,
    is_output: Vec<bool>,
    forced: Vec<bool>,
    placements: Vec<SmallVec<[Placement; 1]>>,
    groups: Vec<GroupState>,
}

impl Builder<'_> {
    /// Cheap = may be recomputed per use (see the module docs, rule 3).
    fn is_cheap(&self, p: NodeId) -> bool {
        if !self.opts.recompute_cheap {
            return false;
        }
        let node = self.g.node(p);
        if node.op.is_view() || matches!(node.op, Op::Constant { .. } | Op::Iota { .. }) {
            return true;
        }
        if !node.op.is_elementwise() || is_transcendental(&node.op) {
            return false;
        }
        node.args.iter().all(|&a| {
            let (root, indexed) = strip_views(self.g, a);
            let op = &self.g.node(root).op;
            op.is_leaf()
                || is_anchor(op)
                || indexed
                || self.users[root.index()].len() >= 2
                || self.forced[root.index()]
        })
    }

    /// Recomputing elementwise `p` per use relies on its operands being materialised.
    fn force_operands(&mut self, p: NodeId) {
        let g = self.g;
        if !g.node(p).op.is_elementwise() {
            return;
        }
        for &a in &g.node(p).args {
            let (root, _) = strip_views(self.g, a);
            if !self.g.node(root).op.is_leaf() {
                self.forced[root.index()] = true;
            }
        }
    }

    /// Can group `d.group` evaluate `p` in space `d.space` with access `d.access`?
    fn can_host(&self, p: NodeId, d: &Placement, cheap: bool) -> bool {
        let grp = &self.groups[d.group];
        let op = &self.g.node(p).op;
        if grp.kind == GroupKind::Data {
            return false;
        }
        if grp.kind == GroupKind::Library && d.space == Space::Prologue {
            // Reshapes first (on the buffer), then any slice / transpose / broadcast: the
            // operand is always a strided view of its buffer.
            return op.is_view() && (!d.below_reshape || matches!(op, Op::Reshape { .. }));
        }
        let anchor_ok = grp.kind == GroupKind::Elementwise
            && grp.anchor.is_none()
            && d.space == Space::Main
            && d.access == Access::Same;
        match op {
            Op::Constant { .. } | Op::Iota { .. } => true,
            op if op.is_view() => true,
            op if op.is_elementwise() => d.access != Access::Indexed || cheap,
            Op::Reduce { .. } => {
                let shape = &self.g.ty(p).shape;
                anchor_ok
                    && (self.opts.reshaped_reduction_outputs
                        || grp.outputs.iter().all(|&o| self.g.ty(o).shape == *shape))
            }
            op if op.is_library_call() => anchor_ok && self.opts.matmul_epilogue,
            _ => false,
        }
    }

    fn seed(&mut self, p: NodeId) {
        let g = self.g;
        let op = &g.node(p).op;
        let kind = if matches!(op, Op::Reduce { .. }) {
            GroupKind::Reduction
        } else if op.is_library_call() {
            GroupKind::Library
        } else if matches!(op, Op::Concat { .. } | Op::Gather { .. }) {
            GroupKind::Data
        } else {
            GroupKind::Elementwise
        };
        let anchor = (kind != GroupKind::Elementwise).then_some(p);
        self.placements[p.index()] = SmallVec::from_elem(
            Placement {
                group: self.groups.len(),
                space: Space::Main,
                access: Access::Same,
                below_reshape: false,
            },
            1,
        );
        self.groups.push(GroupState {
            seed: p,
            kind,
            anchor,
            outputs: vec![p],
        });
    }

    /// Demands of `p`'s users, merged per (group, space); the flag says some user needs `p`
    /// materialised (a data op, a library operand that is not a prologue reshape).
    fn demands(&self, p: NodeId) -> (SmallVec<[Placement; 2]>, bool) {
        let mut demands: SmallVec<[Placement; 2]> = SmallVec::new();
        let mut needs_memory = false;
        let is_view = self.g.node(p).op.is_view();
        let is_constant = matches!(self.g.node(p).op, Op::Constant { .. } | Op::Iota { .. });
        for &u in &self.users[p.index()] {
            let op = &self.g.node(u).op;
            for pl in &self.placements[u.index()] {
                // A materialised reshape (the seed of its group) is an alias of its operand.
                let alias = matches!(op, Op::Reshape { .. })
                    && self.groups[pl.group].seed == u
                    && self.opts.fuse
                    && !is_constant;
                let d = if alias {
                    None
                } else if op.is_elementwise() || op.is_view() {
                    Some(Placement {
                        access: operand_access(self.g, u, pl.access),
                        below_reshape: pl.below_reshape || matches!(op, Op::Reshape { .. }),
                        ..*pl
                    })
                } else if matches!(op, Op::Reduce { .. }) || (op.is_library_call() && is_view) {
                    Some(Placement {
                        group: pl.group,
                        space: Space::Prologue,
                        access: Access::Same,
                        below_reshape: false,
                    })
                } else {
                    None
                };
                match d {
                    None => needs_memory = true,
                    Some(d) => {
                        match demands
                            .iter_mut()
                            .find(|e| e.group == d.group && e.space == d.space)
                        {
                            Some(e) => {
                                e.access = e.access.join(d.access);
                                e.below_reshape |= d.below_reshape;
                            }
                            None => demands.push(d),
                        }
                    }
                }
            }
        }
        (demands, needs_memory)
    }

    fn visit(&mut self, p: NodeId) {
        let g = self.g;
        let op = &g.node(p).op;
        if matches!(op, Op::Input { .. } | Op::Param { .. }) {
            return;
        }
        let is_constant = matches!(op, Op::Constant { .. } | Op::Iota { .. });
        let is_output = self.is_output[p.index()];
        let (demands, needs_memory) = self.demands(p);
        let must_seed = needs_memory || self.forced[p.index()];

        if is_constant {
            if demands.is_empty() && !must_seed && !is_output {
                return; // dead leaf
            }
            if !must_seed && !is_output && demands.iter().all(|d| self.can_host(p, d, true)) {
                self.placements[p.index()] = demands.into_iter().collect();
            } else {
                self.seed(p);
            }
            return;
        }
        if !self.opts.fuse || must_seed || demands.is_empty() {
            self.seed(p);
            return;
        }
        let cheap = self.is_cheap(p);
        if !demands.iter().all(|d| self.can_host(p, d, cheap)) {
            self.seed(p);
            return;
        }
        if demands.len() == 1 {
            let d = demands[0];
            let anchor_shape = match self.groups[d.group].anchor {
                Some(a) if self.groups[d.group].kind == GroupKind::Reduction => {
                    self.opts.reshaped_reduction_outputs || g.ty(a).shape == g.ty(p).shape
                }
                _ => true,
            };
            if is_output && !(d.space == Space::Main && d.access == Access::Same && anchor_shape) {
                self.seed(p);
                return;
            }
            self.placements[p.index()] = SmallVec::from_elem(d, 1);
            let grp = &mut self.groups[d.group];
            if is_anchor(op) {
                grp.kind = if matches!(op, Op::Reduce { .. }) {
                    GroupKind::Reduction
                } else {
                    GroupKind::Library
                };
                grp.anchor = Some(p);
            }
            if is_output {
                grp.outputs.push(p);
            }
            if d.access == Access::Indexed {
                self.force_operands(p);
            }
        } else if cheap && !is_output {
            self.placements[p.index()] = demands.into_iter().collect();
            self.force_operands(p);
        } else {
            self.seed(p);
        }
    }

    fn finish(self) -> FusionPlan {
        let g = self.g;
        let mut order: Vec<usize> = (0..self.groups.len()).collect();
        order.sort_by_key(|&i| self.groups[i].seed);
        let mut rank = vec![0; self.groups.len()];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r;
        }
        struct Members {
            nodes: Vec<NodeId>,
            prologue: Vec<NodeId>,
            main: Vec<NodeId>,
            recomputed: Vec<NodeId>,
        }
        let mut members: Vec<Members> = (0..self.groups.len())
            .map(|_| Members {
                nodes: vec![],
                prologue: vec![],
                main: vec![],
                recomputed: vec![],
            })
            .collect();
        for id in g.ids() {
            let pls = &self.placements[id.index()];
            if pls.is_empty() {
                continue;
            }
            let is_constant = matches!(g.node(id).op, Op::Constant { .. } | Op::Iota { .. });
            let seeded = self.groups[pls[0].group].seed == id;
            let owner = if is_constant && !seeded {
                None
            } else {
                pls.iter().map(|pl| pl.group).min_by_key(|&gi| rank[gi])
            };
            for pl in pls {
                let m = &mut members[pl.group];
                if m.nodes.last() != Some(&id) {
                    m.nodes.push(id);
                    if owner != Some(pl.group) {
                        m.recomputed.push(id);
                    }
                }
                match pl.space {
                    Space::Main => m.main.push(id),
                    Space::Prologue => m.prologue.push(id),
                }
            }
        }
        let groups = order
            .iter()
            .map(|&gi| {
                let st = &self.groups[gi];
                let m = &members[gi];
                let mut inputs: Vec<NodeId> = m
                    .nodes
                    .iter()
                    .flat_map(|&n| g.node(n).args.iter().copied())
                    .filter(|a| m.nodes.binary_search(a).is_err())
                    .collect();
                inputs.sort();
                inputs.dedup();
                let mut outputs = st.outputs.clone();
                outputs.sort();
                let mut kind = st.kind;
                let all_reshapes = m
                    .nodes
                    .iter()
                    .all(|&n| matches!(g.node(n).op, Op::Reshape { .. }));
                if kind == GroupKind::Elementwise
                    && all_reshapes
                    && inputs.len() == 1
                    && !matches!(g.node(inputs[0]).op, Op::Param { .. })
                {
                    kind = GroupKind::Alias;
                }
                let (prologue, epilogue) = match kind {
                    GroupKind::Reduction | GroupKind::Library => (
                        m.prologue.clone(),
                        m.main
                            .iter()
                            .copied()
                            .filter(|&n| Some(n) != st.anchor)
                            .collect(),
                    ),
                    _ => (vec![], vec![]),
                };
                KernelGroup {
                    kind,
                    nodes: m.nodes.clone(),
                    inputs,
                    outputs,
                    anchor: st.anchor,
                    prologue,
                    epilogue,
                    recomputed: m.recomputed.clone(),
                }
            })
            .collect();
        FusionPlan { groups }
    }
}

/// Partitions every non-leaf node of `g` into kernel groups, in a valid execution order (see the
/// module docs for the rules). Deterministic. Debug builds check the result with
/// [`validate_fusion_plan`].
pub fn fuse(g: &Graph, opts: &FusionOptions) -> FusionPlan {
    let n = g.len();
    let mut is_output = vec![false; n];
    for (_, id) in &g.outputs {
        is_output[id.index()] = true;
    }
    let mut b = Builder {
        g,
        opts,
        users: g.users(),
        is_output,
        forced: vec![false; n],
        placements: vec![SmallVec::new(); n],
        groups: vec![],
    };
    for i in (0..g.len() as u32).rev() {
        b.visit(NodeId(i));
    }
    let plan = b.finish();
    if cfg!(debug_assertions) {
        if let Err(e) = validate_fusion_plan(g, &plan) {
            panic!("fuse produced an invalid plan: {e}");
        }
    }
    plan
}

/// How the main index space of `group` reads each of its members and inputs (see [`Access`]).
/// The main space is the whole group for Elementwise/Alias groups, and the anchor's result side
/// (the anchor and its epilogue) for Reduction/Library/Data groups; prologue members and values
/// read only there are absent. Outputs are [`Access::Same`] by definition.
///
/// The memory planner uses it for in-place reuse (an input read only with `Same` access), and a
/// backend can use it to check that an epilogue reads the library result at the same index.
pub fn main_space_access(g: &Graph, group: &KernelGroup) -> BTreeMap<NodeId, Access> {
    let mut access: BTreeMap<NodeId, Access> = BTreeMap::new();
    for &o in &group.outputs {
        access.insert(o, Access::Same);
    }
    let main: Vec<NodeId> = match group.kind {
        GroupKind::Elementwise | GroupKind::Alias => group.nodes.clone(),
        _ => {
            let mut v: Vec<NodeId> = group.epilogue.iter().copied().chain(group.anchor).collect();
            v.sort();
            v
        }
    };
    for &m in main.iter().rev() {
        let Some(&a) = access.get(&m) else { continue };
        if Some(m) == group.anchor {
            continue;
        }
        let mut args: SmallVec<[NodeId; 4]> = g.node(m).args.clone();
        args.sort();
        args.dedup();
        for q in args {
            let qa = operand_access(g, m, a);
            access
                .entry(q)
                .and_modify(|e| *e = e.join(qa))
                .or_insert(qa);
        }
    }
    access
}

/// Checks the structural invariants of a fusion plan: every non-leaf node owned by exactly one
/// group, `Input`/`Param` in none, groups in dependency order, inputs and outputs consistent with
/// the members, values read by another group or named as graph outputs are group outputs, one
/// anchor of the right kind per Reduction/Library/Data group. Used by tests and debug builds.
pub fn validate_fusion_plan(g: &Graph, plan: &FusionPlan) -> Result<(), String> {
    let n = g.len();
    let mut owner: Vec<Option<usize>> = vec![None; n];
    // produced[v] = index of the group that outputs v.
    let mut produced: Vec<Option<usize>> = vec![None; n];
    for (gi, grp) in plan.groups.iter().enumerate() {
        let sorted = |v: &[NodeId]| v.windows(2).all(|w| w[0] < w[1]);
        if !sorted(&grp.nodes)
            || !sorted(&grp.inputs)
            || !sorted(&grp.outputs)
            || !sorted(&grp.recomputed)
            || !sorted(&grp.prologue)
            || !sorted(&grp.epilogue)
        {
            return Err(format!("group {gi}: lists must be sorted and unique"));
        }
        if grp.nodes.iter().any(|id| id.index() >= n) {
            return Err(format!("group {gi}: member out of range"));
        }
        if grp.outputs.is_empty() {
            return Err(format!("group {gi}: no output"));
        }
        for &m in &grp.nodes {
            if matches!(g.node(m).op, Op::Input { .. } | Op::Param { .. }) {
                return Err(format!("group {gi}: contains leaf {m}"));
            }
        }
        for l in [&grp.recomputed, &grp.prologue, &grp.epilogue, &grp.outputs] {
            if let Some(x) = l.iter().find(|x| !grp.contains(**x)) {
                return Err(format!("group {gi}: {x} listed but not a member"));
            }
        }
        for &o in &grp.outputs {
            if grp.recomputed.binary_search(&o).is_ok() {
                return Err(format!("group {gi}: output {o} is recomputed, not owned"));
            }
            if let Some(prev) = produced[o.index()] {
                return Err(format!("{o} is output of groups {prev} and {gi}"));
            }
            produced[o.index()] = Some(gi);
        }
        for m in grp.owned() {
            if matches!(g.node(m).op, Op::Constant { .. } | Op::Iota { .. })
                && !grp.outputs.contains(&m)
            {
                return Err(format!(
                    "group {gi}: owns constant {m} without materialising it"
                ));
            }
            if let Some(prev) = owner[m.index()] {
                return Err(format!("{m} is owned by groups {prev} and {gi}"));
            }
            owner[m.index()] = Some(gi);
        }
        // Inputs: exactly the operands that are not members; each available before this group.
        let mut expect: Vec<NodeId> = grp
            .nodes
            .iter()
            .flat_map(|&m| g.node(m).args.iter().copied())
            .filter(|a| !grp.contains(*a))
            .collect();
        expect.sort();
        expect.dedup();
        if expect != grp.inputs {
            return Err(format!(
                "group {gi}: inputs {:?} but members read {:?} from outside",
                grp.inputs, expect
            ));
        }
        for &x in &grp.inputs {
            let leaf = matches!(g.node(x).op, Op::Input { .. } | Op::Param { .. });
            match produced[x.index()] {
                Some(p) if p < gi => {}
                _ if leaf => {}
                _ => {
                    return Err(format!(
                        "group {gi}: input {x} is not produced by an earlier group"
                    ))
                }
            }
        }
        let anchors: Vec<NodeId> = grp
            .nodes
            .iter()
            .copied()
            .filter(|&m| is_anchor(&g.node(m).op))
            .collect();
        let kind_ok = match grp.kind {
            GroupKind::Elementwise | GroupKind::Alias => anchors.is_empty() && grp.anchor.is_none(),
            GroupKind::Reduction => {
                anchors.len() == 1
                    && grp.anchor == Some(anchors[0])
                    && matches!(g.node(anchors[0]).op, Op::Reduce { .. })
            }
            GroupKind::Library => {
                anchors.len() == 1
                    && grp.anchor == Some(anchors[0])
                    && g.node(anchors[0]).op.is_library_call()
            }
            GroupKind::Data => grp.nodes.len() == 1 && grp.anchor == Some(grp.nodes[0]),
        };
        if !kind_ok {
            return Err(format!(
                "group {gi}: members do not match kind {:?}",
                grp.kind
            ));
        }
        if let (GroupKind::Reduction | GroupKind::Library, Some(a)) = (grp.kind, grp.anchor) {
            if grp
                .outputs
                .iter()
                .any(|&o| g.ty(o).numel() != g.ty(a).numel())
            {
                return Err(format!(
                    "group {gi}: output not in the anchor's index space"
                ));
            }
        }
        if grp.kind == GroupKind::Alias
            && !grp
                .nodes
                .iter()
                .all(|&m| matches!(g.node(m).op, Op::Reshape { .. }))
        {
            return Err(format!("group {gi}: alias group with a non-reshape member"));
        }
        if grp.kind == GroupKind::Library {
            for &m in &grp.prologue {
                let node = g.node(m);
                let strided = node.op.is_view()
                    && (!matches!(node.op, Op::Reshape { .. })
                        || grp.inputs.contains(&node.args[0])
                        || matches!(g.node(node.args[0]).op, Op::Reshape { .. }));
                if !strided {
                    return Err(format!("group {gi}: prologue {m} is not a strided view"));
                }
            }
        }
    }
    for id in g.ids() {
        let op = &g.node(id).op;
        let leaf = op.is_leaf();
        if !leaf && owner[id.index()].is_none() {
            return Err(format!("{id} ({}) is in no group", op.mnemonic()));
        }
    }
    // Values read across groups (inputs) and graph outputs must be materialised.
    for (name, id) in &g.outputs {
        let leaf = matches!(g.node(*id).op, Op::Input { .. } | Op::Param { .. });
        if !leaf && produced[id.index()].is_none() {
            return Err(format!("graph output {name} = {id} is not a group output"));
        }
    }
    Ok(())
}
