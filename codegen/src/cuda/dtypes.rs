//! How IR dtypes live in CUDA C: register and buffer types, conversions between them, literals,
//! and the identity and combine step of each reduction.

use qie_ir::{DType, ReduceOp};

/// How values of a dtype live in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RegClass {
    Float,
    I32,
    I64,
    Bool,
}

pub(super) fn reg_class(d: DType) -> RegClass {
    match d {
        DType::F32 | DType::BF16 | DType::F16 => RegClass::Float,
        DType::I32 => RegClass::I32,
        DType::I64 => RegClass::I64,
        DType::Bool => RegClass::Bool,
    }
}

/// The C type of a register of dtype `d`.
pub(super) fn reg_type(d: DType) -> &'static str {
    match reg_class(d) {
        RegClass::Float => "float",
        RegClass::I32 => "int",
        RegClass::I64 => "long long",
        RegClass::Bool => "bool",
    }
}

/// The C type of a buffer element.
pub(super) fn mem_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::BF16 => "bf16_t",
        DType::F16 => "f16_t",
        DType::I32 => "int",
        DType::I64 => "long long",
        DType::Bool => "u8_t",
    }
}

/// Converts a register expression of dtype `from` to a register of dtype `to`.
pub(super) fn cast(from: DType, to: DType, e: &str) -> String {
    match (reg_class(from), reg_class(to)) {
        (a, b) if a == b => e.to_string(),
        (_, RegClass::Float) if reg_class(from) == RegClass::Bool => {
            format!("(({e}) ? 1.0f : 0.0f)")
        }
        (_, RegClass::Float) => format!("((float)({e}))"),
        (RegClass::Float, RegClass::Bool) => format!("(({e}) != 0.0f)"),
        (_, RegClass::Bool) => format!("(({e}) != 0)"),
        (_, RegClass::I32) => format!("((int)({e}))"),
        (_, RegClass::I64) => format!("((long long)({e}))"),
    }
}

/// A buffer element (C expression of `mem_type(d)`) as a register of dtype `d`.
pub(super) fn load_conv(d: DType, e: &str) -> String {
    match d {
        DType::BF16 | DType::F16 => format!("to_f({e})"),
        DType::Bool => format!("({e} != 0)"),
        _ => e.to_string(),
    }
}

/// A register of dtype `d` as a buffer element of dtype `d`.
pub(super) fn store_conv(d: DType, e: &str) -> String {
    match d {
        DType::BF16 => format!("to_bf16({e})"),
        DType::F16 => format!("to_f16({e})"),
        DType::Bool => format!("(u8_t)({e})"),
        _ => e.to_string(),
    }
}

/// An f32 literal that reads back exactly.
pub(super) fn f32_literal(v: f32) -> String {
    if v.is_nan() {
        "QNAN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "QINF".into()
        } else {
            "(-QINF)".into()
        }
    } else {
        // Debug prints the shortest text that round-trips, always with a '.' or an exponent.
        let s = format!("{v:?}");
        format!("{s}f")
    }
}

/// A constant of dtype `d` as a register literal.
pub(super) fn const_literal(d: DType, v: f64) -> String {
    match reg_class(d) {
        RegClass::Float => f32_literal(v as f32),
        RegClass::Bool => if v != 0.0 { "true" } else { "false" }.into(),
        RegClass::I32 => format!("((int)({}LL))", v as i64 as i32),
        RegClass::I64 => {
            let x = v as i64;
            if x == i64::MIN {
                "(-9223372036854775807LL - 1)".into()
            } else {
                format!("({x}LL)")
            }
        }
    }
}

/// The value a reduction starts from.
pub(super) fn reduce_identity(op: ReduceOp, d: DType) -> String {
    match (op, reg_class(d)) {
        (ReduceOp::Sum, c) => const_literal(if c == RegClass::Bool { DType::I32 } else { d }, 0.0),
        (ReduceOp::Max, RegClass::Float) => "(-QINF)".into(),
        (ReduceOp::Min, RegClass::Float) => "QINF".into(),
        (ReduceOp::Max, RegClass::I32) => "(-2147483647 - 1)".into(),
        (ReduceOp::Min, RegClass::I32) => "2147483647".into(),
        (ReduceOp::Max, RegClass::I64) => "(-9223372036854775807LL - 1)".into(),
        (ReduceOp::Min, RegClass::I64) => "9223372036854775807LL".into(),
        (ReduceOp::Max, RegClass::Bool) => "false".into(),
        (ReduceOp::Min, RegClass::Bool) => "true".into(),
    }
}

/// One step of a reduction: `a` combined with `b`.
pub(super) fn reduce_combine(op: ReduceOp, d: DType, a: &str, b: &str) -> String {
    match (op, reg_class(d)) {
        (ReduceOp::Sum, RegClass::Float) => format!("{a} + {b}"),
        (ReduceOp::Sum, RegClass::Bool) => format!("{a} || {b}"),
        (ReduceOp::Sum, _) => format!("qadd({a}, {b})"),
        (ReduceOp::Max, RegClass::Float) => format!("qmaxf({a}, {b})"),
        (ReduceOp::Min, RegClass::Float) => format!("qminf({a}, {b})"),
        (ReduceOp::Max, RegClass::Bool) => format!("{a} || {b}"),
        (ReduceOp::Min, RegClass::Bool) => format!("{a} && {b}"),
        (ReduceOp::Max, _) => format!("qmax({a}, {b})"),
        (ReduceOp::Min, _) => format!("qmin({a}, {b})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_round_trip() {
        assert_eq!(f32_literal(1.0), "1.0f");
        assert_eq!(f32_literal(1e-6), "1e-6f");
        assert_eq!(f32_literal(f32::NEG_INFINITY), "(-QINF)");
        assert_eq!(const_literal(DType::I64, -3.0), "(-3LL)");
    }
}
