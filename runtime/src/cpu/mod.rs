//! The CPU backend: the reference for every other backend.
//!
//! [`compile`] runs the shared passes ([`crate::compile`]: promote to f32, optimize, fuse, plan
//! memory, lower) and binds the groups through [`crate::bind`]; [`CpuExecutable::run`] executes
//! the plan: elementwise and reduction kernels by a chunked interpreter, `MatMul` / `Conv2d`
//! through the `gemm` crate, `Attention` by a flash-style kernel. Float values are computed and
//! stored in f32 (casts to bf16 / f16 are no-ops).

mod attention;
mod attention_grad;
mod buffer;
mod conv;
mod exec;
mod interp;
mod matmul;
mod params;
pub(crate) mod simd;

pub use exec::{CpuExecutable, StepTime};
pub use params::CPU_BACKEND;

use crate::backend::{Backend, CompileOptions, Executable, ParamStore, RuntimeError};
use crate::params::ParamSet;
use qie_ir::passes::{plan_memory, MemoryOptions};
use qie_ir::{Graph, TensorType};

/// The CPU backend as a [`Backend`] (for code generic over backends).
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &str {
        "cpu"
    }

    fn compile(
        &self,
        graph: &Graph,
        options: &CompileOptions,
    ) -> Result<Box<dyn Executable>, RuntimeError> {
        Ok(Box::new(compile(graph, options)?))
    }

    fn upload_params(
        &self,
        params: &[(String, TensorType)],
        store: &dyn ParamStore,
    ) -> Result<ParamSet, RuntimeError> {
        params::upload(params, store)
    }
}

/// Compiles a graph for the CPU: promotes bf16/f16 to f32, optimizes (if asked), fuses, plans
/// memory and binds the plan. The result is reusable across runs.
pub fn compile(graph: &Graph, options: &CompileOptions) -> Result<CpuExecutable, RuntimeError> {
    let (g, fusion) = crate::compile::optimize_and_fuse(graph, options)?;
    let memory = plan_memory(&g, &fusion, &MemoryOptions::default());
    CpuExecutable::new(g, fusion, memory, options)
}
