//! `KernelProgram`: a backend-neutral SSA description of one elementwise or reduction kernel.
//!
//! A program iterates over an index space (`space`). Its `body` is evaluated once per element of
//! the space. For a reduction, the last `reduce_rank` axes of the space are reduced: every
//! [`ReduceStage`] folds a body value over them, and the `epilogue` is then evaluated once per
//! element of the kept space (`space[..rank - reduce_rank]`), where the reduced values are
//! available as registers. Stores write registers to output buffers through index maps.
//!
//! Registers (`r0, r1, ..`) are numbered uniquely across both sections. All loads of a section
//! precede its stores, so an output may share a buffer with an input that it reads at the same
//! index (in-place), and every store comes after the last load.

use crate::index::IndexMap;
use qie_ir::types::ShapeDisplay;
use qie_ir::{BinaryOp, CmpOp, DType, NodeId, ReduceOp, Shape, TensorType, UnaryOp};
use std::fmt;

/// An SSA register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reg(pub u32);

impl Reg {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Instr {
    /// `inputs[input][map(i)]`.
    Load {
        input: usize,
        map: IndexMap,
    },
    /// `inputs[input][map(i) + index * stride]` where `index` is an integer register in `0..dim`.
    /// An index outside it is an error on the CPU backend (as in the reference); CUDA kernels
    /// cannot report it cheaply and clamp it into `0..dim`.
    LoadGather {
        input: usize,
        map: IndexMap,
        index: Reg,
        stride: i64,
        dim: usize,
    },
    /// A scalar constant.
    Const {
        value: f64,
    },
    /// `(map(i) / stride) % dim`: the coordinate along one axis of an iota seen through views.
    Iota {
        map: IndexMap,
        stride: i64,
        dim: usize,
    },
    Unary {
        op: UnaryOp,
        a: Reg,
    },
    Binary {
        op: BinaryOp,
        a: Reg,
        b: Reg,
    },
    Compare {
        op: CmpOp,
        a: Reg,
        b: Reg,
    },
    Select {
        cond: Reg,
        a: Reg,
        b: Reg,
    },
    /// Converts `a` to the statement's dtype.
    Cast {
        a: Reg,
    },
}

impl Instr {
    /// Registers read by this instruction.
    pub fn operands(&self) -> Vec<Reg> {
        match self {
            Instr::Load { .. } | Instr::Const { .. } | Instr::Iota { .. } => vec![],
            Instr::LoadGather { index, .. } => vec![*index],
            Instr::Unary { a, .. } | Instr::Cast { a } => vec![*a],
            Instr::Binary { a, b, .. } | Instr::Compare { a, b, .. } => vec![*a, *b],
            Instr::Select { cond, a, b } => vec![*cond, *a, *b],
        }
    }

    /// The index maps used by this instruction.
    pub fn map(&self) -> Option<&IndexMap> {
        match self {
            Instr::Load { map, .. } | Instr::LoadGather { map, .. } | Instr::Iota { map, .. } => {
                Some(map)
            }
            _ => None,
        }
    }

    pub fn map_mut(&mut self) -> Option<&mut IndexMap> {
        match self {
            Instr::Load { map, .. } | Instr::LoadGather { map, .. } | Instr::Iota { map, .. } => {
                Some(map)
            }
            _ => None,
        }
    }
}

/// `dst: dtype = instr`.
#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub dst: Reg,
    pub dtype: DType,
    pub instr: Instr,
}

/// `outputs[output][map(i)] = value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Store {
    pub output: usize,
    pub value: Reg,
    pub map: IndexMap,
}

/// Statements then stores, over one index space.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Section {
    pub stmts: Vec<Stmt>,
    pub stores: Vec<Store>,
}

impl Section {
    pub fn is_empty(&self) -> bool {
        self.stmts.is_empty() && self.stores.is_empty()
    }
}

/// `dst = reduce(op, value over the reduced axes)`; sums of floats should accumulate in at least
/// f32 (the CPU uses f64), integer sums exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceStage {
    pub op: ReduceOp,
    pub value: Reg,
    pub dst: Reg,
    pub dtype: DType,
}

/// A buffer the program reads or writes: the graph value it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    pub node: NodeId,
    pub ty: TensorType,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KernelProgram {
    /// A name for dumps and generated kernel symbols (`g12_add_exp`).
    pub name: String,
    /// The iteration space (after merging axes that every map allows to merge).
    pub space: Shape,
    /// Number of trailing axes of `space` that are reduced (0 for an elementwise kernel).
    pub reduce_rank: usize,
    pub inputs: Vec<Binding>,
    pub outputs: Vec<Binding>,
    /// Evaluated per element of `space`.
    pub body: Section,
    pub reduces: Vec<ReduceStage>,
    /// Evaluated per element of the kept space (only for reductions).
    pub epilogue: Section,
}

impl KernelProgram {
    pub fn is_reduction(&self) -> bool {
        !self.reduces.is_empty()
    }

    /// The kept (output) space of a reduction; the whole space for an elementwise kernel.
    pub fn kept_space(&self) -> &[usize] {
        &self.space[..self.space.len() - self.reduce_rank]
    }

    /// The reduced axes' sizes.
    pub fn reduced_space(&self) -> &[usize] {
        &self.space[self.space.len() - self.reduce_rank..]
    }

    pub fn num_regs(&self) -> usize {
        let body = self
            .body
            .stmts
            .iter()
            .map(|s| s.dst.index() + 1)
            .max()
            .unwrap_or(0);
        let epi = self
            .epilogue
            .stmts
            .iter()
            .map(|s| s.dst.index() + 1)
            .max()
            .unwrap_or(0);
        let red = self
            .reduces
            .iter()
            .map(|r| r.dst.index() + 1)
            .max()
            .unwrap_or(0);
        body.max(epi).max(red)
    }

    /// The dtype of every register (indexed by register number).
    pub fn reg_dtypes(&self) -> Vec<DType> {
        let mut d = vec![DType::F32; self.num_regs()];
        for s in self.body.stmts.iter().chain(&self.epilogue.stmts) {
            d[s.dst.index()] = s.dtype;
        }
        for r in &self.reduces {
            d[r.dst.index()] = r.dtype;
        }
        d
    }

    /// Number of statements (a rough size measure).
    pub fn len(&self) -> usize {
        self.body.stmts.len() + self.epilogue.stmts.len() + self.reduces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.body.stores.is_empty() && self.epilogue.stores.is_empty()
    }
}

fn write_stmt(f: &mut fmt::Formatter<'_>, s: &Stmt) -> fmt::Result {
    write!(f, "  {}: {} = ", s.dst, s.dtype)?;
    match &s.instr {
        Instr::Load { input, map } => write!(f, "load in{input} {map}"),
        Instr::LoadGather {
            input,
            map,
            index,
            stride,
            dim,
        } => write!(f, "gather in{input} {map} + {index}*{stride} (dim {dim})"),
        Instr::Const { value } => write!(f, "const {value:?}"),
        Instr::Iota { map, stride, dim } => write!(f, "iota ({map}) / {stride} % {dim}"),
        Instr::Unary { op, a } => write!(f, "{} {a}", format!("{op:?}").to_lowercase()),
        Instr::Binary { op, a, b } => write!(f, "{} {a}, {b}", format!("{op:?}").to_lowercase()),
        Instr::Compare { op, a, b } => write!(f, "{} {a}, {b}", format!("{op:?}").to_lowercase()),
        Instr::Select { cond, a, b } => write!(f, "select {cond}, {a}, {b}"),
        Instr::Cast { a } => write!(f, "cast {a}"),
    }?;
    writeln!(f)
}

fn write_section(f: &mut fmt::Formatter<'_>, sec: &Section) -> fmt::Result {
    for s in &sec.stmts {
        write_stmt(f, s)?;
    }
    for st in &sec.stores {
        writeln!(f, "  store out{} {} <- {}", st.output, st.map, st.value)?;
    }
    Ok(())
}

impl fmt::Display for KernelProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.is_reduction() {
            "reduction"
        } else {
            "elementwise"
        };
        write!(
            f,
            "kernel {} {kind} space={}",
            self.name,
            ShapeDisplay(&self.space)
        )?;
        if self.is_reduction() {
            write!(f, " reduce_rank={}", self.reduce_rank)?;
        }
        writeln!(f)?;
        for (i, b) in self.inputs.iter().enumerate() {
            writeln!(f, "  in{i}: {} {}", b.ty, b.node)?;
        }
        for (i, b) in self.outputs.iter().enumerate() {
            writeln!(f, "  out{i}: {} {}", b.ty, b.node)?;
        }
        write_section(f, &self.body)?;
        if self.is_reduction() {
            for r in &self.reduces {
                writeln!(
                    f,
                    "  {}: {} = reduce_{} {} over {}",
                    r.dst,
                    r.dtype,
                    format!("{:?}", r.op).to_lowercase(),
                    r.value,
                    ShapeDisplay(self.reduced_space())
                )?;
            }
            writeln!(f, " epilogue over {}:", ShapeDisplay(self.kept_space()))?;
            write_section(f, &self.epilogue)?;
        }
        Ok(())
    }
}
