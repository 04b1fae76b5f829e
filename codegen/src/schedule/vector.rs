//! Vectorised elementwise kernels: each thread handles `width` consecutive elements of the
//! innermost axis, moving aligned bf16 / f32 accesses as one 16-byte vector.

use crate::index::IndexMap;
use crate::program::{Instr, KernelProgram};
use crate::Reg;
use qie_ir::DType;

/// See [`plan_vector`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorPlan {
    /// Elements per thread: 4 when any vector access is f32, else 8 (16 bytes either way).
    pub width: usize,
    /// Body loads (by destination register) that move as vectors.
    pub loads: Vec<Reg>,
    /// Body stores (by index) that move as vectors.
    pub stores: Vec<usize>,
}

/// Whether this elementwise kernel can handle `width` consecutive elements of the innermost
/// axis per thread, and which loads (by destination register) and stores (by index) then
/// move as one aligned vector: bf16 / f32 buffers read with unit stride along the innermost
/// axis, every other stride and the offset multiples of the width. The rest are read and
/// written per element. None for reductions, rank 0, and kernels with nothing to vectorise.
pub fn plan_vector(p: &KernelProgram) -> Option<VectorPlan> {
    let rank = p.space.len();
    if rank == 0 || p.is_reduction() {
        return None;
    }
    let innermost = rank - 1;
    let unit = |map: &IndexMap| map.as_strided().is_some_and(|v| v.strides[innermost] == 1);
    let loads: Vec<(Reg, &IndexMap, DType)> = p
        .body
        .stmts
        .iter()
        .filter_map(|s| match &s.instr {
            Instr::Load { input, map } => Some((s.dst, map, p.inputs[*input].ty.dtype)),
            _ => None,
        })
        .collect();
    let stores: Vec<(usize, &IndexMap, DType)> = p
        .body
        .stores
        .iter()
        .enumerate()
        .map(|(i, st)| (i, &st.map, p.outputs[st.output].ty.dtype))
        .collect();
    let candidates = || {
        loads
            .iter()
            .map(|(_, m, d)| (*m, *d))
            .chain(stores.iter().map(|(_, m, d)| (*m, *d)))
            .filter(|(m, d)| matches!(d, DType::BF16 | DType::F32) && unit(m))
    };
    let width = if candidates().any(|(_, d)| d == DType::F32) {
        4
    } else {
        8
    };
    if !p.space[innermost].is_multiple_of(width) {
        return None;
    }
    let aligned = |map: &IndexMap, d: DType| {
        matches!(d, DType::BF16 | DType::F32)
            && map.as_strided().is_some_and(|v| {
                let w = width as i64;
                v.strides[innermost] == 1
                    && v.offset % w == 0
                    && v.strides[..innermost].iter().all(|s| s % w == 0)
            })
    };
    // Every access that moves along the innermost axis must be a vector access: mixing
    // vectors with strided per-element accesses (an interleaving concat) uncoalesces them.
    let invariant = |map: &IndexMap| map.as_strided().is_some_and(|v| v.strides[innermost] == 0);
    let all_vector = p.body.stmts.iter().all(|s| match &s.instr {
        Instr::Load { input, map } => invariant(map) || aligned(map, p.inputs[*input].ty.dtype),
        Instr::LoadGather { map, stride, .. } => invariant(map) && *stride == 0,
        _ => true,
    }) && p
        .body
        .stores
        .iter()
        .all(|st| aligned(&st.map, p.outputs[st.output].ty.dtype));
    if !all_vector {
        return None;
    }
    let plan = VectorPlan {
        width,
        loads: loads
            .iter()
            .filter(|(_, m, d)| aligned(m, *d))
            .map(|(reg, _, _)| *reg)
            .collect(),
        stores: stores
            .iter()
            .filter(|(_, m, d)| aligned(m, *d))
            .map(|(i, _, _)| *i)
            .collect(),
    };
    (!plan.loads.is_empty() || !plan.stores.is_empty()).then_some(plan)
}
