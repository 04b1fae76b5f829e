//! Reductions: `sum`, `mean`, `max`, `min` over tensor axes, and their compile-time forms
//! (`max(3, 4)`, `sum([1, 2, 3])`).

use super::args::BoundArgs;
use super::Builtin;
use crate::dsl::ast::Span;
use crate::dsl::eval::{Lowerer, Scope, R};
use crate::dsl::value::Value;
use crate::{BinaryOp, Op, ReduceOp, Shape};

impl<'p> Lowerer<'p> {
    pub(super) fn reduce_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let builtin = args.builtin;
        let x = args.raw(0);
        // Compile-time forms: max(3, 4), sum([1, 2, 3]).
        if x.is_number() && matches!(builtin, Builtin::Max | Builtin::Min) {
            let y = args.raw(1);
            if !y.is_number() {
                return Err(self.err(
                    span,
                    format!("`{}` of a number needs a second number", builtin.name()),
                ));
            }
            let pick_first = match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => (p >= q) == (builtin == Builtin::Max),
                _ => true,
            };
            return Ok(if pick_first { x } else { y });
        }
        if let (Value::List(items), None) = (&x, args.get(1)) {
            return self.reduce_list(items, builtin, args.span(0));
        }
        let id = self.tensor_at(args, 0)?;
        let ty = self.graph.ty(id).clone();
        if let Some(Value::Tensor(_)) = args.get(1) {
            let elementwise = if builtin == Builtin::Max {
                "maximum"
            } else {
                "minimum"
            };
            return Err(self.err(
                span,
                format!(
                    "`{}(x, axis)` reduces one tensor; use `{elementwise}(a, b)` elementwise",
                    builtin.name()
                ),
            ));
        }
        let mut axes: Vec<usize> = match args.get(1) {
            None => (0..ty.rank()).collect(),
            Some(_) => {
                let axes = self.ints_at(args, 1)?;
                axes.iter()
                    .map(|&i| self.axis(i, ty.rank(), args.span(1)))
                    .collect::<R<_>>()?
            }
        };
        axes.sort_unstable();
        if axes.windows(2).any(|w| w[0] == w[1]) {
            return Err(self.err(args.span(1), "reduction axes repeat"));
        }
        let keepdim = self.bool_at(args, 2, false)?;
        let op = match builtin {
            Builtin::Max => ReduceOp::Max,
            Builtin::Min => ReduceOp::Min,
            _ => ReduceOp::Sum,
        };
        let mut out = if axes.is_empty() {
            id
        } else {
            self.emit(
                sc,
                span,
                Op::Reduce {
                    op,
                    axes: axes.iter().copied().collect(),
                },
                &[id],
            )?
        };
        if builtin == Builtin::Mean {
            let count: usize = axes.iter().map(|&i| ty.shape[i]).product();
            let c = self.scalar(sc, span, count as f64, ty.dtype)?;
            let shape = self.shape_of(out);
            let c = self.broadcast_to(sc, span, c, &shape)?;
            out = self.emit(sc, span, Op::Binary(BinaryOp::Div), &[out, c])?;
        }
        if keepdim {
            let kept: Shape = (0..ty.rank())
                .map(|i| if axes.contains(&i) { 1 } else { ty.shape[i] })
                .collect();
            out = self.reshape(sc, span, out, &kept)?;
        }
        Ok(Value::Tensor(out))
    }

    fn reduce_list(&self, items: &[Value], builtin: Builtin, span: Span) -> R<Value> {
        if items.iter().any(|v| !v.is_number()) {
            return Err(self.err(
                span,
                format!("`{}` of a list needs numbers", builtin.name()),
            ));
        }
        let all_int = items.iter().all(|v| matches!(v, Value::Int(_)));
        let floats: Vec<f64> = items.iter().filter_map(|v| v.as_f64()).collect();
        if floats.is_empty() && matches!(builtin, Builtin::Max | Builtin::Min | Builtin::Mean) {
            return Err(self.err(span, format!("`{}` of an empty list", builtin.name())));
        }
        let ints: Vec<i64> = items
            .iter()
            .filter_map(|v| {
                if let Value::Int(i) = v {
                    Some(*i)
                } else {
                    None
                }
            })
            .collect();
        Ok(match builtin {
            Builtin::Sum if all_int => Value::Int(
                ints.iter()
                    .try_fold(0i64, |acc, &x| acc.checked_add(x))
                    .ok_or_else(|| self.err(span, "integer overflow in sum"))?,
            ),
            Builtin::Sum => Value::Float(floats.iter().sum()),
            Builtin::Mean => Value::Float(floats.iter().sum::<f64>() / floats.len() as f64),
            Builtin::Max if all_int => Value::Int(ints.iter().copied().max().unwrap_or(0)),
            Builtin::Min if all_int => Value::Int(ints.iter().copied().min().unwrap_or(0)),
            Builtin::Max => Value::Float(floats.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            _ => Value::Float(floats.iter().copied().fold(f64::INFINITY, f64::min)),
        })
    }
}
