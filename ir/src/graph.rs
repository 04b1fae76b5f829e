//! The SSA graph: nodes in topological order, each with its op, operands and inferred type.

use crate::infer::{infer_type, TypeError};
use crate::{DType, Op, ParamInit, TensorType};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Index of a node in [`Graph::nodes`]. Operands always have a smaller id than their user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

pub type Args = SmallVec<[NodeId; 4]>;

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub args: Args,
    pub ty: TensorType,
    /// Where the node came from (e.g. `qwen_image_dit.qie:120:9 transformer_blocks.3.attn`), for dumps
    /// and error messages. Shared between nodes to keep cloning cheap.
    pub origin: Option<Arc<str>>,
}

/// A computation graph specialised to static shapes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Named results, in declaration order.
    pub outputs: Vec<(String, NodeId)>,
    /// Initialisers of the params that declare one, by param name: how to create a weight the
    /// checkpoint lacks. A side table keyed by name, so rewriting passes keep it as it is.
    pub param_inits: BTreeMap<String, ParamInit>,
}

impl Graph {
    pub fn new() -> Self {
        Graph::default()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn ty(&self, id: NodeId) -> &TensorType {
        &self.nodes[id.index()].ty
    }

    pub fn ids(&self) -> impl DoubleEndedIterator<Item = NodeId> + ExactSizeIterator {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// Adds a node after checking its operands and inferring its type.
    pub fn add(&mut self, op: Op, args: &[NodeId]) -> Result<NodeId, TypeError> {
        self.add_with_origin(op, args, None)
    }

    pub fn add_with_origin(
        &mut self,
        op: Op,
        args: &[NodeId],
        origin: Option<Arc<str>>,
    ) -> Result<NodeId, TypeError> {
        for a in args {
            if a.index() >= self.nodes.len() {
                return Err(TypeError::new(format!(
                    "{}: operand {a} does not exist",
                    op.mnemonic()
                )));
            }
        }
        let ty = {
            let arg_types: SmallVec<[&TensorType; 4]> = args.iter().map(|a| self.ty(*a)).collect();
            infer_type(&op, &arg_types)?
        };
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            op,
            args: SmallVec::from_slice(args),
            ty,
            origin,
        });
        Ok(id)
    }

    pub fn input(&mut self, name: &str, ty: TensorType) -> NodeId {
        self.add(
            Op::Input {
                name: name.to_string(),
                ty,
            },
            &[],
        )
        .expect("inputs always type-check")
    }

    pub fn param(&mut self, name: &str, ty: TensorType) -> NodeId {
        self.add(
            Op::Param {
                name: name.to_string(),
                ty,
            },
            &[],
        )
        .expect("params always type-check")
    }

    pub fn constant(&mut self, value: f64, dtype: DType) -> NodeId {
        self.add(Op::Constant { value, dtype }, &[])
            .expect("constants always type-check")
    }

    /// The initialiser the source declares for param `name`, if any.
    pub fn param_init(&self, name: &str) -> Option<&ParamInit> {
        self.param_inits.get(name)
    }

    pub fn set_param_init(&mut self, name: &str, init: ParamInit) {
        self.param_inits.insert(name.to_string(), init);
    }

    pub fn set_output(&mut self, name: &str, id: NodeId) {
        self.outputs.push((name.to_string(), id));
    }

    pub fn output(&self, name: &str) -> Option<NodeId> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Graph inputs in node order: (name, id).
    pub fn inputs(&self) -> Vec<(&str, NodeId)> {
        self.leaves_named(|op| matches!(op, Op::Input { .. }))
    }

    /// Weights in node order: (checkpoint name, id).
    pub fn params(&self) -> Vec<(&str, NodeId)> {
        self.leaves_named(|op| matches!(op, Op::Param { .. }))
    }

    fn leaves_named(&self, keep: impl Fn(&Op) -> bool) -> Vec<(&str, NodeId)> {
        self.ids()
            .filter_map(|id| match &self.node(id).op {
                op @ (Op::Input { name, .. } | Op::Param { name, .. }) if keep(op) => {
                    Some((name.as_str(), id))
                }
                _ => None,
            })
            .collect()
    }

    /// Users of every node (ids in increasing order). Graph outputs are not counted.
    pub fn users(&self) -> Vec<SmallVec<[NodeId; 4]>> {
        let mut users: Vec<SmallVec<[NodeId; 4]>> = vec![SmallVec::new(); self.nodes.len()];
        for id in self.ids() {
            for a in &self.node(id).args {
                if users[a.index()].last() != Some(&id) {
                    users[a.index()].push(id);
                }
            }
        }
        users
    }

    /// Total FLOPs of the high-level ops (2 per multiply-add), for benchmarks and reports.
    pub fn matmul_flops(&self) -> f64 {
        self.nodes.iter().map(|n| crate::cost::flops(self, n)).sum()
    }
}
