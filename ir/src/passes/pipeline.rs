//! Running passes in sequence, with verification between them, and the standard `optimize`
//! pipeline (simplify -> cse -> dce, repeated to a fixed point).

use crate::passes::{cse::cse, dce::dce, simplify::simplify};
use crate::verify::{verify, VerifyError};
use crate::Graph;
use std::fmt;

/// A named graph-to-graph pass.
pub struct Pass {
    pub name: String,
    pub run: Box<dyn Fn(&Graph) -> Graph + Send + Sync>,
}

impl Pass {
    pub fn new(
        name: impl Into<String>,
        run: impl Fn(&Graph) -> Graph + Send + Sync + 'static,
    ) -> Self {
        Pass {
            name: name.into(),
            run: Box::new(run),
        }
    }
}

impl fmt::Debug for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pass({})", self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Verify the input graph and the graph after every pass, even in release builds
    /// (debug builds always verify).
    pub verify: bool,
    /// Upper bound on the rounds of `optimize_with` (each round runs simplify, cse and dce).
    pub max_rounds: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            verify: false,
            max_rounds: 8,
        }
    }
}

impl PipelineOptions {
    fn should_verify(&self) -> bool {
        self.verify || cfg!(debug_assertions)
    }
}

/// A verification failure after a pass (or of the input graph, `pass == "input"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineError {
    pub pass: String,
    pub error: VerifyError,
}

impl fmt::Display for PipelineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pass == "input" {
            write!(f, "invalid input graph: {}", self.error)
        } else {
            write!(f, "graph invalid after pass {}: {}", self.pass, self.error)
        }
    }
}

impl std::error::Error for PipelineError {}

fn check(g: &Graph, pass: &str, opts: &PipelineOptions) -> Result<(), PipelineError> {
    if opts.should_verify() {
        verify(g).map_err(|error| PipelineError {
            pass: pass.to_string(),
            error,
        })?;
    }
    Ok(())
}

/// Runs the passes in order, verifying the input and each result when verification is on.
pub fn run_pipeline(
    g: &Graph,
    passes: &[Pass],
    opts: &PipelineOptions,
) -> Result<Graph, PipelineError> {
    check(g, "input", opts)?;
    run_passes(g.clone(), passes, opts)
}

fn run_passes(
    mut current: Graph,
    passes: &[Pass],
    opts: &PipelineOptions,
) -> Result<Graph, PipelineError> {
    for pass in passes {
        current = (pass.run)(&current);
        check(&current, &pass.name, opts)?;
    }
    Ok(current)
}

/// The standard cleanup passes: simplify, cse, dce.
pub fn standard_passes() -> Vec<Pass> {
    vec![
        Pass::new("simplify", simplify),
        Pass::new("cse", cse),
        Pass::new("dce", dce),
    ]
}

/// simplify -> cse -> dce, repeated until the graph stops changing (at most `opts.max_rounds`).
pub fn optimize_with(g: &Graph, opts: &PipelineOptions) -> Result<Graph, PipelineError> {
    let passes = standard_passes();
    check(g, "input", opts)?;
    let mut current = g.clone();
    for _ in 0..opts.max_rounds.max(1) {
        let next = run_passes(current.clone(), &passes, opts)?;
        if next == current {
            break;
        }
        current = next;
    }
    Ok(current)
}

/// [`optimize_with`] with default options. Panics if the input graph or a pass result fails
/// verification (checked in debug builds only): use [`optimize_with`] to get the error instead.
pub fn optimize(g: &Graph) -> Graph {
    optimize_with(g, &PipelineOptions::default()).unwrap_or_else(|e| panic!("optimize: {e}"))
}
