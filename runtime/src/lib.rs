//! Executes compiled qie plans.
//!
//! - [`tensor`]: host tensors ([`Tensor`]).
//! - [`backend`]: the backend seam ([`Backend`], [`Executable`], [`ParamStore`], errors).
//! - [`cpu`]: the CPU backend, the reference for the others.
//! - [`cuda`]: the CUDA backend (NVRTC kernels, cuBLASLt, flash attention); loads CUDA at run time.
//! - [`weights`]: safetensors checkpoints.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod profile;
pub mod tensor;
pub mod weights;

pub use backend::{
    Backend, CompileOptions, Executable, MemoryReport, NoParams, ParamData, ParamStore, PlanStats,
    RuntimeError,
};
pub use profile::Profile;
pub use tensor::{Storage, Tensor, TensorData, TensorError};
