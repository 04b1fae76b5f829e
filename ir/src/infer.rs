//! Shape and dtype inference: the typing rule of every op. The builder, the verifier and every pass
//! use this one function, so an op's contract lives in exactly one place.

use crate::op::{BinaryOp, Op, UnaryOp};
use crate::types::ShapeDisplay;
use crate::{DType, Shape, TensorType};
use smallvec::SmallVec;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeError {
    pub message: String,
}

impl TypeError {
    pub fn new(message: impl Into<String>) -> Self {
        TypeError {
            message: message.into(),
        }
    }
}

impl fmt::Display for TypeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TypeError {}

fn err<T>(op: &Op, msg: impl fmt::Display) -> Result<T, TypeError> {
    Err(TypeError::new(format!("{}: {msg}", op.mnemonic())))
}

fn expect_arity(
    op: &Op,
    args: &[&TensorType],
    n: std::ops::RangeInclusive<usize>,
) -> Result<(), TypeError> {
    if !n.contains(&args.len()) {
        let want = if n.start() == n.end() {
            format!("{}", n.start())
        } else {
            format!("{} to {}", n.start(), n.end())
        };
        return err(op, format!("expects {want} operands, got {}", args.len()));
    }
    Ok(())
}

fn same_types(op: &Op, args: &[&TensorType]) -> Result<(), TypeError> {
    for t in &args[1..] {
        if *t != args[0] {
            return err(op, format!("operand types differ: {} vs {}", args[0], t));
        }
    }
    Ok(())
}

/// Infers the result type of `op` applied to operands of the given types.
pub fn infer_type(op: &Op, args: &[&TensorType]) -> Result<TensorType, TypeError> {
    match op {
        Op::Input { ty, .. } | Op::Param { ty, .. } => {
            expect_arity(op, args, 0..=0)?;
            Ok(ty.clone())
        }
        Op::Constant { dtype, .. } => {
            expect_arity(op, args, 0..=0)?;
            Ok(TensorType::scalar(*dtype))
        }
        Op::Iota { shape, axis, dtype } => {
            expect_arity(op, args, 0..=0)?;
            if *axis >= shape.len() {
                return err(
                    op,
                    format!("axis {axis} out of range for shape {}", ShapeDisplay(shape)),
                );
            }
            if *dtype == DType::Bool {
                return err(op, "bool iota is not supported");
            }
            Ok(TensorType {
                dtype: *dtype,
                shape: shape.clone(),
            })
        }
        Op::Unary(u) => {
            expect_arity(op, args, 1..=1)?;
            let t = args[0];
            let ok = match u {
                UnaryOp::Not => t.dtype == DType::Bool,
                UnaryOp::Neg | UnaryOp::Abs => t.dtype != DType::Bool,
                _ => t.dtype.is_float(),
            };
            if !ok {
                return err(op, format!("not defined for {}", t.dtype));
            }
            Ok(t.clone())
        }
        Op::Binary(b) => {
            expect_arity(op, args, 2..=2)?;
            same_types(op, args)?;
            let d = args[0].dtype;
            let ok = match b {
                BinaryOp::And | BinaryOp::Or => d == DType::Bool,
                BinaryOp::FloorDiv | BinaryOp::Rem => d.is_int(),
                BinaryOp::Pow => d.is_float(),
                _ => d != DType::Bool,
            };
            if !ok {
                return err(op, format!("not defined for {d}"));
            }
            Ok(args[0].clone())
        }
        Op::Compare(_) => {
            expect_arity(op, args, 2..=2)?;
            same_types(op, args)?;
            Ok(args[0].with_dtype(DType::Bool))
        }
        Op::Select => {
            expect_arity(op, args, 3..=3)?;
            let (c, a, b) = (args[0], args[1], args[2]);
            if c.dtype != DType::Bool {
                return err(op, format!("condition must be bool, got {}", c.dtype));
            }
            if a != b {
                return err(op, format!("branch types differ: {a} vs {b}"));
            }
            if c.shape != a.shape {
                return err(
                    op,
                    format!(
                        "condition shape {} differs from {}",
                        ShapeDisplay(&c.shape),
                        a
                    ),
                );
            }
            Ok(a.clone())
        }
        Op::Cast { to } => {
            expect_arity(op, args, 1..=1)?;
            Ok(args[0].with_dtype(*to))
        }
        Op::Reduce { axes, .. } => {
            expect_arity(op, args, 1..=1)?;
            let t = args[0];
            if t.dtype == DType::Bool {
                return err(op, "cannot reduce bool tensors");
            }
            for w in axes.windows(2) {
                if w[0] >= w[1] {
                    return err(op, "axes must be sorted and unique");
                }
            }
            if axes.iter().any(|&a| a >= t.rank()) {
                return err(op, format!("axes {axes:?} out of range for {t}"));
            }
            let shape: Shape = (0..t.rank())
                .filter(|i| !axes.contains(i))
                .map(|i| t.shape[i])
                .collect();
            Ok(TensorType {
                dtype: t.dtype,
                shape,
            })
        }
        Op::Reshape { shape } => {
            expect_arity(op, args, 1..=1)?;
            let n: usize = shape.iter().product();
            if n != args[0].numel() {
                return err(
                    op,
                    format!(
                        "cannot reshape {} ({} elements) to {}",
                        args[0],
                        args[0].numel(),
                        ShapeDisplay(shape)
                    ),
                );
            }
            Ok(TensorType {
                dtype: args[0].dtype,
                shape: shape.clone(),
            })
        }
        Op::Broadcast { shape } => {
            expect_arity(op, args, 1..=1)?;
            let t = args[0];
            if t.rank() > shape.len() {
                return err(
                    op,
                    format!("cannot broadcast {t} to lower rank {}", ShapeDisplay(shape)),
                );
            }
            let off = shape.len() - t.rank();
            for (i, &d) in t.shape.iter().enumerate() {
                if d != 1 && d != shape[off + i] {
                    return err(
                        op,
                        format!("cannot broadcast {t} to {}", ShapeDisplay(shape)),
                    );
                }
            }
            Ok(TensorType {
                dtype: t.dtype,
                shape: shape.clone(),
            })
        }
        Op::Transpose { perm } => {
            expect_arity(op, args, 1..=1)?;
            let t = args[0];
            let mut seen: SmallVec<[bool; 6]> = SmallVec::from_elem(false, t.rank());
            if perm.len() != t.rank() {
                return err(op, format!("permutation {perm:?} has wrong length for {t}"));
            }
            for &p in perm {
                if p >= t.rank() || seen[p] {
                    return err(
                        op,
                        format!("{perm:?} is not a permutation of 0..{}", t.rank()),
                    );
                }
                seen[p] = true;
            }
            Ok(TensorType {
                dtype: t.dtype,
                shape: perm.iter().map(|&p| t.shape[p]).collect(),
            })
        }
        Op::Slice { axis, start, end } => {
            expect_arity(op, args, 1..=1)?;
            let t = args[0];
            if *axis >= t.rank() || start > end || *end > t.shape[*axis] {
                return err(
                    op,
                    format!("slice {start}..{end} on axis {axis} out of range for {t}"),
                );
            }
            let mut shape = t.shape.clone();
            shape[*axis] = end - start;
            Ok(TensorType {
                dtype: t.dtype,
                shape,
            })
        }
        Op::Concat { axis } => {
            if args.is_empty() {
                return err(op, "needs at least one operand");
            }
            let first = args[0];
            if *axis >= first.rank() {
                return err(op, format!("axis {axis} out of range for {first}"));
            }
            let mut total = 0;
            for t in args {
                let same_rest = t.rank() == first.rank()
                    && (0..t.rank()).all(|i| i == *axis || t.shape[i] == first.shape[i]);
                if t.dtype != first.dtype || !same_rest {
                    return err(
                        op,
                        format!("operands {first} and {t} do not match outside axis {axis}"),
                    );
                }
                total += t.shape[*axis];
            }
            let mut shape = first.shape.clone();
            shape[*axis] = total;
            Ok(TensorType {
                dtype: first.dtype,
                shape,
            })
        }
        Op::Gather { axis } => {
            expect_arity(op, args, 2..=2)?;
            let (table, index) = (args[0], args[1]);
            if !index.dtype.is_int() {
                return err(op, format!("index must be integer, got {}", index.dtype));
            }
            if *axis >= table.rank() {
                return err(op, format!("axis {axis} out of range for {table}"));
            }
            let mut shape: Shape = table.shape[..*axis].iter().copied().collect();
            shape.extend(index.shape.iter().copied());
            shape.extend(table.shape[axis + 1..].iter().copied());
            Ok(TensorType {
                dtype: table.dtype,
                shape,
            })
        }
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => {
            expect_arity(op, args, 2..=2)?;
            let (a, b) = (args[0], args[1]);
            if a.rank() < 2 || b.rank() < 2 {
                return err(op, format!("operands must have rank >= 2: {a} x {b}"));
            }
            if a.dtype != b.dtype || !a.dtype.is_float() {
                return err(op, format!("operands must share a float dtype: {a} x {b}"));
            }
            let (ra, rb) = (a.rank(), b.rank());
            let (m, ka) = if *transpose_a {
                (a.shape[ra - 1], a.shape[ra - 2])
            } else {
                (a.shape[ra - 2], a.shape[ra - 1])
            };
            let (kb, n) = if *transpose_b {
                (b.shape[rb - 1], b.shape[rb - 2])
            } else {
                (b.shape[rb - 2], b.shape[rb - 1])
            };
            if ka != kb {
                return err(op, format!("inner dimensions differ: {a} x {b} (transpose_a={transpose_a}, transpose_b={transpose_b})"));
            }
            if rb != 2 && a.shape[..ra - 2] != b.shape[..rb - 2] {
                return err(op, format!("batch dimensions differ: {a} x {b}"));
            }
            let mut shape: Shape = a.shape[..ra - 2].iter().copied().collect();
            shape.push(m);
            shape.push(n);
            Ok(TensorType {
                dtype: a.dtype,
                shape,
            })
        }
        Op::Attention { .. } => {
            expect_arity(op, args, 3..=4)?;
            let (q, k, v) = (args[0], args[1], args[2]);
            if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
                return err(op, format!("q, k, v must be [B, S, H, D]: {q}, {k}, {v}"));
            }
            if q.dtype != k.dtype || q.dtype != v.dtype || !q.dtype.is_float() {
                return err(
                    op,
                    format!("q, k, v must share a float dtype: {q}, {k}, {v}"),
                );
            }
            let (b, sq, h, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
            let sk = k.shape[1];
            if k.shape[0] != b || k.shape[2] != h || k.shape[3] != d {
                return err(op, format!("k {k} does not match q {q}"));
            }
            if v.shape[0] != b || v.shape[1] != sk || v.shape[2] != h {
                return err(op, format!("v {v} does not match k {k}"));
            }
            if let Some(mask) = args.get(3) {
                if mask.dtype != DType::Bool || mask.shape.as_slice() != [b, sk] {
                    return err(op, format!("mask must be bool[{b}, {sk}], got {mask}"));
                }
            }
            Ok(TensorType::new(q.dtype, &[b, sq, h, v.shape[3]]))
        }
        Op::AttentionGrad { .. } => {
            expect_arity(op, args, 4..=5)?;
            let (q, k, v, dout) = (args[0], args[1], args[2], args[3]);
            if [q, k, v, dout].iter().any(|t| t.rank() != 4) {
                return err(
                    op,
                    format!("q, k, v, dout must be [B, S, H, D]: {q}, {k}, {v}, {dout}"),
                );
            }
            if [k, v, dout].iter().any(|t| t.dtype != q.dtype) || !q.dtype.is_float() {
                return err(
                    op,
                    format!("q, k, v, dout must share a float dtype: {q}, {k}, {v}, {dout}"),
                );
            }
            let (b, sq, h, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
            let sk = k.shape[1];
            if k.shape.as_slice() != [b, sk, h, d] || v.shape.as_slice() != [b, sk, h, d] {
                return err(op, format!("k {k} and v {v} must be [{b}, Sk, {h}, {d}]"));
            }
            if dout.shape != q.shape {
                return err(op, format!("dout {dout} must match q {q}"));
            }
            if let Some(mask) = args.get(4) {
                if mask.dtype != DType::Bool || mask.shape.as_slice() != [b, sk] {
                    return err(op, format!("mask must be bool[{b}, {sk}], got {mask}"));
                }
            }
            Ok(TensorType::new(q.dtype, &[b, sq + 2 * sk, h, d]))
        }
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } => {
            expect_arity(op, args, 2..=2)?;
            let (x, w) = (args[0], args[1]);
            if x.rank() != 4 || w.rank() != 4 || x.dtype != w.dtype || !x.dtype.is_float() {
                return err(
                    op,
                    format!("expects float x [N, C, H, W] and w [O, C/g, KH, KW]: {x}, {w}"),
                );
            }
            let g = *groups;
            if g == 0 || x.shape[1] % g != 0 || w.shape[0] % g != 0 || w.shape[1] * g != x.shape[1]
            {
                return err(op, format!("channels do not match groups={g}: {x}, {w}"));
            }
            if stride.contains(&0) || dilation.contains(&0) {
                return err(op, "stride and dilation must be positive");
            }
            let mut out = [0usize; 2];
            for i in 0..2 {
                let span = dilation[i] * (w.shape[2 + i] - 1) + 1;
                let padded = x.shape[2 + i] + 2 * padding[i];
                if padded < span {
                    return err(op, format!("kernel larger than padded input: {x}, {w}"));
                }
                out[i] = (padded - span) / stride[i] + 1;
            }
            Ok(TensorType::new(
                x.dtype,
                &[x.shape[0], w.shape[0], out[0], out[1]],
            ))
        }
    }
}
