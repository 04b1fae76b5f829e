//! Options every model driver takes: where plans run, the precision weights are used at, an
//! optional source override (architecture variants) and compiler options.

use qie_runtime::{Backend, CompileOptions};
use std::path::PathBuf;
use std::sync::Arc;

/// Precision the weights are used at. The CPU computes in f32 either way; `Bf16` rounds every weight
/// to bf16 first, which is what running a bf16 checkpoint on a GPU sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightPrecision {
    #[default]
    F32,
    Bf16,
}

#[derive(Clone, Default)]
pub struct ModelOptions {
    /// Where plans run; None = the CPU reference backend.
    pub backend: Option<Arc<dyn Backend>>,
    pub precision: WeightPrecision,
    /// A `.qie` file to use instead of the bundled source (variants).
    pub source: Option<PathBuf>,
    pub compile: CompileOptions,
    /// Seed of the weights a checkpoint lacks and the source's initialisers create (a
    /// variant's new parameters, LoRA factors); read by the DiT. Default 0.
    pub init_seed: u64,
}

impl ModelOptions {
    /// The backend plans run on (the CPU reference when none was chosen).
    pub fn backend_or_cpu(&self) -> Arc<dyn Backend> {
        self.backend
            .clone()
            .unwrap_or_else(|| Arc::new(qie_runtime::cpu::CpuBackend))
    }
}
