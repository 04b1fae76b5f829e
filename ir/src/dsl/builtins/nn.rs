//! Library ops: `matmul`, `attention` and `conv2d` (backends run them as GEMMs / fused kernels).

use super::args::BoundArgs;
use crate::dsl::ast::Span;
use crate::dsl::eval::{Lowerer, Scope, R};
use crate::dsl::value::Value;
use crate::Op;

impl<'p> Lowerer<'p> {
    pub(super) fn matmul_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let (a, b) = (self.tensor_at(args, 0)?, self.tensor_at(args, 1)?);
        let op = Op::MatMul {
            transpose_a: self.bool_at(args, 2, false)?,
            transpose_b: self.bool_at(args, 3, false)?,
        };
        Ok(Value::Tensor(self.emit(sc, span, op, &[a, b])?))
    }

    /// `attention(q, k, v, mask, scale)`; the scale defaults to `1 / sqrt(head dim)`.
    pub(super) fn attention_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let q = self.tensor_at(args, 0)?;
        let (k, v) = (self.tensor_at(args, 1)?, self.tensor_at(args, 2)?);
        let scale = match args.get(4) {
            None => {
                let head_dim = self.graph.ty(q).shape.last().copied().unwrap_or(1).max(1);
                1.0 / (head_dim as f64).sqrt()
            }
            Some(v) => v.as_f64().ok_or_else(|| {
                self.err(
                    args.span(4),
                    format!("attention scale must be a number, got {}", self.describe(v)),
                )
            })?,
        };
        let mut operands = vec![q, k, v];
        if args.get(3).is_some() {
            operands.push(self.tensor_at(args, 3)?);
        }
        Ok(Value::Tensor(self.emit(
            sc,
            span,
            Op::Attention { scale },
            &operands,
        )?))
    }

    pub(super) fn conv2d_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let (x, w) = (self.tensor_at(args, 0)?, self.tensor_at(args, 1)?);
        let (stride, padding, dilation) = (
            self.pair_at(args, 2, 1)?,
            self.pair_at(args, 3, 0)?,
            self.pair_at(args, 4, 1)?,
        );
        let groups = self.int_at(args, 5, Some(1))?;
        let wt = self.graph.ty(w);
        let xt = self.graph.ty(x);
        if wt.shape.iter().chain(xt.shape.iter()).any(|&d| d > 1 << 24) {
            return Err(self.err(
                span,
                format!("conv2d: dimensions of {xt} or {wt} are too large"),
            ));
        }
        if wt.rank() == 4 && (wt.shape[2] == 0 || wt.shape[3] == 0) {
            return Err(self.err(
                span,
                format!("conv2d: kernel {wt} has an empty spatial dimension"),
            ));
        }
        if !(1..=1 << 20).contains(&groups) {
            return Err(self.err(
                args.span(5),
                format!("conv2d: groups must be positive, got {groups}"),
            ));
        }
        let op = Op::Conv2d {
            stride,
            padding,
            dilation,
            groups: groups as usize,
        };
        Ok(Value::Tensor(self.emit(sc, span, op, &[x, w])?))
    }
}
