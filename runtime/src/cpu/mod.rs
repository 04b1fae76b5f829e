//! The CPU backend: the reference for every other backend.
//!
//! [`compile`] runs the graph passes (optimize, fuse, plan memory), lowers the groups with
//! `qie_codegen` and binds them to one arena; [`CpuExecutable::run`] executes the plan:
//! elementwise and reduction kernels by a chunked interpreter, `MatMul` / `Conv2d` through the
//! `gemm` crate, `Attention` by a flash-style kernel. Float values are computed in f32: a graph
//! with bf16/f16 values is promoted to f32 first (casts to those types become no-ops).

mod attention;
mod buffer;
mod conv;
mod exec;
mod interp;
mod matmul;
pub(crate) mod simd;

pub use exec::{CpuExecutable, StepTime};

use crate::backend::{Backend, CompileOptions, Executable, RuntimeError};
use qie_ir::passes::{
    fuse, optimize_with, plan_memory, FusionOptions, MemoryOptions, PipelineOptions,
};
use qie_ir::{DType, Graph, Op, TensorType};

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
}

/// Compiles a graph for the CPU: promotes bf16/f16 to f32, optimizes (if asked), fuses, plans
/// memory and binds the plan. The result is reusable across runs.
pub fn compile(graph: &Graph, options: &CompileOptions) -> Result<CpuExecutable, RuntimeError> {
    let g = promote_to_f32(graph)?;
    let g = if options.optimize {
        optimize_with(&g, &PipelineOptions::default())
            .map_err(|e| RuntimeError::Compile(e.to_string()))?
    } else {
        g
    };
    let fusion_options = if options.fuse {
        FusionOptions::default()
    } else {
        FusionOptions::unfused()
    };
    let fusion = fuse(&g, &fusion_options);
    let memory = plan_memory(&g, &fusion, &MemoryOptions::default());
    CpuExecutable::new(g, fusion, memory, options)
}

fn half_to_f32(d: DType) -> DType {
    match d {
        DType::BF16 | DType::F16 => DType::F32,
        d => d,
    }
}

/// The same graph with every bf16/f16 value computed in f32 (inputs, params and outputs keep
/// their names; their tensors carry f32 data either way).
pub fn promote_to_f32(graph: &Graph) -> Result<Graph, RuntimeError> {
    if !graph
        .nodes
        .iter()
        .any(|n| matches!(n.ty.dtype, DType::BF16 | DType::F16))
    {
        return Ok(graph.clone());
    }
    let promote_ty = |t: &TensorType| t.with_dtype(half_to_f32(t.dtype));
    let mut g = Graph::new();
    for node in &graph.nodes {
        let op = match &node.op {
            Op::Input { name, ty } => Op::Input {
                name: name.clone(),
                ty: promote_ty(ty),
            },
            Op::Param { name, ty } => Op::Param {
                name: name.clone(),
                ty: promote_ty(ty),
            },
            Op::Constant { value, dtype } => Op::Constant {
                value: *value,
                dtype: half_to_f32(*dtype),
            },
            Op::Iota { shape, axis, dtype } => Op::Iota {
                shape: shape.clone(),
                axis: *axis,
                dtype: half_to_f32(*dtype),
            },
            Op::Cast { to } => Op::Cast {
                to: half_to_f32(*to),
            },
            op => op.clone(),
        };
        g.add_with_origin(op, &node.args, node.origin.clone())
            .map_err(|e| RuntimeError::Compile(format!("promoting to f32: {e}")))?;
    }
    g.outputs = graph.outputs.clone();
    Ok(g)
}
