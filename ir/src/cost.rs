//! FLOP counts of the high-level ops (2 per multiply-add), used by benchmarks and kernel manifests.

use crate::{Graph, Node, Op};

pub fn flops(graph: &Graph, node: &Node) -> f64 {
    match &node.op {
        Op::MatMul { transpose_a, .. } => {
            let a = graph.ty(node.args[0]);
            let k = if *transpose_a {
                a.shape[a.rank() - 2]
            } else {
                a.shape[a.rank() - 1]
            };
            2.0 * node.ty.numel() as f64 * k as f64
        }
        Op::Attention { .. } => {
            let q = graph.ty(node.args[0]);
            let k = graph.ty(node.args[1]);
            let (b, sq, h, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
            let sk = k.shape[1];
            let dv = node.ty.shape[3];
            2.0 * (b * h * sq * sk) as f64 * (d + dv) as f64
        }
        Op::AttentionGrad { .. } => {
            // The usual count: 2.5x the forward (S, dP, dQ, dK, dV), whatever a kernel recomputes.
            let q = graph.ty(node.args[0]);
            let k = graph.ty(node.args[1]);
            let (b, sq, h, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
            10.0 * (b * h * sq * k.shape[1]) as f64 * d as f64
        }
        Op::Conv2d { groups, .. } => {
            let w = graph.ty(node.args[1]);
            let per_out = w.shape[1] * w.shape[2] * w.shape[3];
            let _ = groups;
            2.0 * node.ty.numel() as f64 * per_out as f64
        }
        _ => 0.0,
    }
}
