//! Dead code elimination: drops every node the outputs do not depend on.

use crate::passes::rebuild::rebuild;
use crate::{Graph, NodeId, Op};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DceOptions {
    /// Keep params even when unused (default: drop them).
    pub keep_params: bool,
    /// Keep graph inputs even when unused (default: keep them, so the graph's calling interface
    /// does not change under optimisation).
    pub keep_inputs: bool,
}

impl Default for DceOptions {
    fn default() -> Self {
        DceOptions {
            keep_params: false,
            keep_inputs: true,
        }
    }
}

/// DCE with the default options: unused params are dropped, unused inputs kept.
pub fn dce(g: &Graph) -> Graph {
    dce_with(g, &DceOptions::default())
}

pub fn dce_with(g: &Graph, opts: &DceOptions) -> Graph {
    let mut live = vec![false; g.len()];
    for (_, id) in &g.outputs {
        live[id.index()] = true;
    }
    for id in (0..g.len() as u32).rev().map(NodeId) {
        let node = g.node(id);
        let keep_leaf = match node.op {
            Op::Input { .. } => opts.keep_inputs,
            Op::Param { .. } => opts.keep_params,
            _ => false,
        };
        if keep_leaf {
            live[id.index()] = true;
        }
        if live[id.index()] {
            for a in &node.args {
                live[a.index()] = true;
            }
        }
    }
    rebuild(g, |rb, old| live[old.index()].then(|| rb.copy(old)))
}
