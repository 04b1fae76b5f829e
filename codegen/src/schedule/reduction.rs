//! Thread mapping of reductions: the kept axes are rows; each row is reduced by 1, 32 (one warp)
//! or 256 / 1024 threads (one block) depending on how many elements it folds.

use super::KernelLaunch;
use crate::program::KernelProgram;

/// See [`plan_reduction`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReductionPlan {
    /// Rows: elements of the kept space.
    pub rows: u64,
    /// Elements folded into each row (of the reduced space).
    pub row_len: u64,
    /// Threads that share one row: 1, 32, 256 or 1024.
    pub threads_per_row: u32,
    /// Rows handled by one block.
    pub rows_per_block: u32,
}

/// Picks the threads per row from the row length: short rows get one thread each (256 rows a
/// block), medium rows one warp (8 a block), long rows a whole block.
pub fn plan_reduction(p: &KernelProgram) -> ReductionPlan {
    let rows = p.kept_space().iter().product::<usize>() as u64;
    let row_len = p.reduced_space().iter().product::<usize>() as u64;
    let (threads_per_row, rows_per_block) = if row_len <= 16 {
        (1, 256)
    } else if row_len <= 2048 {
        (32, 8)
    } else if row_len <= 16384 {
        (256, 1)
    } else {
        (1024, 1)
    };
    ReductionPlan {
        rows,
        row_len,
        threads_per_row,
        rows_per_block,
    }
}

impl ReductionPlan {
    /// Threads per block.
    pub fn block(&self) -> u32 {
        self.threads_per_row * self.rows_per_block
    }

    /// One block per `rows_per_block` rows; fails when that needs more blocks than one launch
    /// may have.
    pub fn launch(&self) -> Result<KernelLaunch, String> {
        let grid = self.rows.div_ceil(self.rows_per_block as u64);
        if grid > i32::MAX as u64 {
            return Err(format!("{} rows is too many for one launch", self.rows));
        }
        Ok(KernelLaunch {
            grid: grid as u32,
            block: self.block(),
        })
    }
}
