//! Builtin functions: tensor ops that emit IR, and compile-time helpers.

use super::ast::Span;
use super::error::suggestion;
use super::eval::{CallArgs, Lowerer, Scope, R};
use super::ops::shape_fits;
use super::value::Value;
use crate::types::ShapeDisplay;
use crate::{BinaryOp, DType, NodeId, Op, ReduceOp, Shape, UnaryOp};

macro_rules! builtins {
    ($($v:ident $name:literal ($($p:literal),*) $req:literal;)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Builtin { $($v),* }

        impl Builtin {
            pub const ALL: &'static [Builtin] = &[$(Builtin::$v),*];

            pub fn name(self) -> &'static str {
                match self { $(Builtin::$v => $name),* }
            }

            /// Parameter names, in positional order.
            pub fn params(self) -> &'static [&'static str] {
                match self { $(Builtin::$v => &[$($p),*]),* }
            }

            /// How many leading parameters are required.
            pub fn required(self) -> usize {
                match self { $(Builtin::$v => $req),* }
            }

            pub fn from_name(s: &str) -> Option<Builtin> {
                match s { $($name => Some(Builtin::$v),)* _ => None }
            }
        }
    };
}

builtins! {
    Exp "exp" ("x") 1;
    Log "log" ("x") 1;
    Sqrt "sqrt" ("x") 1;
    Rsqrt "rsqrt" ("x") 1;
    Sin "sin" ("x") 1;
    Cos "cos" ("x") 1;
    Tanh "tanh" ("x") 1;
    Sigmoid "sigmoid" ("x") 1;
    Abs "abs" ("x") 1;
    Recip "recip" ("x") 1;
    Neg "neg" ("x") 1;
    Pow "pow" ("a", "b") 2;
    Maximum "maximum" ("a", "b") 2;
    Minimum "minimum" ("a", "b") 2;
    Where "where" ("cond", "a", "b") 3;
    Cast "cast" ("x", "dtype") 2;
    Sum "sum" ("x", "axis", "keepdim") 1;
    Mean "mean" ("x", "axis", "keepdim") 1;
    Max "max" ("x", "axis", "keepdim") 1;
    Min "min" ("x", "axis", "keepdim") 1;
    Reshape "reshape" ("x", "shape") 2;
    Transpose "transpose" ("x", "perm") 2;
    Swapaxes "swapaxes" ("x", "a", "b") 3;
    BroadcastTo "broadcast_to" ("x", "shape") 2;
    Unsqueeze "unsqueeze" ("x", "axis") 2;
    Squeeze "squeeze" ("x", "axis") 1;
    Flatten "flatten" ("x", "start", "end") 1;
    Slice "slice" ("x", "axis", "start", "end") 3;
    Concat "concat" ("xs", "axis") 1;
    Chunk "chunk" ("x", "n", "axis") 2;
    Gather "gather" ("table", "index", "axis") 2;
    Iota "iota" ("shape", "axis", "dtype") 2;
    Arange "arange" ("n", "dtype") 1;
    Full "full" ("shape", "value", "dtype") 2;
    ZerosLike "zeros_like" ("x") 1;
    OnesLike "ones_like" ("x") 1;
    Matmul "matmul" ("a", "b", "transpose_a", "transpose_b") 2;
    Attention "attention" ("q", "k", "v", "mask", "scale") 3;
    Conv2d "conv2d" ("x", "w", "stride", "padding", "dilation", "groups") 2;
    Dim "dim" ("x", "axis") 2;
    Rank "rank" ("x") 1;
    ShapeOf "shape" ("x") 1;
    Len "len" ("xs") 1;
    Int "int" ("v") 1;
    Float "float" ("v") 1;
    IsNone "is_none" ("v") 1;
    Enumerate "enumerate" ("xs") 1;
    Range "range" ("a", "b") 1;
    Assert "assert" ("cond", "message") 1;
}

/// Arguments bound to a builtin's parameters; absent optional ones are `None`.
struct Bound {
    vals: Vec<Option<(Value, Span)>>,
    span: Span,
    b: Builtin,
}

impl Bound {
    /// The value of parameter `i`, or None when absent or `none`.
    fn get(&self, i: usize) -> Option<&Value> {
        match &self.vals[i] {
            Some((Value::None, _)) | None => None,
            Some((v, _)) => Some(v),
        }
    }

    fn span(&self, i: usize) -> Span {
        self.vals[i].as_ref().map_or(self.span, |(_, s)| *s)
    }

    fn raw(&self, i: usize) -> Value {
        self.vals[i]
            .as_ref()
            .map_or(Value::None, |(v, _)| v.clone())
    }
}

fn unary_fold(b: Builtin, x: f64) -> f64 {
    match b {
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

fn unary_op(b: Builtin) -> UnaryOp {
    match b {
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
    fn bind_builtin(&self, span: Span, b: Builtin, args: CallArgs<'p>) -> R<Bound> {
        let params = b.params();
        let sig = || format!("{}({})", b.name(), params.join(", "));
        if args.pos.len() > params.len() {
            let n = params.len();
            let plural = if n == 1 { "" } else { "s" };
            return Err(self.err(
                span,
                format!(
                    "builtin `{}` takes {n} argument{plural} but {} were given: {}",
                    b.name(),
                    args.pos.len(),
                    sig()
                ),
            ));
        }
        let mut vals: Vec<Option<(Value, Span)>> = vec![None; params.len()];
        let npos = args.pos.len();
        for (i, a) in args.pos.into_iter().enumerate() {
            vals[i] = Some(a);
        }
        for (name, v, kspan) in args.kw {
            let Some(i) = params.iter().position(|p| *p == name) else {
                return Err(self.err(
                    kspan,
                    format!(
                        "builtin `{}` has no parameter `{name}`{}: {}",
                        b.name(),
                        suggestion(name, params.iter().copied()),
                        sig()
                    ),
                ));
            };
            if i < npos {
                return Err(self.err(
                    kspan,
                    format!("argument `{name}` of `{}` is given twice", b.name()),
                ));
            }
            vals[i] = Some((v, kspan));
        }
        if let Some(i) = (0..b.required()).find(|&i| vals[i].is_none()) {
            return Err(self.err(
                span,
                format!(
                    "missing argument `{}` in call to builtin {}",
                    params[i],
                    sig()
                ),
            ));
        }
        Ok(Bound { vals, span, b })
    }

    // ---- argument conversions ------------------------------------------------------------------

    fn tensor_at(&self, a: &Bound, i: usize) -> R<NodeId> {
        match a.get(i) {
            Some(Value::Tensor(id)) => Ok(*id),
            _ => Err(self.err(
                a.span(i),
                format!(
                    "argument `{}` of `{}` must be a tensor, got {}",
                    a.b.params()[i],
                    a.b.name(),
                    self.describe(&a.raw(i))
                ),
            )),
        }
    }

    fn int_at(&self, a: &Bound, i: usize, default: Option<i64>) -> R<i64> {
        match (a.get(i), default) {
            (Some(Value::Int(v)), _) => Ok(*v),
            (None, Some(d)) => Ok(d),
            _ => Err(self.err(
                a.span(i),
                format!(
                    "argument `{}` of `{}` must be an int, got {}",
                    a.b.params()[i],
                    a.b.name(),
                    self.describe(&a.raw(i))
                ),
            )),
        }
    }

    fn bool_at(&self, a: &Bound, i: usize, default: bool) -> R<bool> {
        match a.get(i) {
            None => Ok(default),
            Some(Value::Bool(v)) => Ok(*v),
            Some(v) => Err(self.err(
                a.span(i),
                format!(
                    "argument `{}` of `{}` must be a bool, got {}",
                    a.b.params()[i],
                    a.b.name(),
                    self.describe(v)
                ),
            )),
        }
    }

    fn dtype_at(&self, a: &Bound, i: usize, default: DType) -> R<DType> {
        match a.get(i) {
            None => Ok(default),
            Some(Value::DType(d)) => Ok(*d),
            Some(v) => Err(self.err(
                a.span(i),
                format!(
                    "argument `{}` of `{}` must be a dtype such as f32, got {}",
                    a.b.params()[i],
                    a.b.name(),
                    self.describe(v)
                ),
            )),
        }
    }

    /// A list of ints (a single int is a list of one).
    fn ints_at(&self, a: &Bound, i: usize) -> R<Vec<i64>> {
        let v = a.raw(i);
        let bad = || {
            self.err(
                a.span(i),
                format!(
                    "argument `{}` of `{}` must be a list of ints, got {}",
                    a.b.params()[i],
                    a.b.name(),
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
    fn dims_at(&self, a: &Bound, i: usize) -> R<Shape> {
        let dims = self.ints_at(a, i)?;
        self.check_dims(&dims, a.span(i))
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

    fn axis(&self, axis: i64, rank: usize, span: Span) -> R<usize> {
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

    fn shape_of(&self, id: NodeId) -> Shape {
        self.graph.ty(id).shape.clone()
    }

    fn reshape(&mut self, sc: &Scope<'p>, span: Span, id: NodeId, shape: &[usize]) -> R<NodeId> {
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

    // ---- dispatch ------------------------------------------------------------------------------

    pub fn call_builtin(
        &mut self,
        sc: &mut Scope<'p>,
        span: Span,
        b: Builtin,
        args: CallArgs<'p>,
    ) -> R<Value> {
        let a = self.bind_builtin(span, b, args)?;
        use Builtin as B;
        match b {
            B::Exp
            | B::Log
            | B::Sqrt
            | B::Rsqrt
            | B::Sin
            | B::Cos
            | B::Tanh
            | B::Sigmoid
            | B::Abs
            | B::Recip
            | B::Neg => match a.raw(0) {
                Value::Int(i) if b == B::Abs => Ok(Value::Int(i.checked_abs().unwrap_or(i64::MAX))),
                Value::Int(i) if b == B::Neg => Ok(Value::Int(i.checked_neg().unwrap_or(i64::MAX))),
                v @ (Value::Int(_) | Value::Float(_)) => {
                    Ok(Value::Float(unary_fold(b, v.as_f64().unwrap_or(0.0))))
                }
                _ => {
                    let x = self.tensor_at(&a, 0)?;
                    Ok(Value::Tensor(self.emit(
                        sc,
                        span,
                        Op::Unary(unary_op(b)),
                        &[x],
                    )?))
                }
            },
            B::Pow | B::Maximum | B::Minimum => self.binary_builtin(sc, span, &a),
            B::Where => self.where_(sc, span, &a),
            B::Cast => {
                let to = self.dtype_at(&a, 1, DType::F32)?;
                match a.raw(0) {
                    Value::Tensor(id) if self.graph.ty(id).dtype == to => Ok(Value::Tensor(id)),
                    Value::Tensor(id) => Ok(Value::Tensor(self.emit(
                        sc,
                        span,
                        Op::Cast { to },
                        &[id],
                    )?)),
                    v => self.cast_number(&v, to, a.span(0)),
                }
            }
            B::Sum | B::Mean | B::Max | B::Min => self.reduce(sc, span, &a),
            B::Reshape => {
                let x = self.tensor_at(&a, 0)?;
                let dims = self.ints_at(&a, 1)?;
                let shape = self.infer_reshape(x, &dims, a.span(1))?;
                Ok(Value::Tensor(self.reshape(sc, span, x, &shape)?))
            }
            B::Transpose => {
                let x = self.tensor_at(&a, 0)?;
                let r = self.graph.ty(x).rank();
                let perm = self.ints_at(&a, 1)?;
                let perm: Shape = perm
                    .iter()
                    .map(|&p| self.axis(p, r, a.span(1)))
                    .collect::<R<_>>()?;
                if perm.iter().enumerate().all(|(i, &p)| i == p) && perm.len() == r {
                    return Ok(Value::Tensor(x));
                }
                Ok(Value::Tensor(self.emit(
                    sc,
                    span,
                    Op::Transpose { perm },
                    &[x],
                )?))
            }
            B::Swapaxes => {
                let x = self.tensor_at(&a, 0)?;
                let r = self.graph.ty(x).rank();
                let i = self.axis(self.int_at(&a, 1, None)?, r, a.span(1))?;
                let j = self.axis(self.int_at(&a, 2, None)?, r, a.span(2))?;
                if i == j {
                    return Ok(Value::Tensor(x));
                }
                let mut perm: Shape = (0..r).collect();
                perm.swap(i, j);
                Ok(Value::Tensor(self.emit(
                    sc,
                    span,
                    Op::Transpose { perm },
                    &[x],
                )?))
            }
            B::BroadcastTo => {
                let x = self.tensor_at(&a, 0)?;
                let shape = self.dims_at(&a, 1)?;
                Ok(Value::Tensor(self.broadcast_to(sc, span, x, &shape)?))
            }
            B::Unsqueeze => {
                let x = self.tensor_at(&a, 0)?;
                let mut shape = self.shape_of(x);
                let ax = self.axis(self.int_at(&a, 1, None)?, shape.len() + 1, a.span(1))?;
                shape.insert(ax, 1);
                Ok(Value::Tensor(self.reshape(sc, span, x, &shape)?))
            }
            B::Squeeze => {
                let x = self.tensor_at(&a, 0)?;
                let shape = self.shape_of(x);
                let axes: Vec<usize> = match a.get(1) {
                    None => (0..shape.len()).filter(|&i| shape[i] == 1).collect(),
                    Some(_) => {
                        let ax = self.ints_at(&a, 1)?;
                        ax.iter()
                            .map(|&i| self.axis(i, shape.len(), a.span(1)))
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
            B::Flatten => {
                let x = self.tensor_at(&a, 0)?;
                let shape = self.shape_of(x);
                let r = shape.len().max(1);
                let s = self.axis(self.int_at(&a, 1, Some(0))?, r, a.span(1))?;
                let e = self.axis(self.int_at(&a, 2, Some(-1))?, r, a.span(2))?;
                if shape.is_empty() {
                    return Ok(Value::Tensor(self.reshape(sc, span, x, &[1])?));
                }
                if s > e {
                    return Err(self.err(
                        span,
                        format!("flatten: start axis {s} is after end axis {e}"),
                    ));
                }
                let mut out: Shape = shape[..s].iter().copied().collect();
                out.push(shape[s..=e].iter().product());
                out.extend(shape[e + 1..].iter().copied());
                Ok(Value::Tensor(self.reshape(sc, span, x, &out)?))
            }
            B::Slice => {
                let x = self.tensor_at(&a, 0)?;
                let shape = self.shape_of(x);
                let ax = self.axis(self.int_at(&a, 1, None)?, shape.len(), a.span(1))?;
                let d = shape[ax] as i64;
                let norm = |v: i64| (if v < 0 { v + d } else { v }).clamp(0, d) as usize;
                let start = norm(self.int_at(&a, 2, None)?);
                let end = norm(self.int_at(&a, 3, Some(d))?).max(start);
                Ok(Value::Tensor(self.slice_node(sc, span, x, ax, start, end)?))
            }
            B::Concat => {
                let v = a.raw(0);
                let items = v.items().ok_or_else(|| {
                    self.err(
                        a.span(0),
                        format!(
                            "concat expects a list of tensors, got {}",
                            self.describe(&v)
                        ),
                    )
                })?;
                let mut ids = Vec::with_capacity(items.len());
                for it in items.iter() {
                    match it {
                        Value::Tensor(id) => ids.push(*id),
                        other => {
                            return Err(self.err(
                                a.span(0),
                                format!(
                                    "concat expects a list of tensors, but it contains {}",
                                    self.describe(other)
                                ),
                            ))
                        }
                    }
                }
                let Some(&first) = ids.first() else {
                    return Err(self.err(a.span(0), "concat of an empty list"));
                };
                let ax = self.axis(
                    self.int_at(&a, 1, Some(0))?,
                    self.graph.ty(first).rank(),
                    a.span(1),
                )?;
                if ids.len() == 1 {
                    return Ok(Value::Tensor(first));
                }
                Ok(Value::Tensor(self.emit(
                    sc,
                    span,
                    Op::Concat { axis: ax },
                    &ids,
                )?))
            }
            B::Chunk => {
                let x = self.tensor_at(&a, 0)?;
                let shape = self.shape_of(x);
                let n = self.int_at(&a, 1, None)?;
                let ax = self.axis(self.int_at(&a, 2, Some(0))?, shape.len(), a.span(2))?;
                let d = shape[ax];
                if n <= 0 || d == 0 {
                    return Err(self.err(
                        span,
                        format!(
                            "cannot chunk axis {ax} of {} into {n} parts",
                            self.graph.ty(x)
                        ),
                    ));
                }
                let size = d.div_ceil(n as usize);
                let mut parts = Vec::new();
                let mut start = 0;
                while start < d {
                    let end = (start + size).min(d);
                    parts.push(Value::Tensor(self.slice_node(sc, span, x, ax, start, end)?));
                    start = end;
                }
                Ok(Value::tuple(parts))
            }
            B::Gather => {
                let table = self.tensor_at(&a, 0)?;
                let index = match a.raw(1) {
                    Value::Int(i) => self.scalar(sc, span, i as f64, DType::I32)?,
                    _ => self.tensor_at(&a, 1)?,
                };
                let ax = self.axis(
                    self.int_at(&a, 2, Some(0))?,
                    self.graph.ty(table).rank(),
                    a.span(2),
                )?;
                Ok(Value::Tensor(self.emit(
                    sc,
                    span,
                    Op::Gather { axis: ax },
                    &[table, index],
                )?))
            }
            B::Iota | B::Arange => {
                let (shape, axis, dtype) = if b == B::Iota {
                    let shape = self.dims_at(&a, 0)?;
                    let ax = self.axis(self.int_at(&a, 1, None)?, shape.len(), a.span(1))?;
                    (shape, ax, self.dtype_at(&a, 2, DType::I32)?)
                } else {
                    let n = self.int_at(&a, 0, None)?;
                    (
                        self.check_dims(&[n], a.span(0))?,
                        0,
                        self.dtype_at(&a, 1, DType::I32)?,
                    )
                };
                Ok(Value::Tensor(self.emit(
                    sc,
                    span,
                    Op::Iota { shape, axis, dtype },
                    &[],
                )?))
            }
            B::Full => {
                let shape = self.dims_at(&a, 0)?;
                let dtype = self.dtype_at(&a, 2, DType::F32)?;
                let c = self.number_as(sc, a.span(1), &a.raw(1), dtype)?;
                Ok(Value::Tensor(self.broadcast_to(sc, span, c, &shape)?))
            }
            B::ZerosLike | B::OnesLike => {
                let x = self.tensor_at(&a, 0)?;
                let ty = self.graph.ty(x).clone();
                let v = if b == B::OnesLike { 1.0 } else { 0.0 };
                let c = self.scalar(sc, span, v, ty.dtype)?;
                Ok(Value::Tensor(self.broadcast_to(sc, span, c, &ty.shape)?))
            }
            B::Matmul => {
                let (x, w) = (self.tensor_at(&a, 0)?, self.tensor_at(&a, 1)?);
                let op = Op::MatMul {
                    transpose_a: self.bool_at(&a, 2, false)?,
                    transpose_b: self.bool_at(&a, 3, false)?,
                };
                Ok(Value::Tensor(self.emit(sc, span, op, &[x, w])?))
            }
            B::Attention => {
                let q = self.tensor_at(&a, 0)?;
                let (k, v) = (self.tensor_at(&a, 1)?, self.tensor_at(&a, 2)?);
                let scale = match a.get(4) {
                    None => {
                        let d = self.graph.ty(q).shape.last().copied().unwrap_or(1).max(1);
                        1.0 / (d as f64).sqrt()
                    }
                    Some(v) => v.as_f64().ok_or_else(|| {
                        self.err(
                            a.span(4),
                            format!("attention scale must be a number, got {}", self.describe(v)),
                        )
                    })?,
                };
                let mut ops = vec![q, k, v];
                if a.get(3).is_some() {
                    ops.push(self.tensor_at(&a, 3)?);
                }
                Ok(Value::Tensor(self.emit(
                    sc,
                    span,
                    Op::Attention { scale },
                    &ops,
                )?))
            }
            B::Conv2d => self.conv2d(sc, span, &a),
            B::Dim => {
                let x = self.tensor_at(&a, 0)?;
                let shape = self.shape_of(x);
                let ax = self.axis(self.int_at(&a, 1, None)?, shape.len(), a.span(1))?;
                Ok(Value::Int(shape[ax] as i64))
            }
            B::Rank => Ok(Value::Int(
                self.graph.ty(self.tensor_at(&a, 0)?).rank() as i64
            )),
            B::ShapeOf => {
                let x = self.tensor_at(&a, 0)?;
                Ok(Value::list(
                    self.shape_of(x)
                        .iter()
                        .map(|&d| Value::Int(d as i64))
                        .collect(),
                ))
            }
            B::Len => match a.raw(0) {
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
                        Err(self.err(a.span(0), format!("len of {}{hint}", self.describe(&v))))
                    }
                },
            },
            B::Int => match a.raw(0) {
                Value::Int(i) => Ok(Value::Int(i)),
                Value::Bool(v) => Ok(Value::Int(i64::from(v))),
                Value::Float(f) if f.is_finite() && f.abs() < 9.2e18 => {
                    Ok(Value::Int(f.trunc() as i64))
                }
                v => Err(self.err(
                    a.span(0),
                    format!("cannot convert {} to int", self.describe(&v)),
                )),
            },
            B::Float => match a.raw(0) {
                Value::Bool(v) => Ok(Value::Float(f64::from(u8::from(v)))),
                v => match v.as_f64() {
                    Some(f) => Ok(Value::Float(f)),
                    None => Err(self.err(
                        a.span(0),
                        format!("cannot convert {} to float", self.describe(&v)),
                    )),
                },
            },
            B::IsNone => Ok(Value::Bool(matches!(a.raw(0), Value::None))),
            B::Enumerate => {
                let v = a.raw(0);
                let items = v.items().ok_or_else(|| {
                    self.err(a.span(0), format!("cannot enumerate {}", self.describe(&v)))
                })?;
                Ok(Value::list(
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, x)| Value::tuple(vec![Value::Int(i as i64), x.clone()]))
                        .collect(),
                ))
            }
            B::Range => {
                let first = self.int_at(&a, 0, None)?;
                match a.get(1) {
                    None => Ok(Value::Range(0, first)),
                    Some(_) => Ok(Value::Range(first, self.int_at(&a, 1, None)?)),
                }
            }
            B::Assert => {
                let ok = match a.raw(0) {
                    Value::Bool(v) => v,
                    v => {
                        return Err(self.err(
                            a.span(0),
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
                let msg = match a.raw(1) {
                    Value::Str(s) => s.to_string(),
                    Value::None => "condition is false".to_string(),
                    v => self.describe(&v),
                };
                Err(self.err(span, format!("assertion failed: {msg}")))
            }
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

    fn binary_builtin(&mut self, sc: &Scope<'p>, span: Span, a: &Bound) -> R<Value> {
        let (x, y) = (a.raw(0), a.raw(1));
        match (&x, &y) {
            (Value::Int(p), Value::Int(q)) => {
                return Ok(match a.b {
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
                return Ok(Value::Float(match a.b {
                    Builtin::Maximum => p.max(q),
                    Builtin::Minimum => p.min(q),
                    _ => p.powf(q),
                }));
            }
            _ => {}
        }
        let op = match a.b {
            Builtin::Maximum => BinaryOp::Max,
            Builtin::Minimum => BinaryOp::Min,
            _ => BinaryOp::Pow,
        };
        let ids = self.unify(
            sc,
            span,
            &[(x, a.span(0)), (y, a.span(1))],
            None,
            a.b.name(),
        )?;
        Ok(Value::Tensor(self.emit(sc, span, Op::Binary(op), &ids)?))
    }

    fn where_(&mut self, sc: &Scope<'p>, span: Span, a: &Bound) -> R<Value> {
        let cond = match a.raw(0) {
            Value::Bool(c) => return Ok(if c { a.raw(1) } else { a.raw(2) }),
            Value::Tensor(id) if self.graph.ty(id).dtype == DType::Bool => id,
            v => {
                return Err(self.err(
                    a.span(0),
                    format!(
                        "where: condition must be a bool tensor, got {}",
                        self.describe(&v)
                    ),
                ))
            }
        };
        let default = if matches!(a.raw(1), Value::Float(_)) || matches!(a.raw(2), Value::Float(_))
        {
            DType::F32
        } else {
            DType::I32
        };
        let ab = self.unify(
            sc,
            span,
            &[(a.raw(1), a.span(1)), (a.raw(2), a.span(2))],
            Some(default),
            "where",
        )?;
        let all = self.broadcast_all(sc, span, &[cond, ab[0], ab[1]], "where")?;
        Ok(Value::Tensor(self.emit(sc, span, Op::Select, &all)?))
    }

    fn reduce(&mut self, sc: &Scope<'p>, span: Span, a: &Bound) -> R<Value> {
        let b = a.b;
        let x = a.raw(0);
        // Compile-time forms: max(3, 4), sum([1, 2, 3]).
        if x.is_number() && matches!(b, Builtin::Max | Builtin::Min) {
            let y = a.raw(1);
            if !y.is_number() {
                return Err(self.err(
                    span,
                    format!("`{}` of a number needs a second number", b.name()),
                ));
            }
            let pick_first = match (x.as_f64(), y.as_f64()) {
                (Some(p), Some(q)) => (p >= q) == (b == Builtin::Max),
                _ => true,
            };
            return Ok(if pick_first { x } else { y });
        }
        if let (Value::List(items), None) = (&x, a.get(1)) {
            return self.reduce_list(items, b, a.span(0));
        }
        let id = self.tensor_at(a, 0)?;
        let ty = self.graph.ty(id).clone();
        if let Some(Value::Tensor(_)) = a.get(1) {
            let alt = if b == Builtin::Max {
                "maximum"
            } else {
                "minimum"
            };
            return Err(self.err(
                span,
                format!(
                    "`{}(x, axis)` reduces one tensor; use `{alt}(a, b)` elementwise",
                    b.name()
                ),
            ));
        }
        let mut axes: Vec<usize> = match a.get(1) {
            None => (0..ty.rank()).collect(),
            Some(_) => {
                let ax = self.ints_at(a, 1)?;
                ax.iter()
                    .map(|&i| self.axis(i, ty.rank(), a.span(1)))
                    .collect::<R<_>>()?
            }
        };
        axes.sort_unstable();
        if axes.windows(2).any(|w| w[0] == w[1]) {
            return Err(self.err(a.span(1), "reduction axes repeat"));
        }
        let keepdim = self.bool_at(a, 2, false)?;
        let op = match b {
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
        if b == Builtin::Mean {
            let n: usize = axes.iter().map(|&i| ty.shape[i]).product();
            let c = self.scalar(sc, span, n as f64, ty.dtype)?;
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

    fn reduce_list(&self, items: &[Value], b: Builtin, span: Span) -> R<Value> {
        if items.iter().any(|v| !v.is_number()) {
            return Err(self.err(span, format!("`{}` of a list needs numbers", b.name())));
        }
        let all_int = items.iter().all(|v| matches!(v, Value::Int(_)));
        let fs: Vec<f64> = items.iter().filter_map(|v| v.as_f64()).collect();
        if fs.is_empty() && matches!(b, Builtin::Max | Builtin::Min | Builtin::Mean) {
            return Err(self.err(span, format!("`{}` of an empty list", b.name())));
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
        Ok(match b {
            Builtin::Sum if all_int => Value::Int(
                ints.iter()
                    .try_fold(0i64, |acc, &x| acc.checked_add(x))
                    .ok_or_else(|| self.err(span, "integer overflow in sum"))?,
            ),
            Builtin::Sum => Value::Float(fs.iter().sum()),
            Builtin::Mean => Value::Float(fs.iter().sum::<f64>() / fs.len() as f64),
            Builtin::Max if all_int => Value::Int(ints.iter().copied().max().unwrap_or(0)),
            Builtin::Min if all_int => Value::Int(ints.iter().copied().min().unwrap_or(0)),
            Builtin::Max => Value::Float(fs.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
            _ => Value::Float(fs.iter().copied().fold(f64::INFINITY, f64::min)),
        })
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
        let k: usize = known.iter().product();
        let mut shape = known;
        if let Some(&i) = unknown.first() {
            if k == 0 || !n.is_multiple_of(k) {
                return Err(fail(""));
            }
            shape[i] = n / k;
        } else if k != n {
            return Err(fail(""));
        }
        Ok(shape)
    }

    fn pair_at(&self, a: &Bound, i: usize, default: usize) -> R<[usize; 2]> {
        let v = match a.get(i) {
            None => return Ok([default; 2]),
            Some(_) => self.ints_at(a, i)?,
        };
        let ok = |x: i64| (0..=1 << 20).contains(&x);
        match v.as_slice() {
            [x] if ok(*x) => Ok([*x as usize; 2]),
            [x, y] if ok(*x) && ok(*y) => Ok([*x as usize, *y as usize]),
            _ => Err(self.err(
                a.span(i),
                format!(
                    "`{}` of conv2d must be an int or two ints in 0..=1048576",
                    a.b.params()[i]
                ),
            )),
        }
    }

    fn conv2d(&mut self, sc: &Scope<'p>, span: Span, a: &Bound) -> R<Value> {
        let (x, w) = (self.tensor_at(a, 0)?, self.tensor_at(a, 1)?);
        let (stride, padding, dilation) = (
            self.pair_at(a, 2, 1)?,
            self.pair_at(a, 3, 0)?,
            self.pair_at(a, 4, 1)?,
        );
        let groups = self.int_at(a, 5, Some(1))?;
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
                a.span(5),
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
