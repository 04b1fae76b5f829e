//! Reverse-mode automatic differentiation as a graph transform.
//!
//! [`grad`] returns a new graph made of the original nodes (unchanged, same ids), the cotangent
//! seeds, and the backward nodes; its outputs are the original outputs followed by one
//! `grad.<leaf name>` output per selected trainable leaf. The backward graph is an ordinary graph:
//! the verifier, the optimiser, fusion and memory planning treat it like any other.
//!
//! Only nodes on a path from a selected leaf to a seeded output get a cotangent, so frozen weights
//! (e.g. the base model under LoRA training) cost no backward nodes at all. Integer and bool values
//! carry no gradient, nor do `select`'s condition, `gather`'s index and `attention`'s mask.
//! Fan-out is accumulated with `add`.
//!
//! Tie rules (documented in docs/ir.md): binary `max`/`min` route the whole cotangent to the first
//! operand when both are equal; `reduce_max`/`reduce_min` split it evenly between all positions
//! that attain the extremum (like torch `amax`). `abs` has derivative 0 at 0. `pow`'s exponent
//! gradient is `g * y * log(a)`, NaN for a negative base. `conv2d` is not differentiable yet.
//!
//! Layout: `sweep` is the driver (seeds, which nodes are active, the reverse sweep and the
//! accumulation of cotangents, the `grad.*` outputs), `leaves` selects the trainable leaves,
//! `builder` emits backward nodes, and `rules/` holds the derivative of each op family.

mod builder;
mod error;
mod leaves;
mod rules;
mod sweep;

pub use error::AutodiffError;
pub use sweep::grad;

use std::fmt;

/// Where the backward pass starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seeds {
    /// A float output with one element (typically shape `[]`); its cotangent is 1.
    Loss(String),
    /// Each listed float output `o` gets a new graph input `grad.<o>` (of `o`'s type) holding its
    /// cotangent. Outputs not listed get none.
    Cotangents(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeafKind {
    Input,
    Param,
}

/// Which leaves get a gradient output.
pub enum Trainable {
    /// Every float param (non-float params are skipped).
    AllParams,
    /// These params (each must exist and be float).
    Params(Vec<String>),
    /// These graph inputs (each must exist and be float).
    Inputs(Vec<String>),
    /// These params and these inputs.
    Leaves {
        params: Vec<String>,
        inputs: Vec<String>,
    },
    /// Every float leaf for which the predicate holds (e.g. names containing `lora_`).
    Filter(LeafFilter),
}

/// A predicate over (leaf kind, leaf name) selecting trainable leaves.
pub type LeafFilter = Box<dyn Fn(LeafKind, &str) -> bool + Send + Sync>;

impl Trainable {
    pub fn filter(f: impl Fn(LeafKind, &str) -> bool + Send + Sync + 'static) -> Self {
        Trainable::Filter(Box::new(f))
    }
}

impl fmt::Debug for Trainable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trainable::AllParams => f.write_str("AllParams"),
            Trainable::Params(p) => f.debug_tuple("Params").field(p).finish(),
            Trainable::Inputs(i) => f.debug_tuple("Inputs").field(i).finish(),
            Trainable::Leaves { params, inputs } => f
                .debug_struct("Leaves")
                .field("params", params)
                .field("inputs", inputs)
                .finish(),
            Trainable::Filter(_) => f.write_str("Filter(..)"),
        }
    }
}
