//! Tensors made from nothing but a shape: `iota`, `arange`, `full`, `zeros_like`, `ones_like`.

use super::args::BoundArgs;
use super::Builtin;
use crate::dsl::ast::Span;
use crate::dsl::eval::{Lowerer, Scope, R};
use crate::dsl::value::Value;
use crate::{DType, Op};

impl<'p> Lowerer<'p> {
    /// `iota(shape, axis, dtype)` and `arange(n, dtype)` (a rank-1 iota).
    pub(super) fn iota_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let (shape, axis, dtype) = if args.builtin == Builtin::Iota {
            let shape = self.dims_at(args, 0)?;
            let axis = self.axis(self.int_at(args, 1, None)?, shape.len(), args.span(1))?;
            (shape, axis, self.dtype_at(args, 2, DType::I32)?)
        } else {
            let n = self.int_at(args, 0, None)?;
            (
                self.check_dims(&[n], args.span(0))?,
                0,
                self.dtype_at(args, 1, DType::I32)?,
            )
        };
        Ok(Value::Tensor(self.emit(
            sc,
            span,
            Op::Iota { shape, axis, dtype },
            &[],
        )?))
    }

    /// `full(shape, value, dtype)`: a broadcast scalar constant.
    pub(super) fn full_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let shape = self.dims_at(args, 0)?;
        let dtype = self.dtype_at(args, 2, DType::F32)?;
        let c = self.number_as(sc, args.span(1), &args.raw(1), dtype)?;
        Ok(Value::Tensor(self.broadcast_to(sc, span, c, &shape)?))
    }

    /// `zeros_like(x)` and `ones_like(x)`.
    pub(super) fn filled_like_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let ty = self.graph.ty(x).clone();
        let value = if args.builtin == Builtin::OnesLike {
            1.0
        } else {
            0.0
        };
        let c = self.scalar(sc, span, value, ty.dtype)?;
        Ok(Value::Tensor(self.broadcast_to(sc, span, c, &ty.shape)?))
    }
}
