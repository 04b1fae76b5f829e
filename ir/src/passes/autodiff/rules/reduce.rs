//! Reductions: `reduce_sum`, `reduce_max`, `reduce_min`.

use crate::op::{BinaryOp, CmpOp, ReduceOp};
use crate::passes::autodiff::builder::{Builder, R};
use crate::{Graph, NodeId, Op};

impl Builder<'_> {
    pub(super) fn reduce_grad(
        &mut self,
        g: &Graph,
        id: NodeId,
        op: ReduceOp,
        axes: &[usize],
        gy: NodeId,
    ) -> R {
        let node = g.node(id);
        let (x, y) = (node.args[0], id);
        let shape = g.ty(x).shape.clone();
        match op {
            ReduceOp::Sum => self.unreduce(gy, axes, &shape),
            ReduceOp::Max | ReduceOp::Min => {
                // Split evenly between every position attaining the extremum.
                let y_broadcast = self.unreduce(y, axes, &shape)?;
                let hit = self.compare(CmpOp::Eq, x, y_broadcast)?;
                let mask = self.add(Op::Cast { to: node.ty.dtype }, &[hit])?;
                let count = self.reduce(ReduceOp::Sum, mask, axes)?;
                let share = self.binary(BinaryOp::Div, gy, count)?;
                let share = self.unreduce(share, axes, &shape)?;
                self.mul(share, mask)
            }
        }
    }
}
