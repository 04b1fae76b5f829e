//! The IR op set. Documented in docs/ir.md; every rule here is enforced by `infer::infer_type`.
//!
//! Design: a small set of primitives (elementwise, reductions, views, data movement) that fusion can
//! group freely, plus a few high-level ops kept whole because backends have better kernels for them
//! (`MatMul`, `Attention`, `Conv2d`). Binary and select ops require identical operand shapes:
//! broadcasting is always an explicit `Broadcast` node, which keeps autodiff and codegen simple.

use crate::{DType, Shape, TensorType};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    /// Logical not for bool tensors.
    Not,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
    /// Integer division rounding toward negative infinity (ints only).
    FloorDiv,
    /// Remainder with the sign of the divisor (ints only).
    Rem,
    And,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A runtime input of the graph, bound by name at each call.
    Input {
        name: String,
        ty: TensorType,
    },
    /// A weight, bound by checkpoint tensor name (e.g. `transformer_blocks.3.attn.to_q.weight`).
    Param {
        name: String,
        ty: TensorType,
    },
    /// A scalar constant (shape []); broadcast explicitly to use it with tensors.
    Constant {
        value: f64,
        dtype: DType,
    },
    /// `out[i0, .., in] = i_axis` for the given shape.
    Iota {
        shape: Shape,
        axis: usize,
        dtype: DType,
    },
    Unary(UnaryOp),
    /// Two operands of identical type; Pow/FloorDiv/Rem/And/Or restricted by dtype (see infer).
    Binary(BinaryOp),
    /// Two operands of identical type; result is bool.
    Compare(CmpOp),
    /// `select(cond: bool, a, b)`, all three the same shape.
    Select,
    Cast {
        to: DType,
    },
    /// Reduces over `axes` (sorted, unique), removing them from the shape.
    Reduce {
        op: ReduceOp,
        axes: Shape,
    },
    /// Same number of elements, row-major reinterpretation.
    Reshape {
        shape: Shape,
    },
    /// Numpy broadcasting: operand dims are right-aligned with `shape`; each is 1 or equal.
    Broadcast {
        shape: Shape,
    },
    /// `out.shape[i] = in.shape[perm[i]]`.
    Transpose {
        perm: Shape,
    },
    /// `out = in[.., start..end, ..]` on one axis.
    Slice {
        axis: usize,
        start: usize,
        end: usize,
    },
    /// Concatenation of all operands (same dtype, equal dims except `axis`).
    Concat {
        axis: usize,
    },
    /// `gather(table, index)`: picks entries of `table` along `axis` with integer `index`;
    /// out.shape = table.shape[..axis] ++ index.shape ++ table.shape[axis+1..].
    Gather {
        axis: usize,
    },
    /// Batched matmul: a [.., M, K] (or [.., K, M] if transpose_a), b [.., K, N] (or [.., N, K]).
    /// b is either rank 2 (shared by every batch) or has the same batch dims as a.
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    /// softmax(q k^T * scale + mask) v over layout [B, S, H, D] for q/k/v.
    /// Operands: q [B, Sq, H, D], k [B, Sk, H, D], v [B, Sk, H, Dv], optional key mask [B, Sk] bool
    /// (true = attend). Output [B, Sq, H, Dv].
    Attention {
        scale: f64,
    },
    /// The gradients of `attention(q, k, v, mask)` for the output cotangent `dout`, packed along
    /// the sequence axis. Operands q [B, Sq, H, D], k [B, Sk, H, D], v [B, Sk, H, D], dout
    /// [B, Sq, H, D], optional key mask [B, Sk]; output [B, Sq + 2 Sk, H, D] = dq | dk | dv.
    /// One op so that no backend stores the [Sq, Sk] probabilities: each recomputes them from
    /// q and k block by block (flash-attention backward).
    AttentionGrad {
        scale: f64,
    },
    /// 2D convolution, NCHW: x [N, C, H, W], w [O, C/groups, KH, KW]. No bias (add it explicitly).
    Conv2d {
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
        groups: usize,
    },
}

impl Op {
    /// Short mnemonic used by the printer and error messages.
    pub fn mnemonic(&self) -> String {
        match self {
            Op::Input { .. } => "input".into(),
            Op::Param { .. } => "param".into(),
            Op::Constant { .. } => "const".into(),
            Op::Iota { .. } => "iota".into(),
            Op::Unary(u) => format!("{u:?}").to_lowercase(),
            Op::Binary(b) => format!("{b:?}").to_lowercase(),
            Op::Compare(c) => format!("{c:?}").to_lowercase(),
            Op::Select => "select".into(),
            Op::Cast { .. } => "cast".into(),
            Op::Reduce { op, .. } => format!("reduce_{op:?}").to_lowercase(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Broadcast { .. } => "broadcast".into(),
            Op::Transpose { .. } => "transpose".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Gather { .. } => "gather".into(),
            Op::MatMul { .. } => "matmul".into(),
            Op::Attention { .. } => "attention".into(),
            Op::AttentionGrad { .. } => "attention_grad".into(),
            Op::Conv2d { .. } => "conv2d".into(),
        }
    }

    /// True for ops computed independently per output element from same-index operand elements.
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select | Op::Cast { .. }
        )
    }

    /// True for ops that only move or re-index data (no arithmetic).
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            Op::Reshape { .. } | Op::Broadcast { .. } | Op::Transpose { .. } | Op::Slice { .. }
        )
    }

    /// True for graph leaves (no operands).
    pub fn is_leaf(&self) -> bool {
        matches!(
            self,
            Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } | Op::Iota { .. }
        )
    }

    /// The high-level ops a backend implements with a dedicated kernel.
    pub fn is_library_call(&self) -> bool {
        matches!(
            self,
            Op::MatMul { .. } | Op::Attention { .. } | Op::AttentionGrad { .. } | Op::Conv2d { .. }
        )
    }
}
