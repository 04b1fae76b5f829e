//! Raw buffers: the arena (one 64-byte aligned allocation per plan) and typed views into it.

use crate::tensor::Storage;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Block([u8; 64]);

/// One 64-byte aligned allocation, zero-initialised, allocated once per plan.
pub struct Arena {
    blocks: Vec<Block>,
}

impl Arena {
    pub fn new(bytes: usize) -> Arena {
        Arena {
            blocks: vec![Block([0; 64]); bytes.div_ceil(64)],
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len() * 64
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn base(&mut self) -> *mut u8 {
        self.blocks.as_mut_ptr() as *mut u8
    }
}

/// A region of memory with an element type, shared by the kernels of one run. Kernels write
/// disjoint elements from several threads, so access goes through raw pointers.
#[derive(Clone, Copy, Debug)]
pub struct RawBuf {
    pub ptr: *mut u8,
    /// Length in elements.
    pub len: usize,
    pub storage: Storage,
    /// False for weights (never written).
    pub writable: bool,
}

// SAFETY: a RawBuf is only dereferenced while the arena / parameter store it points into is
// borrowed by the running plan, and concurrent kernels write disjoint elements.
unsafe impl Send for RawBuf {}
unsafe impl Sync for RawBuf {}

impl RawBuf {
    pub fn bytes(&self) -> usize {
        self.len * self.storage.size_bytes()
    }

    #[inline]
    pub fn f32_ptr(&self) -> *mut f32 {
        debug_assert_eq!(self.storage, Storage::F32);
        self.ptr as *mut f32
    }

    /// # Safety
    /// No other thread may write the buffer while the slice lives.
    pub unsafe fn as_f32(&self) -> &[f32] {
        debug_assert_eq!(self.storage, Storage::F32);
        std::slice::from_raw_parts(self.ptr as *const f32, self.len)
    }

    /// # Safety
    /// The caller must be the only one accessing the buffer while the slice lives.
    pub unsafe fn as_f32_mut(&self) -> &mut [f32] {
        debug_assert_eq!(self.storage, Storage::F32);
        debug_assert!(self.writable);
        std::slice::from_raw_parts_mut(self.ptr as *mut f32, self.len)
    }

    /// True if the byte ranges of the two buffers intersect.
    pub fn overlaps(&self, other: &RawBuf) -> bool {
        let (a0, a1) = (self.ptr as usize, self.ptr as usize + self.bytes());
        let (b0, b1) = (other.ptr as usize, other.ptr as usize + other.bytes());
        a0 < b1 && b0 < a1 && self.bytes() > 0 && other.bytes() > 0
    }
}

/// A pointer that may be moved into worker threads (writes target disjoint elements).
#[derive(Clone, Copy)]
pub struct SendPtr<T>(pub *mut T);

// SAFETY: see the type's docs.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    #[inline]
    pub fn get(self) -> *mut T {
        self.0
    }
}
