//! A naive reference interpreter for the IR: the slow, obviously-correct oracle that the optimised
//! backends and the compiler passes are checked against.
//!
//! Every value is stored as `f64`, whatever its dtype:
//! - `f32` values are computed and kept in full `f64` precision (never rounded to f32), so an f32
//!   graph is evaluated "exactly"; this is what makes finite-difference checks and before/after
//!   comparisons of passes meaningful at tight tolerances;
//! - `bf16` / `f16` values are rounded to that precision (round to nearest even, via the `half`
//!   crate) whenever they are produced: bound inputs and params, constants and every op result;
//! - `i32` / `i64` values are exact integers (i32 arithmetic wraps; i64 is exact up to 2^53);
//! - `bool` values are 0 or 1.
//!
//! Semantics of the less obvious cases (also in docs/ir.md):
//! - integer `Div` truncates toward zero, `FloorDiv` rounds toward negative infinity, `Rem` takes
//!   the sign of the divisor; an integer division by zero is an error;
//! - `Max` / `Min` (binary and reductions) propagate NaN;
//! - `Cast` to an integer truncates toward zero like torch `.to(int)`; a non-finite or
//!   out-of-range value is an error; `Cast` to bool is `x != 0`; a cast to the operand's own dtype
//!   is the identity;
//! - `Gather` with a negative or out-of-range index is an error;
//! - `Attention`: masked keys get `-inf` before the softmax; a query row whose keys are all masked
//!   (or with no keys at all) produces an output row of zeros;
//! - reducing an empty axis gives 0 for `Sum` and -inf / +inf for float `Max` / `Min` (an error for
//!   integers).

use crate::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::types::contiguous_strides;
use crate::{infer_type, DType, Graph, NodeId, Op, TensorType};
use std::collections::HashMap;
use std::fmt;

/// A dense row-major tensor with every element stored as `f64` (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub ty: TensorType,
    pub data: Vec<f64>,
}

impl Tensor {
    /// Panics if `data.len()` differs from the number of elements of `ty`.
    pub fn new(ty: TensorType, data: Vec<f64>) -> Self {
        assert_eq!(
            data.len(),
            ty.numel(),
            "tensor of type {ty} needs {} elements, got {}",
            ty.numel(),
            data.len()
        );
        Tensor { ty, data }
    }

    pub fn scalar(value: f64, dtype: DType) -> Self {
        Tensor::new(TensorType::scalar(dtype), vec![value])
    }

    pub fn zeros(ty: TensorType) -> Self {
        let n = ty.numel();
        Tensor::new(ty, vec![0.0; n])
    }

    /// Builds a tensor from a function of the multi-index.
    pub fn from_fn(ty: TensorType, mut f: impl FnMut(&[usize]) -> f64) -> Self {
        let mut data = Vec::with_capacity(ty.numel());
        for_each_index(&ty.shape, |idx| data.push(f(idx)));
        Tensor::new(ty, data)
    }

    pub fn shape(&self) -> &[usize] {
        &self.ty.shape
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The element at a multi-index.
    pub fn get(&self, index: &[usize]) -> f64 {
        self.data[flat_index(&self.ty.shape, index)]
    }

    /// True if both have the same type and every pair of elements satisfies
    /// `|a - b| <= atol + rtol * max(|a|, |b|)`; NaNs only match NaNs, infinities only themselves.
    pub fn allclose(&self, other: &Tensor, rtol: f64, atol: f64) -> bool {
        self.ty == other.ty
            && self
                .data
                .iter()
                .zip(&other.data)
                .all(|(&a, &b)| values_close(a, b, rtol, atol))
    }
}

/// `|a - b| <= atol + rtol * max(|a|, |b|)`, with NaN == NaN and infinities equal only to themselves.
pub fn values_close(a: f64, b: f64, rtol: f64, atol: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= atol + rtol * a.abs().max(b.abs())
}

/// An evaluation failure, naming the node where it happened (when there is one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalError {
    pub node: Option<NodeId>,
    /// Mnemonic of the failing node's op.
    pub op: Option<String>,
    pub origin: Option<String>,
    pub message: String,
}

impl EvalError {
    fn bare(message: impl Into<String>) -> Self {
        EvalError {
            node: None,
            op: None,
            origin: None,
            message: message.into(),
        }
    }

    fn at(g: &Graph, id: NodeId, message: impl Into<String>) -> Self {
        let node = g.node(id);
        EvalError {
            node: Some(id),
            op: Some(node.op.mnemonic()),
            origin: node.origin.as_deref().map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = self.node {
            write!(f, "{id}")?;
            if let Some(op) = &self.op {
                write!(f, " ({op})")?;
            }
            if let Some(origin) = &self.origin {
                write!(f, " at {origin}")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for EvalError {}

/// Evaluates the graph's outputs. Only nodes the outputs depend on are computed, so inputs and
/// params used only by dead code need not be bound. Extra entries in `inputs` are ignored.
pub fn eval(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
    params: &dyn Fn(&str) -> Option<Tensor>,
) -> Result<HashMap<String, Tensor>, EvalError> {
    let mut needed = vec![false; g.len()];
    for (name, id) in &g.outputs {
        if id.index() >= g.len() {
            return Err(EvalError::bare(format!(
                "output {name} refers to missing node {id}"
            )));
        }
        needed[id.index()] = true;
    }
    for i in (0..g.len()).rev() {
        if needed[i] {
            for a in &g.nodes[i].args {
                if a.index() < needed.len() {
                    needed[a.index()] = true;
                }
            }
        }
    }
    let values = eval_nodes(g, inputs, params, &needed)?;
    Ok(g.outputs
        .iter()
        .map(|(name, id)| {
            (
                name.clone(),
                values[id.index()].clone().expect("outputs are computed"),
            )
        })
        .collect())
}

/// Evaluates every node of the graph (dead ones included) and returns their values by node id.
pub fn eval_all(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
    params: &dyn Fn(&str) -> Option<Tensor>,
) -> Result<Vec<Tensor>, EvalError> {
    let needed = vec![true; g.len()];
    let values = eval_nodes(g, inputs, params, &needed)?;
    Ok(values
        .into_iter()
        .map(|v| v.expect("all nodes computed"))
        .collect())
}

fn eval_nodes(
    g: &Graph,
    inputs: &HashMap<String, Tensor>,
    params: &dyn Fn(&str) -> Option<Tensor>,
    needed: &[bool],
) -> Result<Vec<Option<Tensor>>, EvalError> {
    let mut values: Vec<Option<Tensor>> = vec![None; g.len()];
    for id in g.ids() {
        if !needed[id.index()] {
            continue;
        }
        let node = g.node(id);
        let value = match &node.op {
            Op::Input { name, ty } => {
                let t = inputs.get(name).ok_or_else(|| {
                    EvalError::at(g, id, format!("input \"{name}\" is not bound"))
                })?;
                bind(t, ty).map_err(|m| EvalError::at(g, id, format!("input \"{name}\": {m}")))?
            }
            Op::Param { name, ty } => {
                let t = params(name).ok_or_else(|| {
                    EvalError::at(g, id, format!("param \"{name}\" is not bound"))
                })?;
                bind(&t, ty).map_err(|m| EvalError::at(g, id, format!("param \"{name}\": {m}")))?
            }
            op => {
                let mut args = Vec::with_capacity(node.args.len());
                for a in &node.args {
                    match values.get(a.index()).and_then(Option::as_ref) {
                        Some(v) => args.push(v),
                        None => {
                            return Err(EvalError::at(
                                g,
                                id,
                                format!("operand {a} is not defined before use"),
                            ))
                        }
                    }
                }
                let arg_types: Vec<&TensorType> = args.iter().map(|t| &t.ty).collect();
                let ty = infer_type(op, &arg_types).map_err(|e| EvalError::at(g, id, e.message))?;
                if ty != node.ty {
                    return Err(EvalError::at(
                        g,
                        id,
                        format!("stored type {} differs from inferred type {ty}", node.ty),
                    ));
                }
                let data = compute(op, &args, &ty).map_err(|m| EvalError::at(g, id, m))?;
                finish(ty, data)
            }
        };
        values[id.index()] = Some(value);
    }
    Ok(values)
}

/// Evaluates one non-leaf op (or a `Constant` / `Iota`) on operand values.
/// `Input` and `Param` need bindings and are rejected.
pub fn eval_op(op: &Op, args: &[&Tensor]) -> Result<Tensor, EvalError> {
    if matches!(op, Op::Input { .. } | Op::Param { .. }) {
        return Err(EvalError::bare(format!(
            "{}: needs a binding",
            op.mnemonic()
        )));
    }
    let arg_types: Vec<&TensorType> = args.iter().map(|t| &t.ty).collect();
    let ty = infer_type(op, &arg_types).map_err(|e| EvalError::bare(e.message))?;
    let data =
        compute(op, args, &ty).map_err(|m| EvalError::bare(format!("{}: {m}", op.mnemonic())))?;
    Ok(finish(ty, data))
}

/// Rounds a value to what its dtype can hold (see the module docs: f32 stays f64).
pub fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 | DType::I64 => v,
        DType::BF16 => half::bf16::from_f64(v).to_f64(),
        DType::F16 => half::f16::from_f64(v).to_f64(),
        DType::I32 => (v as i64) as i32 as f64,
        DType::Bool => {
            if v != 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

fn finish(ty: TensorType, mut data: Vec<f64>) -> Tensor {
    if ty.dtype != DType::F32 {
        for v in &mut data {
            *v = round_to(ty.dtype, *v);
        }
    }
    Tensor::new(ty, data)
}

fn bind(t: &Tensor, ty: &TensorType) -> Result<Tensor, String> {
    if t.ty != *ty {
        return Err(format!("bound to a {} tensor, declared {ty}", t.ty));
    }
    if t.data.len() != ty.numel() {
        return Err(format!(
            "has {} elements, expected {}",
            t.data.len(),
            ty.numel()
        ));
    }
    match ty.dtype {
        DType::I32 | DType::I64 => {
            if let Some(v) = t.data.iter().find(|v| v.fract() != 0.0 || !v.is_finite()) {
                return Err(format!("integer tensor holds non-integer value {v}"));
            }
            if ty.dtype == DType::I32 {
                if let Some(v) = t
                    .data
                    .iter()
                    .find(|&&v| v < i32::MIN as f64 || v > i32::MAX as f64)
                {
                    return Err(format!("i32 tensor holds out-of-range value {v}"));
                }
            }
        }
        DType::Bool => {
            if let Some(v) = t.data.iter().find(|&&v| v != 0.0 && v != 1.0) {
                return Err(format!("bool tensor holds value {v} (expected 0 or 1)"));
            }
        }
        _ => {}
    }
    Ok(finish(t.ty.clone(), t.data.clone()))
}

/// Calls `f` with every multi-index of `shape` in row-major order.
pub fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        f(&idx);
        let mut i = shape.len();
        loop {
            if i == 0 {
                return;
            }
            i -= 1;
            idx[i] += 1;
            if idx[i] < shape[i] {
                break;
            }
            idx[i] = 0;
        }
    }
}

fn flat_index(shape: &[usize], index: &[usize]) -> usize {
    debug_assert_eq!(shape.len(), index.len());
    let mut flat = 0;
    for (d, i) in shape.iter().zip(index) {
        debug_assert!(i < d);
        flat = flat * d + i;
    }
    flat
}

fn to_i64(v: f64) -> i64 {
    v as i64
}

fn compute(op: &Op, args: &[&Tensor], ty: &TensorType) -> Result<Vec<f64>, String> {
    let out_shape: &[usize] = &ty.shape;
    match op {
        Op::Input { .. } | Op::Param { .. } => Err("leaf needs a binding".into()),
        Op::Constant { value, .. } => Ok(vec![*value]),
        Op::Iota { axis, .. } => {
            let mut data = Vec::with_capacity(ty.numel());
            for_each_index(out_shape, |idx| data.push(idx[*axis] as f64));
            Ok(data)
        }
        Op::Unary(u) => Ok(args[0].data.iter().map(|&x| unary(*u, x)).collect()),
        Op::Binary(b) => {
            let int = args[0].ty.dtype.is_int();
            args[0]
                .data
                .iter()
                .zip(&args[1].data)
                .map(|(&x, &y)| binary(*b, x, y, int))
                .collect()
        }
        Op::Compare(c) => Ok(args[0]
            .data
            .iter()
            .zip(&args[1].data)
            .map(|(&x, &y)| {
                let r = match c {
                    CmpOp::Eq => x == y,
                    CmpOp::Ne => x != y,
                    CmpOp::Lt => x < y,
                    CmpOp::Le => x <= y,
                    CmpOp::Gt => x > y,
                    CmpOp::Ge => x >= y,
                };
                r as u8 as f64
            })
            .collect()),
        Op::Select => Ok(args[0]
            .data
            .iter()
            .zip(args[1].data.iter().zip(&args[2].data))
            .map(|(&c, (&a, &b))| if c != 0.0 { a } else { b })
            .collect()),
        Op::Cast { to } => {
            let from = args[0].ty.dtype;
            args[0].data.iter().map(|&x| cast(x, from, *to)).collect()
        }
        Op::Reduce { op: r, axes } => reduce(*r, axes, args[0], ty),
        Op::Reshape { .. } => Ok(args[0].data.clone()),
        Op::Broadcast { .. } => {
            let x = args[0];
            let off = out_shape.len() - x.ty.rank();
            let strides = contiguous_strides(&x.ty.shape);
            let mut data = Vec::with_capacity(ty.numel());
            for_each_index(out_shape, |o| {
                let mut flat = 0;
                for k in 0..x.ty.rank() {
                    if x.ty.shape[k] != 1 {
                        flat += o[off + k] * strides[k];
                    }
                }
                data.push(x.data[flat]);
            });
            Ok(data)
        }
        Op::Transpose { perm } => {
            let x = args[0];
            let strides = contiguous_strides(&x.ty.shape);
            let mut data = Vec::with_capacity(ty.numel());
            for_each_index(out_shape, |o| {
                let flat: usize = perm.iter().zip(o).map(|(&p, &i)| i * strides[p]).sum();
                data.push(x.data[flat]);
            });
            Ok(data)
        }
        Op::Slice { axis, start, .. } => {
            let x = args[0];
            let strides = contiguous_strides(&x.ty.shape);
            let mut data = Vec::with_capacity(ty.numel());
            for_each_index(out_shape, |o| {
                let flat: usize = o
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| (if k == *axis { i + start } else { i }) * strides[k])
                    .sum();
                data.push(x.data[flat]);
            });
            Ok(data)
        }
        Op::Concat { axis } => {
            let outer: usize = out_shape[..*axis].iter().product();
            let inner: usize = out_shape[axis + 1..].iter().product();
            let mut data = Vec::with_capacity(ty.numel());
            for o in 0..outer {
                for x in args {
                    let block = x.ty.shape[*axis] * inner;
                    data.extend_from_slice(&x.data[o * block..(o + 1) * block]);
                }
            }
            Ok(data)
        }
        Op::Gather { axis } => {
            let (table, index) = (args[0], args[1]);
            let outer: usize = table.ty.shape[..*axis].iter().product();
            let n = table.ty.shape[*axis];
            let inner: usize = table.ty.shape[axis + 1..].iter().product();
            let mut data = Vec::with_capacity(ty.numel());
            for o in 0..outer {
                for &i in &index.data {
                    if i < 0.0 {
                        return Err(format!(
                            "negative index {i} (negative indices are not supported)"
                        ));
                    }
                    let i = i as usize;
                    if i >= n {
                        return Err(format!(
                            "index {i} out of range for axis {axis} of size {n}"
                        ));
                    }
                    let start = (o * n + i) * inner;
                    data.extend_from_slice(&table.data[start..start + inner]);
                }
            }
            Ok(data)
        }
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => Ok(matmul(args[0], args[1], *transpose_a, *transpose_b, ty)),
        Op::Attention { scale } => Ok(attention(args, *scale, ty)),
        Op::AttentionGrad { scale } => Ok(attention_grad(args, *scale, ty)),
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } => Ok(conv2d(
            args[0], args[1], *stride, *padding, *dilation, *groups, ty,
        )),
    }
}

fn unary(u: UnaryOp, x: f64) -> f64 {
    match u {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Not => (x == 0.0) as u8 as f64,
    }
}

fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

fn nan_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

fn binary(b: BinaryOp, x: f64, y: f64, int: bool) -> Result<f64, String> {
    let int_divisor = |y: f64| -> Result<i64, String> {
        if y == 0.0 {
            Err("integer division by zero".into())
        } else {
            Ok(to_i64(y))
        }
    };
    Ok(match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div if int => to_i64(x).wrapping_div(int_divisor(y)?) as f64,
        BinaryOp::Div => x / y,
        BinaryOp::Max => nan_max(x, y),
        BinaryOp::Min => nan_min(x, y),
        BinaryOp::Pow => x.powf(y),
        BinaryOp::FloorDiv => {
            let (a, d) = (to_i64(x), int_divisor(y)?);
            let q = a.wrapping_div(d);
            if a.wrapping_rem(d) != 0 && ((a < 0) != (d < 0)) {
                (q - 1) as f64
            } else {
                q as f64
            }
        }
        BinaryOp::Rem => {
            let (a, d) = (to_i64(x), int_divisor(y)?);
            let r = a.wrapping_rem(d);
            if r != 0 && ((r < 0) != (d < 0)) {
                (r + d) as f64
            } else {
                r as f64
            }
        }
        BinaryOp::And => (x != 0.0 && y != 0.0) as u8 as f64,
        BinaryOp::Or => (x != 0.0 || y != 0.0) as u8 as f64,
    })
}

fn cast(x: f64, from: DType, to: DType) -> Result<f64, String> {
    if from == to {
        return Ok(x);
    }
    Ok(match to {
        DType::F32 => {
            if from.is_float() {
                x
            } else {
                x as f32 as f64
            }
        }
        DType::BF16 | DType::F16 => round_to(to, x),
        DType::I32 | DType::I64 => {
            if !x.is_finite() {
                return Err(format!("cannot cast non-finite value {x} to {to}"));
            }
            let t = x.trunc();
            let two_63 = 9_223_372_036_854_775_808.0;
            let out_of_range = if to == DType::I32 {
                t < i32::MIN as f64 || t > i32::MAX as f64
            } else {
                t < -two_63 || t >= two_63
            };
            if out_of_range {
                return Err(format!("value {x} out of range for {to}"));
            }
            t
        }
        DType::Bool => (x != 0.0) as u8 as f64,
    })
}

fn reduce(r: ReduceOp, axes: &[usize], x: &Tensor, ty: &TensorType) -> Result<Vec<f64>, String> {
    let count: usize = axes.iter().map(|&a| x.ty.shape[a]).product();
    if count == 0 && r != ReduceOp::Sum && !x.ty.dtype.is_float() {
        return Err("max/min of an empty integer reduction".into());
    }
    let init = match r {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f64::NEG_INFINITY,
        ReduceOp::Min => f64::INFINITY,
    };
    let mut out = vec![init; ty.numel()];
    let out_strides = contiguous_strides(&ty.shape);
    let kept: Vec<usize> = (0..x.ty.rank()).filter(|i| !axes.contains(i)).collect();
    let mut flat = 0;
    for_each_index(&x.ty.shape, |idx| {
        let o: usize = kept
            .iter()
            .zip(&out_strides)
            .map(|(&k, &s)| idx[k] * s)
            .sum();
        let v = x.data[flat];
        flat += 1;
        out[o] = match r {
            ReduceOp::Sum => out[o] + v,
            ReduceOp::Max => nan_max(out[o], v),
            ReduceOp::Min => nan_min(out[o], v),
        };
    });
    Ok(out)
}

fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, ty: &TensorType) -> Vec<f64> {
    let (ra, rb) = (a.ty.rank(), b.ty.rank());
    let (a0, a1) = (a.ty.shape[ra - 2], a.ty.shape[ra - 1]);
    let (b0, b1) = (b.ty.shape[rb - 2], b.ty.shape[rb - 1]);
    let (m, k) = if ta { (a1, a0) } else { (a0, a1) };
    let n = if tb { b0 } else { b1 };
    let batch: usize = a.ty.shape[..ra - 2].iter().product();
    let shared_b = rb == 2;
    let mut out = Vec::with_capacity(ty.numel());
    for bi in 0..batch {
        let ao = bi * a0 * a1;
        let bo = if shared_b { 0 } else { bi * b0 * b1 };
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    let av = if ta {
                        a.data[ao + p * a1 + i]
                    } else {
                        a.data[ao + i * a1 + p]
                    };
                    let bv = if tb {
                        b.data[bo + j * b1 + p]
                    } else {
                        b.data[bo + p * b1 + j]
                    };
                    acc += av * bv;
                }
                out.push(acc);
            }
        }
    }
    out
}

fn attention(args: &[&Tensor], scale: f64, ty: &TensorType) -> Vec<f64> {
    let (q, k, v) = (args[0], args[1], args[2]);
    let mask = args.get(3);
    let (b, sq, h, d) = (q.ty.shape[0], q.ty.shape[1], q.ty.shape[2], q.ty.shape[3]);
    let sk = k.ty.shape[1];
    let dv = v.ty.shape[3];
    let mut out = vec![0.0; ty.numel()];
    let mut scores = vec![0.0; sk];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..sq {
                let q_at = |c: usize| q.data[((bi * sq + i) * h + hi) * d + c];
                let mut max = f64::NEG_INFINITY;
                for (j, s) in scores.iter_mut().enumerate() {
                    let attend = match mask {
                        Some(m) => m.data[bi * sk + j] != 0.0,
                        None => true,
                    };
                    *s = if attend {
                        let mut dot = 0.0;
                        for c in 0..d {
                            dot += q_at(c) * k.data[((bi * sk + j) * h + hi) * d + c];
                        }
                        dot * scale
                    } else {
                        f64::NEG_INFINITY
                    };
                    max = nan_max(max, *s);
                }
                if max == f64::NEG_INFINITY {
                    // Every key masked (or no keys): the output row is defined as zeros.
                    continue;
                }
                let mut sum = 0.0;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let o = ((bi * sq + i) * h + hi) * dv;
                for (j, s) in scores.iter().enumerate() {
                    let p = s / sum;
                    for c in 0..dv {
                        out[o + c] += p * v.data[((bi * sk + j) * h + hi) * dv + c];
                    }
                }
            }
        }
    }
    out
}

/// The packed gradients dq | dk | dv of `attention` (see [`Op::AttentionGrad`]), textbook
/// formulas: P = softmax(S), dV = P^T dO, dS = P * (dO V^T - rowsum(P * dO V^T)) * scale,
/// dQ = dS K, dK = dS^T Q. Rows with every key masked have P = 0.
fn attention_grad(args: &[&Tensor], scale: f64, ty: &TensorType) -> Vec<f64> {
    let (q, k, v, dout) = (args[0], args[1], args[2], args[3]);
    let mask = args.get(4);
    let (b, sq, h, d) = (q.ty.shape[0], q.ty.shape[1], q.ty.shape[2], q.ty.shape[3]);
    let sk = k.ty.shape[1];
    let rows = sq + 2 * sk;
    let mut out = vec![0.0; ty.numel()];
    let at = |bi: usize, s: usize, seq: usize, hi: usize| ((bi * seq + s) * h + hi) * d;
    let packed = |bi: usize, s: usize, hi: usize| ((bi * rows + s) * h + hi) * d;
    let mut p = vec![0.0; sk];
    let mut dp = vec![0.0; sk];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..sq {
                let qi = at(bi, i, sq, hi);
                let mut max = f64::NEG_INFINITY;
                for (j, s) in p.iter_mut().enumerate() {
                    let attend = mask.is_none_or(|m| m.data[bi * sk + j] != 0.0);
                    *s = if attend {
                        let kj = at(bi, j, sk, hi);
                        (0..d).map(|c| q.data[qi + c] * k.data[kj + c]).sum::<f64>() * scale
                    } else {
                        f64::NEG_INFINITY
                    };
                    max = nan_max(max, *s);
                }
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let mut sum = 0.0;
                for s in p.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let mut row_dot = 0.0;
                for j in 0..sk {
                    p[j] /= sum;
                    let vj = at(bi, j, sk, hi);
                    dp[j] = (0..d).map(|c| dout.data[qi + c] * v.data[vj + c]).sum();
                    row_dot += p[j] * dp[j];
                }
                for j in 0..sk {
                    let ds = p[j] * (dp[j] - row_dot) * scale;
                    let kj = at(bi, j, sk, hi);
                    let dq = packed(bi, i, hi);
                    let dk = packed(bi, sq + j, hi);
                    let dv = packed(bi, sq + sk + j, hi);
                    for c in 0..d {
                        out[dq + c] += ds * k.data[kj + c];
                        out[dk + c] += ds * q.data[qi + c];
                        out[dv + c] += p[j] * dout.data[qi + c];
                    }
                }
            }
        }
    }
    out
}

fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    ty: &TensorType,
) -> Vec<f64> {
    let (n, c, hh, ww) = (x.ty.shape[0], x.ty.shape[1], x.ty.shape[2], x.ty.shape[3]);
    let (o, cg, kh, kw) = (w.ty.shape[0], w.ty.shape[1], w.ty.shape[2], w.ty.shape[3]);
    let (oh, ow) = (ty.shape[2], ty.shape[3]);
    let og = o / groups;
    let mut out = Vec::with_capacity(ty.numel());
    for ni in 0..n {
        for oi in 0..o {
            let g = oi / og;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for ky in 0..kh {
                            let iy =
                                (y * stride[0] + ky * dilation[0]) as isize - padding[0] as isize;
                            if iy < 0 || iy >= hh as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (xo * stride[1] + kx * dilation[1]) as isize
                                    - padding[1] as isize;
                                if ix < 0 || ix >= ww as isize {
                                    continue;
                                }
                                let xv =
                                    x.data[((ni * c + cin) * hh + iy as usize) * ww + ix as usize];
                                let wv = w.data[((oi * cg + ci) * kh + ky) * kw + kx];
                                acc += xv * wv;
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
    }
    out
}
