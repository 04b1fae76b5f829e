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
use std::collections::HashSet;

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

/// For inclusive intervals `(start, end)`: the indices of the intervals overlapping each one.
/// A sweep over start times, so the cost is proportional to the number of overlapping pairs.
fn overlapping_pairs(intervals: &[(usize, usize)]) -> Vec<Vec<u32>> {
    let mut by_start: Vec<usize> = (0..intervals.len()).collect();
    by_start.sort_by_key(|&i| intervals[i]);
    let mut neighbours: Vec<Vec<u32>> = vec![Vec::new(); intervals.len()];
    let mut active: Vec<usize> = Vec::new();
    for i in by_start {
        let (start, _) = intervals[i];
        active.retain(|&a| intervals[a].1 >= start);
        for &a in &active {
            neighbours[a].push(i as u32);
            neighbours[i].push(a as u32);
        }
        active.push(i);
    }
    neighbours
}

/// Assigns every materialised value of `fusion` a slot (see the module docs).
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
    let neighbours = overlapping_pairs(&intervals);
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&b| (Reverse(buffers[b].size), buffers[b].start, buffers[b].first));
    let mut is_placed = vec![false; buffers.len()];
    let mut arena_bytes = 0;
    for &b in &order {
        let size = buffers[b].size;
        if size == 0 {
            continue;
        }
        let mut conflicts: Vec<(usize, usize)> = neighbours[b]
            .iter()
            .map(|&p| p as usize)
            .filter(|&p| is_placed[p])
            .map(|p| (buffers[p].offset, buffers[p].offset + buffers[p].size))
            .collect();
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

    let in_place: HashSet<(NodeId, NodeId)> = plan.in_place.iter().copied().collect();
    let intervals: Vec<(usize, usize)> = values.iter().map(|v| (v.3, v.4)).collect();
    for (i, near) in overlapping_pairs(&intervals).iter().enumerate() {
        let (a, aoff, asize, astart, aend) = values[i];
        for &j in near {
            let (b, boff, bsize, bstart, bend) = values[j as usize];
            if a >= b || boff >= aoff + asize || aoff >= boff + bsize {
                continue;
            }
            let alias = aliases.find(a.index()) == aliases.find(b.index());
            if !alias && !in_place.contains(&(a, b)) && !in_place.contains(&(b, a)) {
                return Err(format!(
                    "{a} [{aoff}, +{asize}) live {astart}..={aend} overlaps {b} [{boff}, +{bsize}) live {bstart}..={bend}"
                ));
            }
        }
    }

    // True peak: at each start time, the union of the byte ranges of the live values.
    let mut by_start: Vec<usize> = (0..values.len()).collect();
    by_start.sort_by_key(|&i| values[i].3);
    let mut active: Vec<usize> = Vec::new();
    let mut peak = 0;
    let mut k = 0;
    while k < by_start.len() {
        let t = values[by_start[k]].3;
        while k < by_start.len() && values[by_start[k]].3 == t {
            active.push(by_start[k]);
            k += 1;
        }
        active.retain(|&a| values[a].4 >= t);
        let mut ranges: Vec<(usize, usize)> = active
            .iter()
            .map(|&a| (values[a].1, values[a].1 + values[a].2))
            .collect();
        ranges.sort_unstable();
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
