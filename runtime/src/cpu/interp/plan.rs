//! Preparing a [`KernelProgram`] for the interpreter: each register gets a slot of its class
//! (reused after its last use), each instruction becomes a [`ChunkOp`] over slots, and index
//! maps that are plain strided views are recognised once.

use super::{Interp, RegClass, Slot};
use qie_codegen::{IndexMap, Instr, KernelProgram, Reg, Stmt, Store};
use qie_ir::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use smallvec::SmallVec;
use std::collections::HashMap;

/// An index map, with the common strided case unpacked.
#[derive(Clone, Debug)]
pub(super) enum MapPlan {
    Strided {
        offset: i64,
        strides: SmallVec<[i64; 6]>,
    },
    General {
        map: IndexMap,
    },
}

impl MapPlan {
    fn new(map: &IndexMap) -> MapPlan {
        match map.as_strided() {
            Some(v) => MapPlan::Strided {
                offset: v.offset,
                strides: v.strides.clone(),
            },
            None => MapPlan::General { map: map.clone() },
        }
    }
}

/// One instruction over slots, executed a chunk at a time.
#[derive(Clone, Debug)]
pub(super) enum ChunkOp {
    Load {
        dst: Slot,
        input: usize,
        map: MapPlan,
    },
    /// `inputs[input][map(i) + index[i] * stride]`; `index[i]` must lie in `0..axis_len`.
    Gather {
        dst: Slot,
        input: usize,
        map: MapPlan,
        index: Slot,
        stride: i64,
        axis_len: usize,
    },
    /// `(map(i) / stride) % axis_len`.
    Iota {
        dst: Slot,
        map: MapPlan,
        stride: i64,
        axis_len: i64,
    },
    Unary {
        op: UnaryOp,
        dst: Slot,
        a: Slot,
    },
    Binary {
        op: BinaryOp,
        dst: Slot,
        a: Slot,
        b: Slot,
    },
    Compare {
        op: CmpOp,
        dst: Slot,
        a: Slot,
        b: Slot,
    },
    Select {
        dst: Slot,
        cond: Slot,
        a: Slot,
        b: Slot,
    },
    Cast {
        dst: Slot,
        a: Slot,
    },
}

/// A store of one slot through an index map into an output buffer.
#[derive(Clone, Debug)]
pub(super) struct ChunkStore {
    pub output: usize,
    pub value: Slot,
    pub map: MapPlan,
}

/// One section (body or epilogue) with registers allocated.
#[derive(Clone, Debug, Default)]
pub(super) struct SectionPlan {
    /// The iteration space the section's maps are over.
    pub space: Vec<usize>,
    pub ops: Vec<ChunkOp>,
    pub stores: Vec<ChunkStore>,
    /// Slots holding constants, filled once when the registers are created.
    pub consts: Vec<(Slot, f64)>,
    /// Slots needed per class (indexed by [`RegClass::index`]).
    pub slot_counts: [usize; RegClass::COUNT],
}

/// One reduction: `value` (a body slot) folded over the reduced axes into `result` (an
/// epilogue slot).
#[derive(Clone, Debug)]
pub(super) struct ReducePlan {
    pub op: ReduceOp,
    pub class: RegClass,
    pub value: Slot,
    pub result: Slot,
}

/// The body planned over the permuted space `reduced ++ kept`, with the reduce values' slots in
/// it. Chunks then run along kept elements, one reduced index at a time, so loads that are
/// contiguous along the kept axes stay contiguous.
#[derive(Clone, Debug)]
pub(super) struct ColumnBody {
    pub section: SectionPlan,
    pub values: Vec<Slot>,
}

struct SlotAlloc {
    free: [Vec<usize>; RegClass::COUNT],
    count: [usize; RegClass::COUNT],
}

impl SlotAlloc {
    fn new() -> SlotAlloc {
        SlotAlloc {
            free: Default::default(),
            count: [0; RegClass::COUNT],
        }
    }

    fn take(&mut self, class: RegClass) -> Slot {
        let c = class.index();
        let index = self.free[c].pop().unwrap_or_else(|| {
            self.count[c] += 1;
            self.count[c] - 1
        });
        Slot { class, index }
    }

    fn give(&mut self, s: Slot) {
        self.free[s.class.index()].push(s.index);
    }
}

/// Allocates registers for one section. `live_out` registers are never freed; `fixed` ones are
/// pre-assigned (reduce results in the epilogue).
fn plan_section(
    space: &[usize],
    stmts: &[Stmt],
    stores: &[Store],
    live_out: &[Reg],
    fixed: &[(Reg, RegClass)],
    slots: &mut HashMap<Reg, Slot>,
) -> SectionPlan {
    let mut last_use: HashMap<Reg, usize> = HashMap::new();
    for (i, s) in stmts.iter().enumerate() {
        for r in s.instr.operands() {
            last_use.insert(r, i);
        }
    }
    for r in stores
        .iter()
        .map(|s| s.value)
        .chain(live_out.iter().copied())
    {
        last_use.insert(r, usize::MAX);
    }
    let mut alloc = SlotAlloc::new();
    let mut plan = SectionPlan {
        space: space.to_vec(),
        ..Default::default()
    };
    for &(r, class) in fixed {
        let s = alloc.take(class);
        slots.insert(r, s);
    }
    let mut dedicated: Vec<Reg> = fixed.iter().map(|f| f.0).collect();
    for s in stmts {
        if let Instr::Const { value } = s.instr {
            let slot = alloc.take(RegClass::of_dtype(s.dtype));
            slots.insert(s.dst, slot);
            plan.consts.push((slot, value));
            dedicated.push(s.dst);
        }
    }
    for (i, s) in stmts.iter().enumerate() {
        if matches!(s.instr, Instr::Const { .. }) {
            continue;
        }
        let dst = alloc.take(RegClass::of_dtype(s.dtype));
        slots.insert(s.dst, dst);
        let g = |r: &Reg| slots[r];
        let op = match &s.instr {
            Instr::Load { input, map } => ChunkOp::Load {
                dst,
                input: *input,
                map: MapPlan::new(map),
            },
            Instr::LoadGather {
                input,
                map,
                index,
                stride,
                dim,
            } => ChunkOp::Gather {
                dst,
                input: *input,
                map: MapPlan::new(map),
                index: g(index),
                stride: *stride,
                axis_len: *dim,
            },
            Instr::Iota { map, stride, dim } => ChunkOp::Iota {
                dst,
                map: MapPlan::new(map),
                stride: *stride,
                axis_len: *dim as i64,
            },
            Instr::Unary { op, a } => ChunkOp::Unary {
                op: *op,
                dst,
                a: g(a),
            },
            Instr::Binary { op, a, b } => ChunkOp::Binary {
                op: *op,
                dst,
                a: g(a),
                b: g(b),
            },
            Instr::Compare { op, a, b } => ChunkOp::Compare {
                op: *op,
                dst,
                a: g(a),
                b: g(b),
            },
            Instr::Select { cond, a, b } => ChunkOp::Select {
                dst,
                cond: g(cond),
                a: g(a),
                b: g(b),
            },
            Instr::Cast { a } => ChunkOp::Cast { dst, a: g(a) },
            Instr::Const { .. } => unreachable!(),
        };
        plan.ops.push(op);
        // Free operands whose last use is here (once each), and dead results.
        let mut ops = s.instr.operands();
        ops.sort();
        ops.dedup();
        for r in ops {
            if last_use.get(&r) == Some(&i) && !dedicated.contains(&r) {
                alloc.give(slots[&r]);
            }
        }
        if !last_use.contains_key(&s.dst) {
            alloc.give(dst);
        }
    }
    for st in stores {
        plan.stores.push(ChunkStore {
            output: st.output,
            value: slots[&st.value],
            map: MapPlan::new(&st.map),
        });
    }
    plan.slot_counts = alloc.count;
    plan
}

impl Interp {
    pub fn new(p: &KernelProgram) -> Interp {
        let mut slots = HashMap::new();
        let live_out: Vec<Reg> = p.reduces.iter().map(|r| r.value).collect();
        let body = plan_section(
            &p.space,
            &p.body.stmts,
            &p.body.stores,
            &live_out,
            &[],
            &mut slots,
        );
        let body_slots = slots.clone();
        let fixed: Vec<(Reg, RegClass)> = p
            .reduces
            .iter()
            .map(|r| (r.dst, RegClass::of_dtype(r.dtype)))
            .collect();
        let mut epilogue_slots = HashMap::new();
        let epilogue = if p.is_reduction() {
            plan_section(
                p.kept_space(),
                &p.epilogue.stmts,
                &p.epilogue.stores,
                &[],
                &fixed,
                &mut epilogue_slots,
            )
        } else {
            SectionPlan::default()
        };
        let reduces = p
            .reduces
            .iter()
            .map(|r| ReducePlan {
                op: r.op,
                class: RegClass::of_dtype(r.dtype),
                value: body_slots[&r.value],
                result: epilogue_slots[&r.dst],
            })
            .collect();
        Interp {
            column_body: column_body(p, &live_out),
            name: p.name.clone(),
            body,
            epilogue,
            reduces,
            kept_len: p.kept_space().iter().product(),
            reduced_len: p.reduced_space().iter().product(),
            input_classes: p
                .inputs
                .iter()
                .map(|b| RegClass::of_dtype(b.ty.dtype))
                .collect(),
            output_classes: p
                .outputs
                .iter()
                .map(|b| RegClass::of_dtype(b.ty.dtype))
                .collect(),
        }
    }
}

/// The body planned over `reduced ++ kept` when that makes the loads contiguous: more strided
/// loads have unit stride along the innermost kept axis than along the innermost reduced axis.
fn column_body(p: &KernelProgram, live_out: &[Reg]) -> Option<ColumnBody> {
    let n = p.space.len();
    let kr = n - p.reduce_rank;
    if !p.is_reduction() || kr == 0 || p.reduce_rank == 0 || p.space[kr - 1] < 16 {
        return None;
    }
    let (mut kept_unit, mut red_unit) = (0, 0);
    for s in &p.body.stmts {
        if let Instr::Load { map, .. } = &s.instr {
            if let Some(v) = map.as_strided() {
                kept_unit += (v.strides[kr - 1] == 1) as usize;
                red_unit += (v.strides[n - 1] == 1) as usize;
            }
        }
    }
    if kept_unit <= red_unit {
        return None;
    }
    let perm: Vec<usize> = (kr..n).chain(0..kr).collect();
    let mut stmts = p.body.stmts.clone();
    for s in &mut stmts {
        if let Some(m) = s.instr.map_mut() {
            *m = m.transpose(&perm);
        }
    }
    let mut stores = p.body.stores.clone();
    for st in &mut stores {
        st.map = st.map.transpose(&perm);
    }
    let space: Vec<usize> = perm.iter().map(|&d| p.space[d]).collect();
    let mut slots = HashMap::new();
    let section = plan_section(&space, &stmts, &stores, live_out, &[], &mut slots);
    let values = p.reduces.iter().map(|r| slots[&r.value]).collect();
    Some(ColumnBody { section, values })
}
