//! Compile-time helpers: they compute values (ints, lists, ranges) while lowering and emit no
//! node: `dim`, `rank`, `shape`, `len`, `int`, `float`, `is_none`, `enumerate`, `range`,
//! `assert`.

use super::args::BoundArgs;
use crate::dsl::ast::Span;
use crate::dsl::eval::{Lowerer, R};
use crate::dsl::value::Value;

impl<'p> Lowerer<'p> {
    pub(super) fn dim_builtin(&self, args: &BoundArgs) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let shape = self.shape_of(x);
        let axis = self.axis(self.int_at(args, 1, None)?, shape.len(), args.span(1))?;
        Ok(Value::Int(shape[axis] as i64))
    }

    pub(super) fn rank_builtin(&self, args: &BoundArgs) -> R<Value> {
        Ok(Value::Int(
            self.graph.ty(self.tensor_at(args, 0)?).rank() as i64
        ))
    }

    pub(super) fn shape_of_builtin(&self, args: &BoundArgs) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        Ok(Value::list(
            self.shape_of(x)
                .iter()
                .map(|&d| Value::Int(d as i64))
                .collect(),
        ))
    }

    pub(super) fn len_builtin(&self, args: &BoundArgs) -> R<Value> {
        match args.raw(0) {
            Value::Range(s, e) => Ok(Value::Int(e.saturating_sub(s).max(0))),
            Value::Str(s) => Ok(Value::Int(s.chars().count() as i64)),
            Value::Dict(d) => Ok(Value::Int(d.entries.len() as i64)),
            v => match v.items() {
                Some(items) => Ok(Value::Int(items.len() as i64)),
                None => {
                    let hint = if matches!(v, Value::Tensor(_)) {
                        " (use dim(x, 0) or shape(x))"
                    } else {
                        ""
                    };
                    Err(self.err(args.span(0), format!("len of {}{hint}", self.describe(&v))))
                }
            },
        }
    }

    pub(super) fn int_builtin(&self, args: &BoundArgs) -> R<Value> {
        match args.raw(0) {
            Value::Int(i) => Ok(Value::Int(i)),
            Value::Bool(v) => Ok(Value::Int(i64::from(v))),
            Value::Float(f) if f.is_finite() && f.abs() < 9.2e18 => {
                Ok(Value::Int(f.trunc() as i64))
            }
            v => Err(self.err(
                args.span(0),
                format!("cannot convert {} to int", self.describe(&v)),
            )),
        }
    }

    pub(super) fn float_builtin(&self, args: &BoundArgs) -> R<Value> {
        match args.raw(0) {
            Value::Bool(v) => Ok(Value::Float(f64::from(u8::from(v)))),
            v => match v.as_f64() {
                Some(f) => Ok(Value::Float(f)),
                None => Err(self.err(
                    args.span(0),
                    format!("cannot convert {} to float", self.describe(&v)),
                )),
            },
        }
    }

    /// `enumerate(xs)`: a list of `(index, item)` tuples.
    pub(super) fn enumerate_builtin(&self, args: &BoundArgs) -> R<Value> {
        let v = args.raw(0);
        let items = v.items().ok_or_else(|| {
            self.err(
                args.span(0),
                format!("cannot enumerate {}", self.describe(&v)),
            )
        })?;
        Ok(Value::list(
            items
                .iter()
                .enumerate()
                .map(|(i, x)| Value::tuple(vec![Value::Int(i as i64), x.clone()]))
                .collect(),
        ))
    }

    /// `range(n)` is `0..n`; `range(a, b)` is `a..b`.
    pub(super) fn range_builtin(&self, args: &BoundArgs) -> R<Value> {
        let first = self.int_at(args, 0, None)?;
        match args.get(1) {
            None => Ok(Value::Range(0, first)),
            Some(_) => Ok(Value::Range(first, self.int_at(args, 1, None)?)),
        }
    }

    /// `assert(cond, message)` on a compile-time bool; fails at the call.
    pub(super) fn assert_builtin(&self, span: Span, args: &BoundArgs) -> R<Value> {
        let ok = match args.raw(0) {
            Value::Bool(v) => v,
            v => {
                return Err(self.err(
                    args.span(0),
                    format!(
                        "assert needs a compile-time bool, got {}",
                        self.describe(&v)
                    ),
                ))
            }
        };
        if ok {
            return Ok(Value::None);
        }
        let message = match args.raw(1) {
            Value::Str(s) => s.to_string(),
            Value::None => "condition is false".to_string(),
            v => self.describe(&v),
        };
        Err(self.err(span, format!("assertion failed: {message}")))
    }
}
