//! The integer type of a kernel's index arithmetic.

use crate::index::{IndexExpr, IndexMap};
use crate::program::{Instr, KernelProgram};

/// 32-bit unsigned when every offset fits (and none is negative), else 64-bit signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexWidth {
    U32,
    I64,
}

/// Offsets at or above this use 64-bit indices (`i32::MAX`, so that a 32-bit index never wraps
/// even where a renderer computes in signed arithmetic).
const U32_OFFSET_LIMIT: i64 = i32::MAX as i64;

fn has_negative(e: &IndexExpr) -> bool {
    match e {
        IndexExpr::Var(_) => false,
        IndexExpr::Const(c) => *c < 0,
        IndexExpr::Add(a, b) => has_negative(a) || has_negative(b),
        IndexExpr::Mul(a, k) => *k < 0 || has_negative(a),
        IndexExpr::Div(a, k) | IndexExpr::Rem(a, k) => *k <= 0 || has_negative(a),
    }
}

/// Chooses the index width from the iteration space and the largest offset any load, gather,
/// iota or store map of the program can produce.
pub fn index_width(p: &KernelProgram) -> IndexWidth {
    let mut wide = p.space.iter().product::<usize>() as i64 >= U32_OFFSET_LIMIT;
    let mut check = |map: &IndexMap, extra: i64, extra_negative: bool| {
        let e = map.to_expr();
        let ranges = map.shape().to_vec();
        if extra_negative || has_negative(&e) || e.max_value(&ranges) + extra >= U32_OFFSET_LIMIT {
            wide = true;
        }
    };
    for sec in [&p.body, &p.epilogue] {
        for s in &sec.stmts {
            match &s.instr {
                Instr::Load { map, .. } | Instr::Iota { map, .. } => check(map, 0, false),
                Instr::LoadGather {
                    map, stride, dim, ..
                } => check(map, (*dim as i64 - 1).max(0) * stride.abs(), *stride < 0),
                _ => {}
            }
        }
        for st in &sec.stores {
            check(&st.map, 0, false);
        }
    }
    if wide {
        IndexWidth::I64
    } else {
        IndexWidth::U32
    }
}
