//! Shape and view ops: `reshape`, `transpose`, `swapaxes`, `broadcast_to`, `unsqueeze`,
//! `squeeze`, `flatten`, `slice`, `concat`, `chunk`, `gather`. Ops that would not change their
//! operand emit no node.

use super::args::BoundArgs;
use crate::dsl::ast::Span;
use crate::dsl::eval::{Lowerer, Scope, R};
use crate::dsl::value::Value;
use crate::{DType, NodeId, Op, Shape};

impl<'p> Lowerer<'p> {
    /// A reshape node, or `id` itself when it already has `shape`.
    pub(super) fn reshape(
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
            Op::Reshape {
                shape: Shape::from_slice(shape),
            },
            &[id],
        )
    }

    /// A slice node, or `id` itself when the slice covers the whole axis.
    fn slice_node(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        id: NodeId,
        axis: usize,
        start: usize,
        end: usize,
    ) -> R<NodeId> {
        if start == 0 && end == self.graph.ty(id).shape[axis] {
            return Ok(id);
        }
        self.emit(sc, span, Op::Slice { axis, start, end }, &[id])
    }

    pub(super) fn reshape_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let dims = self.ints_at(args, 1)?;
        let shape = self.infer_reshape(x, &dims, args.span(1))?;
        Ok(Value::Tensor(self.reshape(sc, span, x, &shape)?))
    }

    /// Resolves one `-1` in a reshape target.
    fn infer_reshape(&self, x: NodeId, dims: &[i64], span: Span) -> R<Shape> {
        let ty = self.graph.ty(x);
        let n = ty.numel();
        let fail = |why: &str| {
            let list: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            self.err(
                span,
                format!(
                    "cannot reshape {ty} ({n} elements) to [{}]{why}",
                    list.join(", ")
                ),
            )
        };
        let unknown: Vec<usize> = (0..dims.len()).filter(|&i| dims[i] == -1).collect();
        if unknown.len() > 1 {
            return Err(fail(": only one dimension may be -1"));
        }
        if dims.iter().any(|&d| d < -1) {
            return Err(fail(": negative dimension"));
        }
        let known: Vec<i64> = dims.iter().map(|&d| if d == -1 { 1 } else { d }).collect();
        let known = self.check_dims(&known, span)?;
        let known_numel: usize = known.iter().product();
        let mut shape = known;
        if let Some(&i) = unknown.first() {
            if known_numel == 0 || !n.is_multiple_of(known_numel) {
                return Err(fail(""));
            }
            shape[i] = n / known_numel;
        } else if known_numel != n {
            return Err(fail(""));
        }
        Ok(shape)
    }

    pub(super) fn transpose_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let rank = self.graph.ty(x).rank();
        let perm = self.ints_at(args, 1)?;
        let perm: Shape = perm
            .iter()
            .map(|&p| self.axis(p, rank, args.span(1)))
            .collect::<R<_>>()?;
        if perm.iter().enumerate().all(|(i, &p)| i == p) && perm.len() == rank {
            return Ok(Value::Tensor(x));
        }
        Ok(Value::Tensor(self.emit(
            sc,
            span,
            Op::Transpose { perm },
            &[x],
        )?))
    }

    pub(super) fn swapaxes_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let rank = self.graph.ty(x).rank();
        let i = self.axis(self.int_at(args, 1, None)?, rank, args.span(1))?;
        let j = self.axis(self.int_at(args, 2, None)?, rank, args.span(2))?;
        if i == j {
            return Ok(Value::Tensor(x));
        }
        let mut perm: Shape = (0..rank).collect();
        perm.swap(i, j);
        Ok(Value::Tensor(self.emit(
            sc,
            span,
            Op::Transpose { perm },
            &[x],
        )?))
    }

    pub(super) fn broadcast_to_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let shape = self.dims_at(args, 1)?;
        Ok(Value::Tensor(self.broadcast_to(sc, span, x, &shape)?))
    }

    pub(super) fn unsqueeze_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let mut shape = self.shape_of(x);
        let axis = self.axis(self.int_at(args, 1, None)?, shape.len() + 1, args.span(1))?;
        shape.insert(axis, 1);
        Ok(Value::Tensor(self.reshape(sc, span, x, &shape)?))
    }

    pub(super) fn squeeze_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let shape = self.shape_of(x);
        let axes: Vec<usize> = match args.get(1) {
            None => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
            Some(_) => {
                let axes = self.ints_at(args, 1)?;
                axes.iter()
                    .map(|&i| self.axis(i, shape.len(), args.span(1)))
                    .collect::<R<_>>()?
            }
        };
        if let Some(&i) = axes.iter().find(|&&i| shape[i] != 1) {
            return Err(self.err(
                span,
                format!(
                    "cannot squeeze axis {i} of {}: its size is {}, not 1",
                    self.graph.ty(x),
                    shape[i]
                ),
            ));
        }
        let out: Shape = (0..shape.len())
            .filter(|i| !axes.contains(i))
            .map(|i| shape[i])
            .collect();
        Ok(Value::Tensor(self.reshape(sc, span, x, &out)?))
    }

    pub(super) fn flatten_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let shape = self.shape_of(x);
        let rank = shape.len().max(1);
        let start = self.axis(self.int_at(args, 1, Some(0))?, rank, args.span(1))?;
        let end = self.axis(self.int_at(args, 2, Some(-1))?, rank, args.span(2))?;
        if shape.is_empty() {
            return Ok(Value::Tensor(self.reshape(sc, span, x, &[1])?));
        }
        if start > end {
            return Err(self.err(
                span,
                format!("flatten: start axis {start} is after end axis {end}"),
            ));
        }
        let mut out: Shape = shape[..start].iter().copied().collect();
        out.push(shape[start..=end].iter().product());
        out.extend(shape[end + 1..].iter().copied());
        Ok(Value::Tensor(self.reshape(sc, span, x, &out)?))
    }

    /// `slice(x, axis, start, end)`: negative bounds count from the end, out-of-range ones clamp.
    pub(super) fn slice_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let shape = self.shape_of(x);
        let axis = self.axis(self.int_at(args, 1, None)?, shape.len(), args.span(1))?;
        let size = shape[axis] as i64;
        let normalise = |v: i64| (if v < 0 { v + size } else { v }).clamp(0, size) as usize;
        let start = normalise(self.int_at(args, 2, None)?);
        let end = normalise(self.int_at(args, 3, Some(size))?).max(start);
        Ok(Value::Tensor(
            self.slice_node(sc, span, x, axis, start, end)?,
        ))
    }

    pub(super) fn concat_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let v = args.raw(0);
        let items = v.items().ok_or_else(|| {
            self.err(
                args.span(0),
                format!(
                    "concat expects a list of tensors, got {}",
                    self.describe(&v)
                ),
            )
        })?;
        let mut ids = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item {
                Value::Tensor(id) => ids.push(*id),
                other => {
                    return Err(self.err(
                        args.span(0),
                        format!(
                            "concat expects a list of tensors, but it contains {}",
                            self.describe(other)
                        ),
                    ))
                }
            }
        }
        let Some(&first) = ids.first() else {
            return Err(self.err(args.span(0), "concat of an empty list"));
        };
        let axis = self.axis(
            self.int_at(args, 1, Some(0))?,
            self.graph.ty(first).rank(),
            args.span(1),
        )?;
        if ids.len() == 1 {
            return Ok(Value::Tensor(first));
        }
        Ok(Value::Tensor(self.emit(
            sc,
            span,
            Op::Concat { axis },
            &ids,
        )?))
    }

    /// `chunk(x, n, axis)`: a tuple of `n` slices of equal size (the last may be smaller).
    pub(super) fn chunk_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let x = self.tensor_at(args, 0)?;
        let shape = self.shape_of(x);
        let n = self.int_at(args, 1, None)?;
        let axis = self.axis(self.int_at(args, 2, Some(0))?, shape.len(), args.span(2))?;
        let size = shape[axis];
        if n <= 0 || size == 0 {
            return Err(self.err(
                span,
                format!(
                    "cannot chunk axis {axis} of {} into {n} parts",
                    self.graph.ty(x)
                ),
            ));
        }
        let part_size = size.div_ceil(n as usize);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < size {
            let end = (start + part_size).min(size);
            parts.push(Value::Tensor(
                self.slice_node(sc, span, x, axis, start, end)?,
            ));
            start = end;
        }
        Ok(Value::tuple(parts))
    }

    /// `gather(table, index, axis)`; an int index becomes an i32 scalar.
    pub(super) fn gather_builtin(
        &mut self,
        sc: &Scope<'p>,
        span: Span,
        args: &BoundArgs,
    ) -> R<Value> {
        let table = self.tensor_at(args, 0)?;
        let index = match args.raw(1) {
            Value::Int(i) => self.scalar(sc, span, i as f64, DType::I32)?,
            _ => self.tensor_at(args, 1)?,
        };
        let axis = self.axis(
            self.int_at(args, 2, Some(0))?,
            self.graph.ty(table).rank(),
            args.span(2),
        )?;
        Ok(Value::Tensor(self.emit(
            sc,
            span,
            Op::Gather { axis },
            &[table, index],
        )?))
    }
}
