//! CUDA backend foundations: device discovery, NVRTC kernels with an on-disk cache, one device
//! arena per plan, cuBLASLt GEMMs with fused epilogues, and a fused flash-attention kernel.
//!
//! Everything CUDA is loaded at run time (cudarc `dynamic-loading`), so this module builds on
//! machines without CUDA, and a binary built there runs on GPU machines. Without a driver or a
//! device every entry point returns [`CudaError::Unavailable`] with the reason; nothing panics.
//!
//! Pointers are raw ([`DevPtr`]): memory comes from an [`Arena`] or a [`WeightPool`] that the
//! caller keeps alive while work using it is in flight. All work of a [`CudaDevice`] is queued
//! on its one stream, in order.
//!
//! [`CudaBackend`] puts it together as a [`crate::Backend`]: generated kernels
//! (`qie_codegen::cuda`), cuBLASLt and flash attention run a whole plan in one arena, with float
//! values stored in bf16 ([`storage`]).
//!
//! Design notes and measured numbers: `docs/cuda.md`.

pub mod arena;
pub mod attention;
pub mod attention_bwd;
pub mod backend;
mod bench_ceilings;
mod bench_fill;
mod bench_library;
pub mod blas;
mod convert;
pub mod device;
pub mod exec;
pub mod export;
mod export_cost;
pub mod export_dir;
pub mod kernel_bench;
pub mod libs;
pub mod manifest;
mod nan_watch;
pub mod nvrtc;
mod params;
pub mod plan;
pub mod test_device;

pub use crate::device::DeviceSpec;
pub use crate::storage::StorageMode;
pub use arena::{Arena, ArenaLayout, Region, WeightPool};
pub use attention::{AttentionArgs, AttentionKernel, FlashAttention, TensorStrides};
pub use attention_bwd::{AttentionGradArgs, FlashAttentionBackward};
pub use backend::{build_plan, CudaBackend};
pub use bench_ceilings::Ceilings;
pub use blas::{Blas, Epilogue, GemmArgs};
pub use device::{
    driver_version, list_devices, CudaDevice, DeviceBuffer, DeviceInfo, Event, Graph,
};
pub use exec::CudaExecutable;
pub use nvrtc::{CompiledKernel, KernelCache, Module};
pub use plan::CudaPlan;
pub use test_device::test_device;

/// Why the CUDA backend cannot be used on this machine (no driver library, no device, ...).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("CUDA unavailable: {reason}")]
pub struct CudaUnavailable {
    pub reason: String,
}

impl CudaUnavailable {
    pub fn new(reason: impl Into<String>) -> Self {
        CudaUnavailable {
            reason: reason.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(transparent)]
    Unavailable(#[from] CudaUnavailable),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("NVRTC compiling {name}: {message}")]
    Compile { name: String, message: String },
    #[error("cuBLASLt: {0}")]
    Blas(String),
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, CudaError>;

pub(crate) fn driver_error_text(e: &cudarc::driver::DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = e
        .error_string()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.is_empty() {
        format!("{:?}", e.0)
    } else {
        format!("{name} ({text})")
    }
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(driver_error_text(&e))
    }
}

/// A raw device address. Plain data: the memory's owner must outlive its uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DevPtr(pub u64);

impl DevPtr {
    pub const NULL: DevPtr = DevPtr(0);

    /// The address `bytes` bytes further on.
    pub fn offset(self, bytes: usize) -> DevPtr {
        DevPtr(self.0 + bytes as u64)
    }
    pub fn is_null(self) -> bool {
        self.0 == 0
    }
    /// Largest power of two (up to 256) dividing the address.
    pub fn alignment(self) -> usize {
        if self.0 == 0 {
            256
        } else {
            (1usize << self.0.trailing_zeros().min(8)).min(256)
        }
    }
}

/// The kernel sources of this backend (CUDA C, compiled by NVRTC at run time).
pub mod sources {
    pub const FLASH_ATTENTION: &str = include_str!("../../kernels/flash_attention.cu");
    pub const FLASH_ATTENTION_BWD: &str = include_str!("../../kernels/flash_attention_bwd.cu");
}
