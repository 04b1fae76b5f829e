//! Per-row reduction accumulators: float sums in f64, float max/min in f32, integers in i64.

use super::plan::ReducePlan;
use super::registers::Registers;
use super::{RegClass, Slot, CHUNK};
use crate::cpu::simd;
use qie_ir::ReduceOp;

/// Accumulators for up to [`CHUNK`] kept rows of one reduction.
pub(super) enum Accumulator {
    SumF64(Vec<f64>),
    MaxMinF32(Vec<f32>),
    Int(Vec<i64>),
}

fn fold_int(op: ReduceOp, acc: i64, v: i64) -> i64 {
    match op {
        ReduceOp::Sum => acc.wrapping_add(v),
        ReduceOp::Max => acc.max(v),
        ReduceOp::Min => acc.min(v),
    }
}

impl Accumulator {
    pub fn new(red: &ReducePlan) -> Accumulator {
        match (red.class, red.op) {
            (RegClass::Float, ReduceOp::Sum) => Accumulator::SumF64(vec![0.0; CHUNK]),
            (RegClass::Float, _) => Accumulator::MaxMinF32(vec![0.0; CHUNK]),
            _ => Accumulator::Int(vec![0; CHUNK]),
        }
    }

    /// Sets the first `rows` accumulators to the reduction's identity.
    pub fn reset(&mut self, red: &ReducePlan, rows: usize) {
        match self {
            Accumulator::SumF64(v) => v[..rows].fill(0.0),
            Accumulator::MaxMinF32(v) => v[..rows].fill(if red.op == ReduceOp::Max {
                f32::NEG_INFINITY
            } else {
                f32::INFINITY
            }),
            Accumulator::Int(v) => v[..rows].fill(match red.op {
                ReduceOp::Sum => 0,
                ReduceOp::Max => i64::MIN,
                ReduceOp::Min => i64::MAX,
            }),
        }
    }

    /// Folds the chunk `[start, start + len)` of the flat body space (rows of `row_len`
    /// elements, the first accumulator for row `first_row`).
    pub fn accumulate(
        &mut self,
        red: &ReducePlan,
        regs: &Registers,
        start: usize,
        len: usize,
        row_len: usize,
        first_row: usize,
    ) {
        let v = red.value.index;
        let mut p = 0;
        while p < len {
            let pos = start + p;
            let row = pos / row_len;
            let seg = ((row + 1) * row_len - pos).min(len - p);
            let i = row - first_row;
            match self {
                Accumulator::SumF64(a) => a[i] += simd::sum_f64(&regs.f32s[v][p..p + seg]),
                Accumulator::MaxMinF32(a) => {
                    let x = &regs.f32s[v][p..p + seg];
                    a[i] = if red.op == ReduceOp::Max {
                        simd::max_f32(a[i], simd::max_slice(x))
                    } else {
                        x.iter().fold(a[i], |m, &v| simd::min_f32(m, v))
                    };
                }
                Accumulator::Int(a) => {
                    a[i] = match red.value.class {
                        RegClass::I32 => regs.i32s[v][p..p + seg]
                            .iter()
                            .fold(a[i], |acc, &x| fold_int(red.op, acc, x as i64)),
                        _ => regs.i64s[v][p..p + seg]
                            .iter()
                            .fold(a[i], |acc, &x| fold_int(red.op, acc, x)),
                    };
                }
            }
            p += seg;
        }
    }

    /// Folds one value per kept element (`value[i]` into accumulator `i`).
    pub fn accumulate_columns(
        &mut self,
        red: &ReducePlan,
        value: Slot,
        regs: &Registers,
        rows: usize,
    ) {
        let v = value.index;
        match self {
            Accumulator::SumF64(a) => {
                for (a, &x) in a[..rows].iter_mut().zip(&regs.f32s[v][..rows]) {
                    *a += x as f64;
                }
            }
            Accumulator::MaxMinF32(a) => {
                let x = &regs.f32s[v][..rows];
                if red.op == ReduceOp::Max {
                    a[..rows]
                        .iter_mut()
                        .zip(x)
                        .for_each(|(a, &x)| *a = simd::max_f32(*a, x));
                } else {
                    a[..rows]
                        .iter_mut()
                        .zip(x)
                        .for_each(|(a, &x)| *a = simd::min_f32(*a, x));
                }
            }
            Accumulator::Int(a) => match value.class {
                RegClass::I32 => a[..rows]
                    .iter_mut()
                    .zip(&regs.i32s[v][..rows])
                    .for_each(|(a, &x)| *a = fold_int(red.op, *a, x as i64)),
                _ => a[..rows]
                    .iter_mut()
                    .zip(&regs.i64s[v][..rows])
                    .for_each(|(a, &x)| *a = fold_int(red.op, *a, x)),
            },
        }
    }

    /// Writes the first `rows` results into the reduction's epilogue slot.
    pub fn write(&self, red: &ReducePlan, epilogue: &mut Registers, rows: usize) {
        let d = red.result;
        match self {
            Accumulator::SumF64(a) => {
                for (o, &v) in epilogue.f32s[d.index][..rows].iter_mut().zip(a) {
                    *o = v as f32;
                }
            }
            Accumulator::MaxMinF32(a) => epilogue.f32s[d.index][..rows].copy_from_slice(&a[..rows]),
            Accumulator::Int(a) => match d.class {
                RegClass::I32 => {
                    for (o, &v) in epilogue.i32s[d.index][..rows].iter_mut().zip(a) {
                        *o = v as i32;
                    }
                }
                _ => epilogue.i64s[d.index][..rows].copy_from_slice(&a[..rows]),
            },
        }
    }
}
