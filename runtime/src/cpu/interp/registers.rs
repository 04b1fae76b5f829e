//! The register file of one task: chunk-sized vectors per class, plus scratch for offsets.

use super::plan::SectionPlan;
use super::{RegClass, CHUNK};

/// Per-task registers of one section; a [`Slot`](super::Slot) of class `c` and index `i` is
/// the `i`-th vector of `c`'s pool.
pub(super) struct Registers {
    pub f32s: Vec<Vec<f32>>,
    pub i32s: Vec<Vec<i32>>,
    pub i64s: Vec<Vec<i64>>,
    pub bools: Vec<Vec<u8>>,
    /// Element offsets of the current chunk (for general maps and gathers).
    pub offsets: Vec<i64>,
}

impl Registers {
    pub fn new(sec: &SectionPlan) -> Registers {
        let count = |c: RegClass| sec.slot_counts[c.index()];
        let mut r = Registers {
            f32s: vec![vec![0.0; CHUNK]; count(RegClass::Float)],
            i32s: vec![vec![0; CHUNK]; count(RegClass::I32)],
            i64s: vec![vec![0; CHUNK]; count(RegClass::I64)],
            bools: vec![vec![0; CHUNK]; count(RegClass::Bool)],
            offsets: vec![0; CHUNK],
        };
        for &(s, v) in &sec.consts {
            match s.class {
                RegClass::Float => r.f32s[s.index].fill(v as f32),
                RegClass::I32 => r.i32s[s.index].fill(v as i32),
                RegClass::I64 => r.i64s[s.index].fill(v as i64),
                RegClass::Bool => r.bools[s.index].fill((v != 0.0) as u8),
            }
        }
        r
    }
}
