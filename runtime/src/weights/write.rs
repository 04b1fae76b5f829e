//! Writing `.safetensors` files atomically: the bytes go to a temporary
//! file in the target directory, are synced, then renamed over the target,
//! so a crash leaves either the old file or the complete new one.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use half::{bf16, f16};
use rayon::prelude::*;
use safetensors::{Dtype, View};

use super::error::{Result, WeightsError};

/// A tensor to write: raw little-endian bytes of `dtype` in row-major order.
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl View for &RawTensor<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes f32 tensors as F32.
pub fn save_safetensors<S: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(S, Vec<usize>, &[f32])],
) -> Result<()> {
    save_safetensors_as(path, tensors, Dtype::F32)
}

/// Writes f32 tensors stored as `dtype`: F32, BF16 or F16 (rounded to
/// nearest even).
pub fn save_safetensors_as<S: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(S, Vec<usize>, &[f32])],
    dtype: Dtype,
) -> Result<()> {
    save_safetensors_with_metadata(path, tensors, dtype, &HashMap::new())
}

/// [`save_safetensors_as`] with extra header metadata (e.g. diffusers' `lora_adapter_metadata`).
pub fn save_safetensors_with_metadata<S: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(S, Vec<usize>, &[f32])],
    dtype: Dtype,
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut raw = Vec::with_capacity(tensors.len());
    for (name, shape, values) in tensors {
        let name = name.as_ref();
        let numel: usize = shape.iter().product();
        if values.len() != numel {
            return Err(WeightsError::write(
                path,
                format!(
                    "tensor '{name}' has shape {shape:?} ({numel} elements) but {} values",
                    values.len()
                ),
            ));
        }
        let data = match dtype {
            Dtype::F32 => encode(values, |v| v.to_le_bytes()),
            Dtype::BF16 => encode(values, |v| bf16::from_f32(v).to_le_bytes()),
            Dtype::F16 => encode(values, |v| f16::from_f32(v).to_le_bytes()),
            other => {
                return Err(WeightsError::write(
                    path,
                    format!("f32 values cannot be stored as {other} (use F32, BF16 or F16)"),
                ))
            }
        };
        raw.push(RawTensor {
            name: name.to_string(),
            dtype,
            shape: shape.clone(),
            data: Cow::Owned(data),
        });
    }
    save_raw_with_metadata(path, &raw, metadata)
}

/// Writes tensors of any dtype, with `{"format": "pt"}` metadata as
/// transformers and diffusers write it.
pub fn save_raw(path: impl AsRef<Path>, tensors: &[RawTensor<'_>]) -> Result<()> {
    save_raw_with_metadata(path, tensors, &HashMap::new())
}

/// [`save_raw`] with extra header metadata next to `format`.
pub fn save_raw_with_metadata(
    path: impl AsRef<Path>,
    tensors: &[RawTensor<'_>],
    extra: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut names = HashSet::with_capacity(tensors.len());
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(WeightsError::write(
                path,
                format!("tensor '{}' is given twice", t.name),
            ));
        }
        let bits = t
            .shape
            .iter()
            .try_fold(t.dtype.bitsize(), |acc, &d| acc.checked_mul(d));
        if bits != Some(t.data.len() * 8) {
            return Err(WeightsError::write(
                path,
                format!(
                    "tensor '{}' of dtype {} and shape {:?} has {} bytes of data",
                    t.name,
                    t.dtype,
                    t.shape,
                    t.data.len()
                ),
            ));
        }
    }
    let mut metadata = extra.clone();
    metadata.insert("format".to_string(), "pt".to_string());
    let bytes =
        safetensors::serialize(tensors.iter().map(|t| (t.name.as_str(), t)), Some(metadata))
            .map_err(|e| WeightsError::write(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Encodes values to little-endian bytes, in parallel for large inputs.
fn encode<const N: usize>(values: &[f32], f: impl Fn(f32) -> [u8; N] + Sync) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * N];
    out.par_chunks_mut(N * (1 << 16))
        .zip(values.par_chunks(1 << 16))
        .for_each(|(dst, src)| {
            for (d, &v) in dst.chunks_exact_mut(N).zip(src) {
                d.copy_from_slice(&f(v));
            }
        });
    out
}

/// Writes `bytes` to a temporary sibling of `path`, syncs, renames.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io = |e| WeightsError::io(path, e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".qie-weights-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    // Make the rename itself durable; not possible everywhere, so best effort.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
