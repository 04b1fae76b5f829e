//! Which graph a plan runs: the forward pass, or forward + backward (gradients of a scalar loss).
//! The kind is part of the plan-cache key, so a training step and an inference call of equal shapes
//! get separate plans.

use super::objective::Objective;
use qie_ir::passes::{grad, AutodiffError, RecomputeOptions, Seeds, Trainable};
use qie_ir::Graph;
use qie_runtime::CompileOptions;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum GraphKind {
    /// The program's outputs.
    Forward,
    /// The program's outputs followed by `grad.<leaf>` for every leaf of the spec.
    ForwardBackward(Gradients),
}

/// Gradients of the scalar output `loss` with respect to chosen params (by the names the source
/// gives them, before any checkpoint prefix) and float inputs. With an `objective`, the loss is
/// first appended to the forward graph (and `loss` names the objective's output).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gradients {
    pub loss: String,
    pub params: Vec<String>,
    pub inputs: Vec<String>,
    pub objective: Option<Objective>,
    /// Gradient checkpointing: the module-path prefix of the recomputed segments
    /// (`transformer_blocks.` recomputes each block's forward values for its backward).
    pub checkpoint: Option<String>,
}

impl Gradients {
    /// The output holding the gradient of `leaf` (a param or input name).
    pub fn output_name(leaf: &str) -> String {
        format!("grad.{leaf}")
    }
}

impl GraphKind {
    /// The compile options of this kind's plans: `base` plus the recompute pass when the
    /// gradients are checkpointed.
    pub fn compile_options(&self, base: &CompileOptions) -> CompileOptions {
        let mut options = base.clone();
        if let GraphKind::ForwardBackward(g) = self {
            options.recompute = g.checkpoint.as_ref().map(|prefix| RecomputeOptions {
                loss: g.loss.clone(),
                segment_prefix: prefix.clone(),
            });
        }
        options
    }

    /// `forward` turned into this kind's graph.
    pub fn build(&self, mut forward: Graph) -> Result<Graph, String> {
        match self {
            GraphKind::Forward => Ok(forward),
            GraphKind::ForwardBackward(g) => {
                if let Some(objective) = &g.objective {
                    objective.append(&mut forward)?;
                }
                grad(
                    &forward,
                    &Seeds::Loss(g.loss.clone()),
                    &Trainable::Leaves {
                        params: g.params.clone(),
                        inputs: g.inputs.clone(),
                    },
                )
                .map_err(|e: AutodiffError| e.to_string())
            }
        }
    }

    /// A short label for errors ("" for the forward pass).
    pub fn label(&self) -> &'static str {
        match self {
            GraphKind::Forward => "",
            GraphKind::ForwardBackward(_) => " (forward + backward)",
        }
    }
}
