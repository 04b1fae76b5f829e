//! Graph-to-graph compiler passes. Every pass is a pure `fn(&Graph) -> Graph` that keeps the
//! outputs' names and semantics; [`run_pipeline`] chains passes and verifies the graph after each
//! one (always in debug builds, or when [`PipelineOptions::verify`] is set).

pub mod autodiff;
pub mod cse;
pub mod dce;
pub mod fusion;
pub mod memplan;
pub mod pipeline;
pub mod rebuild;
pub mod recompute;
pub mod schedule_dump;
pub mod simplify;

pub use autodiff::{grad, AutodiffError, LeafFilter, LeafKind, Seeds, Trainable};
pub use cse::cse;
pub use dce::{dce, dce_with, DceOptions};
pub use fusion::{fuse, FusionOptions};
pub use memplan::{plan_memory, validate_memory_plan, MemoryOptions};
pub use pipeline::{
    optimize, optimize_with, run_pipeline, standard_passes, Pass, PipelineError, PipelineOptions,
};
pub use rebuild::{rebuild, Rebuilder};
pub use recompute::{recompute, RecomputeOptions};
pub use schedule_dump::{dump_fusion, dump_memplan};
pub use simplify::simplify;
