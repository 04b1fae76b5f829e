//! CUDA C rendering of [`KernelProgram`](crate::KernelProgram)s, compiled at run time by NVRTC.
//!
//! One program becomes one `extern "C" __global__` function:
//!
//! - **Elementwise** programs: a grid-stride loop over the elements of the iteration space; the
//!   linear index is unravelled into the axis variables `i0, i1, ..` by div/mod with constants,
//!   and every load / store offset is the index map's expression over them (multiply-adds for
//!   strided maps, div/mod for stacked views).
//! - **Reductions**: the kept axes are "rows". Each row is reduced by 1, 32 (one warp) or 256 /
//!   1024 threads (one block) depending on the number of reduced elements; each thread folds its
//!   share in f32 (integers exactly), then warp shuffles and a shared-memory step combine the
//!   partial values, and the row's first thread evaluates the epilogue and stores it.
//!
//! The decisions behind that shape (index width, vector widths, threads per row, launch sizes)
//! are target-neutral and live in [`crate::schedule`]; this module only writes CUDA C.
//!
//! Registers are f32 for every float dtype; bf16 / f16 / bool exist only in memory, converted on
//! load and store (round to nearest even). Shapes are static, so every size is a literal; the
//! kernel takes only buffer pointers (inputs, then outputs).
//!
//! The source is deterministic and content-addressed: the kernel's symbol is a hash of its text,
//! so identical kernels (the same layer repeated 60 times) are rendered, compiled and cached once.

mod dtypes;
mod render;

pub use crate::schedule::KernelLaunch;
pub use render::{render_program, RenderOptions, RenderedKernel, PRELUDE};

/// FNV-1a (64 bits) of a string: stable across platforms and Rust versions.
pub fn fnv1a64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
