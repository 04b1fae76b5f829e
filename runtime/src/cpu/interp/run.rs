//! Running a prepared kernel: elementwise chunks, reductions by blocks of kept rows, and
//! column reductions by tiles of kept elements; in parallel with rayon above
//! [`PARALLEL_MIN`] elements.
//!
//! A failing chunk (a bad gather index) makes its task return `Err`; rayon's `try_for_each*`
//! then stops handing out tasks and returns one of the errors. Nothing here panics on bad data
//! (a panic in a worker would be re-raised on the calling thread by rayon, not turned into an
//! error).

use super::accumulate::Accumulator;
use super::memory::store;
use super::ops::exec_op;
use super::plan::{ColumnBody, SectionPlan};
use super::registers::Registers;
use super::{BadIndex, GatherIndexError, Interp, RegClass, CHUNK, PARALLEL_MIN};
use crate::cpu::buffer::RawBuf;
use rayon::prelude::*;

/// The buffers of one kernel launch.
pub(super) struct Buffers<'a> {
    pub inputs: &'a [RawBuf],
    pub outputs: &'a [RawBuf],
}

/// Per-task state of a reduction.
struct ReductionState {
    body: Registers,
    epilogue: Registers,
    accumulators: Vec<Accumulator>,
}

impl ReductionState {
    fn new(k: &Interp, body: &SectionPlan) -> ReductionState {
        ReductionState {
            body: Registers::new(body),
            epilogue: Registers::new(&k.epilogue),
            accumulators: k.reduces.iter().map(Accumulator::new).collect(),
        }
    }
}

impl Interp {
    /// Runs the kernel. Buffers must have passed [`Interp::check_buffers`]. Fails on a gather
    /// index outside its axis (outputs are then partly written).
    pub fn run(&self, inputs: &[RawBuf], outputs: &[RawBuf]) -> Result<(), GatherIndexError> {
        let bufs = Buffers { inputs, outputs };
        let result = if self.reduces.is_empty() {
            self.run_elementwise(&bufs)
        } else {
            self.run_reduction(&bufs)
        };
        result.map_err(|e| GatherIndexError {
            kernel: self.name.clone(),
            index: e.index,
            axis_len: e.axis_len,
        })
    }

    fn run_elementwise(&self, bufs: &Buffers) -> Result<(), BadIndex> {
        let total: usize = self.body.space.iter().product();
        if total == 0 {
            return Ok(());
        }
        let chunks = total.div_ceil(CHUNK);
        if total < PARALLEL_MIN {
            let mut regs = Registers::new(&self.body);
            for c in 0..chunks {
                let start = c * CHUNK;
                self.exec(&self.body, &mut regs, bufs, start, CHUNK.min(total - start))?;
            }
            return Ok(());
        }
        let per_task = (chunks / (rayon::current_num_threads() * 8)).clamp(1, 64);
        let tasks = chunks.div_ceil(per_task);
        (0..tasks).into_par_iter().try_for_each_init(
            || Registers::new(&self.body),
            |regs, t| {
                for c in t * per_task..((t + 1) * per_task).min(chunks) {
                    let start = c * CHUNK;
                    self.exec(&self.body, regs, bufs, start, CHUNK.min(total - start))?;
                }
                Ok(())
            },
        )
    }

    fn run_reduction(&self, bufs: &Buffers) -> Result<(), BadIndex> {
        let (k, r) = (self.kept_len, self.reduced_len);
        if k == 0 {
            return Ok(());
        }
        if let Some(column) = &self.column_body {
            return self.run_columns(column, bufs);
        }
        let rows_per_block = (16384 / r.max(1)).clamp(1, CHUNK);
        let blocks = k.div_ceil(rows_per_block);
        let run_block = |state: &mut ReductionState, b: usize| {
            let k0 = b * rows_per_block;
            let k1 = (k0 + rows_per_block).min(k);
            self.reduce_block(state, bufs, k0, k1)
        };
        if k * r.max(1) < PARALLEL_MIN || blocks == 1 {
            let mut state = ReductionState::new(self, &self.body);
            (0..blocks).try_for_each(|b| run_block(&mut state, b))
        } else {
            (0..blocks).into_par_iter().try_for_each_init(
                || ReductionState::new(self, &self.body),
                |state, b| run_block(state, b),
            )
        }
    }

    /// Kept rows `[k0, k1)`: the body chunk by chunk over their reduced elements, folded into
    /// one accumulator per row, then the epilogue over the rows.
    fn reduce_block(
        &self,
        st: &mut ReductionState,
        bufs: &Buffers,
        k0: usize,
        k1: usize,
    ) -> Result<(), BadIndex> {
        let r = self.reduced_len;
        let rows = k1 - k0;
        for (acc, red) in st.accumulators.iter_mut().zip(&self.reduces) {
            acc.reset(red, rows);
        }
        let (first, end) = (k0 * r, k1 * r);
        let mut s = first;
        while s < end {
            let len = CHUNK.min(end - s);
            self.exec(&self.body, &mut st.body, bufs, s, len)?;
            for (acc, red) in st.accumulators.iter_mut().zip(&self.reduces) {
                acc.accumulate(red, &st.body, s, len, r, k0);
            }
            s += len;
        }
        for (acc, red) in st.accumulators.iter().zip(&self.reduces) {
            acc.write(red, &mut st.epilogue, rows);
        }
        self.exec(&self.epilogue, &mut st.epilogue, bufs, k0, rows)
    }

    /// Column reductions: tiles of kept elements, each swept once per reduced index.
    fn run_columns(&self, column: &ColumnBody, bufs: &Buffers) -> Result<(), BadIndex> {
        let (k, r) = (self.kept_len, self.reduced_len);
        let tile = (k / (rayon::current_num_threads() * 4))
            .clamp(64, CHUNK)
            .min(k);
        let tiles = k.div_ceil(tile);
        let col = &column.section;
        let run_tile = |st: &mut ReductionState, t: usize| {
            let k0 = t * tile;
            let k1 = (k0 + tile).min(k);
            let rows = k1 - k0;
            for (acc, red) in st.accumulators.iter_mut().zip(&self.reduces) {
                acc.reset(red, rows);
            }
            for ri in 0..r {
                self.exec(col, &mut st.body, bufs, ri * k + k0, rows)?;
                let folds = st.accumulators.iter_mut().zip(&self.reduces);
                for ((acc, red), &v) in folds.zip(&column.values) {
                    acc.accumulate_columns(red, v, &st.body, rows);
                }
            }
            for (acc, red) in st.accumulators.iter().zip(&self.reduces) {
                acc.write(red, &mut st.epilogue, rows);
            }
            self.exec(&self.epilogue, &mut st.epilogue, bufs, k0, rows)
        };
        if k * r < PARALLEL_MIN || tiles == 1 {
            let mut st = ReductionState::new(self, col);
            (0..tiles).try_for_each(|t| run_tile(&mut st, t))
        } else {
            (0..tiles)
                .into_par_iter()
                .try_for_each_init(|| ReductionState::new(self, col), run_tile)
        }
    }

    /// One section over the chunk `[start, start + len)`: its ops, then its stores.
    fn exec(
        &self,
        sec: &SectionPlan,
        regs: &mut Registers,
        bufs: &Buffers,
        start: usize,
        len: usize,
    ) -> Result<(), BadIndex> {
        for op in &sec.ops {
            exec_op(op, &sec.space, regs, bufs, start, len)?;
        }
        for st in &sec.stores {
            let buf = bufs.outputs[st.output];
            let (v, space, offs) = (st.value.index, &sec.space, &mut regs.offsets);
            match st.value.class {
                RegClass::Float => store(&regs.f32s[v][..len], buf, &st.map, space, start, offs),
                RegClass::I32 => store(&regs.i32s[v][..len], buf, &st.map, space, start, offs),
                RegClass::I64 => store(&regs.i64s[v][..len], buf, &st.map, space, start, offs),
                RegClass::Bool => store(&regs.bools[v][..len], buf, &st.map, space, start, offs),
            }
        }
        Ok(())
    }
}
