//! Device memory without per-op allocation: one [`Arena`] per plan and a [`WeightPool`].
//!
//! The memory planner (`qie_ir::plan::MemoryPlan`) assigns every intermediate an offset in one
//! buffer of `arena_bytes`. An [`ArenaLayout`] lays that plan region out next to other
//! fixed-size regions (the cuBLASLt workspace, attention's log-sum-exp, ...), then one
//! `cuMemAlloc` backs them all; running a plan afterwards allocates nothing, which is also what
//! lets a whole step be captured once as a CUDA graph and replayed.

use std::sync::Arc;

use super::{CudaDevice, CudaError, DevPtr, DeviceBuffer, Result};

/// Alignment of every region and of every weight: matches `MemoryPlan::ALIGN` and cuBLASLt's
/// preferred 256-byte alignment.
pub const ALIGN: usize = 256;

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

/// A reserved byte range of an arena (returned by [`ArenaLayout::reserve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: usize,
    pub bytes: usize,
}

/// Builder: reserve regions, then allocate them all at once with [`ArenaLayout::allocate`].
#[derive(Clone, Debug, Default)]
pub struct ArenaLayout {
    size: usize,
}

impl ArenaLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reserves `bytes` (rounded up to [`ALIGN`]) and returns where they are.
    pub fn reserve(&mut self, bytes: usize) -> Region {
        let offset = self.size;
        self.size = align_up(offset + bytes, ALIGN);
        Region { offset, bytes }
    }

    /// Reserves the region a memory plan runs in: plan slot offsets are relative to its start.
    pub fn reserve_plan(&mut self, plan: &qie_ir::plan::MemoryPlan) -> Region {
        self.reserve(plan.arena_bytes)
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn allocate(&self, dev: &Arc<CudaDevice>) -> Result<Arena> {
        let buf = dev.alloc(self.size.max(ALIGN))?;
        Ok(Arena {
            buf,
            size: self.size,
        })
    }
}

/// One device allocation; hands out pointers into the regions reserved by its layout.
#[derive(Debug)]
pub struct Arena {
    buf: DeviceBuffer,
    size: usize,
}

impl Arena {
    /// An arena of exactly one region of `bytes` (offsets are relative to its start).
    pub fn new(dev: &Arc<CudaDevice>, bytes: usize) -> Result<Arena> {
        let mut l = ArenaLayout::new();
        l.reserve(bytes);
        l.allocate(dev)
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn base(&self) -> DevPtr {
        self.buf.ptr()
    }

    /// The start of `region`.
    pub fn region(&self, region: Region) -> DevPtr {
        assert!(
            region.offset + region.bytes <= self.size,
            "region {region:?} outside the arena"
        );
        self.buf.ptr().offset(region.offset)
    }

    /// `bytes` at `offset` bytes into the arena; errors when the range is outside it.
    pub fn at(&self, offset: usize, bytes: usize) -> Result<DevPtr> {
        if offset.checked_add(bytes).is_none_or(|end| end > self.size) {
            return Err(CudaError::Invalid(format!(
                "arena range {offset}+{bytes} outside the arena of {} bytes",
                self.size
            )));
        }
        Ok(self.buf.ptr().offset(offset))
    }

    /// The address of a plan slot: `plan_region` from [`ArenaLayout::reserve_plan`], `slot` from
    /// `MemoryPlan::slot`. `None` for weights (`Slot::Param`), which live in a [`WeightPool`].
    pub fn plan_slot(
        &self,
        plan_region: Region,
        slot: qie_ir::plan::Slot,
    ) -> Result<Option<DevPtr>> {
        match slot {
            qie_ir::plan::Slot::Param => Ok(None),
            qie_ir::plan::Slot::Arena { offset, bytes } => {
                if offset + bytes > plan_region.bytes {
                    return Err(CudaError::Invalid(format!(
                        "plan slot {offset}+{bytes} outside the plan region of {} bytes",
                        plan_region.bytes
                    )));
                }
                self.at(plan_region.offset + offset, bytes).map(Some)
            }
        }
    }
}

/// Weights: few, large, alive for the whole session. Bump-allocated from chunks of
/// `chunk_bytes` (a tensor larger than that gets its own chunk), freed together on drop.
pub struct WeightPool {
    dev: Arc<CudaDevice>,
    chunk_bytes: usize,
    chunks: Vec<DeviceBuffer>,
    /// Tensors larger than a chunk, one allocation each.
    large: Vec<DeviceBuffer>,
    used_in_last: usize,
    /// Size of the last chunk (`chunk_bytes`, or more when [`WeightPool::reserve`] asked).
    last_capacity: usize,
    total: usize,
}

impl WeightPool {
    pub fn new(dev: &Arc<CudaDevice>, chunk_bytes: usize) -> Self {
        WeightPool {
            dev: dev.clone(),
            chunk_bytes: chunk_bytes.max(ALIGN),
            chunks: Vec::new(),
            large: Vec::new(),
            used_in_last: 0,
            last_capacity: 0,
            total: 0,
        }
    }

    /// Makes the next `bytes` of [`WeightPool::alloc`] calls (each rounded up to [`ALIGN`])
    /// land in one chunk, sized to fit when they exceed `chunk_bytes`. Callers that know a
    /// plan's weights up front reserve them together, so chunk tails are not wasted: bump
    /// allocation of the real DiT's weights into fixed 256 MiB chunks wasted 19% (45 GiB of
    /// chunks for 37.9 GiB of weights).
    pub fn reserve(&mut self, bytes: usize) -> Result<()> {
        let need = align_up(bytes, ALIGN);
        if need == 0 || (!self.chunks.is_empty() && self.used_in_last + need <= self.last_capacity)
        {
            return Ok(());
        }
        let size = need.max(self.chunk_bytes);
        self.chunks.push(self.dev.alloc(size)?);
        self.last_capacity = size;
        self.used_in_last = 0;
        Ok(())
    }

    /// Uninitialised space for `bytes`, [`ALIGN`]-aligned.
    pub fn alloc(&mut self, bytes: usize) -> Result<DevPtr> {
        let need = align_up(bytes.max(1), ALIGN);
        self.total += need;
        if self.chunks.is_empty() || self.used_in_last + need > self.last_capacity {
            if need > self.chunk_bytes {
                let buf = self.dev.alloc(need)?;
                let p = buf.ptr();
                self.large.push(buf);
                return Ok(p);
            }
            self.chunks.push(self.dev.alloc(self.chunk_bytes)?);
            self.last_capacity = self.chunk_bytes;
            self.used_in_last = 0;
        }
        let p = self
            .chunks
            .last()
            .expect("a chunk")
            .ptr()
            .offset(self.used_in_last);
        self.used_in_last += need;
        Ok(p)
    }

    /// Copies `data` into a fresh allocation.
    pub fn upload<T: bytemuck::Pod>(&mut self, data: &[T]) -> Result<DevPtr> {
        let p = self.alloc(std::mem::size_of_val(data))?;
        self.dev.htod(p, data)?;
        Ok(p)
    }

    /// Bytes handed out (after alignment).
    pub fn allocated_bytes(&self) -> usize {
        self.total
    }
}
