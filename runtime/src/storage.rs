//! Storage dtypes: which values a device backend keeps in bf16 in memory.
//!
//! The lowered models are f32 graphs. On a GPU, float values are *stored* in bf16 (params,
//! activations, graph inputs and outputs) while every kernel computes in f32 registers and the
//! GEMMs / attention accumulate in f32. The CPU backend stores and computes f32 throughout. [`assign_storage`] returns a copy of the graph whose node
//! types carry the storage dtype: the memory planner then sizes buffers by it, and the lowering
//! hands it to the renderer through the programs' bindings. The copy is a storage annotation, not
//! a graph to verify or evaluate: a binary op may have one bf16 and one f32 operand, which the
//! kernels read into f32 registers alike.
//!
//! Three kinds of float values keep f32 storage, because bf16 would lose what they encode:
//! - **angles**: every float value a `Sin` / `Cos` argument is computed from (RoPE angles
//!   `position * inv_freq` reach hundreds, timestep arguments `t * 1000 * freq` reach 1000, where
//!   bf16's spacing is 0.5-4 and the sine meaningless). The walk stops at library results;
//! - **structural** values computed from no float input or weight (iota-derived positions,
//!   frequencies, masks), which are small and often exact integers beyond bf16's 256;
//! - **reduction outputs** (row statistics: means, variances, `rsqrt(var + eps)`), tiny next to
//!   the rows they summarise.
//!
//! Views take their operand's storage (an alias shares its bytes). Weights always take the
//! mode's dtype, even where they feed an angle: a parameter set lives on the device once and
//! every plan reads it ([`crate::ParamSet`]), so its storage cannot depend on the plan.

use crate::backend::RuntimeError;
use qie_ir::plan::{FusionPlan, GroupKind};
use qie_ir::{DType, Graph, Op, UnaryOp};

/// How a backend stores float values (the CPU backend: always f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StorageMode {
    /// bf16 storage, f32 compute; cuBLASLt GEMMs and the tensor-core flash attention.
    #[default]
    Bf16,
    /// f32 storage everywhere; generic (slow) GEMM and attention kernels. For exact checks.
    F32,
}

impl StorageMode {
    pub fn name(self) -> &'static str {
        match self {
            StorageMode::Bf16 => "bf16",
            StorageMode::F32 => "f32",
        }
    }

    pub fn parse(s: &str) -> Result<StorageMode, String> {
        match s {
            "bf16" => Ok(StorageMode::Bf16),
            "f32" => Ok(StorageMode::F32),
            _ => Err(format!("unknown storage dtype '{s}': expected bf16 or f32")),
        }
    }
}

/// Which float nodes keep f32 storage in bf16 mode (indexed by node id).
pub fn keep_f32(g: &Graph, fusion: &FusionPlan) -> Vec<bool> {
    let n = g.len();
    let is_float = |i: usize| g.nodes[i].ty.dtype.is_float();
    let mut keep = vec![false; n];
    // Angles: everything a sin/cos argument is computed from, up to library results.
    let mut stack: Vec<usize> = g
        .nodes
        .iter()
        .filter(|node| matches!(node.op, Op::Unary(UnaryOp::Sin | UnaryOp::Cos)))
        .map(|node| node.args[0].index())
        .collect();
    let mut seen = vec![false; n];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let node = &g.nodes[i];
        if node.op.is_library_call() {
            continue;
        }
        if is_float(i) && !matches!(node.op, Op::Param { .. }) {
            keep[i] = true;
        }
        stack.extend(node.args.iter().map(|a| a.index()));
    }
    // Structural values: no float input or weight upstream.
    let mut data = vec![false; n];
    for i in 0..n {
        let node = &g.nodes[i];
        data[i] = match &node.op {
            Op::Input { ty, .. } | Op::Param { ty, .. } => ty.dtype.is_float(),
            _ => node.args.iter().any(|a| data[a.index()]),
        };
        if is_float(i) && !data[i] {
            keep[i] = true;
        }
    }
    // Reduction outputs.
    for group in &fusion.groups {
        if group.kind == GroupKind::Reduction {
            for o in &group.outputs {
                if is_float(o.index()) {
                    keep[o.index()] = true;
                }
            }
        }
    }
    // Views share their operand's storage.
    for i in 0..n {
        let node = &g.nodes[i];
        if node.op.is_view() && is_float(i) {
            keep[i] = keep[node.args[0].index()];
        }
    }
    keep
}

/// The graph with every float value's type set to its storage dtype (see the module docs).
/// Expects f32 floats (bf16 / f16 graphs are promoted first, as on the CPU).
pub fn assign_storage(
    g: &Graph,
    fusion: &FusionPlan,
    mode: StorageMode,
) -> Result<Graph, RuntimeError> {
    if let Some(node) = g
        .nodes
        .iter()
        .find(|node| matches!(node.ty.dtype, DType::BF16 | DType::F16))
    {
        return Err(RuntimeError::Compile(format!(
            "storage assignment expects an f32 graph, found {} ({})",
            node.ty,
            node.op.mnemonic()
        )));
    }
    if mode == StorageMode::F32 {
        return Ok(g.clone());
    }
    let keep = keep_f32(g, fusion);
    let mut out = g.clone();
    for (i, node) in out.nodes.iter_mut().enumerate() {
        if !node.ty.dtype.is_float() {
            continue;
        }
        let d = if keep[i] { DType::F32 } else { DType::BF16 };
        node.ty.dtype = d;
        match &mut node.op {
            Op::Input { ty, .. } | Op::Param { ty, .. } => ty.dtype = d,
            Op::Constant { dtype, .. } | Op::Iota { dtype, .. } => *dtype = d,
            Op::Cast { to } => *to = d,
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qie_ir::passes::{fuse, FusionOptions};
    use qie_ir::{BinaryOp, ReduceOp, TensorType};

    #[test]
    fn angles_structure_and_statistics_stay_f32() {
        let mut g = Graph::new();
        let x = g.input("x", TensorType::new(DType::F32, &[4, 8]));
        let t = g.input("t", TensorType::new(DType::F32, &[4, 8]));
        let w = g.param("w", TensorType::new(DType::F32, &[8, 8]));
        let io = g
            .add(
                Op::Iota {
                    shape: qie_ir::shape(&[4, 8]),
                    axis: 1,
                    dtype: DType::F32,
                },
                &[],
            )
            .unwrap();
        let ang = g.add(Op::Binary(BinaryOp::Mul), &[t, io]).unwrap();
        let s = g.add(Op::Unary(UnaryOp::Sin), &[ang]).unwrap();
        let y = g
            .add(
                Op::MatMul {
                    transpose_a: false,
                    transpose_b: true,
                },
                &[x, w],
            )
            .unwrap();
        let z = g.add(Op::Binary(BinaryOp::Add), &[y, s]).unwrap();
        let m = g
            .add(
                Op::Reduce {
                    op: ReduceOp::Sum,
                    axes: qie_ir::shape(&[1]),
                },
                &[z],
            )
            .unwrap();
        g.set_output("z", z);
        g.set_output("m", m);
        let fusion = fuse(&g, &FusionOptions::default());
        let sg = assign_storage(&g, &fusion, StorageMode::Bf16).unwrap();
        let d = |id: qie_ir::NodeId| sg.ty(id).dtype;
        assert_eq!(d(t), DType::F32, "angle input");
        assert_eq!(d(io), DType::F32, "structural");
        assert_eq!(d(ang), DType::F32, "angle");
        assert_eq!(d(m), DType::F32, "reduction output");
        assert_eq!(d(x), DType::BF16);
        assert_eq!(d(w), DType::BF16);
        assert_eq!(d(y), DType::BF16);
        assert_eq!(d(s), DType::BF16);
        assert_eq!(d(z), DType::BF16);
        let same = assign_storage(&g, &fusion, StorageMode::F32).unwrap();
        assert_eq!(same, g);
    }
}
