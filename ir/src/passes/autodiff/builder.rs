//! [`Builder`]: emits backward nodes into the graph being built.

use super::AutodiffError;
use crate::op::{BinaryOp, CmpOp, ReduceOp, UnaryOp};
use crate::{Graph, NodeId, Op, Shape, TensorType};
use std::sync::Arc;

/// Emits backward nodes into the graph, attributing errors and origins to the forward node whose
/// gradient is being built.
pub(super) struct Builder<'a> {
    pub graph: &'a mut Graph,
    /// The forward node whose gradient is being built (named by `Internal` errors).
    pub forward_node: NodeId,
    /// The origin given to every emitted node (`grad of <forward origin>`).
    pub origin: Option<Arc<str>>,
}

/// A new node, or why a rule could not build it.
pub(super) type R = Result<NodeId, AutodiffError>;

impl<'a> Builder<'a> {
    pub fn new(graph: &'a mut Graph) -> Self {
        Builder {
            graph,
            forward_node: NodeId(0),
            origin: None,
        }
    }

    pub fn add(&mut self, op: Op, args: &[NodeId]) -> R {
        self.graph
            .add_with_origin(op, args, self.origin.clone())
            .map_err(|e| AutodiffError::Internal {
                node: self.forward_node,
                message: e.message,
            })
    }

    pub fn ty(&self, id: NodeId) -> TensorType {
        self.graph.ty(id).clone()
    }

    /// Adds `grad` to the cotangent of `target` (fan-out sums).
    pub fn accumulate(
        &mut self,
        cotangents: &mut [Option<NodeId>],
        target: NodeId,
        grad: NodeId,
    ) -> Result<(), AutodiffError> {
        cotangents[target.index()] = Some(match cotangents[target.index()] {
            Some(prev) => self.binary(BinaryOp::Add, prev, grad)?,
            None => grad,
        });
        Ok(())
    }

    /// A tensor of type `ty` filled with `value`.
    pub fn splat(&mut self, value: f64, ty: &TensorType) -> R {
        let c = self.add(
            Op::Constant {
                value,
                dtype: ty.dtype,
            },
            &[],
        )?;
        if ty.rank() == 0 {
            Ok(c)
        } else {
            self.add(
                Op::Broadcast {
                    shape: ty.shape.clone(),
                },
                &[c],
            )
        }
    }

    pub fn splat_like(&mut self, value: f64, like: NodeId) -> R {
        let ty = self.ty(like);
        self.splat(value, &ty)
    }

    pub fn unary(&mut self, op: UnaryOp, x: NodeId) -> R {
        self.add(Op::Unary(op), &[x])
    }

    pub fn binary(&mut self, op: BinaryOp, x: NodeId, y: NodeId) -> R {
        self.add(Op::Binary(op), &[x, y])
    }

    pub fn mul(&mut self, x: NodeId, y: NodeId) -> R {
        self.binary(BinaryOp::Mul, x, y)
    }

    pub fn compare(&mut self, op: CmpOp, x: NodeId, y: NodeId) -> R {
        self.add(Op::Compare(op), &[x, y])
    }

    pub fn select(&mut self, cond: NodeId, x: NodeId, y: NodeId) -> R {
        self.add(Op::Select, &[cond, x, y])
    }

    pub fn reshape(&mut self, x: NodeId, shape: &[usize]) -> R {
        if self.graph.ty(x).shape.as_slice() == shape {
            return Ok(x);
        }
        self.add(
            Op::Reshape {
                shape: Shape::from_slice(shape),
            },
            &[x],
        )
    }

    pub fn broadcast(&mut self, x: NodeId, shape: &[usize]) -> R {
        if self.graph.ty(x).shape.as_slice() == shape {
            return Ok(x);
        }
        self.add(
            Op::Broadcast {
                shape: Shape::from_slice(shape),
            },
            &[x],
        )
    }

    pub fn transpose(&mut self, x: NodeId, perm: &[usize]) -> R {
        self.add(
            Op::Transpose {
                perm: Shape::from_slice(perm),
            },
            &[x],
        )
    }

    pub fn transpose_last2(&mut self, x: NodeId) -> R {
        let r = self.graph.ty(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.transpose(x, &perm)
    }

    pub fn reduce(&mut self, op: ReduceOp, x: NodeId, axes: &[usize]) -> R {
        if axes.is_empty() {
            return Ok(x);
        }
        self.add(
            Op::Reduce {
                op,
                axes: Shape::from_slice(axes),
            },
            &[x],
        )
    }

    pub fn matmul(&mut self, a: NodeId, b: NodeId, transpose_a: bool, transpose_b: bool) -> R {
        self.add(
            Op::MatMul {
                transpose_a,
                transpose_b,
            },
            &[a, b],
        )
    }

    /// Broadcasts a value reduced over `axes` back to `shape` (the unreduced shape).
    pub fn unreduce(&mut self, v: NodeId, axes: &[usize], shape: &[usize]) -> R {
        let keep: Shape = (0..shape.len())
            .map(|i| if axes.contains(&i) { 1 } else { shape[i] })
            .collect();
        let r = self.reshape(v, &keep)?;
        self.broadcast(r, shape)
    }

    pub fn not_differentiable<T>(&self, g: &Graph, id: NodeId) -> Result<T, AutodiffError> {
        let node = g.node(id);
        Err(AutodiffError::NotDifferentiable {
            node: id,
            op: node.op.mnemonic(),
            origin: node.origin.as_deref().map(str::to_string),
        })
    }
}
