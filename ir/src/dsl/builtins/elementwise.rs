//! Elementwise math: unary functions, `pow` / `maximum` / `minimum`, `where` and `cast`. Each
//! folds at compile time when its operands are numbers.

use super::args::BoundArgs;
use super::Builtin;
use crate::dsl::ast::Span;
use crate::dsl::eval::{Lowerer, Scope, R};
use crate::dsl::value::Value;
use crate::{BinaryOp, DType, Op, UnaryOp};

/// A unary builtin applied to a compile-time number.
fn fold_unary(builtin: Builtin, x: f64) -> f64 {
    match builtin {
        Builtin::Exp => x.exp(),
        Builtin::Log => x.ln(),
        Builtin::Sqrt => x.sqrt(),
        Builtin::Rsqrt => 1.0 / x.sqrt(),
        Builtin::Sin => x.sin(),
        Builtin::Cos => x.cos(),
        Builtin::Tanh => x.tanh(),
        Builtin::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Builtin::Abs => x.abs(),
        Builtin::Recip => 1.0 / x,
        _ => -x,
    }
}

fn unary_op(builtin: Builtin) -> UnaryOp {
    match builtin {
        Builtin::Exp => UnaryOp::Exp,
        Builtin::Log => UnaryOp::Log,
        Builtin::Sqrt => UnaryOp::Sqrt,
        Builtin::Rsqrt => UnaryOp::Rsqrt,
        Builtin::Sin => UnaryOp::Sin,
        Builtin::Cos => UnaryOp::Cos,
        Builtin::Tanh => UnaryOp::Tanh,
        Builtin::Sigmoid => UnaryOp::Sigmoid,
        Builtin::Abs => UnaryOp::Abs,
        Builtin::Recip => UnaryOp::Recip,
        _ => UnaryOp::Neg,
    }
}

impl<'p> Lowerer<'p> {
    /// `exp`, `log`, `sqrt`, `rsqrt`, `sin`, `cos`, `tanh`, `sigmoid`, `abs`, `recip`, `neg`.
    pub(super) fn unary_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let builtin = args.builtin;
        match args.raw(0) {
            Value::Int(i) if builtin == Builtin::Abs => {
                Ok(Value::Int(i.checked_abs().unwrap_or(i64::MAX)))
            }
            Value::Int(i) if builtin == Builtin::Neg => {
                Ok(Value::Int(i.checked_neg().unwrap_or(i64::MAX)))
            }
            v @ (Value::Int(_) | Value::Float(_)) => {
                Ok(Value::Float(fold_unary(builtin, v.as_f64().unwrap_or(0.0))))
            }
            _ => {
                let x = self.tensor_at(args, 0)?;
                let op = Op::Unary(unary_op(builtin));
                Ok(Value::Tensor(self.emit(sc, span, op, &[x])?))
            }
        }
    }

    /// `pow`, `maximum`, `minimum`.
    pub(super) fn binary_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let (x, y) = (args.raw(0), args.raw(1));
        match (&x, &y) {
            (Value::Int(p), Value::Int(q)) => {
                return Ok(match args.builtin {
                    Builtin::Maximum => Value::Int(*p.max(q)),
                    Builtin::Minimum => Value::Int(*p.min(q)),
                    _ => match u32::try_from(*q).ok().and_then(|q| p.checked_pow(q)) {
                        Some(v) => Value::Int(v),
                        None => Value::Float((*p as f64).powf(*q as f64)),
                    },
                })
            }
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                let (p, q) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                return Ok(Value::Float(match args.builtin {
                    Builtin::Maximum => p.max(q),
                    Builtin::Minimum => p.min(q),
                    _ => p.powf(q),
                }));
            }
            _ => {}
        }
        let op = match args.builtin {
            Builtin::Maximum => BinaryOp::Max,
            Builtin::Minimum => BinaryOp::Min,
            _ => BinaryOp::Pow,
        };
        let ids = self.unify(
            sc,
            span,
            &[(x, args.span(0)), (y, args.span(1))],
            None,
            args.builtin.name(),
        )?;
        Ok(Value::Tensor(self.emit(sc, span, Op::Binary(op), &ids)?))
    }

    /// `where(cond, a, b)`: a compile-time bool picks a branch, a bool tensor selects per element.
    pub(super) fn where_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let cond = match args.raw(0) {
            Value::Bool(c) => return Ok(if c { args.raw(1) } else { args.raw(2) }),
            Value::Tensor(id) if self.graph.ty(id).dtype == DType::Bool => id,
            v => {
                return Err(self.err(
                    args.span(0),
                    format!(
                        "where: condition must be a bool tensor, got {}",
                        self.describe(&v)
                    ),
                ))
            }
        };
        let default =
            if matches!(args.raw(1), Value::Float(_)) || matches!(args.raw(2), Value::Float(_)) {
                DType::F32
            } else {
                DType::I32
            };
        let branches = self.unify(
            sc,
            span,
            &[(args.raw(1), args.span(1)), (args.raw(2), args.span(2))],
            Some(default),
            "where",
        )?;
        let all = self.broadcast_all(sc, span, &[cond, branches[0], branches[1]], "where")?;
        Ok(Value::Tensor(self.emit(sc, span, Op::Select, &all)?))
    }

    /// `cast(x, dtype)` of a tensor (no node when the dtype already matches) or a number.
    pub(super) fn cast_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let to = self.dtype_at(args, 1, DType::F32)?;
        match args.raw(0) {
            Value::Tensor(id) if self.graph.ty(id).dtype == to => Ok(Value::Tensor(id)),
            Value::Tensor(id) => Ok(Value::Tensor(self.emit(
                sc,
                span,
                Op::Cast { to },
                &[id],
            )?)),
            v => self.cast_number(&v, to, args.span(0)),
        }
    }

    fn cast_number(&self, v: &Value, to: DType, span: Span) -> R<Value> {
        let f = match v {
            Value::Bool(b) => f64::from(u8::from(*b)),
            _ => v.as_f64().ok_or_else(|| {
                self.err(span, format!("cannot cast {} to {to}", self.describe(v)))
            })?,
        };
        Ok(match to {
            DType::Bool => Value::Bool(f != 0.0),
            d if d.is_int() => match v {
                Value::Int(i) => Value::Int(*i),
                _ if f.is_finite() && f.abs() < 9.2e18 => Value::Int(f.trunc() as i64),
                _ => {
                    return Err(self.err(span, format!("cannot cast {} to {to}", self.describe(v))))
                }
            },
            _ => Value::Float(f),
        })
    }
}
