//! Common subexpression elimination by hash-consing: two nodes with the same op (attributes
//! included) and the same operands compute the same value and are merged.
//!
//! Inputs and params are only merged when their names and types are equal (a param declared twice);
//! constants only when value (bit pattern) and dtype are equal, so `0.0` and `-0.0` stay apart.
//! Operands of commutative ops (`add`, `mul`, `max`, `min`, `and`, `or`, `eq`, `ne`) are compared
//! as unordered pairs (exact for IEEE floats; `max`/`min` propagate NaN symmetrically).

use crate::op::{BinaryOp, CmpOp};
use crate::passes::rebuild::rebuild;
use crate::{Args, Graph, Op};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

struct Key {
    op: Op,
    args: Args,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.args == other.args && ops_equal(&self.op, &other.op)
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.args.hash(state);
        hash_op(&self.op, state);
    }
}

/// Op equality for merging: floats compared by bit pattern.
fn ops_equal(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (
            Op::Constant {
                value: v1,
                dtype: d1,
            },
            Op::Constant {
                value: v2,
                dtype: d2,
            },
        ) => v1.to_bits() == v2.to_bits() && d1 == d2,
        (Op::Attention { scale: s1 }, Op::Attention { scale: s2 })
        | (Op::AttentionGrad { scale: s1 }, Op::AttentionGrad { scale: s2 }) => {
            s1.to_bits() == s2.to_bits()
        }
        _ => a == b,
    }
}

fn hash_op<H: Hasher>(op: &Op, state: &mut H) {
    std::mem::discriminant(op).hash(state);
    match op {
        Op::Input { name, ty } | Op::Param { name, ty } => {
            name.hash(state);
            ty.hash(state);
        }
        Op::Constant { value, dtype } => {
            value.to_bits().hash(state);
            dtype.hash(state);
        }
        Op::Iota { shape, axis, dtype } => (shape, axis, dtype).hash(state),
        Op::Unary(u) => u.hash(state),
        Op::Binary(b) => b.hash(state),
        Op::Compare(c) => c.hash(state),
        Op::Select => {}
        Op::Cast { to } => to.hash(state),
        Op::Reduce { op, axes } => (op, axes).hash(state),
        Op::Reshape { shape } | Op::Broadcast { shape } => shape.hash(state),
        Op::Transpose { perm } => perm.hash(state),
        Op::Slice { axis, start, end } => (axis, start, end).hash(state),
        Op::Concat { axis } | Op::Gather { axis } => axis.hash(state),
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => (transpose_a, transpose_b).hash(state),
        Op::Attention { scale } | Op::AttentionGrad { scale } => scale.to_bits().hash(state),
        Op::Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } => (stride, padding, dilation, groups).hash(state),
    }
}

fn is_commutative(op: &Op) -> bool {
    matches!(
        op,
        Op::Binary(
            BinaryOp::Add
                | BinaryOp::Mul
                | BinaryOp::Max
                | BinaryOp::Min
                | BinaryOp::And
                | BinaryOp::Or
        ) | Op::Compare(CmpOp::Eq | CmpOp::Ne)
    )
}

/// Merges structurally identical nodes.
pub fn cse(g: &Graph) -> Graph {
    let mut seen: HashMap<Key, crate::NodeId> = HashMap::new();
    rebuild(g, |rb, old| {
        let node = rb.src.node(old);
        let args = rb.mapped_args(old);
        let mut key_args = args.clone();
        if is_commutative(&node.op) {
            key_args.sort();
        }
        let key = Key {
            op: node.op.clone(),
            args: key_args,
        };
        if let Some(&new) = seen.get(&key) {
            return Some(new);
        }
        let new = rb.add(node.op.clone(), &args, node.origin.clone());
        seen.insert(key, new);
        Some(new)
    })
}
