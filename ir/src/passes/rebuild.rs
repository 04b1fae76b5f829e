//! Rebuilding a graph through a node remapping: the common skeleton of every rewriting pass.
//!
//! A pass walks the source graph in node order and, for each old node, either maps it to a node
//! already in the new graph (a replacement), emits new nodes, or drops it. Operands are always
//! translated through the mapping, and outputs are remapped at the end.

use crate::{Args, Graph, NodeId, Op};
use std::sync::Arc;

/// Builds a new graph from `src`, tracking where each old node went.
pub struct Rebuilder<'g> {
    pub src: &'g Graph,
    pub dst: Graph,
    map: Vec<Option<NodeId>>,
}

impl<'g> Rebuilder<'g> {
    pub fn new(src: &'g Graph) -> Self {
        let mut dst = Graph::new();
        dst.param_inits = src.param_inits.clone();
        Rebuilder {
            src,
            dst,
            map: vec![None; src.len()],
        }
    }

    /// Where an old node went, if it was kept or replaced.
    pub fn get(&self, old: NodeId) -> Option<NodeId> {
        self.map[old.index()]
    }

    /// Where an old node went. Panics if it was dropped or not processed yet.
    pub fn map(&self, old: NodeId) -> NodeId {
        self.map[old.index()]
            .unwrap_or_else(|| panic!("rebuild: {old} was dropped or is not mapped yet"))
    }

    /// Records that the old node `old` is now `new` (a node of [`Self::dst`]).
    pub fn set(&mut self, old: NodeId, new: NodeId) {
        debug_assert_eq!(
            self.src.ty(old),
            self.dst.ty(new),
            "rebuild: replacement of {old} changes its type"
        );
        self.map[old.index()] = Some(new);
    }

    /// The operands of an old node, translated into new ids.
    pub fn mapped_args(&self, old: NodeId) -> Args {
        self.src
            .node(old)
            .args
            .iter()
            .map(|a| self.map(*a))
            .collect()
    }

    /// Adds a node to the new graph (operands are new ids). Panics on a type error: a pass that
    /// builds an ill-typed node is a bug.
    pub fn add(&mut self, op: Op, args: &[NodeId], origin: Option<Arc<str>>) -> NodeId {
        let mnemonic = op.mnemonic();
        self.dst
            .add_with_origin(op, args, origin)
            .unwrap_or_else(|e| panic!("rebuild: pass built an ill-typed {mnemonic} node: {e}"))
    }

    /// Copies an old node with its operands remapped, records the mapping and returns the new id.
    pub fn copy(&mut self, old: NodeId) -> NodeId {
        let args = self.mapped_args(old);
        let node = self.src.node(old);
        let new = self.add(node.op.clone(), &args, node.origin.clone());
        self.map[old.index()] = Some(new);
        new
    }

    /// Finishes the new graph with the source's outputs remapped. Panics if an output's node was
    /// dropped.
    pub fn finish(mut self) -> Graph {
        self.dst.outputs = self
            .src
            .outputs
            .iter()
            .map(|(name, id)| (name.clone(), self.map(*id)))
            .collect();
        self.dst
    }
}

/// Rebuilds `src` by calling `f` on every old node in order. `f` returns the node's new id (after
/// emitting whatever it needs through the rebuilder) or `None` to drop it.
pub fn rebuild(src: &Graph, mut f: impl FnMut(&mut Rebuilder, NodeId) -> Option<NodeId>) -> Graph {
    let mut rb = Rebuilder::new(src);
    for old in src.ids() {
        if let Some(new) = f(&mut rb, old) {
            rb.set(old, new);
        }
    }
    rb.finish()
}
