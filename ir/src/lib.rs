//! qie-ir: the model DSL, the graph IR, its verifier and the compiler passes.
//!
//! Data flow: `.qie` text -> AST -> (lowering, with concrete input shapes) -> [`Graph`] -> passes.

pub mod cost;
pub mod dsl;
pub mod dtype;
pub mod eval;
pub mod graph;
pub mod infer;
pub mod op;
pub mod param_init;
pub mod passes;
pub mod plan;
pub mod print;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;
pub mod verify;

pub use dtype::DType;
pub use graph::{Args, Graph, Node, NodeId};
pub use infer::{infer_type, TypeError};
pub use op::{BinaryOp, CmpOp, Op, ReduceOp, UnaryOp};
pub use param_init::ParamInit;
pub use types::{contiguous_strides, shape, Shape, TensorType};
pub use verify::{verify, VerifyError};
