//! The chunked interpreter for [`KernelProgram`](qie_codegen::KernelProgram)s.
//!
//! Each instruction is executed over a chunk of up to [`CHUNK`] consecutive elements of the
//! iteration space with a tight loop per opcode, so the cost of interpreting is paid once per
//! chunk, not per element. Registers are chunk-sized vectors, reused after their last use.
//! Chunks (elementwise) and blocks of kept rows (reductions) run in parallel with rayon.
//!
//! - `plan`: a program prepared for the interpreter (register classes, slots, section plans);
//! - `check`: the buffers a kernel is bound to, checked once when the plan is built;
//! - `run`: execution (elementwise chunks, row and column reductions);
//! - `accumulate`: the per-row reduction accumulators;
//! - `registers`: the per-task register file;
//! - `memory`: chunk loads, stores and gathers through index maps;
//! - `ops`: one opcode over one chunk, and `kernels` its typed slice loops.

mod accumulate;
mod check;
mod kernels;
mod memory;
mod ops;
mod plan;
mod registers;
mod run;

use crate::tensor::Storage;
use plan::{ColumnBody, ReducePlan, SectionPlan};
use std::fmt;

/// Elements per chunk.
pub const CHUNK: usize = 1024;
/// Below this many elements a kernel runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 15;

/// The class of a register: which typed pool of the register file holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RegClass {
    Float,
    I32,
    I64,
    /// One byte per element, 0 or 1.
    Bool,
}

impl RegClass {
    const COUNT: usize = 4;

    fn of(storage: Storage) -> RegClass {
        match storage {
            Storage::F32 => RegClass::Float,
            Storage::I32 => RegClass::I32,
            Storage::I64 => RegClass::I64,
            Storage::Bool => RegClass::Bool,
        }
    }

    fn of_dtype(dtype: qie_ir::DType) -> RegClass {
        RegClass::of(Storage::of(dtype))
    }

    /// The position of this class in per-class arrays (`[_; RegClass::COUNT]`).
    fn index(self) -> usize {
        match self {
            RegClass::Float => 0,
            RegClass::I32 => 1,
            RegClass::I64 => 2,
            RegClass::Bool => 3,
        }
    }
}

/// A register: the `index`-th chunk vector of its class's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    class: RegClass,
    index: usize,
}

/// A program prepared for the interpreter ([`Interp::new`]).
#[derive(Clone, Debug)]
pub struct Interp {
    pub name: String,
    body: SectionPlan,
    /// Runs once per block of kept elements after the reduction (empty for elementwise kernels).
    epilogue: SectionPlan,
    reduces: Vec<ReducePlan>,
    /// Elements of the kept (outer) and reduced (inner) parts of the iteration space.
    kept_len: usize,
    reduced_len: usize,
    input_classes: Vec<RegClass>,
    output_classes: Vec<RegClass>,
    /// For reductions whose loads are contiguous along the kept axes but strided along the
    /// reduced ones (column sums): see [`ColumnBody`].
    column_body: Option<ColumnBody>,
}

/// A gather index read at run time that is negative or not below the gathered axis's size
/// (the reference interpreter rejects these too; the CUDA backend clamps them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatherIndexError {
    pub kernel: String,
    pub index: i64,
    pub axis_len: usize,
}

impl fmt::Display for GatherIndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel {}: gather index {} out of range for an axis of size {}",
            self.kernel, self.index, self.axis_len
        )
    }
}

impl std::error::Error for GatherIndexError {}

/// A [`GatherIndexError`] inside a chunk loop, before the kernel's name is attached.
#[derive(Clone, Copy, Debug)]
struct BadIndex {
    index: i64,
    axis_len: usize,
}
