//! Lowers fused kernel groups to backend programs.
//!
//! [`lower_plan`] turns each [`qie_ir::plan::KernelGroup`] into [`Step`]s: [`KernelProgram`]s
//! (backend-neutral SSA over one index space, with strided or div/mod [`IndexMap`]s for loads and
//! stores) and library calls (`MatMul`, `Attention`, `Conv2d`) with strided operands. The CPU
//! backend interprets programs; GPU backends render them to source, sharing the launch decisions
//! of [`schedule`].

pub mod cuda;
pub mod index;
pub mod lower;
pub mod program;
pub mod schedule;
pub mod simplify;

pub use index::{IndexExpr, IndexMap, View};
pub use lower::{
    copy_program, lower_group, lower_group_placed, lower_plan, lower_plan_with_memory, LowerError,
    LoweredGroup, Operand, Step,
};
pub use program::{Binding, Instr, KernelProgram, ReduceStage, Reg, Section, Stmt, Store};
