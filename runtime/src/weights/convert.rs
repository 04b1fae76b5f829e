//! Loading tensors as `f32` / `i64` / `i32`, converting the stored dtype.
//!
//! Tensor data inside a mapped file has no alignment guarantee, so every
//! element is decoded with `from_le_bytes` (correct on any host endianness).
//! Large tensors are converted in parallel chunks with rayon.

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::Dtype;

use super::error::{Result, WeightsError};
use super::store::WeightStore;

/// Elements per rayon task: large enough to amortize scheduling, small
/// enough to spread a multi-GB tensor over all cores.
const CHUNK: usize = 1 << 16;

/// Decodes `bytes` as consecutive `N`-byte little-endian elements.
pub(super) fn decode<T, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T + Sync) -> Vec<T>
where
    T: Copy + Default + Send + Sync,
{
    let n = bytes.len() / N;
    // `vec![zero; n]` is a calloc: zero pages are mapped lazily.
    let mut out = vec![T::default(); n];
    let run = |(dst, src): (&mut [T], &[u8])| {
        for (d, s) in dst.iter_mut().zip(src.chunks_exact(N)) {
            // chunks_exact(N) yields exactly N bytes.
            let mut a = [0u8; N];
            a.copy_from_slice(s);
            *d = f(a);
        }
    };
    if n <= CHUNK {
        run((&mut out[..], bytes));
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * N))
            .for_each(run);
    }
    out
}

/// `v` mapped element-wise, in parallel chunks.
pub(super) fn par_map<S: Sync, T: Copy + Default + Send>(
    v: &[S],
    f: impl Fn(&S) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    out.par_chunks_mut(CHUNK)
        .zip(v.par_chunks(CHUNK))
        .for_each(|(o, i)| {
            for (d, x) in o.iter_mut().zip(i) {
                *d = f(x);
            }
        });
    out
}

/// Like [`decode`] through an `i128`, failing on the first value (in any
/// order) that does not fit in `T`.
fn decode_checked<T, const N: usize>(
    bytes: &[u8],
    name: &str,
    target: &'static str,
    f: impl Fn([u8; N]) -> i128 + Sync,
) -> Result<Vec<T>>
where
    T: Copy + Default + Send + Sync + TryFrom<i128>,
{
    let bad = bytes
        .par_chunks_exact(N)
        .with_min_len(CHUNK)
        .map(|s| {
            let mut a = [0u8; N];
            a.copy_from_slice(s);
            f(a)
        })
        .find_any(|v| T::try_from(*v).is_err());
    if let Some(value) = bad {
        return Err(WeightsError::OutOfRange {
            tensor: name.to_string(),
            value,
            target,
        });
    }
    Ok(decode(bytes, |a| T::try_from(f(a)).unwrap_or_default()))
}

impl WeightStore {
    /// Loads `name` as `f32`: F32 as is, BF16/F16 upcast, F64 rounded.
    pub fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (info, b) = self.raw(name)?;
        Ok(match info.dtype {
            Dtype::F32 => decode(b, f32::from_le_bytes),
            Dtype::BF16 => decode(b, |a| bf16::from_le_bytes(a).to_f32()),
            Dtype::F16 => decode(b, |a| f16::from_le_bytes(a).to_f32()),
            Dtype::F64 => decode(b, |a| f64::from_le_bytes(a) as f32),
            dtype => return Err(dtype_error(name, dtype, "f32")),
        })
    }

    /// Loads an integer or bool tensor as `i64` (bool as 0/1). U64 values
    /// above `i64::MAX` are an error.
    pub fn load_i64(&self, name: &str) -> Result<Vec<i64>> {
        let (info, b) = self.raw(name)?;
        let t = "i64";
        Ok(match info.dtype {
            Dtype::I64 => decode(b, i64::from_le_bytes),
            Dtype::I32 => decode(b, |a| i32::from_le_bytes(a).into()),
            Dtype::U32 => decode(b, |a| u32::from_le_bytes(a).into()),
            Dtype::I16 => decode(b, |a| i16::from_le_bytes(a).into()),
            Dtype::U16 => decode(b, |a| u16::from_le_bytes(a).into()),
            Dtype::I8 => decode(b, |a: [u8; 1]| i8::from_le_bytes(a).into()),
            Dtype::U8 => decode(b, |a: [u8; 1]| a[0].into()),
            Dtype::BOOL => decode(b, |a: [u8; 1]| i64::from(a[0] != 0)),
            Dtype::U64 => decode_checked(b, name, t, |a| u64::from_le_bytes(a).into())?,
            dtype => return Err(dtype_error(name, dtype, t)),
        })
    }

    /// Loads an integer or bool tensor as `i32` (bool as 0/1). Wider
    /// integers are narrowed; a value that does not fit is an error.
    pub fn load_i32(&self, name: &str) -> Result<Vec<i32>> {
        let (info, b) = self.raw(name)?;
        let t = "i32";
        Ok(match info.dtype {
            Dtype::I32 => decode(b, i32::from_le_bytes),
            Dtype::I16 => decode(b, |a| i16::from_le_bytes(a).into()),
            Dtype::U16 => decode(b, |a| u16::from_le_bytes(a).into()),
            Dtype::I8 => decode(b, |a: [u8; 1]| i8::from_le_bytes(a).into()),
            Dtype::U8 => decode(b, |a: [u8; 1]| a[0].into()),
            Dtype::BOOL => decode(b, |a: [u8; 1]| i32::from(a[0] != 0)),
            Dtype::I64 => decode_checked(b, name, t, |a| i64::from_le_bytes(a).into())?,
            Dtype::U64 => decode_checked(b, name, t, |a| u64::from_le_bytes(a).into())?,
            Dtype::U32 => decode_checked(b, name, t, |a| u32::from_le_bytes(a).into())?,
            dtype => return Err(dtype_error(name, dtype, t)),
        })
    }
}

fn dtype_error(name: &str, dtype: Dtype, target: &'static str) -> WeightsError {
    WeightsError::Dtype {
        tensor: name.to_string(),
        dtype,
        target,
    }
}
