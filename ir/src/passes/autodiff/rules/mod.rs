//! Derivative rules, one file per op family. Each rule gets the forward node, its cotangent `gy`
//! and which operands want a gradient (`wants[pos]`), and returns one optional gradient per
//! operand; [`Builder::rule`] drops the gradients nobody asked for.

mod attention;
mod elementwise;
mod matmul;
mod movement;
mod reduce;

use super::builder::Builder;
use super::AutodiffError;
use crate::{Graph, NodeId, Op};

/// One optional gradient per operand of the forward node.
pub(super) type Gradients = Vec<Option<NodeId>>;

impl Builder<'_> {
    /// Gradients of node `id` (cotangent `gy`) for the operands flagged in `wants`.
    pub fn rule(
        &mut self,
        g: &Graph,
        id: NodeId,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<Gradients, AutodiffError> {
        let node = g.node(id);
        let args = &node.args;
        let mut grads: Gradients = match &node.op {
            Op::Unary(op) => vec![Some(self.unary_grad(g, id, *op, gy)?)],
            Op::Binary(op) => self.binary_grad(g, id, *op, gy, wants)?.to_vec(),
            Op::Select => self.select_grad(args[0], gy, wants)?.to_vec(),
            Op::Cast { .. } => vec![Some(self.cast_grad(g, id, gy)?)],
            Op::Reduce { op, axes } => vec![Some(self.reduce_grad(g, id, *op, axes, gy)?)],
            Op::Reshape { .. } => vec![Some(self.reshape_grad(g, id, gy)?)],
            Op::Broadcast { shape } => vec![Some(self.broadcast_grad(g, id, shape, gy)?)],
            Op::Transpose { perm } => vec![Some(self.transpose_grad(perm, gy)?)],
            Op::Slice { axis, start, end } => {
                vec![Some(self.slice_grad(g, id, *axis, *start, *end, gy)?)]
            }
            Op::Concat { axis } => self.concat_grad(g, id, *axis, gy, wants)?,
            Op::Gather { axis } => {
                vec![
                    Some(self.gather_grad(g, args[0], args[1], *axis, gy)?),
                    None,
                ]
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => self
                .matmul_grad(g, args[0], args[1], *transpose_a, *transpose_b, gy, wants)?
                .to_vec(),
            Op::Attention { scale } => {
                let mask = args.get(3).copied();
                let [dq, dk, dv] =
                    self.attention_grad(g, [args[0], args[1], args[2]], mask, *scale, gy, wants)?;
                let mut grads = vec![dq, dk, dv];
                grads.resize(args.len(), None);
                grads
            }
            Op::Conv2d { .. } | Op::Compare(_) | Op::AttentionGrad { .. } => {
                return self.not_differentiable(g, id)
            }
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } | Op::Iota { .. } => {
                vec![None; args.len()]
            }
        };
        debug_assert_eq!(grads.len(), args.len(), "one gradient slot per operand");
        for (pos, wanted) in wants.iter().enumerate() {
            if !wanted {
                grads[pos] = None;
            }
        }
        Ok(grads)
    }
}
