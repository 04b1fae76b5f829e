//! Gradient checkpointing: the backward reads forward values of a checkpointed segment (a
//! transformer block) from copies recomputed just before they are first needed, so the
//! originals die inside the forward and only the segments' outputs stay alive until the
//! backward reaches them.
//!
//! Run it after CSE (which would merge the copies back into the originals) and before fusion.
//!
//! - Forward nodes: the ancestors of the loss output. Everything else is backward.
//! - A node's segment: its origin's module path cut after the component that follows
//!   `segment_prefix` (`transformer_blocks.` gives `transformer_blocks.7` for
//!   `... transformer_blocks.7.attn.to_q`).
//! - Recomputed: forward nodes in a segment that are not leaves and whose forward consumers all
//!   lie in the same segment (a segment's outputs are its checkpoints and stay). A copy reads
//!   the originals of everything that is not recomputed (the segment's inputs, weights).

use super::rebuild::Rebuilder;
use crate::{Graph, NodeId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecomputeOptions {
    /// The output whose ancestors are the forward pass.
    pub loss: String,
    /// Module-path prefix of the segments (`transformer_blocks.`).
    pub segment_prefix: String,
}

/// The segment of an origin (`file:line:col module.path`), if its path is inside one.
pub fn segment_of<'a>(origin: &'a str, prefix: &str) -> Option<&'a str> {
    let path = origin.rsplit(' ').next()?;
    let rest = path.strip_prefix(prefix)?;
    let end = rest.find('.').unwrap_or(rest.len());
    (end > 0).then(|| &path[..prefix.len() + end])
}

/// The graph with checkpointed segments recomputed for the backward (see the module docs).
/// Unchanged when the loss output is missing or nothing is recomputable.
pub fn recompute(g: &Graph, opts: &RecomputeOptions) -> Graph {
    let Some(loss) = g.output(&opts.loss) else {
        return g.clone();
    };
    let n = g.len();
    let mut forward = vec![false; n];
    forward[loss.index()] = true;
    for id in (0..n).rev() {
        if forward[id] {
            for a in &g.nodes[id].args {
                forward[a.index()] = true;
            }
        }
    }
    let segment: Vec<Option<&str>> = g
        .nodes
        .iter()
        .map(|node| {
            node.origin
                .as_deref()
                .and_then(|o| segment_of(o, &opts.segment_prefix))
        })
        .collect();
    let mut recomputable: Vec<bool> = (0..n)
        .map(|i| forward[i] && segment[i].is_some() && !g.nodes[i].op.is_leaf())
        .collect();
    let mut used_by_backward = vec![false; n];
    for (id, node) in g.nodes.iter().enumerate() {
        for a in &node.args {
            let a = a.index();
            if !forward[id] {
                used_by_backward[a] = true;
            } else if segment[id] != segment[a] {
                recomputable[a] = false; // a segment output: the checkpoint
            }
        }
    }
    if !(0..n).any(|i| recomputable[i] && used_by_backward[i]) {
        return g.clone();
    }
    // Graph outputs other than the loss keep their originals.
    for (_, id) in &g.outputs {
        recomputable[id.index()] = false;
    }

    let mut rb = Rebuilder::new(g);
    let mut copies: Vec<Option<NodeId>> = vec![None; n];
    for id in g.ids() {
        if !forward[id.index()] {
            for &a in &g.node(id).args {
                if recomputable[a.index()] {
                    emit_copy(g, &mut rb, &recomputable, &mut copies, a);
                }
            }
            let node = g.node(id);
            let args: Vec<NodeId> = node
                .args
                .iter()
                .map(|a| copies[a.index()].unwrap_or_else(|| rb.map(*a)))
                .collect();
            let new = rb.add(node.op.clone(), &args, node.origin.clone());
            rb.set(id, new);
        } else {
            rb.copy(id);
        }
    }
    rb.finish()
}

/// Emits the recomputed copy of `id` (and of the recomputable operands it needs), once.
fn emit_copy(
    g: &Graph,
    rb: &mut Rebuilder,
    recomputable: &[bool],
    copies: &mut [Option<NodeId>],
    id: NodeId,
) -> NodeId {
    if let Some(c) = copies[id.index()] {
        return c;
    }
    // Iterative post-order: segments are thousands of nodes deep.
    let mut stack = vec![(id, false)];
    while let Some((x, expanded)) = stack.pop() {
        if copies[x.index()].is_some() {
            continue;
        }
        let node = g.node(x);
        if !expanded {
            stack.push((x, true));
            for &a in &node.args {
                if recomputable[a.index()] && copies[a.index()].is_none() {
                    stack.push((a, false));
                }
            }
            continue;
        }
        let args: Vec<NodeId> = node
            .args
            .iter()
            .map(|a| copies[a.index()].unwrap_or_else(|| rb.map(*a)))
            .collect();
        copies[x.index()] = Some(rb.add(node.op.clone(), &args, node.origin.clone()));
    }
    copies[id.index()].expect("emitted")
}

#[cfg(test)]
mod tests {
    use super::segment_of;

    #[test]
    fn segments_from_origins() {
        let p = "transformer_blocks.";
        assert_eq!(
            segment_of("dit.qie:12:3 transformer_blocks.7.attn.to_q", p),
            Some("transformer_blocks.7")
        );
        assert_eq!(
            segment_of("dit.qie:12:3 transformer_blocks.12", p),
            Some("transformer_blocks.12")
        );
        assert_eq!(segment_of("dit.qie:12:3 proj_out", p), None);
        assert_eq!(segment_of("dit.qie:12:3 transformer_blocks.", p), None);
    }
}
