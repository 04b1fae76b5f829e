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
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions { in_place: true }
    }
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

/// Union-find over node ids; each class is one buffer. Per root: the two latest lifetime ends
/// among its values (value, end), latest first, for the in-place test.
struct Buffers {
    parent: Vec<usize>,
    ends: Vec<[(usize, usize); 2]>,
}

impl Buffers {
    fn new(life: &[Option<(usize, usize)>]) -> Self {
        let none = (usize::MAX, 0);
        Buffers {
            parent: (0..life.len()).collect(),
            ends: (0..life.len())
                .map(|i| [life[i].map_or(none, |(_, e)| (i, e)), none])
                .collect(),
        }
    }

    fn find(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[rb] = ra;
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
    let life = value_lifetimes(g, fusion);
    let end_of_run = fusion.groups.len();
    let mut bufs = Buffers::new(&life);
    for grp in &fusion.groups {
        if grp.kind == GroupKind::Alias && life[grp.inputs[0].index()].is_some() {
            for &o in &grp.outputs {
                bufs.union(grp.inputs[0].index(), o.index());
            }
        }
    }

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
                    if bufs.find(x.index()) == bufs.find(o.index())
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

    // One entry per buffer: aligned size, lifetime, lowest value id (for a stable order), offset.
    struct Buf {
        size: usize,
        start: usize,
        end: usize,
        first: NodeId,
        offset: usize,
    }
    let mut buffers: Vec<Buf> = Vec::new();
    let mut buffer_of: Vec<Option<usize>> = vec![None; n];
    let mut buffer_of_root: Vec<Option<usize>> = vec![None; n];
    for (i, l) in life.iter().enumerate() {
        let Some((s, e)) = *l else { continue };
        let r = bufs.find(i);
        let b = *buffer_of_root[r].get_or_insert_with(|| {
            buffers.push(Buf {
                size: 0,
                start: usize::MAX,
                end: 0,
                first: NodeId(i as u32),
                offset: 0,
            });
            buffers.len() - 1
        });
        let buf = &mut buffers[b];
        buf.size = buf.size.max(align_up(g.ty(NodeId(i as u32)).size_bytes()));
        buf.start = buf.start.min(s);
        buf.end = buf.end.max(e);
        buffer_of[i] = Some(b);
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
        if matches!(g.node(id).op, Op::Param { .. }) {
            slots[i] = Some(Slot::Param);
        } else if let Some(b) = buffer_of[i] {
            slots[i] = Some(Slot::Arena {
                offset: buffers[b].offset,
                bytes: g.ty(id).size_bytes(),
            });
        }
    }
    let plan = MemoryPlan {
        slots,
        arena_bytes,
        peak_live_bytes,
        in_place,
        lifetimes: life,
    };
    if cfg!(debug_assertions) {
        if let Err(e) = validate_memory_plan(g, fusion, &plan) {
            panic!("plan_memory produced an invalid plan: {e}");
        }
    }
    plan
}

/// Checks a memory plan against its graph and fusion plan: every param has `Slot::Param`, every
/// graph input and group output an aligned arena slot of its exact size inside the arena, nothing
/// else a slot; lifetimes as [`value_lifetimes`] computes them; alias outputs at their input's
/// offset; every in-place pair legal; no two values live at the same time overlapping in the arena
/// unless they are an alias pair (transitively) or a recorded in-place pair;
/// `peak_live_bytes` the true peak and `<= arena_bytes`. Used by tests and debug builds.
pub fn validate_memory_plan(
    g: &Graph,
    fusion: &FusionPlan,
    plan: &MemoryPlan,
) -> Result<(), String> {
    let n = g.len();
    if plan.slots.len() != n {
        return Err(format!("{} slots for {n} nodes", plan.slots.len()));
    }
    let life = value_lifetimes(g, fusion);
    if plan.lifetimes != life {
        return Err("lifetimes differ from value_lifetimes".into());
    }
    let mut values: Vec<(NodeId, usize, usize, usize, usize)> = Vec::new();
    for id in g.ids() {
        let i = id.index();
        let is_param = matches!(g.node(id).op, Op::Param { .. });
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
                if bytes > 0 {
                    values.push((id, offset, align_up(bytes), s, e));
                }
            }
            (slot, l) => return Err(format!("{id}: unexpected slot {slot:?} (lifetime {l:?})")),
        }
    }

    let offset_of = |id: NodeId| match plan.slots[id.index()] {
        Some(Slot::Arena { offset, .. }) => Some(offset),
        _ => None,
    };
    let mut aliases = Buffers::new(&life);
    for (gi, grp) in fusion.groups.iter().enumerate() {
        if grp.kind != GroupKind::Alias {
            continue;
        }
        let x = grp.inputs[0];
        for &o in &grp.outputs {
            if offset_of(x).is_none() || offset_of(o) != offset_of(x) {
                return Err(format!("group {gi}: alias {o} not at the offset of {x}"));
            }
            aliases.union(x.index(), o.index());
        }
    }

    let mut producer: Vec<Option<usize>> = vec![None; n];
    for (gi, grp) in fusion.groups.iter().enumerate() {
        for &o in &grp.outputs {
            producer[o.index()] = Some(gi);
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
    }

    let in_place: HashSet<(NodeId, NodeId)> = plan.in_place.iter().copied().collect();
    let intervals: Vec<(usize, usize)> = values.iter().map(|v| (v.3, v.4)).collect();
    let index = IntervalIndex::new(&intervals);
    for &(a, aoff, asize, astart, aend) in &values {
        let mut error = None;
        index.for_each_overlap(astart, aend, |j| {
            let (b, boff, bsize, bstart, bend) = values[j];
            if error.is_some() || a >= b || boff >= aoff + asize || aoff >= boff + bsize {
                return;
            }
            let alias = aliases.find(a.index()) == aliases.find(b.index());
            let shared = alias || in_place.contains(&(a, b)) || in_place.contains(&(b, a));
            if !shared || aoff != boff || asize != bsize {
                error = Some(format!(
                    "{a} [{aoff}, +{asize}) live {astart}..={aend} overlaps {b} [{boff}, +{bsize}) live {bstart}..={bend}"
                ));
            }
        });
        if let Some(e) = error {
            return Err(e);
        }
    }

    // True peak. Values may overlap only when they share the exact same range (checked above),
    // so the live bytes at a time are the sizes of the distinct live ranges.
    let mut events: Vec<(usize, bool, (usize, usize))> = values
        .iter()
        .flat_map(|v| [(v.3, true, (v.1, v.2)), (v.4 + 1, false, (v.1, v.2))])
        .collect();
    events.sort_unstable();
    let mut count: HashMap<(usize, usize), usize> = HashMap::new();
    let (mut live, mut peak) = (0usize, 0usize);
    for (k, &(t, add, range)) in events.iter().enumerate() {
        let c = count.entry(range).or_insert(0);
        if add {
            *c += 1;
            if *c == 1 {
                live += range.1;
            }
        } else {
            *c -= 1;
            if *c == 0 {
                live -= range.1;
            }
        }
        if k + 1 == events.len() || events[k + 1].0 != t {
            peak = peak.max(live);
        }
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
