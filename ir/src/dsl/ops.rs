//! Operators: folding on compile-time values, IR on tensors with numpy broadcasting (explicit
//! `Broadcast` nodes to the common shape; a number operand becomes a `Constant` of the tensor dtype).

use super::ast::{BinOp, Span, UnOp};
use super::eval::{Lowerer, Scope, R};
use super::value::Value;
use crate::types::ShapeDisplay;
use crate::{BinaryOp, CmpOp, DType, NodeId, Op, Shape, UnaryOp};

/// Numpy broadcasting of several shapes, or None if they are incompatible.
pub(crate) fn broadcast_shapes<'a>(shapes: impl IntoIterator<Item = &'a [usize]>) -> Option<Shape> {
    let mut out: Shape = Shape::new();
    for s in shapes {
        if s.len() > out.len() {
            let mut grown: Shape = std::iter::repeat_n(1, s.len() - out.len()).collect();
            grown.extend(out.iter().copied());
            out = grown;
        }
        let off = out.len() - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}

fn floor_div(a: i64, b: i64) -> Option<i64> {
    let q = a.checked_div(b)?;
    Some(if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    })
}

fn floor_rem(a: i64, b: i64) -> Option<i64> {
    let r = a.checked_rem(b)?;
    Some(if r != 0 && ((r < 0) != (b < 0)) {
        r + b
    } else {
        r
    })
}

/// Folds `a op b` on numbers. Err is a message; Ok(None) means "not two numbers".
fn fold_numbers(op: BinOp, a: &Value, b: &Value) -> Result<Option<Value>, String> {
    use Value::{Bool, Float, Int};
    let overflow = || format!("integer overflow in `{}`", op.symbol());
    if let (Int(x), Int(y)) = (a, b) {
        let (x, y) = (*x, *y);
        let zero = || Err("division by zero".to_string());
        return Ok(Some(match op {
            BinOp::Add => Int(x.checked_add(y).ok_or_else(overflow)?),
            BinOp::Sub => Int(x.checked_sub(y).ok_or_else(overflow)?),
            BinOp::Mul => Int(x.checked_mul(y).ok_or_else(overflow)?),
            BinOp::Div if y == 0 => return zero(),
            BinOp::Div => Float(x as f64 / y as f64),
            BinOp::FloorDiv | BinOp::Rem if y == 0 => return zero(),
            BinOp::FloorDiv => Int(floor_div(x, y).ok_or_else(overflow)?),
            BinOp::Rem => Int(floor_rem(x, y).ok_or_else(overflow)?),
            BinOp::Lt => Bool(x < y),
            BinOp::Le => Bool(x <= y),
            BinOp::Gt => Bool(x > y),
            BinOp::Ge => Bool(x >= y),
            _ => return Ok(None),
        }));
    }
    let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
        return Ok(None);
    };
    if matches!(op, BinOp::Div | BinOp::FloorDiv | BinOp::Rem) && y == 0.0 {
        return Err("division by zero".to_string());
    }
    Ok(Some(match op {
        BinOp::Add => Float(x + y),
        BinOp::Sub => Float(x - y),
        BinOp::Mul => Float(x * y),
        BinOp::Div => Float(x / y),
        BinOp::FloorDiv => Float((x / y).floor()),
        BinOp::Rem => Float(x - y * (x / y).floor()),
        BinOp::Lt => Bool(x < y),
        BinOp::Le => Bool(x <= y),
        BinOp::Gt => Bool(x > y),
        BinOp::Ge => Bool(x >= y),
        _ => return Ok(None),
    }))
}

enum TensorOp {
    Binary(BinaryOp),
    Compare(CmpOp),
}

fn tensor_op(op: BinOp) -> Option<TensorOp> {
    Some(match op {
        BinOp::Add => TensorOp::Binary(BinaryOp::Add),
        BinOp::Sub => TensorOp::Binary(BinaryOp::Sub),
        BinOp::Mul => TensorOp::Binary(BinaryOp::Mul),
        BinOp::Div => TensorOp::Binary(BinaryOp::Div),
        BinOp::FloorDiv => TensorOp::Binary(BinaryOp::FloorDiv),
        BinOp::Rem => TensorOp::Binary(BinaryOp::Rem),
        BinOp::And => TensorOp::Binary(BinaryOp::And),
        BinOp::Or => TensorOp::Binary(BinaryOp::Or),
        BinOp::Eq => TensorOp::Compare(CmpOp::Eq),
        BinOp::Ne => TensorOp::Compare(CmpOp::Ne),
        BinOp::Lt => TensorOp::Compare(CmpOp::Lt),
        BinOp::Le => TensorOp::Compare(CmpOp::Le),
        BinOp::Gt => TensorOp::Compare(CmpOp::Gt),
        BinOp::Ge => TensorOp::Compare(CmpOp::Ge),
        BinOp::Coalesce | BinOp::Range => return None,
    })
}

impl<'p> Lowerer<'p> {
    pub fn unary(&mut self, sc: &Scope<'p>, span: Span, op: UnOp, v: Value) -> R<Value> {
        match (op, &v) {
            (UnOp::Neg, Value::Int(i)) => i
                .checked_neg()
                .map(Value::Int)
                .ok_or_else(|| self.err(span, "integer overflow in `-`")),
            (UnOp::Neg, Value::Float(f)) => Ok(Value::Float(-f)),
            (UnOp::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
            (_, Value::Tensor(id)) => {
                let u = if op == UnOp::Neg {
                    UnaryOp::Neg
                } else {
                    UnaryOp::Not
                };
                Ok(Value::Tensor(self.emit(sc, span, Op::Unary(u), &[*id])?))
            }
            _ => {
                let sym = if op == UnOp::Neg { "-" } else { "!" };
                Err(self.err(
                    span,
                    format!("`{sym}` is not defined for {}", self.describe(&v)),
                ))
            }
        }
    }

    pub fn binary(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        op: BinOp,
        a: Value,
        b: Value,
    ) -> R<Value> {
        let sym = op.symbol();
        let tensors = matches!(a, Value::Tensor(_)) || matches!(b, Value::Tensor(_));
        if !tensors {
            match fold_numbers(op, &a, &b) {
                Ok(Some(v)) => return Ok(v),
                Err(msg) => return Err(self.err(span, msg)),
                Ok(None) => {}
            }
            match (op, &a, &b) {
                (BinOp::Eq, ..) => return Ok(Value::Bool(a.same(&b))),
                (BinOp::Ne, ..) => return Ok(Value::Bool(!a.same(&b))),
                (BinOp::Add, Value::List(x), Value::List(y)) => {
                    return Ok(Value::list(x.iter().chain(y.iter()).cloned().collect()))
                }
                (BinOp::Add, Value::Tuple(x), Value::Tuple(y)) => {
                    return Ok(Value::tuple(x.iter().chain(y.iter()).cloned().collect()))
                }
                (BinOp::Add, Value::Str(x), Value::Str(y)) => {
                    return Ok(Value::Str(format!("{x}{y}").into()))
                }
                (BinOp::Range, Value::Int(x), Value::Int(y)) => return Ok(Value::Range(*x, *y)),
                (BinOp::And | BinOp::Or, Value::Bool(x), Value::Bool(y)) => {
                    return Ok(Value::Bool(if op == BinOp::And {
                        *x && *y
                    } else {
                        *x || *y
                    }))
                }
                _ => {}
            }
            return Err(self.err(
                span,
                format!(
                    "`{sym}` is not defined for {} and {}",
                    self.describe(&a),
                    self.describe(&b)
                ),
            ));
        }
        // A tensor compared with a non-number (e.g. `mask == none`) is a compile-time comparison.
        if matches!(op, BinOp::Eq | BinOp::Ne) && !(is_operand(&a) && is_operand(&b)) {
            return Ok(Value::Bool(a.same(&b) == (op == BinOp::Eq)));
        }
        let Some(top) = tensor_op(op) else {
            return Err(self.err(
                span,
                format!(
                    "`{sym}` is not defined for {} and {}",
                    self.describe(&a),
                    self.describe(&b)
                ),
            ));
        };
        let ids = self.unify(sc, span, &[(a, span), (b, span)], None, sym)?;
        let ir = match top {
            TensorOp::Binary(bop) => Op::Binary(bop),
            TensorOp::Compare(c) => Op::Compare(c),
        };
        Ok(Value::Tensor(self.emit(sc, span, ir, &ids)?))
    }

    /// A rank-0 constant (cached: one node per value and dtype).
    pub fn scalar(&mut self, sc: &Scope<'p>, span: Span, value: f64, dtype: DType) -> R<NodeId> {
        let key = (value.to_bits(), dtype);
        if let Some(&id) = self.constants.get(&key) {
            return Ok(id);
        }
        let id = self.emit(sc, span, Op::Constant { value, dtype }, &[])?;
        self.constants.insert(key, id);
        Ok(id)
    }

    /// Converts a compile-time number or bool into a rank-0 constant of `dtype`.
    pub fn number_as(&mut self, sc: &Scope<'p>, span: Span, v: &Value, dtype: DType) -> R<NodeId> {
        let x = match (v, dtype) {
            (Value::Bool(b), DType::Bool) => f64::from(u8::from(*b)),
            (Value::Int(i), d) if d != DType::Bool => *i as f64,
            (Value::Float(f), d) if d.is_float() => *f,
            (Value::Float(f), d) if d.is_int() && f.fract() == 0.0 => *f,
            _ => {
                return Err(self.err(
                    span,
                    format!(
                        "{} cannot be used as a {dtype} value (use cast(x, dtype) to convert)",
                        self.describe(v)
                    ),
                ))
            }
        };
        self.scalar(sc, span, x, dtype)
    }

    /// Broadcasts a tensor to `shape` (no node if it already has it).
    pub fn broadcast_to(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        id: NodeId,
        shape: &[usize],
    ) -> R<NodeId> {
        if self.graph.ty(id).shape.as_slice() == shape {
            return Ok(id);
        }
        self.emit(
            sc,
            span,
            Op::Broadcast {
                shape: Shape::from_slice(shape),
            },
            &[id],
        )
    }

    /// Makes tensors of one dtype and one shape from operands (tensors, numbers, bools). The dtype is
    /// that of the tensor operands (which must agree), else `default`.
    pub fn unify(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        vals: &[(Value, Span)],
        default: Option<DType>,
        what: &str,
    ) -> R<Vec<NodeId>> {
        let mut dtype = None;
        for (v, _) in vals {
            if let Value::Tensor(id) = v {
                let d = self.graph.ty(*id).dtype;
                match dtype {
                    None => dtype = Some((d, *id)),
                    Some((d0, id0)) if d0 != d => {
                        return Err(self.err(
                            span,
                            format!(
                                "`{what}`: operand dtypes differ: {} and {} (use cast(x, dtype))",
                                self.graph.ty(id0),
                                self.graph.ty(*id)
                            ),
                        ))
                    }
                    _ => {}
                }
            }
        }
        let dtype = match (dtype, default) {
            (Some((d, _)), _) => d,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(self.err(span, format!("`{what}` needs at least one tensor operand")))
            }
        };
        let mut ids = Vec::with_capacity(vals.len());
        for (v, vspan) in vals {
            ids.push(match v {
                Value::Tensor(id) => *id,
                Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                    self.number_as(sc, *vspan, v, dtype)?
                }
                _ => {
                    return Err(self.err(
                        *vspan,
                        format!(
                            "`{what}` expects tensors or numbers, got {}",
                            self.describe(v)
                        ),
                    ))
                }
            });
        }
        self.broadcast_all(sc, span, &ids, what)
    }

    /// Broadcasts tensors to their common shape.
    pub fn broadcast_all(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        ids: &[NodeId],
        what: &str,
    ) -> R<Vec<NodeId>> {
        let shape = {
            let shapes = ids.iter().map(|id| self.graph.ty(*id).shape.as_slice());
            broadcast_shapes(shapes)
        };
        let Some(shape) = shape else {
            let types: Vec<String> = ids
                .iter()
                .map(|id| self.graph.ty(*id).to_string())
                .collect();
            return Err(self.err(
                span,
                format!(
                    "cannot broadcast {} together in `{what}`",
                    types.join(" and ")
                ),
            ));
        };
        if !shape_fits(&shape) {
            return Err(self.err(span, format!("shape {} is too large", ShapeDisplay(&shape))));
        }
        ids.iter()
            .map(|&id| self.broadcast_to(sc, span, id, &shape))
            .collect()
    }
}

/// Values that take part in tensor arithmetic.
fn is_operand(v: &Value) -> bool {
    matches!(
        v,
        Value::Tensor(_) | Value::Int(_) | Value::Float(_) | Value::Bool(_)
    )
}

/// Upper bound on the elements of any shape we build (keeps products far from overflow).
pub(crate) const MAX_ELEMENTS: usize = 1 << 48;

/// True when the element count of `shape` is at most [`MAX_ELEMENTS`].
pub(crate) fn shape_fits(shape: &[usize]) -> bool {
    matches!(checked_numel(shape), Some(n) if n <= MAX_ELEMENTS)
}

pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}
