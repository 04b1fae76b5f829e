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
