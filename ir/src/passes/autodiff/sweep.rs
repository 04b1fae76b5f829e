//! The driver: seeds the cotangents, finds the nodes that need one, sweeps the graph backwards
//! applying each node's rule, accumulates fan-out, and adds the `grad.<leaf>` outputs.

use super::builder::Builder;
use super::leaves::select_leaves;
use super::{AutodiffError, Seeds, Trainable};
use crate::op::BinaryOp;
use crate::{Graph, NodeId, Op};
use std::sync::Arc;

/// Whether operand `pos` of `op` can carry a gradient (given that it is a float value).
fn differentiable_operand(op: &Op, pos: usize) -> bool {
    match op {
        Op::Select => pos != 0,
        Op::Gather { .. } => pos == 0,
        Op::Attention { .. } => pos < 3,
        _ => true,
    }
}

/// Differentiates `g`: see the module docs. `seeds` picks the loss (or cotangent inputs for
/// non-scalar outputs), `wrt` the leaves that get `grad.<name>` outputs. A selected leaf that does
/// not influence the seeded outputs gets a zero gradient.
pub fn grad(g: &Graph, seeds: &Seeds, wrt: &Trainable) -> Result<Graph, AutodiffError> {
    let n = g.len();
    let mut out = g.clone();

    // Seeded outputs, each with the name of its cotangent input (None: the loss, seeded with 1).
    let mut seed_outputs: Vec<(NodeId, Option<String>)> = Vec::new();
    match seeds {
        Seeds::Loss(name) => {
            let id = g
                .output(name)
                .ok_or_else(|| AutodiffError::UnknownOutput(name.clone()))?;
            let ty = g.ty(id);
            if !ty.dtype.is_float() || ty.numel() != 1 {
                return Err(AutodiffError::BadLoss {
                    name: name.clone(),
                    ty: ty.clone(),
                });
            }
            seed_outputs.push((id, None));
        }
        Seeds::Cotangents(names) => {
            let input_names: Vec<&str> = g.inputs().into_iter().map(|(name, _)| name).collect();
            for name in names {
                let id = g
                    .output(name)
                    .ok_or_else(|| AutodiffError::UnknownOutput(name.clone()))?;
                let ty = g.ty(id);
                if !ty.dtype.is_float() {
                    return Err(AutodiffError::NotFloatOutput {
                        name: name.clone(),
                        ty: ty.clone(),
                    });
                }
                let seed_name = format!("grad.{name}");
                if input_names.contains(&seed_name.as_str())
                    || seed_outputs
                        .iter()
                        .any(|(_, s)| s.as_ref() == Some(&seed_name))
                {
                    return Err(AutodiffError::NameClash(seed_name));
                }
                seed_outputs.push((id, Some(seed_name)));
            }
        }
    }

    let leaves = select_leaves(g, wrt)?;
    let mut grad_names: Vec<String> = Vec::new();
    for leaf in &leaves {
        let name = format!("grad.{}", leaf.name);
        if g.output(&name).is_some() || grad_names.contains(&name) {
            return Err(AutodiffError::NameClash(name));
        }
        grad_names.push(name);
    }

    // Which nodes depend on a selected leaf through differentiable float edges...
    let mut from_leaf = vec![false; n];
    for leaf in &leaves {
        for id in &leaf.nodes {
            from_leaf[id.index()] = true;
        }
    }
    for id in g.ids() {
        let node = g.node(id);
        if node.op.is_leaf() || !node.ty.dtype.is_float() {
            continue;
        }
        from_leaf[id.index()] = node
            .args
            .iter()
            .enumerate()
            .any(|(pos, a)| differentiable_operand(&node.op, pos) && from_leaf[a.index()]);
    }
    // ...and which ones the seeded outputs depend on.
    let mut to_seed = vec![false; n];
    for (id, _) in &seed_outputs {
        to_seed[id.index()] = true;
    }
    for id in (0..g.len() as u32).rev().map(NodeId) {
        if to_seed[id.index()] {
            for a in &g.node(id).args {
                to_seed[a.index()] = true;
            }
        }
    }
    let active: Vec<bool> = (0..n).map(|i| from_leaf[i] && to_seed[i]).collect();

    let mut builder = Builder::new(&mut out);
    let mut cotangents: Vec<Option<NodeId>> = vec![None; n];
    for (id, seed_name) in &seed_outputs {
        let ty = g.ty(*id).clone();
        let seed = match seed_name {
            Some(name) => builder.graph.input(name, ty),
            None => {
                builder.forward_node = *id;
                builder.splat(1.0, &ty)?
            }
        };
        if active[id.index()] {
            builder.accumulate(&mut cotangents, *id, seed)?;
        }
    }

    // The reverse sweep: every active node hands its cotangent on to its operands.
    for id in (0..g.len() as u32).rev().map(NodeId) {
        let Some(gy) = cotangents[id.index()] else {
            continue;
        };
        if !active[id.index()] || g.node(id).op.is_leaf() {
            continue;
        }
        builder.forward_node = id;
        builder.origin = Some(Arc::from(match &g.node(id).origin {
            Some(o) => format!("grad of {o}"),
            None => format!("grad of {id}"),
        }));
        let node = g.node(id);
        let wants: Vec<bool> = node
            .args
            .iter()
            .enumerate()
            .map(|(pos, a)| differentiable_operand(&node.op, pos) && active[a.index()])
            .collect();
        let grads = builder.rule(g, id, gy, &wants)?;
        for (pos, grad) in grads.into_iter().enumerate() {
            if let Some(grad) = grad {
                debug_assert!(wants[pos]);
                builder.accumulate(&mut cotangents, node.args[pos], grad)?;
            }
        }
    }

    // One output per leaf: the sum over the nodes declaring it, zero when none was reached.
    builder.origin = None;
    let mut grad_outputs = Vec::with_capacity(leaves.len());
    for (leaf, name) in leaves.iter().zip(grad_names) {
        let mut total: Option<NodeId> = None;
        for id in &leaf.nodes {
            if let Some(c) = cotangents[id.index()] {
                builder.forward_node = *id;
                total = Some(match total {
                    Some(t) => builder.binary(BinaryOp::Add, t, c)?,
                    None => c,
                });
            }
        }
        let value = match total {
            Some(t) => t,
            None => {
                builder.forward_node = leaf.nodes[0];
                let ty = g.ty(leaf.nodes[0]).clone();
                builder.splat(0.0, &ty)?
            }
        };
        grad_outputs.push((name, value));
    }
    for (name, value) in grad_outputs {
        out.set_output(&name, value);
    }
    Ok(out)
}
