//! Binding-time checks every backend relies on: library outputs never alias their operands,
//! operand views stay inside their buffers, and a kernel writes over one of its inputs only as
//! an in-place elementwise update.

use super::BufRef;
use crate::backend::RuntimeError;
use qie_codegen::{IndexMap, Instr, KernelProgram, View};

fn compile_err(m: String) -> RuntimeError {
    RuntimeError::Compile(m)
}

/// A library call (GEMM, attention, convolution) reads all operands while it writes `out`.
pub fn check_disjoint(ops: &[BufRef], out: BufRef, name: &str) -> Result<(), RuntimeError> {
    if ops.iter().any(|o| o.overlaps(&out)) {
        return Err(compile_err(format!(
            "{name}: library output overlaps an operand"
        )));
    }
    Ok(())
}

/// Every element `v` addresses lies inside `b`.
pub fn check_view(v: &View, b: BufRef, name: &str) -> Result<(), RuntimeError> {
    let Some((lo, hi)) = v.extent() else {
        return Ok(());
    };
    if lo < 0 || hi >= b.elements() as i64 {
        return Err(compile_err(format!(
            "{name}: operand view {v} outside its buffer"
        )));
    }
    Ok(())
}

/// Each binding of `p` got a buffer of its storage dtype holding at least its elements.
pub fn check_kernel_buffers(
    p: &KernelProgram,
    inputs: &[BufRef],
    outputs: &[BufRef],
) -> Result<(), RuntimeError> {
    for (b, r) in p
        .inputs
        .iter()
        .zip(inputs)
        .chain(p.outputs.iter().zip(outputs))
    {
        if r.dtype() != b.ty.dtype || r.elements() < b.ty.numel() {
            return Err(compile_err(format!(
                "kernel {}: {} bound to a {:?} buffer of {} bytes",
                p.name,
                b.ty,
                r.dtype(),
                r.bytes()
            )));
        }
    }
    Ok(())
}

/// An output may share bytes with an input only if every load of that input uses the output's
/// store map (same element, read before written, by the same thread). Returns whether any
/// output overlaps an input (a backend may then have to drop no-alias assumptions).
pub fn check_in_place(
    p: &KernelProgram,
    inputs: &[BufRef],
    outputs: &[BufRef],
) -> Result<bool, RuntimeError> {
    let mut any = false;
    for (oi, o) in outputs.iter().enumerate() {
        for (ii, i) in inputs.iter().enumerate() {
            if !o.overlaps(i) {
                continue;
            }
            any = true;
            let stores: Vec<&IndexMap> = p
                .body
                .stores
                .iter()
                .chain(&p.epilogue.stores)
                .filter(|s| s.output == oi)
                .map(|s| &s.map)
                .collect();
            let same = o.byte_range() == i.byte_range()
                && o.dtype().size_bytes() == i.dtype().size_bytes()
                && p.epilogue.stmts.is_empty()
                && !p.is_reduction()
                && stores.len() == 1
                && p.body.stmts.iter().all(|s| match &s.instr {
                    Instr::Load { input, map } => *input != ii || map == stores[0],
                    Instr::LoadGather { input, .. } => *input != ii,
                    _ => true,
                });
            if !same {
                return Err(compile_err(format!(
                    "kernel {}: output {} overlaps input {} but is not an in-place elementwise update",
                    p.name, p.outputs[oi].node, p.inputs[ii].node
                )));
            }
        }
    }
    Ok(any)
}
