//! [`AutodiffError`]: why a graph could not be differentiated.

use super::LeafKind;
use crate::{NodeId, TensorType};
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutodiffError {
    UnknownOutput(String),
    /// The loss output is not a float tensor with exactly one element.
    BadLoss {
        name: String,
        ty: TensorType,
    },
    /// A cotangent seed on a non-float output.
    NotFloatOutput {
        name: String,
        ty: TensorType,
    },
    UnknownLeaf {
        kind: LeafKind,
        name: String,
    },
    /// An explicitly selected leaf is not a float tensor.
    NotFloatLeaf {
        kind: LeafKind,
        name: String,
        ty: TensorType,
    },
    /// A generated name (`grad.<name>`) is already taken.
    NameClash(String),
    /// An op on a path from a trainable leaf to the loss has no gradient rule.
    NotDifferentiable {
        node: NodeId,
        op: String,
        origin: Option<String>,
    },
    /// A gradient rule built an ill-typed node (a bug in this module).
    Internal {
        node: NodeId,
        message: String,
    },
}

impl fmt::Display for AutodiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AutodiffError::UnknownOutput(n) => write!(f, "no output named \"{n}\""),
            AutodiffError::BadLoss { name, ty } => {
                write!(
                    f,
                    "loss \"{name}\" must be a float tensor with one element, got {ty}"
                )
            }
            AutodiffError::NotFloatOutput { name, ty } => {
                write!(
                    f,
                    "output \"{name}\" is {ty}: only float outputs take cotangents"
                )
            }
            AutodiffError::UnknownLeaf { kind, name } => write!(f, "no {kind:?} named \"{name}\""),
            AutodiffError::NotFloatLeaf { kind, name, ty } => {
                write!(
                    f,
                    "{kind:?} \"{name}\" is {ty}: only float leaves are trainable"
                )
            }
            AutodiffError::NameClash(n) => write!(f, "name \"{n}\" is already used in the graph"),
            AutodiffError::NotDifferentiable { node, op, origin } => {
                write!(f, "node {node} ({op})")?;
                if let Some(o) = origin {
                    write!(f, " at {o}")?;
                }
                write!(f, " is not yet differentiable")
            }
            AutodiffError::Internal { node, message } => {
                write!(f, "internal error in the gradient of {node}: {message}")
            }
        }
    }
}

impl std::error::Error for AutodiffError {}
