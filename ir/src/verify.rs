//! The IR verifier: checks every structural invariant of a [`Graph`] (listed in docs/ir.md).
//! The pass pipeline runs it after every pass in debug builds or when asked to.

use crate::{infer_type, DType, Graph, NodeId, Op, TensorType};
use std::collections::HashMap;
use std::fmt;

/// A violated invariant. `node` is `None` for graph-level problems (e.g. no outputs); for output
/// problems it is the node the output refers to when that node exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    pub node: Option<NodeId>,
    /// Mnemonic of the offending node's op.
    pub op: Option<String>,
    pub origin: Option<String>,
    pub message: String,
}

impl VerifyError {
    fn graph(message: impl Into<String>) -> Self {
        VerifyError {
            node: None,
            op: None,
            origin: None,
            message: message.into(),
        }
    }

    fn at(g: &Graph, id: NodeId, message: impl Into<String>) -> Self {
        let node = g.node(id);
        VerifyError {
            node: Some(id),
            op: Some(node.op.mnemonic()),
            origin: node.origin.as_deref().map(str::to_string),
            message: message.into(),
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(id) = self.node {
            write!(f, "node {id}")?;
            if let Some(op) = &self.op {
                write!(f, " ({op})")?;
            }
            if let Some(origin) = &self.origin {
                write!(f, " at {origin}")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for VerifyError {}

const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// Checks every invariant of the graph; returns the first violation found (in node order, then
/// outputs).
///
/// Invariants:
/// 1. every operand id is in range and smaller than its user's id (topological order, no cycles);
/// 2. every node's stored type equals `infer_type(op, operand types)` (so the op's own typing
///    rules hold: arity, dtypes, shapes, attributes);
/// 3. constants hold a value representable in their dtype (integers for i32/i64, 0/1 for bool);
/// 4. input names are non-empty and unique; param names are non-empty, and a param name declared
///    more than once always has the same type;
/// 5. there is at least one output; output names are non-empty and unique; outputs refer to
///    existing nodes.
pub fn verify(g: &Graph) -> Result<(), VerifyError> {
    let n = g.len();
    let mut input_names: HashMap<&str, NodeId> = HashMap::new();
    let mut param_types: HashMap<&str, (NodeId, &TensorType)> = HashMap::new();
    for id in g.ids() {
        let node = g.node(id);
        for (i, a) in node.args.iter().enumerate() {
            if a.index() >= n {
                return Err(VerifyError::at(
                    g,
                    id,
                    format!(
                        "operand {i} refers to {a}, which does not exist (graph has {n} nodes)"
                    ),
                ));
            }
            if *a >= id {
                return Err(VerifyError::at(
                    g,
                    id,
                    format!("operand {i} refers to {a}, which is not defined before its use"),
                ));
            }
        }
        let arg_types: Vec<&TensorType> = node.args.iter().map(|a| g.ty(*a)).collect();
        match infer_type(&node.op, &arg_types) {
            Err(e) => return Err(VerifyError::at(g, id, format!("ill-typed: {e}"))),
            Ok(ty) if ty != node.ty => {
                return Err(VerifyError::at(
                    g,
                    id,
                    format!("stored type {} differs from inferred type {ty}", node.ty),
                ))
            }
            Ok(_) => {}
        }
        match &node.op {
            Op::Input { name, .. } => {
                if name.is_empty() {
                    return Err(VerifyError::at(g, id, "input has an empty name"));
                }
                if let Some(prev) = input_names.insert(name, id) {
                    return Err(VerifyError::at(
                        g,
                        id,
                        format!("input name \"{name}\" is already used by {prev}"),
                    ));
                }
            }
            Op::Param { name, ty } => {
                if name.is_empty() {
                    return Err(VerifyError::at(g, id, "param has an empty name"));
                }
                if let Some((prev, prev_ty)) = param_types.insert(name, (id, ty)) {
                    if prev_ty != ty {
                        return Err(VerifyError::at(
                            g,
                            id,
                            format!(
                                "param \"{name}\" declared as {ty} here but as {prev_ty} at {prev}"
                            ),
                        ));
                    }
                }
            }
            Op::Constant { value, dtype } => {
                let ok = match dtype {
                    DType::I32 => {
                        value.fract() == 0.0 && (i32::MIN as f64..=i32::MAX as f64).contains(value)
                    }
                    DType::I64 => value.fract() == 0.0 && (-TWO_63..TWO_63).contains(value),
                    DType::Bool => *value == 0.0 || *value == 1.0,
                    _ => true,
                };
                if !ok {
                    return Err(VerifyError::at(
                        g,
                        id,
                        format!("constant {value} is not a valid {dtype} value"),
                    ));
                }
            }
            _ => {}
        }
    }
    if g.outputs.is_empty() {
        return Err(VerifyError::graph("graph has no outputs"));
    }
    let mut output_names: HashMap<&str, NodeId> = HashMap::new();
    for (name, id) in &g.outputs {
        if id.index() >= n {
            return Err(VerifyError::graph(format!(
                "output \"{name}\" refers to {id}, which does not exist (graph has {n} nodes)"
            )));
        }
        if name.is_empty() {
            return Err(VerifyError::at(g, *id, "output has an empty name"));
        }
        if output_names.insert(name, *id).is_some() {
            return Err(VerifyError::at(
                g,
                *id,
                format!("output name \"{name}\" is used twice"),
            ));
        }
    }
    Ok(())
}
