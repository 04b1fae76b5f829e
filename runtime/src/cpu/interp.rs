//! The chunked interpreter for [`KernelProgram`]s.
//!
//! Each instruction is executed over a chunk of up to [`CHUNK`] consecutive elements of the
//! iteration space with a tight loop per opcode, so the cost of interpreting is paid once per
//! chunk, not per element. Registers are chunk-sized vectors, reused after their last use.
//! Chunks (elementwise) and blocks of kept rows (reductions) run in parallel with rayon.

use super::buffer::RawBuf;
use super::simd::{self, multiversion};
use crate::tensor::Storage;
use qie_codegen::{IndexMap, Instr, KernelProgram, Reg, Stmt, Store};
use qie_ir::{BinaryOp, CmpOp, DType, ReduceOp, UnaryOp};
use rayon::prelude::*;
use smallvec::SmallVec;
use std::collections::HashMap;

/// Elements per chunk.
pub const CHUNK: usize = 1024;
/// Below this many elements a kernel runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    F,
    I,
    L,
    B,
}

fn kind_of(d: DType) -> Kind {
    match Storage::of(d) {
        Storage::F32 => Kind::F,
        Storage::I32 => Kind::I,
        Storage::I64 => Kind::L,
        Storage::Bool => Kind::B,
    }
}

fn kind_of_storage(s: Storage) -> Kind {
    match s {
        Storage::F32 => Kind::F,
        Storage::I32 => Kind::I,
        Storage::I64 => Kind::L,
        Storage::Bool => Kind::B,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    kind: Kind,
    ix: usize,
}

#[derive(Clone, Debug)]
enum MapPlan {
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

#[derive(Clone, Debug)]
enum COp {
    Load {
        dst: Slot,
        input: usize,
        map: MapPlan,
    },
    Gather {
        dst: Slot,
        input: usize,
        map: MapPlan,
        index: Slot,
        stride: i64,
        dim: i64,
    },
    Iota {
        dst: Slot,
        map: MapPlan,
        stride: i64,
        dim: i64,
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
        c: Slot,
        a: Slot,
        b: Slot,
    },
    Cast {
        dst: Slot,
        a: Slot,
    },
}

#[derive(Clone, Debug)]
struct CStore {
    output: usize,
    value: Slot,
    map: MapPlan,
}

/// One section (body or epilogue) with registers allocated.
#[derive(Clone, Debug, Default)]
struct SectionPlan {
    space: Vec<usize>,
    ops: Vec<COp>,
    stores: Vec<CStore>,
    consts: Vec<(Slot, f64)>,
    slots: [usize; 4],
}

#[derive(Clone, Debug)]
struct CReduce {
    op: ReduceOp,
    kind: Kind,
    value: Slot,
    dst: Slot,
}

/// A program prepared for the interpreter.
#[derive(Clone, Debug)]
pub struct Interp {
    pub name: String,
    body: SectionPlan,
    epi: SectionPlan,
    reduces: Vec<CReduce>,
    kept_len: usize,
    red_len: usize,
    input_kinds: Vec<Kind>,
    output_kinds: Vec<Kind>,
    /// For reductions whose loads are contiguous along the kept axes but strided along the
    /// reduced ones (column sums): the body over the permuted space `reduced ++ kept`, with the
    /// reduce values' slots in it. Chunks then run along kept elements, one reduced index at a time.
    column: Option<(SectionPlan, Vec<Slot>)>,
}

fn kix(k: Kind) -> usize {
    match k {
        Kind::F => 0,
        Kind::I => 1,
        Kind::L => 2,
        Kind::B => 3,
    }
}

struct Alloc {
    free: [Vec<usize>; 4],
    count: [usize; 4],
}

impl Alloc {
    fn new() -> Alloc {
        Alloc {
            free: Default::default(),
            count: [0; 4],
        }
    }

    fn take(&mut self, kind: Kind) -> Slot {
        let k = kix(kind);
        let ix = self.free[k].pop().unwrap_or_else(|| {
            self.count[k] += 1;
            self.count[k] - 1
        });
        Slot { kind, ix }
    }

    fn give(&mut self, s: Slot) {
        self.free[kix(s.kind)].push(s.ix);
    }
}

/// Allocates registers for one section. `live_out` registers are never freed; `fixed` ones are
/// pre-assigned (reduce results in the epilogue).
fn plan_section(
    space: &[usize],
    stmts: &[Stmt],
    stores: &[Store],
    live_out: &[Reg],
    fixed: &[(Reg, Kind)],
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
    let mut alloc = Alloc::new();
    let mut plan = SectionPlan {
        space: space.to_vec(),
        ..Default::default()
    };
    for &(r, k) in fixed {
        let s = alloc.take(k);
        slots.insert(r, s);
    }
    let mut dedicated: Vec<Reg> = fixed.iter().map(|f| f.0).collect();
    for s in stmts {
        if let Instr::Const { value } = s.instr {
            let slot = alloc.take(kind_of(s.dtype));
            slots.insert(s.dst, slot);
            plan.consts.push((slot, value));
            dedicated.push(s.dst);
        }
    }
    for (i, s) in stmts.iter().enumerate() {
        if matches!(s.instr, Instr::Const { .. }) {
            continue;
        }
        let dst = alloc.take(kind_of(s.dtype));
        slots.insert(s.dst, dst);
        let g = |r: &Reg| slots[r];
        let op = match &s.instr {
            Instr::Load { input, map } => COp::Load {
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
            } => COp::Gather {
                dst,
                input: *input,
                map: MapPlan::new(map),
                index: g(index),
                stride: *stride,
                dim: *dim as i64,
            },
            Instr::Iota { map, stride, dim } => COp::Iota {
                dst,
                map: MapPlan::new(map),
                stride: *stride,
                dim: *dim as i64,
            },
            Instr::Unary { op, a } => COp::Unary {
                op: *op,
                dst,
                a: g(a),
            },
            Instr::Binary { op, a, b } => COp::Binary {
                op: *op,
                dst,
                a: g(a),
                b: g(b),
            },
            Instr::Compare { op, a, b } => COp::Compare {
                op: *op,
                dst,
                a: g(a),
                b: g(b),
            },
            Instr::Select { cond, a, b } => COp::Select {
                dst,
                c: g(cond),
                a: g(a),
                b: g(b),
            },
            Instr::Cast { a } => COp::Cast { dst, a: g(a) },
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
        plan.stores.push(CStore {
            output: st.output,
            value: slots[&st.value],
            map: MapPlan::new(&st.map),
        });
    }
    plan.slots = alloc.count;
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
        let fixed: Vec<(Reg, Kind)> = p
            .reduces
            .iter()
            .map(|r| (r.dst, kind_of(r.dtype)))
            .collect();
        let mut epi_slots = HashMap::new();
        let epi = if p.is_reduction() {
            plan_section(
                p.kept_space(),
                &p.epilogue.stmts,
                &p.epilogue.stores,
                &[],
                &fixed,
                &mut epi_slots,
            )
        } else {
            SectionPlan::default()
        };
        let reduces = p
            .reduces
            .iter()
            .map(|r| CReduce {
                op: r.op,
                kind: kind_of(r.dtype),
                value: body_slots[&r.value],
                dst: epi_slots[&r.dst],
            })
            .collect();
        let column = column_body(p, &live_out);
        Interp {
            column,
            name: p.name.clone(),
            body,
            epi,
            reduces,
            kept_len: p.kept_space().iter().product(),
            red_len: p.reduced_space().iter().product(),
            input_kinds: p.inputs.iter().map(|b| kind_of(b.ty.dtype)).collect(),
            output_kinds: p.outputs.iter().map(|b| kind_of(b.ty.dtype)).collect(),
        }
    }

    /// Checks that buffers have the right element types and that every map stays in bounds.
    pub fn check_buffers(
        &self,
        p: &KernelProgram,
        inputs: &[RawBuf],
        outputs: &[RawBuf],
    ) -> Result<(), String> {
        if inputs.len() != self.input_kinds.len() || outputs.len() != self.output_kinds.len() {
            return Err(format!("{}: wrong number of buffers", self.name));
        }
        for (i, (b, k)) in inputs.iter().zip(&self.input_kinds).enumerate() {
            if kind_of_storage(b.storage) != *k {
                return Err(format!(
                    "{}: input {i} has storage {:?}",
                    self.name, b.storage
                ));
            }
        }
        for (i, (b, k)) in outputs.iter().zip(&self.output_kinds).enumerate() {
            if kind_of_storage(b.storage) != *k || !b.writable {
                return Err(format!(
                    "{}: output {i} is not a writable {:?} buffer",
                    self.name, k
                ));
            }
        }
        let check = |map: &IndexMap, buf: &RawBuf, what: &str| -> Result<(), String> {
            if map.shape().iter().product::<usize>() == 0 {
                return Ok(());
            }
            let views = map.views();
            for (i, v) in views.iter().enumerate() {
                let (lo, hi) = view_range(v);
                let limit = match views.get(i + 1) {
                    Some(next) => next.numel() as i64,
                    None => buf.len as i64,
                };
                if lo < 0 || hi >= limit {
                    return Err(format!(
                        "{}: {what} map {map} reaches [{lo}, {hi}] outside a buffer of {limit} elements",
                        self.name
                    ));
                }
            }
            Ok(())
        };
        for sec in [&p.body, &p.epilogue] {
            for s in &sec.stmts {
                match &s.instr {
                    Instr::Load { input, map } => check(map, &inputs[*input], "load")?,
                    Instr::LoadGather {
                        input,
                        map,
                        stride,
                        dim,
                        ..
                    } => {
                        check(map, &inputs[*input], "gather")?;
                        let (lo, hi) = view_range(map.top());
                        let span = (*dim as i64 - 1).max(0) * stride;
                        if map.as_strided().is_none()
                            || lo < 0
                            || hi + span >= inputs[*input].len as i64
                        {
                            return Err(format!("{}: gather reaches outside its table", self.name));
                        }
                    }
                    _ => {}
                }
            }
            for st in &sec.stores {
                check(&st.map, &outputs[st.output], "store")?;
            }
        }
        Ok(())
    }

    /// Runs the kernel. Buffers must have passed [`Interp::check_buffers`].
    pub fn run(&self, inputs: &[RawBuf], outputs: &[RawBuf]) {
        if self.reduces.is_empty() {
            self.run_elementwise(inputs, outputs);
        } else {
            self.run_reduction(inputs, outputs);
        }
    }

    fn run_elementwise(&self, inputs: &[RawBuf], outputs: &[RawBuf]) {
        let total: usize = self.body.space.iter().product();
        if total == 0 {
            return;
        }
        let chunks = total.div_ceil(CHUNK);
        let ctx = Ctx { inputs, outputs };
        if total < PARALLEL_MIN {
            let mut regs = Regs::new(&self.body);
            for c in 0..chunks {
                let start = c * CHUNK;
                self.exec(&self.body, &mut regs, &ctx, start, CHUNK.min(total - start));
            }
            return;
        }
        let per_task = (chunks / (rayon::current_num_threads() * 8)).clamp(1, 64);
        let tasks = chunks.div_ceil(per_task);
        (0..tasks).into_par_iter().for_each_init(
            || Regs::new(&self.body),
            |regs, t| {
                for c in t * per_task..((t + 1) * per_task).min(chunks) {
                    let start = c * CHUNK;
                    self.exec(&self.body, regs, &ctx, start, CHUNK.min(total - start));
                }
            },
        );
    }

    fn run_reduction(&self, inputs: &[RawBuf], outputs: &[RawBuf]) {
        let (k, r) = (self.kept_len, self.red_len);
        if k == 0 {
            return;
        }
        if let Some((col, values)) = &self.column {
            return self.run_columns(col, values, inputs, outputs);
        }
        let rows_per_block = (16384 / r.max(1)).clamp(1, CHUNK);
        let blocks = k.div_ceil(rows_per_block);
        let ctx = Ctx { inputs, outputs };
        let run_block = |state: &mut RedState, b: usize| {
            let k0 = b * rows_per_block;
            let k1 = (k0 + rows_per_block).min(k);
            self.reduce_block(state, &ctx, k0, k1);
        };
        if k * r.max(1) < PARALLEL_MIN || blocks == 1 {
            let mut state = RedState::new(self);
            for b in 0..blocks {
                run_block(&mut state, b);
            }
        } else {
            (0..blocks)
                .into_par_iter()
                .for_each_init(|| RedState::new(self), |state, b| run_block(state, b));
        }
    }

    fn run_columns(
        &self,
        col: &SectionPlan,
        values: &[Slot],
        inputs: &[RawBuf],
        outputs: &[RawBuf],
    ) {
        let (k, r) = (self.kept_len, self.red_len);
        let tile = (k / (rayon::current_num_threads() * 4))
            .clamp(64, CHUNK)
            .min(k);
        let tiles = k.div_ceil(tile);
        let ctx = Ctx { inputs, outputs };
        let run_tile = |st: &mut RedState, t: usize| {
            let k0 = t * tile;
            let k1 = (k0 + tile).min(k);
            let rows = k1 - k0;
            for (acc, red) in st.accs.iter_mut().zip(&self.reduces) {
                acc.reset(red, rows);
            }
            for ri in 0..r {
                self.exec(col, &mut st.body, &ctx, ri * k + k0, rows);
                for ((acc, red), &v) in st.accs.iter_mut().zip(&self.reduces).zip(values) {
                    acc.accumulate_columns(red, v, &st.body, rows);
                }
            }
            for (acc, red) in st.accs.iter().zip(&self.reduces) {
                acc.write(red, &mut st.epi, rows);
            }
            self.exec(&self.epi, &mut st.epi, &ctx, k0, rows);
        };
        let new_state = || RedState {
            body: Regs::new(col),
            epi: Regs::new(&self.epi),
            accs: self.reduces.iter().map(Acc::new).collect(),
        };
        if k * r < PARALLEL_MIN || tiles == 1 {
            let mut st = new_state();
            for t in 0..tiles {
                run_tile(&mut st, t);
            }
        } else {
            (0..tiles)
                .into_par_iter()
                .for_each_init(new_state, run_tile);
        }
    }

    fn reduce_block(&self, st: &mut RedState, ctx: &Ctx, k0: usize, k1: usize) {
        let r = self.red_len;
        let rows = k1 - k0;
        for (acc, red) in st.accs.iter_mut().zip(&self.reduces) {
            acc.reset(red, rows);
        }
        let (fs, fe) = (k0 * r, k1 * r);
        let mut s = fs;
        while s < fe {
            let len = CHUNK.min(fe - s);
            self.exec(&self.body, &mut st.body, ctx, s, len);
            for (acc, red) in st.accs.iter_mut().zip(&self.reduces) {
                acc.accumulate(red, &st.body, s, len, r, k0);
            }
            s += len;
        }
        for (acc, red) in st.accs.iter().zip(&self.reduces) {
            acc.write(red, &mut st.epi, rows);
        }
        self.exec(&self.epi, &mut st.epi, ctx, k0, rows);
    }

    fn exec(&self, sec: &SectionPlan, regs: &mut Regs, ctx: &Ctx, start: usize, len: usize) {
        for op in &sec.ops {
            exec_op(op, &sec.space, regs, ctx, start, len);
        }
        for st in &sec.stores {
            let buf = ctx.outputs[st.output];
            let v = st.value;
            match v.kind {
                Kind::F => store::<f32>(
                    &regs.f[v.ix][..len],
                    buf,
                    &st.map,
                    &sec.space,
                    start,
                    &mut regs.offs,
                ),
                Kind::I => store::<i32>(
                    &regs.i[v.ix][..len],
                    buf,
                    &st.map,
                    &sec.space,
                    start,
                    &mut regs.offs,
                ),
                Kind::L => store::<i64>(
                    &regs.l[v.ix][..len],
                    buf,
                    &st.map,
                    &sec.space,
                    start,
                    &mut regs.offs,
                ),
                Kind::B => store::<u8>(
                    &regs.b[v.ix][..len],
                    buf,
                    &st.map,
                    &sec.space,
                    start,
                    &mut regs.offs,
                ),
            }
        }
    }
}

/// The body planned over `reduced ++ kept` when that makes the loads contiguous: more strided
/// loads have unit stride along the innermost kept axis than along the innermost reduced axis.
fn column_body(p: &KernelProgram, live_out: &[Reg]) -> Option<(SectionPlan, Vec<Slot>)> {
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
    let plan = plan_section(&space, &stmts, &stores, live_out, &[], &mut slots);
    let values = p.reduces.iter().map(|r| slots[&r.value]).collect();
    Some((plan, values))
}

/// Lowest and highest offset a view produces over its shape.
fn view_range(v: &qie_codegen::View) -> (i64, i64) {
    let (mut lo, mut hi) = (v.offset, v.offset);
    for (&n, &s) in v.shape.iter().zip(&v.strides) {
        let span = (n as i64 - 1) * s;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    (lo, hi)
}

struct Ctx<'a> {
    inputs: &'a [RawBuf],
    outputs: &'a [RawBuf],
}

/// Per-task registers.
struct Regs {
    f: Vec<Vec<f32>>,
    i: Vec<Vec<i32>>,
    l: Vec<Vec<i64>>,
    b: Vec<Vec<u8>>,
    offs: Vec<i64>,
}

impl Regs {
    fn new(sec: &SectionPlan) -> Regs {
        let mut r = Regs {
            f: vec![vec![0.0; CHUNK]; sec.slots[0]],
            i: vec![vec![0; CHUNK]; sec.slots[1]],
            l: vec![vec![0; CHUNK]; sec.slots[2]],
            b: vec![vec![0; CHUNK]; sec.slots[3]],
            offs: vec![0; CHUNK],
        };
        for &(s, v) in &sec.consts {
            match s.kind {
                Kind::F => r.f[s.ix].fill(v as f32),
                Kind::I => r.i[s.ix].fill(v as i32),
                Kind::L => r.l[s.ix].fill(v as i64),
                Kind::B => r.b[s.ix].fill((v != 0.0) as u8),
            }
        }
        r
    }
}

enum Acc {
    SumF(Vec<f64>),
    MaxMinF(Vec<f32>),
    Int(Vec<i64>),
}

impl Acc {
    fn new(red: &CReduce) -> Acc {
        match (red.kind, red.op) {
            (Kind::F, ReduceOp::Sum) => Acc::SumF(vec![0.0; CHUNK]),
            (Kind::F, _) => Acc::MaxMinF(vec![0.0; CHUNK]),
            _ => Acc::Int(vec![0; CHUNK]),
        }
    }

    fn reset(&mut self, red: &CReduce, rows: usize) {
        match self {
            Acc::SumF(v) => v[..rows].fill(0.0),
            Acc::MaxMinF(v) => v[..rows].fill(if red.op == ReduceOp::Max {
                f32::NEG_INFINITY
            } else {
                f32::INFINITY
            }),
            Acc::Int(v) => v[..rows].fill(match red.op {
                ReduceOp::Sum => 0,
                ReduceOp::Max => i64::MIN,
                ReduceOp::Min => i64::MAX,
            }),
        }
    }

    /// Folds the chunk `[s, s + len)` of the flat body space (rows of length `r`, first row `k0`).
    fn accumulate(
        &mut self,
        red: &CReduce,
        regs: &Regs,
        s: usize,
        len: usize,
        r: usize,
        k0: usize,
    ) {
        let mut p = 0;
        while p < len {
            let pos = s + p;
            let row = pos / r;
            let seg = ((row + 1) * r - pos).min(len - p);
            let i = row - k0;
            match self {
                Acc::SumF(a) => a[i] += simd::sum_f64(&regs.f[red.value.ix][p..p + seg]),
                Acc::MaxMinF(a) => {
                    let x = &regs.f[red.value.ix][p..p + seg];
                    a[i] = if red.op == ReduceOp::Max {
                        simd::max_f32(a[i], simd::max_slice(x))
                    } else {
                        x.iter().fold(a[i], |m, &v| simd::min_f32(m, v))
                    };
                }
                Acc::Int(a) => {
                    let mut acc = a[i];
                    let mut fold = |v: i64| {
                        acc = match red.op {
                            ReduceOp::Sum => acc.wrapping_add(v),
                            ReduceOp::Max => acc.max(v),
                            ReduceOp::Min => acc.min(v),
                        }
                    };
                    match red.value.kind {
                        Kind::I => regs.i[red.value.ix][p..p + seg]
                            .iter()
                            .for_each(|&v| fold(v as i64)),
                        _ => regs.l[red.value.ix][p..p + seg]
                            .iter()
                            .for_each(|&v| fold(v)),
                    }
                    a[i] = acc;
                }
            }
            p += seg;
        }
    }

    /// Folds one value per kept element (`values[i]` into accumulator `i`).
    fn accumulate_columns(&mut self, red: &CReduce, value: Slot, regs: &Regs, rows: usize) {
        match self {
            Acc::SumF(a) => {
                for (a, &v) in a[..rows].iter_mut().zip(&regs.f[value.ix][..rows]) {
                    *a += v as f64;
                }
            }
            Acc::MaxMinF(a) => {
                let x = &regs.f[value.ix][..rows];
                if red.op == ReduceOp::Max {
                    a[..rows]
                        .iter_mut()
                        .zip(x)
                        .for_each(|(a, &v)| *a = simd::max_f32(*a, v));
                } else {
                    a[..rows]
                        .iter_mut()
                        .zip(x)
                        .for_each(|(a, &v)| *a = simd::min_f32(*a, v));
                }
            }
            Acc::Int(a) => {
                let fold = |acc: i64, v: i64| match red.op {
                    ReduceOp::Sum => acc.wrapping_add(v),
                    ReduceOp::Max => acc.max(v),
                    ReduceOp::Min => acc.min(v),
                };
                match value.kind {
                    Kind::I => a[..rows]
                        .iter_mut()
                        .zip(&regs.i[value.ix][..rows])
                        .for_each(|(a, &v)| *a = fold(*a, v as i64)),
                    _ => a[..rows]
                        .iter_mut()
                        .zip(&regs.l[value.ix][..rows])
                        .for_each(|(a, &v)| *a = fold(*a, v)),
                }
            }
        }
    }

    fn write(&self, red: &CReduce, epi: &mut Regs, rows: usize) {
        let d = red.dst;
        match self {
            Acc::SumF(a) => {
                for (o, &v) in epi.f[d.ix][..rows].iter_mut().zip(a) {
                    *o = v as f32;
                }
            }
            Acc::MaxMinF(a) => epi.f[d.ix][..rows].copy_from_slice(&a[..rows]),
            Acc::Int(a) => match d.kind {
                Kind::I => {
                    for (o, &v) in epi.i[d.ix][..rows].iter_mut().zip(a) {
                        *o = v as i32;
                    }
                }
                _ => epi.l[d.ix][..rows].copy_from_slice(&a[..rows]),
            },
        }
    }
}

struct RedState {
    body: Regs,
    epi: Regs,
    accs: Vec<Acc>,
}

impl RedState {
    fn new(k: &Interp) -> RedState {
        RedState {
            body: Regs::new(&k.body),
            epi: Regs::new(&k.epi),
            accs: k.reduces.iter().map(Acc::new).collect(),
        }
    }
}

/// Calls `f(pos, base, seg)` for each run of consecutive elements along the innermost axis in
/// the chunk `[start, start + len)` of `space`; the run's offsets are `base + j * inner_stride`.
#[inline]
fn for_segments(
    space: &[usize],
    strides: &[i64],
    offset: i64,
    start: usize,
    len: usize,
    mut f: impl FnMut(usize, i64, usize),
) {
    let r = space.len();
    if r == 0 {
        f(0, offset, len);
        return;
    }
    let inner = space[r - 1];
    let mut idx: SmallVec<[usize; 8]> = SmallVec::from_elem(0, r);
    let mut rem = start;
    for d in (0..r).rev() {
        idx[d] = rem % space[d];
        rem /= space[d];
    }
    let mut base = offset
        + idx
            .iter()
            .zip(strides)
            .map(|(&i, &s)| i as i64 * s)
            .sum::<i64>();
    let mut p = 0;
    while p < len {
        let seg = (inner - idx[r - 1]).min(len - p);
        f(p, base, seg);
        p += seg;
        if p >= len {
            break;
        }
        // Advance to the start of the next row (the segment ended at the row's end).
        base -= idx[r - 1] as i64 * strides[r - 1];
        idx[r - 1] = 0;
        let mut d = r - 1;
        loop {
            if d == 0 {
                break;
            }
            d -= 1;
            idx[d] += 1;
            base += strides[d];
            if idx[d] < space[d] {
                break;
            }
            base -= space[d] as i64 * strides[d];
            idx[d] = 0;
        }
    }
}

fn inner_stride(strides: &[i64]) -> i64 {
    strides.last().copied().unwrap_or(0)
}

/// Offsets of every element of the chunk.
fn offsets(map: &MapPlan, space: &[usize], start: usize, out: &mut [i64]) {
    let len = out.len();
    let (offset, strides) = match map {
        MapPlan::Strided { offset, strides } => (*offset, strides.as_slice()),
        MapPlan::General { map } => (map.top().offset, map.top().strides.as_slice()),
    };
    let s = inner_stride(strides);
    for_segments(space, strides, offset, start, len, |p, base, seg| {
        for (j, o) in out[p..p + seg].iter_mut().enumerate() {
            *o = base + j as i64 * s;
        }
    });
    if let MapPlan::General { map } = map {
        for o in out.iter_mut() {
            *o = map.resolve_lower(*o);
        }
    }
}

fn load<T: Copy>(
    dst: &mut [T],
    buf: RawBuf,
    map: &MapPlan,
    space: &[usize],
    start: usize,
    offs: &mut [i64],
) {
    let len = dst.len();
    let src = buf.ptr as *const T;
    match map {
        MapPlan::Strided { offset, strides } => {
            let s = inner_stride(strides);
            for_segments(space, strides, *offset, start, len, |p, base, seg| {
                let d = &mut dst[p..p + seg];
                // SAFETY: maps were checked against the buffer length (check_buffers).
                unsafe {
                    if s == 1 {
                        std::ptr::copy_nonoverlapping(
                            src.offset(base as isize),
                            d.as_mut_ptr(),
                            seg,
                        );
                    } else if s == 0 {
                        d.fill(*src.offset(base as isize));
                    } else {
                        for (j, v) in d.iter_mut().enumerate() {
                            *v = *src.offset((base + j as i64 * s) as isize);
                        }
                    }
                }
            });
        }
        MapPlan::General { .. } => {
            let offs = &mut offs[..len];
            offsets(map, space, start, offs);
            for (v, &o) in dst.iter_mut().zip(offs.iter()) {
                // SAFETY: as above.
                *v = unsafe { *src.offset(o as isize) };
            }
        }
    }
}

fn store<T: Copy>(
    val: &[T],
    buf: RawBuf,
    map: &MapPlan,
    space: &[usize],
    start: usize,
    offs: &mut [i64],
) {
    let len = val.len();
    let dst = buf.ptr as *mut T;
    match map {
        MapPlan::Strided { offset, strides } => {
            let s = inner_stride(strides);
            for_segments(space, strides, *offset, start, len, |p, base, seg| {
                let v = &val[p..p + seg];
                // SAFETY: maps were checked against the buffer length; chunks write disjoint
                // elements (stores are injective).
                unsafe {
                    if s == 1 {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), dst.offset(base as isize), seg);
                    } else {
                        for (j, &x) in v.iter().enumerate() {
                            *dst.offset((base + j as i64 * s) as isize) = x;
                        }
                    }
                }
            });
        }
        MapPlan::General { .. } => {
            let offs = &mut offs[..len];
            offsets(map, space, start, offs);
            for (&x, &o) in val.iter().zip(offs.iter()) {
                // SAFETY: as above.
                unsafe { *dst.offset(o as isize) = x };
            }
        }
    }
}

macro_rules! with_dst {
    ($regs:expr, $pool:ident, $dst:expr, $len:expr, |$o:ident| $body:expr) => {{
        let mut v = std::mem::take(&mut $regs.$pool[$dst.ix]);
        {
            let $o = &mut v[..$len];
            $body;
        }
        $regs.$pool[$dst.ix] = v;
    }};
}

fn exec_op(op: &COp, space: &[usize], regs: &mut Regs, ctx: &Ctx, start: usize, len: usize) {
    match op {
        COp::Load { dst, input, map } => {
            let buf = ctx.inputs[*input];
            let offs = &mut regs.offs;
            match dst.kind {
                Kind::F => load(&mut regs.f[dst.ix][..len], buf, map, space, start, offs),
                Kind::I => load(&mut regs.i[dst.ix][..len], buf, map, space, start, offs),
                Kind::L => load(&mut regs.l[dst.ix][..len], buf, map, space, start, offs),
                Kind::B => load(&mut regs.b[dst.ix][..len], buf, map, space, start, offs),
            }
        }
        COp::Gather {
            dst,
            input,
            map,
            index,
            stride,
            dim,
        } => {
            let mut offs = std::mem::take(&mut regs.offs);
            offsets(map, space, start, &mut offs[..len]);
            let clamp = |i: i64| i.clamp(0, (*dim - 1).max(0));
            match index.kind {
                Kind::I => {
                    for (o, &i) in offs[..len].iter_mut().zip(&regs.i[index.ix][..len]) {
                        *o += clamp(i as i64) * stride;
                    }
                }
                _ => {
                    for (o, &i) in offs[..len].iter_mut().zip(&regs.l[index.ix][..len]) {
                        *o += clamp(i) * stride;
                    }
                }
            }
            let buf = ctx.inputs[*input];
            fn gather<T: Copy>(d: &mut [T], buf: RawBuf, offs: &[i64]) {
                let src = buf.ptr as *const T;
                for (v, &o) in d.iter_mut().zip(offs) {
                    // SAFETY: the table range was checked (check_buffers) and indices clamped.
                    *v = unsafe { *src.offset(o as isize) };
                }
            }
            match dst.kind {
                Kind::F => gather(&mut regs.f[dst.ix][..len], buf, &offs[..len]),
                Kind::I => gather(&mut regs.i[dst.ix][..len], buf, &offs[..len]),
                Kind::L => gather(&mut regs.l[dst.ix][..len], buf, &offs[..len]),
                Kind::B => gather(&mut regs.b[dst.ix][..len], buf, &offs[..len]),
            }
            regs.offs = offs;
        }
        COp::Iota {
            dst,
            map,
            stride,
            dim,
        } => {
            let mut offs = std::mem::take(&mut regs.offs);
            offsets(map, space, start, &mut offs[..len]);
            let coord = |o: i64| (o / stride) % dim;
            match dst.kind {
                Kind::F => {
                    for (v, &o) in regs.f[dst.ix][..len].iter_mut().zip(&offs[..len]) {
                        *v = coord(o) as f32;
                    }
                }
                Kind::I => {
                    for (v, &o) in regs.i[dst.ix][..len].iter_mut().zip(&offs[..len]) {
                        *v = coord(o) as i32;
                    }
                }
                Kind::L => {
                    for (v, &o) in regs.l[dst.ix][..len].iter_mut().zip(&offs[..len]) {
                        *v = coord(o);
                    }
                }
                Kind::B => {
                    for (v, &o) in regs.b[dst.ix][..len].iter_mut().zip(&offs[..len]) {
                        *v = (coord(o) != 0) as u8;
                    }
                }
            }
            regs.offs = offs;
        }
        COp::Unary { op, dst, a } => match dst.kind {
            Kind::F => with_dst!(regs, f, dst, len, |o| unary_f32(
                *op,
                o,
                &regs.f[a.ix][..len]
            )),
            Kind::I => with_dst!(regs, i, dst, len, |o| {
                let a = &regs.i[a.ix][..len];
                for (o, &x) in o.iter_mut().zip(a) {
                    *o = if *op == UnaryOp::Abs {
                        x.wrapping_abs()
                    } else {
                        x.wrapping_neg()
                    };
                }
            }),
            Kind::L => with_dst!(regs, l, dst, len, |o| {
                let a = &regs.l[a.ix][..len];
                for (o, &x) in o.iter_mut().zip(a) {
                    *o = if *op == UnaryOp::Abs {
                        x.wrapping_abs()
                    } else {
                        x.wrapping_neg()
                    };
                }
            }),
            Kind::B => with_dst!(regs, b, dst, len, |o| {
                for (o, &x) in o.iter_mut().zip(&regs.b[a.ix][..len]) {
                    *o = (x == 0) as u8;
                }
            }),
        },
        COp::Binary { op, dst, a, b } => match dst.kind {
            Kind::F => with_dst!(regs, f, dst, len, |o| binary_f32(
                *op,
                o,
                &regs.f[a.ix][..len],
                &regs.f[b.ix][..len]
            )),
            Kind::I => with_dst!(regs, i, dst, len, |o| binary_int(
                *op,
                o,
                &regs.i[a.ix][..len],
                &regs.i[b.ix][..len]
            )),
            Kind::L => with_dst!(regs, l, dst, len, |o| binary_int(
                *op,
                o,
                &regs.l[a.ix][..len],
                &regs.l[b.ix][..len]
            )),
            Kind::B => with_dst!(regs, b, dst, len, |o| {
                let (x, y) = (&regs.b[a.ix][..len], &regs.b[b.ix][..len]);
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = match op {
                        BinaryOp::And => ((x != 0) && (y != 0)) as u8,
                        _ => ((x != 0) || (y != 0)) as u8,
                    };
                }
            }),
        },
        COp::Compare { op, dst, a, b } => with_dst!(regs, b, dst, len, |o| match a.kind {
            Kind::F => compare(*op, o, &regs.f[a.ix][..len], &regs.f[b.ix][..len]),
            Kind::I => compare(*op, o, &regs.i[a.ix][..len], &regs.i[b.ix][..len]),
            Kind::L => compare(*op, o, &regs.l[a.ix][..len], &regs.l[b.ix][..len]),
            Kind::B => compare(*op, o, &regs.b[a.ix][..len], &regs.b[b.ix][..len]),
        }),
        COp::Select { dst, c, a, b } => {
            let cond = std::mem::take(&mut regs.b[c.ix]);
            let cond_s = &cond[..len];
            match dst.kind {
                Kind::F => with_dst!(regs, f, dst, len, |o| select(
                    o,
                    cond_s,
                    &regs.f[a.ix][..len],
                    &regs.f[b.ix][..len]
                )),
                Kind::I => with_dst!(regs, i, dst, len, |o| select(
                    o,
                    cond_s,
                    &regs.i[a.ix][..len],
                    &regs.i[b.ix][..len]
                )),
                Kind::L => with_dst!(regs, l, dst, len, |o| select(
                    o,
                    cond_s,
                    &regs.l[a.ix][..len],
                    &regs.l[b.ix][..len]
                )),
                Kind::B => with_dst!(regs, b, dst, len, |o| select(
                    o,
                    cond_s,
                    &regs.b[a.ix][..len],
                    &regs.b[b.ix][..len]
                )),
            }
            regs.b[c.ix] = cond;
        }
        COp::Cast { dst, a } => cast(regs, *dst, *a, len),
    }
}

fn compare<T: PartialOrd + Copy>(op: CmpOp, o: &mut [u8], a: &[T], b: &[T]) {
    macro_rules! cmp_loop {
        ($e:expr) => {
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                #[allow(clippy::redundant_closure_call)]
                {
                    *o = ($e)(x, y) as u8;
                }
            }
        };
    }
    match op {
        CmpOp::Eq => cmp_loop!(|x: T, y: T| x == y),
        CmpOp::Ne => cmp_loop!(|x: T, y: T| x != y),
        CmpOp::Lt => cmp_loop!(|x: T, y: T| x < y),
        CmpOp::Le => cmp_loop!(|x: T, y: T| x <= y),
        CmpOp::Gt => cmp_loop!(|x: T, y: T| x > y),
        CmpOp::Ge => cmp_loop!(|x: T, y: T| x >= y),
    }
}

fn select<T: Copy>(o: &mut [T], c: &[u8], a: &[T], b: &[T]) {
    for (((o, &c), &x), &y) in o.iter_mut().zip(c).zip(a).zip(b) {
        *o = if c != 0 { x } else { y };
    }
}

fn cast(regs: &mut Regs, dst: Slot, a: Slot, len: usize) {
    macro_rules! conv {
        ($dpool:ident, $spool:ident, $f:expr) => {
            with_dst!(regs, $dpool, dst, len, |o| {
                for (o, &x) in o.iter_mut().zip(&regs.$spool[a.ix][..len]) {
                    #[allow(clippy::redundant_closure_call)]
                    {
                        *o = ($f)(x);
                    }
                }
            })
        };
    }
    match (a.kind, dst.kind) {
        (Kind::F, Kind::F) => conv!(f, f, |x: f32| x),
        (Kind::F, Kind::I) => conv!(i, f, |x: f32| x as i32),
        (Kind::F, Kind::L) => conv!(l, f, |x: f32| x as i64),
        (Kind::F, Kind::B) => conv!(b, f, |x: f32| (x != 0.0) as u8),
        (Kind::I, Kind::F) => conv!(f, i, |x: i32| x as f32),
        (Kind::I, Kind::I) => conv!(i, i, |x: i32| x),
        (Kind::I, Kind::L) => conv!(l, i, |x: i32| x as i64),
        (Kind::I, Kind::B) => conv!(b, i, |x: i32| (x != 0) as u8),
        (Kind::L, Kind::F) => conv!(f, l, |x: i64| x as f32),
        (Kind::L, Kind::I) => conv!(i, l, |x: i64| x as i32),
        (Kind::L, Kind::L) => conv!(l, l, |x: i64| x),
        (Kind::L, Kind::B) => conv!(b, l, |x: i64| (x != 0) as u8),
        (Kind::B, Kind::F) => conv!(f, b, |x: u8| x as f32),
        (Kind::B, Kind::I) => conv!(i, b, |x: u8| x as i32),
        (Kind::B, Kind::L) => conv!(l, b, |x: u8| x as i64),
        (Kind::B, Kind::B) => conv!(b, b, |x: u8| x),
    }
}

multiversion! {
    fn unary_f32(op: UnaryOp, o: &mut [f32], a: &[f32]) {
        macro_rules! each {
            ($e:expr) => {
                for (o, &x) in o.iter_mut().zip(a) {
                    #[allow(clippy::redundant_closure_call)]
                    {
                        *o = ($e)(x);
                    }
                }
            };
        }
        match op {
            UnaryOp::Neg => each!(|x: f32| -x),
            UnaryOp::Abs => each!(|x: f32| x.abs()),
            UnaryOp::Exp => each!(simd::exp_f32),
            UnaryOp::Log => each!(|x: f32| x.ln()),
            UnaryOp::Sqrt => each!(|x: f32| x.sqrt()),
            UnaryOp::Rsqrt => each!(|x: f32| 1.0 / x.sqrt()),
            UnaryOp::Recip => each!(|x: f32| 1.0 / x),
            UnaryOp::Sin => each!(|x: f32| x.sin()),
            UnaryOp::Cos => each!(|x: f32| x.cos()),
            UnaryOp::Tanh => each!(simd::tanh_f32),
            UnaryOp::Sigmoid => each!(simd::sigmoid_f32),
            UnaryOp::Not => each!(|x: f32| (x == 0.0) as u8 as f32),
        }
    }
}

multiversion! {
    fn binary_f32(op: BinaryOp, o: &mut [f32], a: &[f32], b: &[f32]) {
        macro_rules! each {
            ($e:expr) => {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                    #[allow(clippy::redundant_closure_call)]
                    {
                        *o = ($e)(x, y);
                    }
                }
            };
        }
        match op {
            BinaryOp::Add => each!(|x: f32, y: f32| x + y),
            BinaryOp::Sub => each!(|x: f32, y: f32| x - y),
            BinaryOp::Mul => each!(|x: f32, y: f32| x * y),
            BinaryOp::Div => each!(|x: f32, y: f32| x / y),
            BinaryOp::Max => each!(simd::max_f32),
            BinaryOp::Min => each!(simd::min_f32),
            BinaryOp::Pow => each!(|x: f32, y: f32| x.powf(y)),
            // Not defined for floats (rejected by type inference).
            BinaryOp::FloorDiv | BinaryOp::Rem | BinaryOp::And | BinaryOp::Or => {
                each!(|_x: f32, _y: f32| f32::NAN)
            }
        }
    }
}

trait IntOps: Copy + Ord {
    const ZERO: Self;
    const ONE: Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn rem(self, o: Self) -> Self;
}

macro_rules! int_ops {
    ($t:ty) => {
        impl IntOps for $t {
            const ZERO: $t = 0;
            const ONE: $t = 1;
            fn add(self, o: $t) -> $t {
                self.wrapping_add(o)
            }
            fn sub(self, o: $t) -> $t {
                self.wrapping_sub(o)
            }
            fn mul(self, o: $t) -> $t {
                self.wrapping_mul(o)
            }
            fn div(self, o: $t) -> $t {
                if o == 0 {
                    0
                } else {
                    self.wrapping_div(o)
                }
            }
            fn rem(self, o: $t) -> $t {
                if o == 0 {
                    0
                } else {
                    self.wrapping_rem(o)
                }
            }
        }
    };
}
int_ops!(i32);
int_ops!(i64);

/// Integer arithmetic (wrapping; division by zero gives 0, where the reference reports an error).
fn binary_int<T: IntOps>(op: BinaryOp, o: &mut [T], a: &[T], b: &[T]) {
    let z = T::ZERO;
    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
        *o = match op {
            BinaryOp::Add => x.add(y),
            BinaryOp::Sub => x.sub(y),
            BinaryOp::Mul => x.mul(y),
            BinaryOp::Div => x.div(y),
            BinaryOp::Max => x.max(y),
            BinaryOp::Min => x.min(y),
            BinaryOp::FloorDiv => {
                let q = x.div(y);
                let r = x.rem(y);
                if r != z && ((r < z) != (y < z)) {
                    q.sub(T::ONE)
                } else {
                    q
                }
            }
            BinaryOp::Rem => {
                let r = x.rem(y);
                if r != z && ((r < z) != (y < z)) {
                    r.add(y)
                } else {
                    r
                }
            }
            _ => z,
        };
    }
}
