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
//!    it writes ([`Access::Same`]: no broadcast, transposed or sliced view of it). Chains of
//!    elementwise groups thus run in one buffer.
//! 3. **Offsets**: buffers sorted by size (descending), each placed at the lowest offset where it
//!    overlaps no already-placed buffer with an overlapping lifetime; sizes rounded up to
//!    [`MemoryPlan::ALIGN`] bytes.

use crate::passes::fusion::{main_space_access, Access};
use crate::plan::{FusionPlan, GroupKind, MemoryPlan, Slot};
use crate::{Graph, NodeId, Op};
use std::cmp::Reverse;

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

/// Union-find over node ids with the member list of each class kept at its root.
struct Buffers {
    parent: Vec<usize>,
    members: Vec<Vec<NodeId>>,
}

impl Buffers {
    fn new(n: usize) -> Self {
        Buffers {
            parent: (0..n).collect(),
            members: (0..n).map(|i| vec![NodeId(i as u32)]).collect(),
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
            let moved = std::mem::take(&mut self.members[rb]);
            self.members[ra].extend(moved);
        }
    }
}

/// Assigns every materialised value of `fusion` a slot (see the module docs).
pub fn plan_memory(g: &Graph, fusion: &FusionPlan, opts: &MemoryOptions) -> MemoryPlan {
    let n = g.len();
    let life = value_lifetimes(g, fusion);
    let end_of_run = fusion.groups.len();
    let mut bufs = Buffers::new(n);
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
            if grp.kind != GroupKind::Elementwise {
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
                    let Some((_, xend)) = life[x.index()] else { continue };
                    let xty = g.ty(x);
                    if taken.contains(&x)
                        || xend != gi
                        || xty.size_bytes() != obytes
                        || xty.numel() != oty.numel()
                        || access.get(&x) != Some(&Access::Same)
                    {
                        continue;
                    }
                    let rx = bufs.find(x.index());
                    if rx == bufs.find(o.index()) {
                        continue;
                    }
                    let others_done = bufs.members[rx]
                        .iter()
                        .all(|&v| v == x || life[v.index()].is_some_and(|(_, e)| e < gi));
                    if !others_done {
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

    // One entry per buffer: (aligned size, first, last, root).
    struct Buf {
        size: usize,
        start: usize,
        end: usize,
        first: NodeId,
        offset: usize,
    }
    let mut buffers: Vec<Buf> = Vec::new();
    let mut buffer_of: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        if life[i].is_none() || bufs.find(i) != i {
            continue;
        }
        let mut b = Buf {
            size: 0,
            start: usize::MAX,
            end: 0,
            first: NodeId(i as u32),
            offset: 0,
        };
        for &v in &bufs.members[i] {
            let (s, e) = life[v.index()].expect("buffer members are arena values");
            b.size = b.size.max(align_up(g.ty(v).size_bytes()));
            b.start = b.start.min(s);
            b.end = b.end.max(e);
            b.first = b.first.min(v);
        }
        for &v in &bufs.members[i] {
            buffer_of[v.index()] = Some(buffers.len());
        }
        buffers.push(b);
    }
    // Aliases of a value without an arena slot (never built by `fuse`) would be unassigned.
    for i in 0..n {
        if life[i].is_some() && buffer_of[i].is_none() {
            let r = bufs.find(i);
            buffer_of[i] = buffer_of[r];
        }
    }

    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&b| (Reverse(buffers[b].size), buffers[b].start, buffers[b].first));
    let mut placed: Vec<usize> = Vec::new();
    let mut arena_bytes = 0;
    for &b in &order {
        let size = buffers[b].size;
        if size == 0 {
            continue;
        }
        let (s, e) = (buffers[b].start, buffers[b].end);
        let mut conflicts: Vec<(usize, usize)> = placed
            .iter()
            .map(|&p| &buffers[p])
            .filter(|p| p.start <= e && s <= p.end)
            .map(|p| (p.offset, p.offset + p.size))
            .collect();
        conflicts.sort();
        let mut offset = 0;
        for (lo, hi) in conflicts {
            if offset + size <= lo {
                break;
            }
            offset = offset.max(hi);
        }
        buffers[b].offset = offset;
        arena_bytes = arena_bytes.max(offset + size);
        placed.push(b);
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
    MemoryPlan {
        slots,
        arena_bytes,
        peak_live_bytes,
        in_place,
        lifetimes: life,
    }
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
                    return Err(format!("{id}: [{offset}, +{bytes}) beyond arena of {}", plan.arena_bytes));
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
    let mut aliases = Buffers::new(n);
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
        let legal = grp.kind == GroupKind::Elementwise
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

    values.sort_by_key(|v| (v.1, v.0));
    for i in 0..values.len() {
        let (a, aoff, asize, astart, aend) = values[i];
        for &(b, boff, _, bstart, bend) in &values[i + 1..] {
            if boff >= aoff + asize {
                break;
            }
            if bstart > aend || astart > bend {
                continue;
            }
            let alias = aliases.find(a.index()) == aliases.find(b.index());
            let in_place = plan.in_place.contains(&(a, b)) || plan.in_place.contains(&(b, a));
            if !alias && !in_place {
                return Err(format!(
                    "{a} [{aoff}, +{asize}) live {astart}..={aend} overlaps {b} at {boff} live {bstart}..={bend}"
                ));
            }
        }
    }

    let end_of_run = fusion.groups.len();
    let mut peak = 0;
    for t in 0..=end_of_run {
        let mut ranges: Vec<(usize, usize)> = values
            .iter()
            .filter(|v| v.3 <= t && t <= v.4)
            .map(|v| (v.1, v.1 + v.2))
            .collect();
        ranges.sort();
        let (mut total, mut covered) = (0, 0);
        for (lo, hi) in ranges {
            let lo = lo.max(covered);
            if hi > lo {
                total += hi - lo;
            }
            covered = covered.max(hi);
        }
        peak = peak.max(total);
    }
    if plan.peak_live_bytes != peak {
        return Err(format!("peak_live_bytes {} but recomputed {peak}", plan.peak_live_bytes));
    }
    if plan.peak_live_bytes > plan.arena_bytes {
        return Err(format!("peak {} > arena {}", plan.peak_live_bytes, plan.arena_bytes));
    }
    Ok(())
}
