//! Binding a call's arguments to a builtin's parameters, and converting them (tensor, int, axis,
//! shape, ...) with errors that name the parameter and the builtin.

use super::Builtin;
use crate::dsl::ast::Span;
use crate::dsl::error::suggestion;
use crate::dsl::eval::{CallArgs, Lowerer, R};
use crate::dsl::ops::shape_fits;
use crate::dsl::value::Value;
use crate::types::ShapeDisplay;
use crate::{DType, NodeId, Shape};

/// Arguments bound to a builtin's parameters; absent optional ones are `None`.
pub(super) struct BoundArgs {
    values: Vec<Option<(Value, Span)>>,
    /// The span of the whole call.
    span: Span,
    pub builtin: Builtin,
}

impl BoundArgs {
    /// The value of parameter `i`, or None when absent or `none`.
    pub fn get(&self, i: usize) -> Option<&Value> {
        match &self.values[i] {
            Some((Value::None, _)) | None => None,
            Some((v, _)) => Some(v),
        }
    }

    /// The span of argument `i`, or of the call when it is absent.
    pub fn span(&self, i: usize) -> Span {
        self.values[i].as_ref().map_or(self.span, |(_, s)| *s)
    }

    /// The value of parameter `i`, `Value::None` when absent.
    pub fn raw(&self, i: usize) -> Value {
        self.values[i]
            .as_ref()
            .map_or(Value::None, |(v, _)| v.clone())
    }

    /// The name of parameter `i`.
    fn param(&self, i: usize) -> &'static str {
        self.builtin.params()[i]
    }
}

impl<'p> Lowerer<'p> {
    pub(super) fn bind_builtin(
        &self,
        span: Span,
        builtin: Builtin,
        args: CallArgs<'p>,
    ) -> R<BoundArgs> {
        let params = builtin.params();
        let signature = || format!("{}({})", builtin.name(), params.join(", "));
        if args.pos.len() > params.len() {
            let n = params.len();
            let plural = if n == 1 { "" } else { "s" };
            return Err(self.err(
                span,
                format!(
                    "builtin `{}` takes {n} argument{plural} but {} were given: {}",
                    builtin.name(),
                    args.pos.len(),
                    signature()
                ),
            ));
        }
        let mut values: Vec<Option<(Value, Span)>> = vec![None; params.len()];
        let positional = args.pos.len();
        for (i, arg) in args.pos.into_iter().enumerate() {
            values[i] = Some(arg);
        }
        for (name, value, keyword_span) in args.kw {
            let Some(i) = params.iter().position(|p| *p == name) else {
                return Err(self.err(
                    keyword_span,
                    format!(
                        "builtin `{}` has no parameter `{name}`{}: {}",
                        builtin.name(),
                        suggestion(name, params.iter().copied()),
                        signature()
                    ),
                ));
            };
            if i < positional {
                return Err(self.err(
                    keyword_span,
                    format!("argument `{name}` of `{}` is given twice", builtin.name()),
                ));
            }
            values[i] = Some((value, keyword_span));
        }
        if let Some(i) = (0..builtin.required()).find(|&i| values[i].is_none()) {
            return Err(self.err(
                span,
                format!(
                    "missing argument `{}` in call to builtin {}",
                    params[i],
                    signature()
                ),
            ));
        }
        Ok(BoundArgs {
            values,
            span,
            builtin,
        })
    }

    pub(super) fn tensor_at(&self, args: &BoundArgs, i: usize) -> R<NodeId> {
        match args.get(i) {
            Some(Value::Tensor(id)) => Ok(*id),
            _ => Err(self.err(
                args.span(i),
                format!(
                    "argument `{}` of `{}` must be a tensor, got {}",
                    args.param(i),
                    args.builtin.name(),
                    self.describe(&args.raw(i))
                ),
            )),
        }
    }

    pub(super) fn int_at(&self, args: &BoundArgs, i: usize, default: Option<i64>) -> R<i64> {
        match (args.get(i), default) {
            (Some(Value::Int(v)), _) => Ok(*v),
            (None, Some(d)) => Ok(d),
            _ => Err(self.err(
                args.span(i),
                format!(
                    "argument `{}` of `{}` must be an int, got {}",
                    args.param(i),
                    args.builtin.name(),
                    self.describe(&args.raw(i))
                ),
            )),
        }
    }

    pub(super) fn bool_at(&self, args: &BoundArgs, i: usize, default: bool) -> R<bool> {
        match args.get(i) {
            None => Ok(default),
            Some(Value::Bool(v)) => Ok(*v),
            Some(v) => Err(self.err(
                args.span(i),
                format!(
                    "argument `{}` of `{}` must be a bool, got {}",
                    args.param(i),
                    args.builtin.name(),
                    self.describe(v)
                ),
            )),
        }
    }

    pub(super) fn dtype_at(&self, args: &BoundArgs, i: usize, default: DType) -> R<DType> {
        match args.get(i) {
            None => Ok(default),
            Some(Value::DType(d)) => Ok(*d),
            Some(v) => Err(self.err(
                args.span(i),
                format!(
                    "argument `{}` of `{}` must be a dtype such as f32, got {}",
                    args.param(i),
                    args.builtin.name(),
                    self.describe(v)
                ),
            )),
        }
    }

    /// A list of ints (a single int is a list of one).
    pub(super) fn ints_at(&self, args: &BoundArgs, i: usize) -> R<Vec<i64>> {
        let v = args.raw(i);
        let bad = || {
            self.err(
                args.span(i),
                format!(
                    "argument `{}` of `{}` must be a list of ints, got {}",
                    args.param(i),
                    args.builtin.name(),
                    self.describe(&v)
                ),
            )
        };
        match &v {
            Value::Int(x) => Ok(vec![*x]),
            _ => {
                let items = v.items().ok_or_else(bad)?;
                items
                    .iter()
                    .map(|x| {
                        if let Value::Int(x) = x {
                            Ok(*x)
                        } else {
                            Err(bad())
                        }
                    })
                    .collect()
            }
        }
    }

    /// A shape: non-negative dims with a sane element count.
    pub(super) fn dims_at(&self, args: &BoundArgs, i: usize) -> R<Shape> {
        let dims = self.ints_at(args, i)?;
        self.check_dims(&dims, args.span(i))
    }

    /// `stride` / `padding` / `dilation` of conv2d: one int for both spatial axes, or two.
    pub(super) fn pair_at(&self, args: &BoundArgs, i: usize, default: usize) -> R<[usize; 2]> {
        let v = match args.get(i) {
            None => return Ok([default; 2]),
            Some(_) => self.ints_at(args, i)?,
        };
        let ok = |x: i64| (0..=1 << 20).contains(&x);
        match v.as_slice() {
            [x] if ok(*x) => Ok([*x as usize; 2]),
            [x, y] if ok(*x) && ok(*y) => Ok([*x as usize, *y as usize]),
            _ => Err(self.err(
                args.span(i),
                format!(
                    "`{}` of conv2d must be an int or two ints in 0..=1048576",
                    args.param(i)
                ),
            )),
        }
    }

    pub(crate) fn check_dims(&self, dims: &[i64], span: Span) -> R<Shape> {
        if let Some(d) = dims.iter().find(|d| **d < 0) {
            return Err(self.err(span, format!("dimension {d} is negative")));
        }
        let shape: Shape = dims.iter().map(|&d| d as usize).collect();
        if !shape_fits(&shape) {
            return Err(self.err(span, format!("shape {} is too large", ShapeDisplay(&shape))));
        }
        Ok(shape)
    }

    /// Normalises a possibly negative axis of a tensor of rank `rank`.
    pub(super) fn axis(&self, axis: i64, rank: usize, span: Span) -> R<usize> {
        let r = rank as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r {
            return Err(self.err(
                span,
                format!("axis {axis} is out of range for a tensor of rank {rank}"),
            ));
        }
        Ok(a as usize)
    }

    pub(super) fn shape_of(&self, id: NodeId) -> Shape {
        self.graph.ty(id).shape.clone()
    }
}
