//! The recompute pass (gradient checkpointing): same gradients, copies placed in the backward,
//! and a smaller peak of live memory than keeping every forward value.

use qie_ir::eval::{eval, Tensor};
use qie_ir::passes::{
    cse, fuse, grad, plan_memory, recompute, FusionOptions, MemoryOptions, RecomputeOptions, Seeds,
    Trainable,
};
use qie_ir::testing::{random_tensor, Rng};
use qie_ir::{BinaryOp, DType, Graph, NodeId, Op, ReduceOp, TensorType, UnaryOp};
use std::collections::HashMap;
use std::sync::Arc;

const BLOCKS: usize = 4;

/// `h_{k+1} = h_k + tanh(h_k W_k) * h_k` over [64, 32] activations, four blocks with origins
/// `blocks.k`, loss = sum(h), gradients for every W_k and the input.
fn chain() -> Graph {
    let t = |dims: &[usize]| TensorType::new(DType::F32, dims);
    let mut g = Graph::new();
    let mut h = g
        .add(
            Op::Input {
                name: "x".into(),
                ty: t(&[64, 32]),
            },
            &[],
        )
        .unwrap();
    for k in 0..BLOCKS {
        let origin: Option<Arc<str>> = Some(format!("chain.qie:{k}:1 blocks.{k}.mlp").into());
        let mut add =
            |op: Op, args: &[NodeId]| g.add_with_origin(op, args, origin.clone()).unwrap();
        let w = add(
            Op::Param {
                name: format!("w{k}"),
                ty: t(&[32, 32]),
            },
            &[],
        );
        let y = add(
            Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            },
            &[h, w],
        );
        let a = add(Op::Unary(UnaryOp::Tanh), &[y]);
        let m = add(Op::Binary(BinaryOp::Mul), &[a, h]);
        h = add(Op::Binary(BinaryOp::Add), &[h, m]);
    }
    let loss = g
        .add(
            Op::Reduce {
                op: ReduceOp::Sum,
                axes: vec![0, 1].into(),
            },
            &[h],
        )
        .unwrap();
    g.set_output("loss", loss);
    let wrt = Trainable::filter(|_, _| true);
    cse(&grad(&g, &Seeds::Loss("loss".into()), &wrt).unwrap())
}

fn options() -> RecomputeOptions {
    RecomputeOptions {
        loss: "loss".into(),
        segment_prefix: "blocks.".into(),
    }
}

fn values(g: &Graph) -> HashMap<String, Tensor> {
    let mut rng = Rng::new(7);
    let mut v = HashMap::new();
    for node in &g.nodes {
        if let Op::Input { name, ty } | Op::Param { name, ty } = &node.op {
            v.insert(name.clone(), random_tensor(&mut rng, ty, 1));
        }
    }
    v
}

fn peak(g: &Graph) -> usize {
    let fusion = fuse(g, &FusionOptions::unfused());
    plan_memory(g, &fusion, &MemoryOptions::default()).peak_live_bytes
}

#[test]
fn same_gradients_less_memory() {
    let g = chain();
    let r = recompute(&g, &options());
    assert!(r.len() > g.len(), "nothing was recomputed");
    let v = values(&g);
    let a = eval(&g, &v, &|n| v.get(n).cloned()).unwrap();
    let b = eval(&r, &v, &|n| v.get(n).cloned()).unwrap();
    for (name, _) in &g.outputs {
        assert_eq!(a[name].data, b[name].data, "output {name}");
    }
    let (before, after) = (peak(&g), peak(&r));
    assert!(
        after * 10 < before * 8,
        "peak live bytes {before} -> {after}: expected at least 20% less"
    );
}

#[test]
fn copies_sit_in_the_backward_and_read_the_block_inputs() {
    let g = chain();
    let r = recompute(&g, &options());
    let loss = r.output("loss").unwrap();
    // Every copy (an op of a block that appears twice) comes after the loss: in the backward.
    let tanh: Vec<usize> = r
        .ids()
        .filter(|&id| matches!(r.node(id).op, Op::Unary(UnaryOp::Tanh)))
        .map(|id| id.index())
        .collect();
    assert_eq!(tanh.len(), 2 * BLOCKS, "one copy per block's tanh");
    assert_eq!(tanh.iter().filter(|&&i| i > loss.index()).count(), BLOCKS);
    // Without a loss output or a matching prefix the graph is unchanged.
    let mut other = options();
    other.segment_prefix = "layers.".into();
    assert_eq!(recompute(&g, &other), g);
    other = options();
    other.loss = "missing".into();
    assert_eq!(recompute(&g, &other), g);
}
