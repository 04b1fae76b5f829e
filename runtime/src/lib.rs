//! Executes compiled qie plans.
//!
//! - [`tensor`]: host tensors ([`Tensor`]).
//! - [`backend`]: the backend seam ([`Backend`], [`Executable`], [`ParamStore`], errors).
//! - [`compile`]: the passes every backend runs; [`storage`]: which values a device stores in bf16.
//! - [`bind`]: a lowered plan bound to arena offsets, shared by every backend.
//! - [`params`]: weights resident on a backend ([`ParamSet`]), updated in place.
//! - [`device`]: `--device` parsing and opening a backend ([`DeviceSpec`]).
//! - [`cpu`]: the CPU backend, the reference for the others.
//! - [`cuda`]: the CUDA backend (NVRTC kernels, cuBLASLt, flash attention); loads CUDA at run time.
//! - [`weights`]: safetensors checkpoints.

pub mod backend;
pub mod bind;
pub mod compile;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod params;
pub mod profile;
pub mod storage;
pub mod tensor;
pub mod weights;

pub use backend::{
    Backend, CompileOptions, Executable, MemoryReport, NoParams, ParamData, ParamStore, PlanStats,
    RuntimeError,
};
pub use device::DeviceSpec;
pub use params::{BackendId, ParamCopy, ParamInfo, ParamSet, ParamWrite};
pub use profile::Profile;
pub use storage::StorageMode;
pub use tensor::{Storage, Tensor, TensorData, TensorError};
