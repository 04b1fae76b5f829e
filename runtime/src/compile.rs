//! The compile pipeline every backend shares, up to its own storage choices: half floats
//! promoted to f32, the graph optimised and fused; then, on the storage-typed graph, memory
//! planned and groups lowered.

use crate::backend::{CompileOptions, RuntimeError};
use qie_codegen::LoweredGroup;
use qie_ir::passes::{
    fuse, optimize_with, plan_memory, recompute, FusionOptions, MemoryOptions, PipelineOptions,
};
use qie_ir::plan::{FusionPlan, MemoryPlan};
use qie_ir::{DType, Graph, Op, TensorType};

/// The graph as backends compute it (f32 floats, optimised if asked) and its fusion plan.
pub fn optimize_and_fuse(
    graph: &Graph,
    options: &CompileOptions,
) -> Result<(Graph, FusionPlan), RuntimeError> {
    let g = promote_to_f32(graph)?;
    let g = if options.optimize {
        optimize_with(&g, &PipelineOptions::default())
            .map_err(|e| RuntimeError::Compile(e.to_string()))?
    } else {
        g
    };
    // After CSE, which would merge the recomputed copies back into the originals.
    let g = match &options.recompute {
        Some(r) => recompute(&g, r),
        None => g,
    };
    let fusion_options = if options.fuse {
        FusionOptions::default()
    } else {
        FusionOptions::unfused()
    };
    let fusion = fuse(&g, &fusion_options);
    Ok((g, fusion))
}

/// The memory plan of `storage_graph` (the fused graph with the backend's storage dtypes) and
/// its groups lowered to kernel programs and library steps.
pub fn plan_and_lower(
    storage_graph: &Graph,
    fusion: &FusionPlan,
) -> Result<(MemoryPlan, Vec<LoweredGroup>), RuntimeError> {
    let memory = plan_memory(storage_graph, fusion, &MemoryOptions::default());
    let lowered = qie_codegen::lower_plan_with_memory(storage_graph, fusion, &memory)
        .map_err(|e| RuntimeError::Compile(e.to_string()))?;
    Ok((memory, lowered))
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
