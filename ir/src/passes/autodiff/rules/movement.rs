//! Data movement: `reshape`, `broadcast`, `transpose`, `slice`, `concat`, `gather`.

use crate::op::{CmpOp, ReduceOp};
use crate::passes::autodiff::builder::{Builder, R};
use crate::passes::autodiff::AutodiffError;
use crate::{Graph, NodeId, Op, Shape, TensorType};

impl Builder<'_> {
    pub(super) fn reshape_grad(&mut self, g: &Graph, id: NodeId, gy: NodeId) -> R {
        let shape = g.ty(g.node(id).args[0]).shape.clone();
        self.reshape(gy, &shape)
    }

    /// Sums the cotangent over the broadcast axes (new leading axes and stretched 1s).
    pub(super) fn broadcast_grad(
        &mut self,
        g: &Graph,
        id: NodeId,
        out_shape: &[usize],
        gy: NodeId,
    ) -> R {
        let in_shape = g.ty(g.node(id).args[0]).shape.clone();
        let new_axes = out_shape.len() - in_shape.len();
        let axes: Vec<usize> = (0..out_shape.len())
            .filter(|&i| i < new_axes || (in_shape[i - new_axes] == 1 && out_shape[i] != 1))
            .collect();
        let s = self.reduce(ReduceOp::Sum, gy, &axes)?;
        self.reshape(s, &in_shape)
    }

    /// The cotangent transposed by the inverse permutation.
    pub(super) fn transpose_grad(&mut self, perm: &[usize], gy: NodeId) -> R {
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        self.transpose(gy, &inverse)
    }

    /// The cotangent padded with zeros back to the operand's extent along `axis`.
    pub(super) fn slice_grad(
        &mut self,
        g: &Graph,
        id: NodeId,
        axis: usize,
        start: usize,
        end: usize,
        gy: NodeId,
    ) -> R {
        let in_ty = g.ty(g.node(id).args[0]).clone();
        let size = in_ty.shape[axis];
        let zeros = |b: &mut Self, len: usize| -> R {
            let mut shape = in_ty.shape.clone();
            shape[axis] = len;
            b.splat(
                0.0,
                &TensorType {
                    dtype: in_ty.dtype,
                    shape,
                },
            )
        };
        let mut parts = Vec::new();
        if start > 0 {
            parts.push(zeros(self, start)?);
        }
        parts.push(gy);
        if end < size {
            parts.push(zeros(self, size - end)?);
        }
        if parts.len() == 1 {
            Ok(gy)
        } else {
            self.add(Op::Concat { axis }, &parts)
        }
    }

    /// Each operand gets its slice of the cotangent.
    pub(super) fn concat_grad(
        &mut self,
        g: &Graph,
        id: NodeId,
        axis: usize,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<Vec<Option<NodeId>>, AutodiffError> {
        let args = &g.node(id).args;
        let mut grads = vec![None; args.len()];
        let mut offset = 0;
        for (pos, a) in args.iter().enumerate() {
            let len = g.ty(*a).shape[axis];
            if wants[pos] {
                let op = Op::Slice {
                    axis,
                    start: offset,
                    end: offset + len,
                };
                grads[pos] = Some(self.add(op, &[gy])?);
            }
            offset += len;
        }
        Ok(grads)
    }

    /// Scatter-add expressed as a one-hot matmul: `onehot[m, j] = (index[m] == j)`.
    pub(super) fn gather_grad(
        &mut self,
        g: &Graph,
        table: NodeId,
        index: NodeId,
        axis: usize,
        gy: NodeId,
    ) -> R {
        let table_ty = g.ty(table).clone();
        let index_ty = g.ty(index).clone();
        // The table as [outer, rows, inner] with `rows` along `axis`; `m` gathered rows.
        let outer: usize = table_ty.shape[..axis].iter().product();
        let rows = table_ty.shape[axis];
        let inner: usize = table_ty.shape[axis + 1..].iter().product();
        let m = index_ty.numel();
        let column = self.reshape(index, &[m, 1])?;
        let index_b = self.broadcast(column, &[m, rows])?;
        let iota = self.add(
            Op::Iota {
                shape: Shape::from_slice(&[m, rows]),
                axis: 1,
                dtype: index_ty.dtype,
            },
            &[],
        )?;
        let hit = self.compare(CmpOp::Eq, index_b, iota)?;
        let onehot = self.add(Op::Cast { to: table_ty.dtype }, &[hit])?;
        let r = if outer == 1 {
            let g2 = self.reshape(gy, &[m, inner])?;
            self.matmul(onehot, g2, true, false)?
        } else {
            let g3 = self.reshape(gy, &[outer, m, inner])?;
            let gt = self.transpose(g3, &[0, 2, 1])?;
            let r = self.matmul(gt, onehot, false, false)?;
            self.transpose(r, &[0, 2, 1])?
        };
        self.reshape(r, &table_ty.shape)
    }
}
