//! Elementwise ops: unary functions, binary arithmetic, `select` and `cast`.

use crate::op::{BinaryOp, CmpOp, UnaryOp};
use crate::passes::autodiff::builder::{Builder, R};
use crate::passes::autodiff::AutodiffError;
use crate::{Graph, NodeId, Op};

impl Builder<'_> {
    /// `y = op(x)`: the gradient of `x`. Rules use `y` itself where that is cheaper than
    /// recomputing (`exp`, `sqrt`, `tanh`, `sigmoid`, ...).
    pub(super) fn unary_grad(&mut self, g: &Graph, id: NodeId, op: UnaryOp, gy: NodeId) -> R {
        let x = g.node(id).args[0];
        let y = id;
        Ok(match op {
            UnaryOp::Neg => self.unary(UnaryOp::Neg, gy)?,
            UnaryOp::Abs => {
                let zero = self.splat_like(0.0, x)?;
                let pos = self.compare(CmpOp::Gt, x, zero)?;
                let neg = self.compare(CmpOp::Lt, x, zero)?;
                let minus = self.unary(UnaryOp::Neg, gy)?;
                let inner = self.select(neg, minus, zero)?;
                self.select(pos, gy, inner)?
            }
            UnaryOp::Exp => self.mul(gy, y)?,
            UnaryOp::Log => self.binary(BinaryOp::Div, gy, x)?,
            UnaryOp::Sqrt => {
                let two = self.splat_like(2.0, y)?;
                let d = self.mul(y, two)?;
                self.binary(BinaryOp::Div, gy, d)?
            }
            UnaryOp::Rsqrt => {
                let minus_half = self.splat_like(-0.5, y)?;
                let y2 = self.mul(y, y)?;
                let y3 = self.mul(y2, y)?;
                let d = self.mul(minus_half, y3)?;
                self.mul(gy, d)?
            }
            UnaryOp::Recip => {
                let y2 = self.mul(y, y)?;
                let t = self.mul(gy, y2)?;
                self.unary(UnaryOp::Neg, t)?
            }
            UnaryOp::Sin => {
                let c = self.unary(UnaryOp::Cos, x)?;
                self.mul(gy, c)?
            }
            UnaryOp::Cos => {
                let s = self.unary(UnaryOp::Sin, x)?;
                let t = self.mul(gy, s)?;
                self.unary(UnaryOp::Neg, t)?
            }
            UnaryOp::Tanh => {
                let one = self.splat_like(1.0, y)?;
                let y2 = self.mul(y, y)?;
                let d = self.binary(BinaryOp::Sub, one, y2)?;
                self.mul(gy, d)?
            }
            UnaryOp::Sigmoid => {
                let one = self.splat_like(1.0, y)?;
                let c = self.binary(BinaryOp::Sub, one, y)?;
                let d = self.mul(y, c)?;
                self.mul(gy, d)?
            }
            UnaryOp::Not => return self.not_differentiable(g, id),
        })
    }

    /// `y = a op b`: the gradients of `a` and `b`.
    pub(super) fn binary_grad(
        &mut self,
        g: &Graph,
        id: NodeId,
        op: BinaryOp,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<[Option<NodeId>; 2], AutodiffError> {
        let (a, b) = (g.node(id).args[0], g.node(id).args[1]);
        let y = id;
        let mut grads = [None, None];
        match op {
            BinaryOp::Add => {
                grads = [Some(gy), Some(gy)];
            }
            BinaryOp::Sub => {
                grads[0] = Some(gy);
                if wants[1] {
                    grads[1] = Some(self.unary(UnaryOp::Neg, gy)?);
                }
            }
            BinaryOp::Mul => {
                if wants[0] {
                    grads[0] = Some(self.mul(gy, b)?);
                }
                if wants[1] {
                    grads[1] = Some(self.mul(gy, a)?);
                }
            }
            BinaryOp::Div => {
                if wants[0] {
                    grads[0] = Some(self.binary(BinaryOp::Div, gy, b)?);
                }
                if wants[1] {
                    let t = self.mul(gy, y)?;
                    let t = self.binary(BinaryOp::Div, t, b)?;
                    grads[1] = Some(self.unary(UnaryOp::Neg, t)?);
                }
            }
            BinaryOp::Max | BinaryOp::Min => {
                // Ties go to the first operand.
                let first_wins = if op == BinaryOp::Max {
                    CmpOp::Ge
                } else {
                    CmpOp::Le
                };
                let cond = self.compare(first_wins, a, b)?;
                let zero = self.splat_like(0.0, gy)?;
                if wants[0] {
                    grads[0] = Some(self.select(cond, gy, zero)?);
                }
                if wants[1] {
                    grads[1] = Some(self.select(cond, zero, gy)?);
                }
            }
            BinaryOp::Pow => {
                if wants[0] {
                    let one = self.splat_like(1.0, b)?;
                    let b_minus_1 = self.binary(BinaryOp::Sub, b, one)?;
                    let p = self.binary(BinaryOp::Pow, a, b_minus_1)?;
                    let d = self.mul(b, p)?;
                    grads[0] = Some(self.mul(gy, d)?);
                }
                if wants[1] {
                    let log_a = self.unary(UnaryOp::Log, a)?;
                    let d = self.mul(y, log_a)?;
                    grads[1] = Some(self.mul(gy, d)?);
                }
            }
            BinaryOp::FloorDiv | BinaryOp::Rem | BinaryOp::And | BinaryOp::Or => {
                return self.not_differentiable(g, id)
            }
        }
        Ok(grads)
    }

    /// `select(cond, a, b)`: `gy` goes to the branch that was taken, zero to the other; the
    /// condition gets none.
    pub(super) fn select_grad(
        &mut self,
        cond: NodeId,
        gy: NodeId,
        wants: &[bool],
    ) -> Result<[Option<NodeId>; 3], AutodiffError> {
        let zero = self.splat_like(0.0, gy)?;
        let mut grads = [None, None, None];
        if wants[1] {
            grads[1] = Some(self.select(cond, gy, zero)?);
        }
        if wants[2] {
            grads[2] = Some(self.select(cond, zero, gy)?);
        }
        Ok(grads)
    }

    /// `cast`: the cotangent cast back to the operand's float dtype.
    pub(super) fn cast_grad(&mut self, g: &Graph, id: NodeId, gy: NodeId) -> R {
        let node = g.node(id);
        let from = g.ty(node.args[0]).dtype;
        if from == node.ty.dtype {
            Ok(gy)
        } else {
            self.add(Op::Cast { to: from }, &[gy])
        }
    }
}
