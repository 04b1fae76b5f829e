//! Device buffers for benchmarking one exported entry: allocated as the manifest lists them,
//! inputs filled with random non-zero data, gather indices kept in range, outputs poisoned.
//!
//! Random data comes from one 16 MiB pool per dtype (generated on the host once, uploaded
//! once) that is tiled into each buffer with device-to-device copies, so filling a large
//! activation costs a copy, not a host round trip.

use super::manifest::{parse_dtype, BufferSpec, Fill};
use super::{CudaDevice, CudaError, DevPtr, DeviceBuffer, Result};
use qie_ir::DType;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

const POOL_BYTES: usize = 16 << 20;

/// The buffers of one entry, in manifest order.
pub struct EntryBuffers {
    bufs: Vec<DeviceBuffer>,
}

impl EntryBuffers {
    /// The address `offset` bytes into buffer `index`.
    pub fn ptr(&self, index: usize, offset: u64) -> DevPtr {
        self.bufs[index].ptr().offset(offset as usize)
    }
}

/// Allocates and fills buffers; keeps the random pools between entries.
pub struct Filler {
    dev: Arc<CudaDevice>,
    pools: HashMap<DType, DeviceBuffer>,
}

/// A deterministic 64-bit hash of `i` (splitmix64).
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `i`-th random float: magnitude in [0.25, 1.25), random sign (never zero).
fn random_f32(i: u64) -> f32 {
    let h = mix(i);
    let u = (h >> 40) as f32 / (1u64 << 24) as f32;
    let v = 0.25 + u;
    if h & 1 == 0 {
        v
    } else {
        -v
    }
}

/// `n` elements of `dtype` as little-endian bytes, element `i` computed by `f(i)`.
fn encode(dtype: DType, n: usize, seed: u64, f: impl Fn(u64) -> u64 + Sync) -> Vec<u8> {
    let size = dtype.size_bytes();
    let mut out = vec![0u8; n * size];
    out.par_chunks_mut(size * 4096)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, e) in chunk.chunks_exact_mut(size).enumerate() {
                let i = seed ^ (c * 4096 + j) as u64;
                let v = f(i);
                match dtype {
                    DType::F32 => e.copy_from_slice(&random_f32(v).to_le_bytes()),
                    DType::BF16 => {
                        e.copy_from_slice(&half::bf16::from_f32(random_f32(v)).to_le_bytes())
                    }
                    DType::F16 => {
                        e.copy_from_slice(&half::f16::from_f32(random_f32(v)).to_le_bytes())
                    }
                    DType::I32 => e.copy_from_slice(&(v as i32).to_le_bytes()),
                    DType::I64 => e.copy_from_slice(&(v as i64).to_le_bytes()),
                    DType::Bool => e[0] = v as u8,
                }
            }
        });
    out
}

impl Filler {
    pub fn new(dev: &Arc<CudaDevice>) -> Self {
        Filler {
            dev: dev.clone(),
            pools: HashMap::new(),
        }
    }

    /// Random data of `dtype` (see [`Fill::Random`]) in a pool of [`POOL_BYTES`].
    fn pool(&mut self, dtype: DType) -> Result<DevPtr> {
        if let Some(p) = self.pools.get(&dtype) {
            return Ok(p.ptr());
        }
        let n = POOL_BYTES / dtype.size_bytes();
        let bytes = match dtype {
            DType::Bool => encode(dtype, n, 0, |i| (mix(i) & 7 != 0) as u64),
            DType::I32 | DType::I64 => encode(dtype, n, 0, |i| mix(i) % 16),
            // Floats: the value is derived from the hash inside `encode`.
            _ => encode(dtype, n, 0, |i| i),
        };
        let buf = self.dev.alloc(bytes.len())?;
        self.dev.htod(buf.ptr(), &bytes)?;
        let ptr = buf.ptr();
        self.pools.insert(dtype, buf);
        Ok(ptr)
    }

    /// Allocates `specs` and fills them; the fills are queued on the device's stream.
    pub fn allocate(&mut self, specs: &[BufferSpec]) -> Result<EntryBuffers> {
        let mut bufs = Vec::with_capacity(specs.len());
        for (bi, s) in specs.iter().enumerate() {
            let dtype = parse_dtype(&s.dtype).map_err(CudaError::Invalid)?;
            let bytes = s.bytes as usize;
            let buf = self.dev.alloc(bytes)?;
            match s.fill {
                Fill::Poison => self.dev.memset(buf.ptr(), 0xFF, bytes)?,
                Fill::Random => {
                    let pool = self.pool(dtype)?;
                    let mut off = 0;
                    while off < bytes {
                        let n = POOL_BYTES.min(bytes - off);
                        self.dev.dtod(buf.ptr().offset(off), pool, n)?;
                        off += n;
                    }
                }
                Fill::Index { bound } => {
                    let n = bytes / dtype.size_bytes();
                    let data = encode(dtype, n, bi as u64, |i| mix(i) % bound.max(1));
                    self.dev.htod(buf.ptr(), &data)?;
                }
            }
            bufs.push(buf);
        }
        Ok(EntryBuffers { bufs })
    }

    /// Plain allocations of `bytes` filled with random `dtype` values (for the ceilings).
    pub fn random(&mut self, dtype: DType, bytes: usize) -> Result<DeviceBuffer> {
        let spec = BufferSpec {
            dtype: dtype.name().to_string(),
            bytes: bytes as u64,
            fill: Fill::Random,
        };
        Ok(self.allocate(&[spec])?.bufs.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_are_never_zero_and_indices_stay_in_range() {
        for i in 0..10_000 {
            let v = random_f32(mix(i));
            assert!((0.25..1.25).contains(&v.abs()), "{v}");
        }
        let bytes = encode(DType::I64, 1000, 3, |i| mix(i) % 7);
        for c in bytes.chunks_exact(8) {
            let v = i64::from_le_bytes(c.try_into().unwrap());
            assert!((0..7).contains(&v));
        }
        let bf = encode(DType::BF16, 1000, 0, |i| i);
        assert!(bf
            .chunks_exact(2)
            .all(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32() != 0.0));
    }
}
