//! [`BufRef`]: where a value of a bound plan lives at run time.

use qie_ir::DType;

/// A value's memory in a bound plan: bytes of the executable's arena, or one of its weights.
/// Backends turn it into a pointer when they run (host address, device address, buffer binding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufRef {
    /// `bytes` at `offset` from the start of the executable's arena (plan region then scratch).
    Arena {
        offset: usize,
        bytes: usize,
        dtype: DType,
    },
    /// The `index`-th weight of the plan ([`super::ParamSlot`]).
    Param {
        index: usize,
        bytes: usize,
        dtype: DType,
    },
}

impl BufRef {
    /// The element type as stored (on a device, possibly narrower than the graph's type).
    pub fn dtype(&self) -> DType {
        match self {
            BufRef::Arena { dtype, .. } | BufRef::Param { dtype, .. } => *dtype,
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            BufRef::Arena { bytes, .. } | BufRef::Param { bytes, .. } => *bytes,
        }
    }

    pub fn elements(&self) -> usize {
        self.bytes() / self.dtype().size_bytes()
    }

    /// `[start, end)` in the arena; weights have none (they never alias arena bytes).
    pub fn byte_range(&self) -> Option<(usize, usize)> {
        match self {
            BufRef::Arena { offset, bytes, .. } => Some((*offset, offset + bytes)),
            BufRef::Param { .. } => None,
        }
    }

    /// Whether both are non-empty arena ranges sharing a byte.
    pub fn overlaps(&self, other: &BufRef) -> bool {
        match (self.byte_range(), other.byte_range()) {
            (Some((a0, a1)), Some((b0, b1))) => a0 < b1 && b0 < a1 && a1 > a0 && b1 > b0,
            _ => false,
        }
    }
}
