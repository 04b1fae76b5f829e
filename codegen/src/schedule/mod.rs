//! Target-neutral planning of how a [`KernelProgram`](crate::KernelProgram) runs on a GPU: the
//! width of its index arithmetic, which accesses of an elementwise kernel move as vectors, how
//! the rows of a reduction map to threads and blocks, and the resulting launch shape. Renderers
//! (CUDA C in [`crate::cuda`]; WGSL later) turn these decisions into source text.

mod index_width;
mod reduction;
mod vector;

pub use index_width::{index_width, IndexWidth};
pub use reduction::{plan_reduction, ReductionPlan};
pub use vector::{plan_vector, VectorPlan};

/// Threads per block of elementwise kernels.
pub const ELEMENTWISE_THREADS: u32 = 256;
/// Grid-stride loops use at most this many blocks (enough to fill any current GPU).
pub const MAX_BLOCKS: u64 = 1 << 16;

/// A 1-D launch: `grid` blocks of `block` threads, no dynamic shared memory. `grid == 0` means
/// the kernel has nothing to do (empty space) and must not be launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLaunch {
    pub grid: u32,
    pub block: u32,
}

/// The launch of an elementwise kernel whose grid-stride loop runs `iterations` times in all
/// (one per element, or one per vector of elements).
pub fn grid_stride_launch(iterations: u64) -> KernelLaunch {
    let block = ELEMENTWISE_THREADS;
    let grid = iterations.div_ceil(block as u64).min(MAX_BLOCKS) as u32;
    KernelLaunch { grid, block }
}
