//! The typed slice loops behind each opcode: compare, select, float and integer arithmetic.
//! Float loops are compiled per instruction set (`multiversion!`).

use crate::cpu::simd::{self, multiversion};
use qie_ir::{BinaryOp, CmpOp, UnaryOp};

pub(super) fn compare<T: PartialOrd + Copy>(op: CmpOp, o: &mut [u8], a: &[T], b: &[T]) {
    macro_rules! cmp_loop {
        ($e:expr) => {
            for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                #[allow(clippy::redundant_closure_call)]
                {
                    *o = ($e)(x, y) as u8;
                }
            }
        };
    }
    match op {
        CmpOp::Eq => cmp_loop!(|x: T, y: T| x == y),
        CmpOp::Ne => cmp_loop!(|x: T, y: T| x != y),
        CmpOp::Lt => cmp_loop!(|x: T, y: T| x < y),
        CmpOp::Le => cmp_loop!(|x: T, y: T| x <= y),
        CmpOp::Gt => cmp_loop!(|x: T, y: T| x > y),
        CmpOp::Ge => cmp_loop!(|x: T, y: T| x >= y),
    }
}

pub(super) fn select<T: Copy>(o: &mut [T], c: &[u8], a: &[T], b: &[T]) {
    for (((o, &c), &x), &y) in o.iter_mut().zip(c).zip(a).zip(b) {
        *o = if c != 0 { x } else { y };
    }
}

multiversion! {
    pub(super) fn unary_f32(op: UnaryOp, o: &mut [f32], a: &[f32]) {
        macro_rules! each {
            ($e:expr) => {
                for (o, &x) in o.iter_mut().zip(a) {
                    #[allow(clippy::redundant_closure_call)]
                    {
                        *o = ($e)(x);
                    }
                }
            };
        }
        match op {
            UnaryOp::Neg => each!(|x: f32| -x),
            UnaryOp::Abs => each!(|x: f32| x.abs()),
            UnaryOp::Exp => each!(simd::exp_f32),
            UnaryOp::Log => each!(|x: f32| x.ln()),
            UnaryOp::Sqrt => each!(|x: f32| x.sqrt()),
            UnaryOp::Rsqrt => each!(|x: f32| 1.0 / x.sqrt()),
            UnaryOp::Recip => each!(|x: f32| 1.0 / x),
            UnaryOp::Sin => each!(|x: f32| x.sin()),
            UnaryOp::Cos => each!(|x: f32| x.cos()),
            UnaryOp::Tanh => each!(simd::tanh_f32),
            UnaryOp::Sigmoid => each!(simd::sigmoid_f32),
            UnaryOp::Not => each!(|x: f32| (x == 0.0) as u8 as f32),
        }
    }
}

multiversion! {
    pub(super) fn binary_f32(op: BinaryOp, o: &mut [f32], a: &[f32], b: &[f32]) {
        macro_rules! each {
            ($e:expr) => {
                for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                    #[allow(clippy::redundant_closure_call)]
                    {
                        *o = ($e)(x, y);
                    }
                }
            };
        }
        match op {
            BinaryOp::Add => each!(|x: f32, y: f32| x + y),
            BinaryOp::Sub => each!(|x: f32, y: f32| x - y),
            BinaryOp::Mul => each!(|x: f32, y: f32| x * y),
            BinaryOp::Div => each!(|x: f32, y: f32| x / y),
            BinaryOp::Max => each!(simd::max_f32),
            BinaryOp::Min => each!(simd::min_f32),
            BinaryOp::Pow => each!(|x: f32, y: f32| x.powf(y)),
            // Not defined for floats (rejected by type inference).
            BinaryOp::FloorDiv | BinaryOp::Rem | BinaryOp::And | BinaryOp::Or => {
                each!(|_x: f32, _y: f32| f32::NAN)
            }
        }
    }
}

pub(super) trait IntOps: Copy + Ord {
    const ZERO: Self;
    const ONE: Self;
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    fn rem(self, o: Self) -> Self;
    fn abs(self) -> Self;
    fn neg(self) -> Self;
}

macro_rules! int_ops {
    ($t:ty) => {
        impl IntOps for $t {
            const ZERO: $t = 0;
            const ONE: $t = 1;
            fn add(self, o: $t) -> $t {
                self.wrapping_add(o)
            }
            fn sub(self, o: $t) -> $t {
                self.wrapping_sub(o)
            }
            fn mul(self, o: $t) -> $t {
                self.wrapping_mul(o)
            }
            fn div(self, o: $t) -> $t {
                if o == 0 {
                    0
                } else {
                    self.wrapping_div(o)
                }
            }
            fn rem(self, o: $t) -> $t {
                if o == 0 {
                    0
                } else {
                    self.wrapping_rem(o)
                }
            }
            fn abs(self) -> $t {
                self.wrapping_abs()
            }
            fn neg(self) -> $t {
                self.wrapping_neg()
            }
        }
    };
}
int_ops!(i32);
int_ops!(i64);

/// Integer `abs` / `neg` (wrapping); other unary ops are float-only.
pub(super) fn unary_int<T: IntOps>(op: UnaryOp, o: &mut [T], a: &[T]) {
    for (o, &x) in o.iter_mut().zip(a) {
        *o = if op == UnaryOp::Abs { x.abs() } else { x.neg() };
    }
}

/// Integer arithmetic (wrapping; division by zero gives 0, where the reference reports an error).
pub(super) fn binary_int<T: IntOps>(op: BinaryOp, o: &mut [T], a: &[T], b: &[T]) {
    let z = T::ZERO;
    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
        *o = match op {
            BinaryOp::Add => x.add(y),
            BinaryOp::Sub => x.sub(y),
            BinaryOp::Mul => x.mul(y),
            BinaryOp::Div => x.div(y),
            BinaryOp::Max => x.max(y),
            BinaryOp::Min => x.min(y),
            BinaryOp::FloorDiv => {
                let q = x.div(y);
                let r = x.rem(y);
                if r != z && ((r < z) != (y < z)) {
                    q.sub(T::ONE)
                } else {
                    q
                }
            }
            BinaryOp::Rem => {
                let r = x.rem(y);
                if r != z && ((r < z) != (y < z)) {
                    r.add(y)
                } else {
                    r
                }
            }
            _ => z,
        };
    }
}
