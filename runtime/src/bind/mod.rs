//! A lowered plan bound to arena offsets: the layer between the compiler's plan and a backend.
//!
//! Every backend binds the same way: the [`Binder`] gives each value of the lowered groups its
//! buffer ([`BufRef`]: an arena slot of the memory plan, a weight, or group scratch after the
//! plan region), the [`checks`] guard aliasing and bounds, and [`bind_plan`] walks the groups,
//! handing each step to the backend's [`StepLowering`], which turns it into the backend's own
//! steps (interpreter kernels on the CPU, NVRTC kernels and cuBLASLt calls on CUDA). At run
//! time, [`validate`] checks what the caller binds before any memory is touched.

mod binder;
mod buf;
pub mod checks;
mod lowering;
pub mod validate;

pub use binder::{param_specs, Binder, IoSlot, ParamSlot};
pub use buf::BufRef;
pub use lowering::{
    bind_plan, AttentionCall, BoundPlan, Conv2dCall, MatMulCall, StepLowering, StepSite,
};

use crate::backend::PlanStats;
use qie_ir::plan::{FusionPlan, GroupKind, MemoryPlan};

/// Sizes and counts of a bound plan (`kernels`: the backend's launches).
pub fn plan_stats(
    fusion: &FusionPlan,
    memory: &MemoryPlan,
    scratch_bytes: usize,
    kernels: usize,
) -> PlanStats {
    let count = |k: GroupKind| fusion.groups.iter().filter(|g| g.kind == k).count();
    PlanStats {
        arena_bytes: memory.arena_bytes,
        scratch_bytes,
        groups: fusion.groups.len(),
        elementwise_groups: count(GroupKind::Elementwise),
        reduction_groups: count(GroupKind::Reduction),
        library_groups: count(GroupKind::Library),
        data_groups: count(GroupKind::Data),
        alias_groups: count(GroupKind::Alias),
        kernels,
    }
}
