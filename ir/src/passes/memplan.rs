//! Memory planning: lifetimes + an arena.
//!
//! Every value that crosses a group boundary gets a slot: graph inputs (copied into the arena
//! before the first group runs), group outputs (graph outputs among them); params get
//! [`Slot::Param`] and stay where the weight store keeps them.
//!
//! 1. **Lifetimes**, in group indices (inclusive): a value is live from the group that writes it
//!    (inputs: 0) to the last group that reads it (graph outputs: `groups.len()`).
//! 2. **Buffers.** The outputs of an `Alias` group share their input's buffer, which then lives
//!    until the alias's last reader. In-place reuse (when enabled): an Elementwise group's output
//!    takes the buffer of one of its inputs when that input's buffer is last read by this group,
//!    the byte size and element count are equal, and the group reads the input only at the index
//!    it writes ([`Access::Same`]: no broadcast, transposed or sliced view of it), and all the
//!    group's outputs have one shape (so any backend runs the group as one pass). Chains of
//!    elementwise groups thus run in one buffer.
//!    Concat in place (when enabled, decided first): when every dim of a concat's result before
//!    its axis is 1, each operand is one contiguous byte range of the result, so the operand's
//!    producer can write it there and the concat copies only its other operands. The operand's
//!    buffer (the operand and its aliases) then becomes part of the concat's, at the slice's byte
//!    offset; the combined buffer lives from the operand's producer to the concat's last reader.
//!    Not for graph inputs / outputs (or their aliases), params, operands sharing bytes with another
//!    operand of the same concat, operands already placed in another concat, concat results that
//!    have placed operands themselves, or slices at unaligned offsets. Two buffers that both hold
//!    placed operands are never merged by in-place reuse afterwards.
//! 3. **Offsets**: buffers sorted by size (descending), each placed at the lowest offset where it
//!    overlaps no already-placed buffer with an overlapping lifetime; sizes rounded up to
//!    [`MemoryPlan::ALIGN`] bytes.

use crate::passes::fusion::{main_space_access, Access};
use crate::plan::{FusionPlan, GroupKind, MemoryPlan, Slot};
use crate::{Graph, NodeId, Op};
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

/// Knobs of [`plan_memory`]. `Default` is what the compiler uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Let an Elementwise group write an output into the buffer of an input it reads for the last
    /// time at the same index (recorded in [`MemoryPlan::in_place`]).
    pub in_place: bool,
    /// Let the producers of a concat's operands write them straight into their slices of the
    /// concat's result when those slices are contiguous (recorded in
    /// [`MemoryPlan::concat_in_place`]; the concat then copies only its other operands).
    pub concat_in_place: bool,
    /// (graph output, param) pairs that the caller writes back into the param after the run
    /// (an in-place update such as an optimizer step): where legal, the output is computed
    /// straight into the param's memory and gets no arena slot (recorded in
    /// [`MemoryPlan::param_in_place`]). Legal: the output's producer is an Elementwise group of
    /// one output shape that reads the param only at the index it writes, no other group reads
    /// the param, nothing reshapes the output, and both have the same type.
    pub param_outputs: Vec<(NodeId, NodeId)>,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            in_place: true,
            concat_in_place: true,
            param_outputs: Vec::new(),
        }
    }
}

impl MemoryOptions {
    /// No buffer sharing beyond aliases: every other value gets a buffer of its own.
    pub fn no_reuse() -> Self {
        MemoryOptions {
            in_place: false,
            concat_in_place: false,
            param_outputs: Vec::new(),
        }
    }
}

/// The pairs of `requested` (see [`MemoryOptions::param_outputs`]) that may share memory.
fn params_written_in_place(
    g: &Graph,
    fusion: &FusionPlan,
    requested: &[(NodeId, NodeId)],
) -> Vec<(NodeId, NodeId)> {
    let mut chosen: Vec<(NodeId, NodeId)> = Vec::new();
    for &(o, p) in requested {
        let valid = o.index() < g.len() && p.index() < g.len();
        if !valid
            || !matches!(g.node(p).op, Op::Param { .. })
            || !g.outputs.iter().any(|(_, id)| *id == o)
            || g.ty(o) != g.ty(p)
            || chosen.iter().any(|&(co, cp)| co == o || cp == p)
        {
            continue;
        }
        let readers: Vec<usize> = (0..fusion.groups.len())
            .filter(|&gi| fusion.groups[gi].inputs.contains(&p))
            .collect();
        let Some(gi) = fusion
            .groups
            .iter()
            .position(|grp| grp.outputs.contains(&o))
        else {
            continue;
        };
        let grp = &fusion.groups[gi];
        let shape = &g.ty(grp.outputs[0]).shape;
        let reshaped = fusion
            .groups
            .iter()
            .any(|other| other.kind == GroupKind::Alias && other.inputs.contains(&o));
        if readers != [gi]
            || grp.kind != GroupKind::Elementwise
            || grp.outputs.iter().any(|&x| g.ty(x).shape != *shape)
            || reshaped
            || main_space_access(g, grp).get(&p) != Some(&Access::Same)
        {
            continue;
        }
        chosen.push((o, p));
    }
    chosen
}

/// The name `qie compile` uses for [`MemoryOptions`].
pub type MemPlanOptions = MemoryOptions;

/// `bytes` rounded up to [`MemoryPlan::ALIGN`].
pub fn align_up(bytes: usize) -> usize {
    bytes.div_ceil(MemoryPlan::ALIGN) * MemoryPlan::ALIGN
}

/// Lifetime `(first, last)` in group indices (inclusive) of every value that needs an arena slot:
/// graph inputs and group outputs that are not params. Indexed by node id; `None` elsewhere.
pub fn value_lifetimes(g: &Graph, fusion: &FusionPlan) -> Vec<Option<(usize, usize)>> {
    let end_of_run = fusion.groups.len();
    let mut life: Vec<Option<(usize, usize)>> = vec![None; g.len()];
    for (name_id, node) in g.ids().zip(&g.nodes) {
        if matches!(node.op, Op::Input { .. }) {
            life[name_id.index()] = Some((0, 0));
        }
    }
    for (gi, grp) in fusion.groups.iter().enumerate() {
        for &o in &grp.outputs {
            if !matches!(g.node(o).op, Op::Param { .. }) {
                life[o.index()] = Some((gi, gi));
            }
        }
    }
    for (gi, grp) in fusion.groups.iter().enumerate() {
        for &x in &grp.inputs {
            if let Some((_, end)) = &mut life[x.index()] {
                *end = (*end).max(gi);
            }
        }
    }
    for (_, id) in &g.outputs {
        if let Some((_, end)) = &mut life[id.index()] {
            *end = end_of_run;
        }
    }
    life
}

/// Union-find over node ids; each class is one buffer, every value at a fixed byte offset
/// (`delta`) from its class root's (0 except inside a concat result). Per root: the two latest
/// lifetime ends among its values (value, end), latest first, for the in-place test; whether the
/// class holds a concat result with operands written in place (`composite`).
struct Buffers {
    parent: Vec<usize>,
    /// Byte offset of a value relative to its parent's (relative to the root after `find`).
    delta: Vec<isize>,
    ends: Vec<[(usize, usize); 2]>,
    composite: Vec<bool>,
}

impl Buffers {
    fn new(life: &[Option<(usize, usize)>]) -> Self {
        let none = (usize::MAX, 0);
        Buffers {
            parent: (0..life.len()).collect(),
            delta: vec![0; life.len()],
            ends: (0..life.len())
                .map(|i| [life[i].map_or(none, |(_, e)| (i, e)), none])
                .collect(),
            composite: vec![false; life.len()],
        }
    }

    fn find(&mut self, i: usize) -> usize {
        self.find_delta(i).0
    }

    /// The root of `i`'s class and `i`'s byte offset relative to the root.
    fn find_delta(&mut self, i: usize) -> (usize, isize) {
        let mut path = Vec::new();
        let mut r = i;
        while self.parent[r] != r {
            path.push(r);
            r = self.parent[r];
        }
        // Compress: walk the path from the top, accumulating offsets.
        let mut acc = 0;
        for &v in path.iter().rev() {
            acc += self.delta[v];
            self.delta[v] = acc;
            self.parent[v] = r;
        }
        (r, if path.is_empty() { 0 } else { self.delta[i] })
    }

    /// Same buffer, same offset.
    fn union(&mut self, a: usize, b: usize) {
        self.union_at(a, b, 0);
    }

    /// Puts `b`'s class in `a`'s, with `b` at byte offset `d` from `a`.
    fn union_at(&mut self, a: usize, b: usize, d: isize) {
        let (ra, da) = self.find_delta(a);
        let (rb, db) = self.find_delta(b);
        if ra != rb {
            self.parent[rb] = ra;
            self.delta[rb] = da + d - db;
            self.composite[ra] |= self.composite[rb];
            let mut all = [
                self.ends[ra][0],
                self.ends[ra][1],
                self.ends[rb][0],
                self.ends[rb][1],
            ];
            all.sort_by_key(|&(v, e)| (std::cmp::Reverse(e), v));
            self.ends[ra] = [all[0], all[1]];
        }
    }

    /// True when `x` is the only value of its buffer still needed at time `t` (every other value
    /// of the buffer ends before `t`).
    fn only_live_value(&mut self, x: usize, t: usize) -> bool {
        let r = self.find(x);
        let [(v0, _), (v1, e1)] = self.ends[r];
        v0 == x && (v1 == usize::MAX || e1 < t)
    }
}

/// Static index over inclusive intervals `(start, end)` of group indices, answering "which
/// intervals overlap `[s, e]`" in time proportional to the answer (plus a logarithm): an interval
/// overlaps `[s, e]` iff it contains `s` (a stabbing query on a segment tree) or starts in
/// `(s, e]` (a range of the start-sorted list). Memory O(n log T).
struct IntervalIndex {
    leaves: usize,
    /// Segment tree over time: the intervals whose canonical decomposition contains the node.
    nodes: Vec<Vec<u32>>,
    by_start: Vec<(usize, u32)>,
}

impl IntervalIndex {
    fn new(intervals: &[(usize, usize)]) -> Self {
        let t_max = intervals.iter().map(|i| i.1).max().unwrap_or(0);
        let leaves = (t_max + 1).next_power_of_two();
        let mut nodes: Vec<Vec<u32>> = vec![Vec::new(); 2 * leaves];
        for (k, &(s, e)) in intervals.iter().enumerate() {
            let (mut l, mut r) = (s + leaves, e + 1 + leaves);
            while l < r {
                if l & 1 == 1 {
                    nodes[l].push(k as u32);
                    l += 1;
                }
                if r & 1 == 1 {
                    r -= 1;
                    nodes[r].push(k as u32);
                }
                l >>= 1;
                r >>= 1;
            }
        }
        let mut by_start: Vec<(usize, u32)> = intervals
            .iter()
            .enumerate()
            .map(|(k, &(s, _))| (s, k as u32))
            .collect();
        by_start.sort_unstable();
        IntervalIndex {
            leaves,
            nodes,
            by_start,
        }
    }

    /// Calls `f` once for every interval overlapping `[s, e]` (including the queried one).
    fn for_each_overlap(&self, s: usize, e: usize, mut f: impl FnMut(usize)) {
        let mut node = s + self.leaves;
        while node >= 1 {
            for &k in &self.nodes[node] {
                f(k as usize);
            }
            node >>= 1;
        }
        let first = self.by_start.partition_point(|&(start, _)| start <= s);
        for &(start, k) in &self.by_start[first..] {
            if start > e {
                break;
            }
            f(k as usize);
        }
    }
}

/// Assigns every materialised value of `fusion` a slot (see the module docs). Debug builds check
/// the result with [`validate_memory_plan`].
pub fn plan_memory(g: &Graph, fusion: &FusionPlan, opts: &MemoryOptions) -> MemoryPlan {
    let n = g.len();
    let param_in_place = params_written_in_place(g, fusion, &opts.param_outputs);
    let mut life = value_lifetimes(g, fusion);
    for &(o, _) in &param_in_place {
        life[o.index()] = None;
    }
    let end_of_run = fusion.groups.len();
    let mut bufs = Buffers::new(&life);
    for grp in &fusion.groups {
        if grp.kind == GroupKind::Alias && life[grp.inputs[0].index()].is_some() {
            for &o in &grp.outputs {
                bufs.union(grp.inputs[0].index(), o.index());
            }
        }
    }

    let concat_in_place = if opts.concat_in_place {
        place_concat_operands(g, fusion, &life, &mut bufs)
    } else {
        Vec::new()
    };

    let mut in_place = Vec::new();
    if opts.in_place {
        for (gi, grp) in fusion.groups.iter().enumerate() {
            // One output shape = one pass for every backend (codegen emits one kernel per output
            // shape; a later kernel of the group must not read a buffer an earlier one rewrote).
            let shape = &g.ty(grp.outputs[0]).shape;
            if grp.kind != GroupKind::Elementwise
                || grp.outputs.iter().any(|&o| g.ty(o).shape != *shape)
            {
                continue;
            }
            let access = main_space_access(g, grp);
            let mut taken: Vec<NodeId> = Vec::new();
            for &o in &grp.outputs {
                let (oty, obytes) = (g.ty(o), g.ty(o).size_bytes());
                if obytes == 0 || life[o.index()].is_none() {
                    continue;
                }
                for &x in &grp.inputs {
                    let Some((_, xend)) = life[x.index()] else {
                        continue;
                    };
                    let xty = g.ty(x);
                    if taken.contains(&x)
                        || xend != gi
                        || xty.size_bytes() != obytes
                        || xty.numel() != oty.numel()
                        || access.get(&x) != Some(&Access::Same)
                    {
                        continue;
                    }
                    let (rx, ro) = (bufs.find(x.index()), bufs.find(o.index()));
                    // Two classes laid out around concat results never merge: their other
                    // values would land on each other's bytes.
                    if rx == ro
                        || (bufs.composite[rx] && bufs.composite[ro])
                        || !bufs.only_live_value(x.index(), gi)
                    {
                        continue;
                    }
                    bufs.union(x.index(), o.index());
                    in_place.push((o, x));
                    taken.push(x);
                    break;
                }
            }
        }
    }

    // One entry per buffer: aligned size, lifetime, lowest value id (for a stable order), offset,
    // lowest value offset relative to the class root (`base`).
    struct Buf {
        size: usize,
        start: usize,
        end: usize,
        first: NodeId,
        offset: usize,
        base: isize,
    }
    let mut buffers: Vec<Buf> = Vec::new();
    // Per value: (buffer, offset relative to the class root).
    let mut buffer_of: Vec<Option<(usize, isize)>> = vec![None; n];
    let mut buffer_of_root: Vec<Option<usize>> = vec![None; n];
    for (i, l) in life.iter().enumerate() {
        let Some((s, e)) = *l else { continue };
        let (r, d) = bufs.find_delta(i);
        let b = *buffer_of_root[r].get_or_insert_with(|| {
            buffers.push(Buf {
                size: 0,
                start: usize::MAX,
                end: 0,
                first: NodeId(i as u32),
                offset: 0,
                base: isize::MAX,
            });
            buffers.len() - 1
        });
        let buf = &mut buffers[b];
        buf.base = buf.base.min(d);
        buf.start = buf.start.min(s);
        buf.end = buf.end.max(e);
        buffer_of[i] = Some((b, d));
    }
    for (i, bo) in buffer_of.iter().enumerate() {
        if let Some((b, d)) = *bo {
            let buf = &mut buffers[b];
            let end = (d - buf.base) as usize + align_up(g.ty(NodeId(i as u32)).size_bytes());
            buf.size = buf.size.max(end);
        }
    }

    // Best fit over the interval graph: each buffer, largest first, at the lowest offset that
    // overlaps no already-placed buffer whose lifetime overlaps its own.
    let intervals: Vec<(usize, usize)> = buffers.iter().map(|b| (b.start, b.end)).collect();
    let index = IntervalIndex::new(&intervals);
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&b| (Reverse(buffers[b].size), buffers[b].start, buffers[b].first));
    let mut is_placed = vec![false; buffers.len()];
    let mut arena_bytes = 0;
    for &b in &order {
        let size = buffers[b].size;
        if size == 0 {
            continue;
        }
        let mut conflicts: Vec<(usize, usize)> = Vec::new();
        index.for_each_overlap(buffers[b].start, buffers[b].end, |p| {
            if is_placed[p] {
                conflicts.push((buffers[p].offset, buffers[p].offset + buffers[p].size));
            }
        });
        conflicts.sort_unstable();
        let mut offset = 0;
        for (lo, hi) in conflicts {
            if offset + size <= lo {
                break;
            }
            offset = offset.max(hi);
        }
        buffers[b].offset = offset;
        arena_bytes = arena_bytes.max(offset + size);
        is_placed[b] = true;
    }

    // Peak of simultaneously live (aligned) bytes.
    let mut delta = vec![0isize; end_of_run + 2];
    for b in &buffers {
        delta[b.start] += b.size as isize;
        delta[b.end + 1] -= b.size as isize;
    }
    let (mut live, mut peak_live_bytes) = (0isize, 0usize);
    for d in delta {
        live += d;
        peak_live_bytes = peak_live_bytes.max(live as usize);
    }

    let mut slots: Vec<Option<Slot>> = vec![None; n];
    for id in g.ids() {
        let i = id.index();
        if matches!(g.node(id).op, Op::Param { .. }) || param_in_place.iter().any(|&(o, _)| o == id)
        {
            slots[i] = Some(Slot::Param);
        } else if let Some((b, d)) = buffer_of[i] {
            slots[i] = Some(Slot::Arena {
                offset: buffers[b].offset + (d - buffers[b].base) as usize,
                bytes: g.ty(id).size_bytes(),
            });
        }
    }
    let plan = MemoryPlan {
        slots,
        arena_bytes,
        peak_live_bytes,
        in_place,
        concat_in_place,
        param_in_place,
        lifetimes: life,
    };
    if cfg!(debug_assertions) {
        if let Err(e) = validate_memory_plan(g, fusion, &plan) {
            panic!("plan_memory produced an invalid plan: {e}");
        }
    }
    plan
}

/// Byte offset of every argument of `concat` inside its result when the operands are contiguous
/// byte ranges of it (every dim before the axis is 1); `None` otherwise.
pub fn concat_slice_offsets(g: &Graph, concat: NodeId) -> Option<Vec<usize>> {
    let node = g.node(concat);
    let Op::Concat { axis } = node.op else {
        return None;
    };
    if node.ty.shape[..axis].iter().any(|&d| d != 1) {
        return None;
    }
    let elem = node.ty.dtype.size_bytes();
    let mut off = 0;
    Some(
        node.args
            .iter()
            .map(|&a| {
                let o = off;
                off += g.ty(a).numel() * elem;
                o
            })
            .collect(),
    )
}

/// Chooses the concat operands written in place (see [`MemoryPlan::concat_in_place`]) and puts
/// each one's buffer class into its concat's at the slice offset. Runs before in-place reuse, on
/// classes made of aliases only. An operand qualifies when it is a group output (seen through
/// aliases or not) that no other operand of the concat shares bytes with, not a graph input or
/// output (nor aliased with one), not already placed in another concat, not itself a concat result
/// with placed operands, non-empty, of the concat's dtype, and its slice starts at an aligned
/// offset.
fn place_concat_operands(
    g: &Graph,
    fusion: &FusionPlan,
    life: &[Option<(usize, usize)>],
    bufs: &mut Buffers,
) -> Vec<(NodeId, NodeId)> {
    // Classes holding a graph input or output keep their bytes where they are.
    let mut pinned = vec![false; g.len()];
    for (_, x) in g.inputs() {
        let r = bufs.find(x.index());
        pinned[r] = true;
    }
    for (_, o) in &g.outputs {
        if life[o.index()].is_some() {
            let r = bufs.find(o.index());
            pinned[r] = true;
        }
    }
    let mut placed = Vec::new();
    for grp in &fusion.groups {
        let Some(c) = grp.anchor else { continue };
        if grp.kind != GroupKind::Data || life[c.index()].is_none() {
            continue;
        }
        let Some(offsets) = concat_slice_offsets(g, c) else {
            continue;
        };
        let args = &g.node(c).args;
        let roots: Vec<Option<usize>> = args
            .iter()
            .map(|a| life[a.index()].map(|_| bufs.find(a.index())))
            .collect();
        let rc = bufs.find(c.index());
        for (i, &a) in args.iter().enumerate() {
            let Some(ra) = roots[i] else { continue };
            let shared = roots
                .iter()
                .enumerate()
                .any(|(j, r)| j != i && *r == Some(ra));
            if shared
                || ra == rc
                || pinned[ra]
                || bufs.composite[ra]
                || g.ty(a).size_bytes() == 0
                // A storage graph may concatenate an f32 value into a bf16 result (the copy
                // converts): written in place, it would be stored in the wrong format.
                || g.ty(a).dtype != g.ty(c).dtype
                || offsets[i] % MemoryPlan::ALIGN != 0
                || matches!(g.node(a).op, Op::Input { .. } | Op::Param { .. })
            {
                continue;
            }
            bufs.union_at(c.index(), a.index(), offsets[i] as isize);
            let r = bufs.find(c.index());
            bufs.composite[r] = true;
            placed.push((c, a));
        }
    }
    placed
}

/// Checks a memory plan against its graph and fusion plan: every param has `Slot::Param`, every
/// graph input and group output an aligned arena slot of its exact size inside the arena, nothing
/// else a slot; lifetimes as [`value_lifetimes`] computes them; alias outputs at their input's
/// offset; every in-place pair legal; every concat-in-place operand at its slice of the concat.
///
/// Then the two properties that make the plan safe. Buffers: values sharing bytes through an
/// alias, in-place or concat-in-place pair (transitively) form one buffer, reserved from its first
/// value's start to its last value's end; two buffers live at the same time never overlap.
/// Values: no value's bytes are written while it is live (from its start to its end), except by
/// the group writing the output of a recorded in-place pair over its input at the input's last
/// use. A value is written by its producing group (graph inputs: before group 0), except `Alias`
/// outputs (never) and the slices of a concat's in-place operands (by their own producers).
///
/// `peak_live_bytes` must be the peak of the summed (aligned) sizes of live buffers, and
/// `<= arena_bytes`. Used by tests and debug builds.
pub fn validate_memory_plan(
    g: &Graph,
    fusion: &FusionPlan,
    plan: &MemoryPlan,
) -> Result<(), String> {
    let n = g.len();
    if plan.slots.len() != n {
        return Err(format!("{} slots for {n} nodes", plan.slots.len()));
    }
    let mut life = value_lifetimes(g, fusion);
    let expected = params_written_in_place(g, fusion, &plan.param_in_place);
    if expected != plan.param_in_place {
        return Err(format!(
            "params written in place {:?}, of which only {expected:?} are legal",
            plan.param_in_place
        ));
    }
    for &(o, _) in &plan.param_in_place {
        life[o.index()] = None;
    }
    if plan.lifetimes != life {
        return Err("lifetimes differ from value_lifetimes".into());
    }
    // Arena values: (id, offset, bytes, start, end).
    let mut values: Vec<(NodeId, usize, usize, usize, usize)> = Vec::new();
    for id in g.ids() {
        let i = id.index();
        let is_param = matches!(g.node(id).op, Op::Param { .. })
            || plan.param_in_place.iter().any(|&(o, _)| o == id);
        match (plan.slots[i], life[i]) {
            (Some(Slot::Param), None) if is_param => {}
            (None, None) if !is_param => {}
            (Some(Slot::Arena { offset, bytes }), Some((s, e))) => {
                if bytes != g.ty(id).size_bytes() {
                    return Err(format!("{id}: slot of {bytes} bytes for {}", g.ty(id)));
                }
                if offset % MemoryPlan::ALIGN != 0 {
                    return Err(format!("{id}: offset {offset} not aligned"));
                }
                if offset + bytes > plan.arena_bytes {
                    return Err(format!(
                        "{id}: [{offset}, +{bytes}) beyond arena of {}",
                        plan.arena_bytes
                    ));
                }
                values.push((id, offset, bytes, s, e));
            }
            (slot, l) => return Err(format!("{id}: unexpected slot {slot:?} (lifetime {l:?})")),
        }
    }

    let offset_of = |id: NodeId| match plan.slots[id.index()] {
        Some(Slot::Arena { offset, .. }) => Some(offset),
        _ => None,
    };
    // Buffers: classes of values sharing bytes.
    let mut classes = Buffers::new(&life);
    let mut producer: Vec<Option<usize>> = vec![None; n];
    for (gi, grp) in fusion.groups.iter().enumerate() {
        for &o in &grp.outputs {
            producer[o.index()] = Some(gi);
        }
        if grp.kind != GroupKind::Alias {
            continue;
        }
        let x = grp.inputs[0];
        for &o in &grp.outputs {
            if offset_of(x).is_none() || offset_of(o) != offset_of(x) {
                return Err(format!("group {gi}: alias {o} not at the offset of {x}"));
            }
            classes.union(x.index(), o.index());
        }
    }

    for &(o, x) in &plan.in_place {
        let Some(gi) = producer[o.index()] else {
            return Err(format!("in-place {o} <- {x}: {o} is not a group output"));
        };
        let grp = &fusion.groups[gi];
        let one_shape = grp
            .outputs
            .iter()
            .all(|&v| g.ty(v).shape == g.ty(grp.outputs[0]).shape);
        let legal = grp.kind == GroupKind::Elementwise
            && one_shape
            && grp.inputs.contains(&x)
            && offset_of(x).is_some()
            && offset_of(x) == offset_of(o)
            && g.ty(x).size_bytes() == g.ty(o).size_bytes()
            && g.ty(x).numel() == g.ty(o).numel()
            && life[x.index()].is_some_and(|(_, e)| e == gi)
            && main_space_access(g, grp).get(&x) == Some(&Access::Same);
        if !legal {
            return Err(format!("in-place {o} <- {x} in group {gi} is not legal"));
        }
        classes.union(x.index(), o.index());
    }

    // Byte ranges of each concat result that its group does not write: [start, end).
    let mut unwritten: HashMap<NodeId, Vec<(usize, usize)>> = HashMap::new();
    let mut seen: HashSet<(NodeId, NodeId)> = HashSet::new();
    for &(c, a) in &plan.concat_in_place {
        let err = |m: &str| Err(format!("concat in place {a} -> {c}: {m}"));
        if !seen.insert((c, a)) {
            return err("listed twice");
        }
        let Some(gi) = producer[c.index()] else {
            return err("the concat is not a group output");
        };
        let grp = &fusion.groups[gi];
        if grp.kind != GroupKind::Data || grp.anchor != Some(c) {
            return err("not the anchor of a data group");
        }
        let Some(offsets) = concat_slice_offsets(g, c) else {
            return err("not a concat whose operands are contiguous slices");
        };
        if g.ty(a).dtype != g.ty(c).dtype {
            return err(&format!(
                "a {} operand of a {} concat",
                g.ty(a).dtype,
                g.ty(c).dtype
            ));
        }
        let args = &g.node(c).args;
        let mut at = args.iter().enumerate().filter(|(_, &x)| x == a);
        let (Some((i, _)), None) = (at.next(), at.next()) else {
            return err("not exactly once among the concat's arguments");
        };
        let (Some(co), Some(ao)) = (offset_of(c), offset_of(a)) else {
            return err("no arena slot");
        };
        if ao != co + offsets[i] {
            return err(&format!(
                "operand at {ao}, its slice at {}",
                co + offsets[i]
            ));
        }
        unwritten
            .entry(c)
            .or_default()
            .push((ao, ao + g.ty(a).size_bytes()));
        classes.union(c.index(), a.index());
    }

    // No value is written over while live.
    let in_place: HashSet<(NodeId, NodeId)> = plan.in_place.iter().copied().collect();
    let intervals: Vec<(usize, usize)> = values.iter().map(|v| (v.3, v.4)).collect();
    let index = IntervalIndex::new(&intervals);
    for &(u, uoff, ubytes, ustart, _) in &values {
        // Graph inputs are written before group 0 runs: they can only clobber each other.
        let is_input = |v: NodeId| matches!(g.node(v).op, Op::Input { .. });
        let t = match (&g.node(u).op, producer[u.index()]) {
            (Op::Input { .. }, _) => 0,
            (_, Some(gi)) if fusion.groups[gi].kind != GroupKind::Alias => gi,
            _ => continue,
        };
        debug_assert_eq!(t, ustart);
        // The written ranges of u: its bytes minus its in-place concat operands'.
        if ubytes == 0 {
            continue;
        }
        let mut written = vec![(uoff, uoff + ubytes)];
        if let Some(holes) = unwritten.get(&u) {
            let mut holes = holes.clone();
            holes.sort_unstable();
            written.clear();
            let mut lo = uoff;
            for (hs, he) in holes {
                if hs > lo {
                    written.push((lo, hs));
                }
                lo = lo.max(he);
            }
            if lo < uoff + ubytes {
                written.push((lo, uoff + ubytes));
            }
        }
        let mut error = None;
        index.for_each_overlap(t, t, |j| {
            let (v, voff, vbytes, vstart, vend) = values[j];
            if error.is_some()
                || v == u
                || vbytes == 0
                || !(vstart <= t && t <= vend)
                || (is_input(u) && !is_input(v))
            {
                return;
            }
            let hit = written
                .iter()
                .any(|&(ws, we)| ws < voff + vbytes && voff < we);
            if hit && !(in_place.contains(&(u, v)) && t == vend) {
                error = Some(format!(
                    "{u} [{uoff}, +{ubytes}) written by group {t} over {v} [{voff}, +{vbytes}) live {vstart}..={vend}"
                ));
            }
        });
        if let Some(e) = error {
            return Err(e);
        }
    }

    // Buffers: aligned extent and lifetime of each class.
    let mut class_of: HashMap<usize, usize> = HashMap::new();
    let mut bufs: Vec<(usize, usize, usize, usize, NodeId)> = Vec::new(); // lo, hi, start, end
    for &(id, off, bytes, s, e) in &values {
        let r = classes.find(id.index());
        let k = *class_of.entry(r).or_insert_with(|| {
            bufs.push((usize::MAX, 0, usize::MAX, 0, id));
            bufs.len() - 1
        });
        let b = &mut bufs[k];
        b.0 = b.0.min(off);
        b.1 = b.1.max(off + align_up(bytes));
        b.2 = b.2.min(s);
        b.3 = b.3.max(e);
    }
    let intervals: Vec<(usize, usize)> = bufs.iter().map(|b| (b.2, b.3)).collect();
    let index = IntervalIndex::new(&intervals);
    for (k, &(lo, hi, s, e, a)) in bufs.iter().enumerate() {
        let mut error = None;
        index.for_each_overlap(s, e, |j| {
            let (blo, bhi, bs, be, b) = bufs[j];
            if error.is_some() || j <= k || lo >= bhi || blo >= hi || hi == lo || bhi == blo {
                return;
            }
            error = Some(format!(
                "buffer of {a} [{lo}, {hi}) live {s}..={e} overlaps buffer of {b} [{blo}, {bhi}) live {bs}..={be}"
            ));
        });
        if let Some(e) = error {
            return Err(e);
        }
    }

    // True peak of the live buffers' sizes.
    let end_of_run = fusion.groups.len();
    let mut delta = vec![0isize; end_of_run + 2];
    for &(lo, hi, s, e, _) in &bufs {
        delta[s] += (hi - lo) as isize;
        delta[e + 1] -= (hi - lo) as isize;
    }
    let (mut live, mut peak) = (0isize, 0usize);
    for d in delta {
        live += d;
        peak = peak.max(live as usize);
    }
    if plan.peak_live_bytes != peak {
        return Err(format!(
            "peak_live_bytes {} but recomputed {peak}",
            plan.peak_live_bytes
        ));
    }
    if plan.peak_live_bytes > plan.arena_bytes {
        return Err(format!(
            "peak {} > arena {}",
            plan.peak_live_bytes, plan.arena_bytes
        ));
    }
    Ok(())
}
