//! Thread mapping of reductions: the kept axes are rows; each row is reduced by 1, 32 (one warp)
//! or 256 / 1024 threads (one block) depending on how many elements it folds. When consecutive
//! rows are consecutive in memory and the reduced axes are strided (a sum over tokens of a
//! [tokens, channels] tensor), a block instead takes a tile of consecutive rows, one thread per
//! row per slice of the reduced axes, so that a warp's loads stay coalesced.

use super::KernelLaunch;
use crate::program::{Instr, KernelProgram};

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
    /// Column layout: thread `t` of a block serves row `t % rows_per_block` of the block's tile
    /// and slice `t / rows_per_block` of the reduced axes (else row `t / threads_per_row`,
    /// slice `t % threads_per_row`).
    pub columns: bool,
}

/// Enough blocks for two waves on the largest current GPUs.
const WIDE_GRID: u64 = 2 * 132;

/// Picks the threads per row from the row length: short rows get one thread each (256 rows a
/// block), medium rows one warp (8 a block), long rows a whole block.
pub fn plan_reduction(p: &KernelProgram) -> ReductionPlan {
    let rows = p.kept_space().iter().product::<usize>() as u64;
    let row_len = p.reduced_space().iter().product::<usize>() as u64;
    if row_len > 16 && column_major(p) {
        // 32 rows a tile when that still fills the GPU, else 16 (a half warp still reads whole
        // 32-byte sectors); the rest of 1024 threads split the reduced axes.
        let tile: u32 = if rows.div_ceil(32) >= WIDE_GRID {
            32
        } else {
            16
        };
        let mut split = 1024 / tile;
        // Each slice folds at least 4 elements, and the partials (8 bytes per reduce stage)
        // fit in 32 KiB of shared memory.
        let stages = p.reduces.len().max(1) as u32;
        while split > 1
            && (((split as u64) * 4 > row_len && split > 32)
                || split * tile * 8 * stages > 32 * 1024)
        {
            split /= 2;
        }
        return ReductionPlan {
            rows,
            row_len,
            threads_per_row: split,
            rows_per_block: tile,
            columns: true,
        };
    }
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
        columns: false,
    }
}

/// Whether the body's loads mostly move with unit stride along the last kept axis rather than
/// along the last reduced axis.
fn column_major(p: &KernelProgram) -> bool {
    let rank = p.space.len();
    let kept = rank - p.reduce_rank;
    if kept == 0 || p.reduce_rank == 0 {
        return false;
    }
    let (mut along_rows, mut along_reduced) = (0, 0);
    for s in &p.body.stmts {
        let map = match &s.instr {
            Instr::Load { map, .. } | Instr::LoadGather { map, .. } => map,
            _ => continue,
        };
        let strides = &map.top().strides;
        if strides[rank - 1] == 1 {
            along_reduced += 1;
        } else if strides[kept - 1] == 1 {
            along_rows += 1;
        }
    }
    along_rows > along_reduced
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
