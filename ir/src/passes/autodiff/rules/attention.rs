//! `attention(q, k, v, mask)` with `[batch, seq, heads, head_dim]` operands.

use crate::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::passes::autodiff::builder::Builder;
use crate::passes::autodiff::AutodiffError;
use crate::Op;
use crate::{Graph, NodeId, TensorType};

/// `[batch, seq, heads, dim]` <-> `[batch, heads, seq, dim]` (its own inverse).
const SWAP_SEQ_HEADS: [usize; 4] = [0, 2, 1, 3];

impl Builder<'_> {
    /// Attention backward: one fused [`Op::AttentionGrad`] (flash-style, the probabilities are
    /// never stored) when the value head dim equals the query head dim, else the decomposed rule.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_grad(
        &mut self,
        g: &Graph,
        [q, k, v]: [NodeId; 3],
        mask: Option<NodeId>,
        scale: f64,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<[Option<NodeId>; 3], AutodiffError> {
        let (q_ty, k_ty, v_ty) = (g.ty(q), g.ty(k), g.ty(v));
        if v_ty.shape[3] != q_ty.shape[3] {
            return self.attention_grad_decomposed(g, [q, k, v], mask, scale, gy, wants);
        }
        let (sq, sk) = (q_ty.shape[1], k_ty.shape[1]);
        let mut args = vec![q, k, v, gy];
        args.extend(mask);
        let packed = self.add(Op::AttentionGrad { scale }, &args)?;
        let mut out = [None, None, None];
        for (i, (start, end)) in [(0, sq), (sq, sq + sk), (sq + sk, sq + 2 * sk)]
            .into_iter()
            .enumerate()
        {
            if wants[i] {
                out[i] = Some(self.add(
                    Op::Slice {
                        axis: 1,
                        start,
                        end,
                    },
                    &[packed],
                )?);
            }
        }
        Ok(out)
    }

    /// Attention backward from matmuls and elementwise ops, recomputing the probabilities
    /// from the primal q, k, v (materialises [B, H, Sq, Sk]).
    #[allow(clippy::too_many_arguments)]
    fn attention_grad_decomposed(
        &mut self,
        g: &Graph,
        [q, k, v]: [NodeId; 3],
        mask: Option<NodeId>,
        scale: f64,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<[Option<NodeId>; 3], AutodiffError> {
        let q_ty = g.ty(q).clone();
        let (batch, q_len, heads) = (q_ty.shape[0], q_ty.shape[1], q_ty.shape[2]);
        let k_len = g.ty(k).shape[1];
        let dtype = q_ty.dtype;
        let scores_shape = [batch, heads, q_len, k_len];
        let row_ty = TensorType::new(dtype, &[batch, heads, q_len]);
        let qt = self.transpose(q, &SWAP_SEQ_HEADS)?;
        let kt = self.transpose(k, &SWAP_SEQ_HEADS)?;
        let vt = self.transpose(v, &SWAP_SEQ_HEADS)?;
        let gt = self.transpose(gy, &SWAP_SEQ_HEADS)?;

        // Forward again: scores, masked, softmax over the keys.
        let raw = self.matmul(qt, kt, false, true)?;
        let scale_b = self.splat(scale, &TensorType::new(dtype, &scores_shape))?;
        let scores = self.mul(raw, scale_b)?;
        let mask_b = match mask {
            Some(m) => {
                let m4 = self.reshape(m, &[batch, 1, 1, k_len])?;
                Some(self.broadcast(m4, &scores_shape)?)
            }
            None => None,
        };
        let scores = match mask_b {
            Some(mb) => {
                let ninf = self.splat(f64::NEG_INFINITY, &TensorType::new(dtype, &scores_shape))?;
                self.select(mb, scores, ninf)?
            }
            None => scores,
        };
        let mut row_max = self.reduce(ReduceOp::Max, scores, &[3])?;
        if mask.is_some() {
            // Rows with every key masked: use 0 as the stabiliser (their exp() are all 0).
            let ninf = self.splat(f64::NEG_INFINITY, &row_ty)?;
            let zero = self.splat(0.0, &row_ty)?;
            let all_masked = self.compare(CmpOp::Eq, row_max, ninf)?;
            row_max = self.select(all_masked, zero, row_max)?;
        }
        let row_max_b = self.unreduce(row_max, &[3], &scores_shape)?;
        let shifted = self.binary(BinaryOp::Sub, scores, row_max_b)?;
        let e = self.unary(UnaryOp::Exp, shifted)?;
        let mut row_sum = self.reduce(ReduceOp::Sum, e, &[3])?;
        if mask.is_some() {
            let zero = self.splat(0.0, &row_ty)?;
            let one = self.splat(1.0, &row_ty)?;
            let empty = self.compare(CmpOp::Eq, row_sum, zero)?;
            row_sum = self.select(empty, one, row_sum)?;
        }
        let row_sum_b = self.unreduce(row_sum, &[3], &scores_shape)?;
        let probs = self.binary(BinaryOp::Div, e, row_sum_b)?;

        // Backward: dV = P^T dO; dS = P * (dP - rowsum(P * dP)) * scale; dQ = dS K; dK = dS^T Q.
        let mut out = [None, None, None];
        if wants[2] {
            let dvt = self.matmul(probs, gt, true, false)?;
            out[2] = Some(self.transpose(dvt, &SWAP_SEQ_HEADS)?);
        }
        if wants[0] || wants[1] {
            let dp = self.matmul(gt, vt, false, true)?;
            let p_dp = self.mul(probs, dp)?;
            let row_dot = self.reduce(ReduceOp::Sum, p_dp, &[3])?;
            let row_dot_b = self.unreduce(row_dot, &[3], &scores_shape)?;
            let centered = self.binary(BinaryOp::Sub, dp, row_dot_b)?;
            let ds = self.mul(probs, centered)?;
            let ds = self.mul(ds, scale_b)?;
            if wants[0] {
                let dqt = self.matmul(ds, kt, false, false)?;
                out[0] = Some(self.transpose(dqt, &SWAP_SEQ_HEADS)?);
            }
            if wants[1] {
                let dkt = self.matmul(ds, qt, true, false)?;
                out[1] = Some(self.transpose(dkt, &SWAP_SEQ_HEADS)?);
            }
        }
        Ok(out)
    }
}
