//! Which leaves (graph inputs and params) get a `grad.<name>` output.

use super::{AutodiffError, LeafKind, Trainable};
use crate::{Graph, NodeId, Op};
use std::collections::HashMap;

/// A selected leaf: its name and every node declaring it (a param may be declared twice).
pub(super) struct Leaf {
    pub name: String,
    pub nodes: Vec<NodeId>,
}

pub(super) fn select_leaves(g: &Graph, wrt: &Trainable) -> Result<Vec<Leaf>, AutodiffError> {
    let mut by_name: Vec<(LeafKind, String, Vec<NodeId>)> = Vec::new();
    let mut index: HashMap<(LeafKind, String), usize> = HashMap::new();
    for id in g.ids() {
        let (kind, name) = match &g.node(id).op {
            Op::Input { name, .. } => (LeafKind::Input, name),
            Op::Param { name, .. } => (LeafKind::Param, name),
            _ => continue,
        };
        let key = (kind, name.clone());
        match index.get(&key) {
            Some(&i) => by_name[i].2.push(id),
            None => {
                index.insert(key, by_name.len());
                by_name.push((kind, name.clone(), vec![id]));
            }
        }
    }
    let float = |nodes: &[NodeId]| g.ty(nodes[0]).dtype.is_float();
    let mut chosen: Vec<Leaf> = Vec::new();
    let pick_named =
        |kind: LeafKind, names: &[String], chosen: &mut Vec<Leaf>| -> Result<(), AutodiffError> {
            for name in names {
                let i = *index.get(&(kind, name.clone())).ok_or_else(|| {
                    AutodiffError::UnknownLeaf {
                        kind,
                        name: name.clone(),
                    }
                })?;
                let nodes = &by_name[i].2;
                if !float(nodes) {
                    return Err(AutodiffError::NotFloatLeaf {
                        kind,
                        name: name.clone(),
                        ty: g.ty(nodes[0]).clone(),
                    });
                }
                chosen.push(Leaf {
                    name: name.clone(),
                    nodes: nodes.clone(),
                });
            }
            Ok(())
        };
    match wrt {
        Trainable::Params(names) => pick_named(LeafKind::Param, names, &mut chosen)?,
        Trainable::Inputs(names) => pick_named(LeafKind::Input, names, &mut chosen)?,
        Trainable::Leaves { params, inputs } => {
            pick_named(LeafKind::Param, params, &mut chosen)?;
            pick_named(LeafKind::Input, inputs, &mut chosen)?;
        }
        Trainable::AllParams | Trainable::Filter(_) => {
            for (kind, name, nodes) in &by_name {
                let keep = match wrt {
                    Trainable::AllParams => *kind == LeafKind::Param,
                    Trainable::Filter(f) => f(*kind, name),
                    _ => unreachable!(),
                };
                if keep && float(nodes) {
                    chosen.push(Leaf {
                        name: name.clone(),
                        nodes: nodes.clone(),
                    });
                }
            }
        }
    }
    Ok(chosen)
}
