//! Constant folding and algebraic simplification.
//!
//! Folding: an elementwise op whose operands are all "splats" (a scalar `Constant`, or any chain of
//! views — broadcast, reshape, transpose, slice — over one) is evaluated once with the reference
//! interpreter and replaced by `broadcast(constant)`; views of splats and max/min reductions of
//! splats become `broadcast(constant)` too. Folding uses [`crate::eval`]'s kernels, so folded
//! graphs evaluate exactly like the original; an op that fails to evaluate (integer division by
//! zero) is left alone.
//!
//! Identities (all exact, including for NaN and infinities, up to the sign of a zero):
//! `x + 0`, `0 + x`, `x - 0`, `x * 1`, `1 * x`, `x / 1`, `x ^ 1`, `max(x, x)`, `min(x, x)`,
//! `and(x, x)`, `or(x, x)`, `neg(neg(x))`, `not(not(x))`, a cast to the operand's dtype, reshape
//! to the same shape, reshape of reshape, broadcast to the same shape, broadcast of broadcast,
//! identity transposes, transpose of transpose (permutations composed), a slice of the full range,
//! slice of slice on the same axis, a one-operand concat, a reduction over no axes,
//! `select(c, x, x)` and a select with a constant condition.
//! Deliberately not done: `x * 0 -> 0` and `x - x -> 0` (wrong for NaN/inf), reassociation, and
//! reduce-sum of a splat (`c * n` rounds differently from a running sum).
//!
//! The pass leaves replaced nodes behind as dead code; run DCE afterwards (see `optimize`).

use crate::eval::{eval_op, round_to, Tensor};
use crate::op::{BinaryOp, ReduceOp, UnaryOp};
use crate::passes::rebuild::{rebuild, Rebuilder};
use crate::{Graph, NodeId, Op, Shape};
use std::sync::Arc;

pub fn simplify(g: &Graph) -> Graph {
    rebuild(g, |rb, old| {
        let args = rb.mapped_args(old);
        let node = rb.src.node(old);
        let origin = node.origin.clone();
        if let Some(new) =
            fold(rb, &node.op, &args, &origin).or_else(|| identity(rb, &node.op, &args, &origin))
        {
            return Some(new);
        }
        Some(rb.add(node.op.clone(), &args, origin))
    })
}

/// The value of a node that is a scalar constant, possibly seen through views, rounded to its
/// dtype as the interpreter would.
pub fn splat_value(g: &Graph, mut id: NodeId) -> Option<f64> {
    loop {
        let node = g.node(id);
        match &node.op {
            Op::Constant { value, dtype } => return Some(round_to(*dtype, *value)),
            Op::Broadcast { .. } | Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. } => {
                id = node.args[0];
            }
            _ => return None,
        }
    }
}

fn emit_splat(
    rb: &mut Rebuilder,
    value: f64,
    ty: &crate::TensorType,
    origin: &Option<Arc<str>>,
) -> NodeId {
    let c = rb.add(
        Op::Constant {
            value,
            dtype: ty.dtype,
        },
        &[],
        origin.clone(),
    );
    if ty.rank() == 0 {
        c
    } else {
        rb.add(
            Op::Broadcast {
                shape: ty.shape.clone(),
            },
            &[c],
            origin.clone(),
        )
    }
}

fn fold(rb: &mut Rebuilder, op: &Op, args: &[NodeId], origin: &Option<Arc<str>>) -> Option<NodeId> {
    let dst = &rb.dst;
    match op {
        Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Cast { .. } => {
            let mut scalars = Vec::with_capacity(args.len());
            for &a in args {
                scalars.push(Tensor::scalar(splat_value(dst, a)?, dst.ty(a).dtype));
            }
            let refs: Vec<&Tensor> = scalars.iter().collect();
            let result = eval_op(op, &refs).ok()?;
            let ty = dst.ty(args[0]).with_dtype(result.ty.dtype);
            Some(emit_splat(rb, result.data[0], &ty, origin))
        }
        Op::Broadcast { .. } | Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. } => {
            let value = splat_value(dst, args[0])?;
            let already_canonical = matches!(op, Op::Broadcast { .. })
                && matches!(dst.node(args[0]).op, Op::Constant { .. });
            if already_canonical {
                return None;
            }
            let ty = crate::infer_type(op, &[dst.ty(args[0])]).ok()?;
            Some(emit_splat(rb, value, &ty, origin))
        }
        Op::Reduce {
            op: ReduceOp::Max | ReduceOp::Min,
            axes,
        } => {
            let value = splat_value(dst, args[0])?;
            let t = dst.ty(args[0]);
            if axes.iter().any(|&a| t.shape[a] == 0) {
                return None;
            }
            let ty = crate::infer_type(op, &[t]).ok()?;
            Some(emit_splat(rb, value, &ty, origin))
        }
        _ => None,
    }
}

fn is_splat(g: &Graph, id: NodeId, v: f64) -> bool {
    splat_value(g, id) == Some(v)
}

fn identity(
    rb: &mut Rebuilder,
    op: &Op,
    args: &[NodeId],
    origin: &Option<Arc<str>>,
) -> Option<NodeId> {
    let dst = &rb.dst;
    let x = *args.first()?;
    let x_node = dst.node(x);
    match op {
        Op::Binary(b) => {
            let y = args[1];
            match b {
                BinaryOp::Add if is_splat(dst, y, 0.0) => Some(x),
                BinaryOp::Add if is_splat(dst, x, 0.0) => Some(y),
                BinaryOp::Sub if is_splat(dst, y, 0.0) => Some(x),
                BinaryOp::Mul if is_splat(dst, y, 1.0) => Some(x),
                BinaryOp::Mul if is_splat(dst, x, 1.0) => Some(y),
                BinaryOp::Div | BinaryOp::Pow if is_splat(dst, y, 1.0) => Some(x),
                BinaryOp::Max | BinaryOp::Min | BinaryOp::And | BinaryOp::Or if x == y => Some(x),
                _ => None,
            }
        }
        Op::Unary(u @ (UnaryOp::Neg | UnaryOp::Not)) => match &x_node.op {
            Op::Unary(inner) if inner == u => Some(x_node.args[0]),
            _ => None,
        },
        Op::Cast { to } => (*to == dst.ty(x).dtype).then_some(x),
        Op::Reshape { shape } => {
            if *shape == dst.ty(x).shape {
                return Some(x);
            }
            match &x_node.op {
                Op::Reshape { .. } => {
                    let inner = x_node.args[0];
                    if *shape == dst.ty(inner).shape {
                        Some(inner)
                    } else {
                        Some(rb.add(op.clone(), &[inner], origin.clone()))
                    }
                }
                _ => None,
            }
        }
        Op::Broadcast { shape } => {
            if *shape == dst.ty(x).shape {
                return Some(x);
            }
            match &x_node.op {
                Op::Broadcast { .. } => {
                    let inner = x_node.args[0];
                    Some(rb.add(op.clone(), &[inner], origin.clone()))
                }
                _ => None,
            }
        }
        Op::Transpose { perm } => {
            if is_identity(perm) {
                return Some(x);
            }
            match &x_node.op {
                Op::Transpose { perm: inner_perm } => {
                    let inner = x_node.args[0];
                    let composed: Shape = perm.iter().map(|&p| inner_perm[p]).collect();
                    if is_identity(&composed) {
                        Some(inner)
                    } else {
                        Some(rb.add(Op::Transpose { perm: composed }, &[inner], origin.clone()))
                    }
                }
                _ => None,
            }
        }
        Op::Slice { axis, start, end } => {
            if *start == 0 && *end == dst.ty(x).shape[*axis] {
                return Some(x);
            }
            match &x_node.op {
                Op::Slice {
                    axis: inner_axis,
                    start: inner_start,
                    ..
                } if inner_axis == axis => {
                    let inner = x_node.args[0];
                    let op = Op::Slice {
                        axis: *axis,
                        start: inner_start + start,
                        end: inner_start + end,
                    };
                    Some(rb.add(op, &[inner], origin.clone()))
                }
                _ => None,
            }
        }
        Op::Concat { .. } if args.len() == 1 => Some(x),
        Op::Reduce { axes, .. } if axes.is_empty() => Some(x),
        Op::Select => {
            let (a, b) = (args[1], args[2]);
            if a == b {
                return Some(a);
            }
            match splat_value(dst, x) {
                Some(c) if c != 0.0 => Some(a),
                Some(_) => Some(b),
                None => None,
            }
        }
        _ => None,
    }
}

fn is_identity(perm: &[usize]) -> bool {
    perm.iter().enumerate().all(|(i, &p)| i == p)
}
