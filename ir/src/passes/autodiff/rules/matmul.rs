//! `matmul` (optionally transposed operands; a rank-2 `b` may be shared by a batched `a`).

use crate::passes::autodiff::builder::Builder;
use crate::passes::autodiff::AutodiffError;
use crate::{Graph, NodeId};

impl Builder<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn matmul_grad(
        &mut self,
        g: &Graph,
        a: NodeId,
        b: NodeId,
        transpose_a: bool,
        transpose_b: bool,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<[Option<NodeId>; 2], AutodiffError> {
        let (rank_a, rank_b) = (g.ty(a).rank(), g.ty(b).rank());
        let shared_b = rank_b == 2 && rank_a > 2;
        let mut ga = None;
        let mut gb = None;
        if wants[0] {
            ga = Some(if !transpose_a {
                self.matmul(gy, b, false, !transpose_b)?
            } else if !shared_b {
                self.matmul(b, gy, transpose_b, true)?
            } else {
                let d = self.matmul(gy, b, false, !transpose_b)?;
                self.transpose_last2(d)?
            });
        }
        if wants[1] {
            gb = Some(if !shared_b {
                if !transpose_b {
                    self.matmul(a, gy, !transpose_a, false)?
                } else {
                    self.matmul(gy, a, true, transpose_a)?
                }
            } else {
                // b is shared by every batch: flatten the batch into the rows and sum through K.
                let gy_ty = self.ty(gy);
                let rows: usize = gy_ty.shape[..gy_ty.rank() - 1].iter().product();
                let cols = gy_ty.shape[gy_ty.rank() - 1];
                let a_rows = if transpose_a {
                    self.transpose_last2(a)?
                } else {
                    a
                };
                let k = g.ty(a).shape[if transpose_a { rank_a - 2 } else { rank_a - 1 }];
                let a_flat = self.reshape(a_rows, &[rows, k])?;
                let g_flat = self.reshape(gy, &[rows, cols])?;
                if !transpose_b {
                    self.matmul(a_flat, g_flat, true, false)?
                } else {
                    self.matmul(g_flat, a_flat, true, false)?
                }
            });
        }
        Ok([ga, gb])
    }
}
